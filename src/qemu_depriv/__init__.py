"""qemu-depriv: run every QEMU device model as its own unprivileged user.

The library adds only a ``NullHandler`` to its logger; the command line configures logging.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
