"""Restrictions applied to the device model between fork and exec, from its layer plan.

In order: join the VM's cgroup (so that everything after is charged to it; where systemd
places the VM, ``systemd-run --scope`` is exec'd first and joins its scope instead); clear the
supplementary groups (QEMU sets its own when it drops to an account, and a root-tier QEMU must
not inherit the launcher's, ``sudo`` leaving group 0 among them); unshare the mount and IPC
namespaces, and the network namespace when the VM has no network; set the rlimits (NPROC is
never 0: it counts threads, and QEMU needs them); set no_new_privs.

A PID namespace cannot be entered this way: once a process's children would be born in
another PID namespace the kernel refuses it new threads, and QEMU needs threads.  So QEMU is
started as PID 1 of a new PID namespace by util-linux's ``unshare --pid --fork --kill-child``.
The wrapper waits for QEMU; when QEMU exits, the kernel kills every process left in its
namespace.  ``--kill-child`` only holds until QEMU drops to its account (the kernel clears the
parent-death signal on every change of credentials), so the launcher never counts on it: it
kills QEMU by its own recorded pid, and through the cgroup.

The function runs in the forked child of a single-threaded parent: no logging, no locks; an
exception aborts the spawn.
"""

from __future__ import annotations

import os
import resource
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.errors import EnvironmentFailure, InvalidInput
from qemu_depriv.host import syscalls
from qemu_depriv.host.procfs import UNLIMITED
from qemu_depriv.isolation.cgroups import VmCgroup
from qemu_depriv.isolation.layers import RLIMITS, LayerPlan

_NAMESPACE_FLAGS = {
    "mnt": syscalls.CLONE_NEWNS,
    "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET,
}


@dataclass(frozen=True)
class Jail:
    """The pre-exec restrictions of one device model."""

    namespaces: int = syscalls.CLONE_NEWNS | syscalls.CLONE_NEWIPC
    rlimits: tuple[tuple[int, int, int], ...] = ()
    no_new_privs: bool = False
    cgroup_procs: tuple[str, ...] = ()
    pid_namespace: bool = False
    prefix: tuple[str, ...] = ()

    def before_exec(self) -> Callable[[], None]:
        """Return the function to run in the child before exec."""

        def apply() -> None:
            for procs in self.cgroup_procs:
                with open(procs, "w") as handle:  # noqa: PTH123 - minimal work after fork
                    handle.write(str(os.getpid()))
            os.setgroups([])
            if self.namespaces:
                syscalls.unshare(self.namespaces)
            for limit, soft, hard in self.rlimits:
                resource.setrlimit(limit, (soft, hard))
            if self.no_new_privs:
                syscalls.set_no_new_privs()

        return apply

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """The command to exec: QEMU itself, or QEMU as PID 1 of a new PID namespace.

        Either runs under ``prefix`` (``systemd-run --scope``) when the VM's group has one.

        Raises:
            EnvironmentFailure: a PID namespace is planned and util-linux's unshare is missing.
        """
        if not self.pid_namespace:
            return [*self.prefix, *argv]
        unshare = shutil.which("unshare", path="/usr/bin:/bin")
        if unshare is None:
            raise EnvironmentFailure(
                "unshare (util-linux) is missing, which the pid namespace layer needs: "
                "apt-get install util-linux, or turn the namespaces layer off"
            )
        return [*self.prefix, unshare, "--pid", "--fork", "--kill-child", "--", *argv]


def _limit(value: int) -> int:
    return resource.RLIM_INFINITY if value == UNLIMITED else value


#: The kernel's ceiling on RLIMIT_NOFILE (sysctl fs.nr_open).
NR_OPEN = Path("/proc/sys/fs/nr_open")


def _check_nofile(plan: LayerPlan, nr_open: Path) -> None:
    """Refuse a descriptor limit the kernel would refuse between fork and exec.

    There, the failure would only say that the pre-exec function raised.
    """
    wanted = max(plan.rlimits.get("nofile", (0, 0)))
    try:
        ceiling = int(nr_open.read_text())
    except (OSError, ValueError):
        return  # not knowable here: setrlimit still refuses it before QEMU starts
    if wanted > ceiling:
        raise InvalidInput(
            f"layers.nofile = {wanted} is above this kernel's ceiling on open files "
            f"(fs.nr_open = {ceiling}): lower it in the settings file, or raise fs.nr_open"
        )


def jail_for(plan: LayerPlan, cgroup: VmCgroup | None, *, nr_open: Path = NR_OPEN) -> Jail:
    """The jail that applies ``plan`` (the launcher's default; tests may pass another).

    Raises:
        InvalidInput: the descriptor limit is above what the kernel allows.
    """
    _check_nofile(plan, nr_open)
    flags = 0
    for name in plan.namespaces:
        flags |= _NAMESPACE_FLAGS.get(name, 0)
    return Jail(
        namespaces=flags,
        rlimits=tuple(
            (RLIMITS[name], _limit(soft), _limit(hard))
            for name, (soft, hard) in plan.rlimits.items()
        ),
        no_new_privs=plan.no_new_privs,
        cgroup_procs=tuple(cgroup.procs_files()) if cgroup is not None else (),
        pid_namespace="pid" in plan.namespaces,
        prefix=tuple(cgroup.command_prefix()) if cgroup is not None else (),
    )
