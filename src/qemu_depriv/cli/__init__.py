"""The ``qemu-depriv`` command line: one module per subcommand, parsing and printing only."""
