"""The isolation layers: their plan and check (pure), the pre-exec jail, and cgroups.

``layers`` (what every layer should be, and whether the running process shows it), ``jail``
(what is applied between fork and exec), ``cgroups`` (a group per VM, v1 or v2, and its kill),
``scopes`` (the group as a systemd scope unit, where systemd runs the host).

May import: :mod:`qemu_depriv.errors`, :mod:`qemu_depriv.settings`, :mod:`qemu_depriv.host`,
:mod:`qemu_depriv.accounts` and :mod:`qemu_depriv.xl`.
"""
