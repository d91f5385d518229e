"""The host itself: /proc read and parsed, processes and signals, running programs, syscalls.

``procfs`` (everything read from /proc, parsed by pure functions), ``processes`` (a recorded
process still the same one, signalled through a pidfd, waited for), ``programs`` (the one place
that runs other programs), ``syscalls`` (what Python's os module lacks), ``kvm``, ``netdev``
(taps and bridges through /dev/net/tun and ioctls).

May import: :mod:`qemu_depriv.errors` only.  Knows nothing of accounts, VMs or QEMU.
"""
