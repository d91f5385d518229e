"""``recover``: after a crash, leave every VM either verified and running, or gone.

Leases whose QEMU exited or whose launcher died mid-launch are torn down as ``stop`` would
(:meth:`qemu_depriv.launcher.Launcher.reconcile`; ``launch`` and ``stop`` do that first too).
Then two things a crash could leave without a lease are cleaned up: QEMU processes that name
one of this state directory's run directories on their command line (killed by pid, and every
process of their uid with them unless another lease holds that uid), and run directories or
chroots of domids that no lease holds (a written-to chroot is quarantined, as always).

Cgroups that no lease names are left alone: another qemu-depriv instance on the host (another
state directory) may own them.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from qemu_depriv.audit import qemu_pids
from qemu_depriv.inspect import read_status, start_time
from qemu_depriv.procs import has_exited
from qemu_depriv.qemu.argv import vm_paths
from qemu_depriv.reaper import signal_pid
from qemu_depriv.teardown import Teardown, wait_until

log = logging.getLogger(__name__)


@dataclass
class RecoveryReport:
    """What recovery did."""

    torn_down: list[str] = field(default_factory=list)
    orphans_killed: list[int] = field(default_factory=list)
    directories_removed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str] | list[int]]:
        """The JSON form."""
        return dict(self.__dict__)


def orphan_qemus(state_dir: Path, leased_pids: set[int]) -> list[tuple[int, int, str]]:
    """QEMU processes naming a run directory of ``state_dir`` but holding no lease.

    Returns (pid, start time, domid) for each.
    """
    marker = f"{state_dir}/vms/"
    found = []
    for pid in qemu_pids():
        if pid in leased_pids:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        started = start_time(pid)
        if marker in cmdline and started is not None:
            domid = cmdline.split(marker, 1)[1].split("/", 1)[0]
            found.append((pid, started, domid))
    return found


def recover_orphans(teardown: Teardown, report: RecoveryReport) -> None:
    """Kill orphan QEMUs and remove directories that no lease holds."""
    records = teardown.store.all()
    leased = {r.pid for r in records if r.pid is not None}
    held_uids = {r.uid for r in records if r.uid is not None}
    for pid, started, domid in orphan_qemus(teardown.settings.state_dir, leased):
        status = read_status(pid)
        log.warning("killing orphan QEMU pid %d (domid %s, no lease)", pid, domid)
        signal_pid(pid, started, signal.SIGKILL)
        wait_until(partial(has_exited, pid, started), 5.0)
        report.orphans_killed.append(pid)
        uid = status.uids[1] if status is not None else 0
        if uid != 0 and uid not in held_uids:
            teardown.kill_uid(uid)
    held = {str(r.domid) for r in records}
    for sub in ("vms", "chroot"):
        directory = teardown.settings.state_dir / sub
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name not in held:
                report.warnings += teardown.remove_dirs(
                    vm_paths(teardown.settings.state_dir, int(entry.name))
                )
                report.directories_removed.append(str(entry))
