"""The ``qemu-depriv`` command line: one module per command; parsing and printing only.

May import: everything.  Each command imports its machinery when it runs (the start-up cost is
in every launch), so ``qemu-depriv --help`` loads none of it.
"""
