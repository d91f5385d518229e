"""Restrictions applied to the device model between fork and exec.

Supplementary groups are cleared: QEMU sets its own when it drops to an account, and a
root-tier QEMU must not inherit the launcher's (``sudo`` leaves group 0 among them).
``unshare(CLONE_NEWNS | CLONE_NEWIPC)``: QEMU's mounts and System V IPC objects are its own.
rlimits CORE, MSGQUEUE, LOCKS and MEMLOCK are 0: no core dump of guest memory, no POSIX message
queues, no file locks, no locked memory.  NPROC is never 0: it counts threads, and QEMU needs
them.

The function runs in the forked child of a single-threaded parent, so it may only call
async-signal-safe-enough code: no logging, no locks; an exception aborts the spawn.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass

from qemu_depriv import linux

#: Python's resource module does not export RLIMIT_LOCKS; this is its value on Linux.
RLIMIT_LOCKS = 10
ZERO_LIMITS = (
    resource.RLIMIT_CORE,
    resource.RLIMIT_MSGQUEUE,
    RLIMIT_LOCKS,
    resource.RLIMIT_MEMLOCK,
)


@dataclass(frozen=True)
class Jail:
    """The pre-exec restrictions of one device model."""

    namespaces: int = linux.CLONE_NEWNS | linux.CLONE_NEWIPC
    zero_limits: tuple[int, ...] = ZERO_LIMITS

    def before_exec(self) -> Callable[[], None]:
        """Return the function to run in the child before exec."""

        def apply() -> None:
            os.setgroups([])
            linux.unshare(self.namespaces)
            for limit in self.zero_limits:
                resource.setrlimit(limit, (0, 0))

        return apply
