"""The host suite: run inside each booted Debian host (systemd as PID 1, cgroup v2 only).

``test_host_suite`` (one level up) starts it in the guest with ``QEMU_DEPRIV_INSIDE_HOST=1``;
elsewhere it is not collected. Unlike the harness, these tests use the product, for real, on a
host that is theirs to provision: the guest's disk is a snapshot that dies with it.
"""
