"""Xen's domain configs: the xl.cfg reader (agrees with libxlutil), device specs, the domain.

``syntax`` (the file read as libxlutil reads it), ``config`` (its keys converted as xl's
option code converts them), ``disks`` and ``nics`` (device specs), ``domain`` (the validated
value, its domid and name).

May import: :mod:`qemu_depriv.errors` and :mod:`qemu_depriv.accounts` (account names).
"""
