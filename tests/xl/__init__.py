"""The xl.cfg reader held against libxlutil itself (Debian's libxen-dev), file by file."""
