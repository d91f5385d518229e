"""Benchmarks of qemu-depriv against its baselines (``make bench``; see bench/README.md).

Every benchmark runs in its own worker process (``python -m bench.NAME``), which first enters a
private mount namespace over scratch account files, so the host's /etc/passwd and /etc/group
are never read for, nor written by, a benchmark.  :mod:`bench.run` runs the workers one after
the other, checks after each that no process of the benchmark's uids is left, and writes
``bench/results/``.
"""
