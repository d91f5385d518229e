"""``recover``: after a crash, leave every VM either verified and running, or gone.

Leases whose QEMU exited or whose launcher died mid-launch are torn down as ``stop`` would
(:meth:`qemu_depriv.vms.teardown.Teardown.reconcile`; ``launch`` and ``stop`` do that first
too).
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

from qemu_depriv.host.processes import has_exited, signal_pid, wait_until
from qemu_depriv.host.procfs import identity, qemu_pids
from qemu_depriv.vms.paths import claimed_domid, vm_paths
from qemu_depriv.vms.teardown import Teardown

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


def orphan_qemus(state_dir: Path, leased_pids: set[int]) -> list[tuple[int, int, str, int]]:
    """QEMU processes naming a run directory of ``state_dir`` but holding no lease.

    Returns (pid, start time, domid as written, effective uid) for each, all read of one
    process: a pid reused meanwhile never lends its uid or start time to the orphan's claim.
    """
    found = []
    for pid in qemu_pids():
        if pid in leased_pids or (read := identity(pid)) is None:
            continue
        status, started, words = read
        domid = claimed_domid(state_dir, words)
        if domid is not None:
            found.append((pid, started, domid, status.uids[1]))
    return found


def _held_uids(teardown: Teardown) -> set[int]:
    return {lease.uid for lease in teardown.store.leases() if lease.uid is not None}


def recover(teardown: Teardown) -> RecoveryReport:
    """Reconcile, then kill orphan QEMUs and remove directories that no lease holds."""
    report = RecoveryReport(torn_down=[r.name for r in teardown.reconcile()])
    leases = teardown.store.leases()  # pids and domids only: no record's JSON decoded
    leased = {lease.pid for lease in leases if lease.pid is not None}
    state_dir = teardown.settings.state_dir
    for pid, started, domid, uid in orphan_qemus(state_dir, leased):
        log.warning("killing orphan QEMU pid %d (domid %s, no lease)", pid, domid)
        signal_pid(pid, started, signal.SIGKILL)
        wait_until(partial(has_exited, pid, started), 5.0)
        report.orphans_killed.append(pid)
        if uid == 0:  # root is never killed by uid
            continue
        # What it forked may still run as its uid, even if it exited before the kill.  Once
        # nothing of the uid is left alive, a launch may take it, and the processes of the uid
        # are then that VM's: the leases are read now, and held still until the kill is done.
        with teardown.store.locked():
            if teardown.live_pids(uid) and uid not in _held_uids(teardown):
                teardown.kill_uid(uid)
    held = {str(lease.domid) for lease in leases}
    for sub in ("vms", "chroot"):
        directory = state_dir / sub
        if not directory.is_dir():
            continue
        for entry in directory.iterdir():
            if entry.name not in held and entry.name.isdigit():
                report.warnings += teardown.remove_dirs(vm_paths(state_dir, int(entry.name)))
                report.directories_removed.append(str(entry))
    return report
