"""``python -m qemu_depriv`` runs the command line."""

import sys

from qemu_depriv.cli.main import main

sys.exit(main())
