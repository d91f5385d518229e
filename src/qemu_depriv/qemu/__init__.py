"""QEMU: its capabilities, the command lines we build and read, and QMP.

``caps`` (what a binary can do), ``argv``, ``xen`` and ``devices`` (the command lines we
build), ``cmdline`` (one someone else wrote), ``taps`` (the taps a VM is handed and where
their descriptors go), ``qmp``.

May import: :mod:`qemu_depriv.errors`, :mod:`qemu_depriv.host`, :mod:`qemu_depriv.accounts`
(a decision) and :mod:`qemu_depriv.xl` (a domain).
"""
