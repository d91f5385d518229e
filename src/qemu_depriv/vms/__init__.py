"""Device models as VMs: paths, leases, the launcher, the one teardown, reaper, recovery.

``paths``, ``store`` (SQLite leases with typed states), ``launcher`` (plan, spawn, verify,
resume), ``teardown`` (``stop``, reconciliation and a failed launch, all alike), ``reaper``
(every process of a uid killed, race-free), ``recovery``, ``taps`` (a VM's taps checked,
opened for QEMU, and gone after it).

May import: everything below it (errors, settings, host, accounts, xl, qemu, isolation);
nothing of checks or cli.
"""
