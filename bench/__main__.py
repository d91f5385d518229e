"""``python -m bench``: run every benchmark and write bench/results/ (see bench/run.py)."""

import sys

from bench.run import main

sys.exit(main())
