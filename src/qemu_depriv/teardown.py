"""Tearing a device model down until nothing of it is left.

In order: QMP ``quit`` and a wait; SIGKILL through a pidfd (the pid and its start time come
from the state store, never from a file the VM could rewrite); the VM's cgroup killed, which
reaches every member whatever its uid; every process of the VM's uid killed by the reaper;
then a check that no live process of the uid (or, for the shared tier, the QEMU process) is
left.  Only then are the run directory, the chroot and the cgroup removed and the lease
released.  When anything survives, the lease is kept, so that the uid goes to no other VM.

A chroot found non-empty is evidence that the device model wrote to it: it is moved to the
quarantine directory and reported, not deleted.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.cgroups import CgroupHost, VmCgroup
from qemu_depriv.errors import AccountLookupError, EnvironmentFailure
from qemu_depriv.nss import AccountLookup
from qemu_depriv.procs import is_alive, live_pids_of_uid
from qemu_depriv.qemu.argv import VmPaths, vm_paths
from qemu_depriv.qemu.qmp import QmpConnection
from qemu_depriv.reaper import kill_uid, signal_pid
from qemu_depriv.settings import Settings
from qemu_depriv.state import StateStore, VmRecord

log = logging.getLogger(__name__)
_POLL = 0.01
#: (uid_t)-2: no account's, and ownerless unless root hands it to a process.
LAST_RESORT_REAPER = 2**32 - 2


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held.

    The first polls come 1 ms apart, then 10 ms: most waits here end within milliseconds.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, _POLL)
    return True


def recorded_process(record: VmRecord) -> tuple[int, int] | None:
    """The recorded QEMU (pid, start time), or None before it was spawned."""
    if record.pid is None or record.start_time is None:
        return None
    return record.pid, record.start_time


@dataclass
class Teardown:
    """Stops VMs; shared by ``stop``, reconciliation and a launch that failed."""

    settings: Settings
    lookup: AccountLookup
    store: StateStore
    cgroup_host: Callable[[], CgroupHost]

    def cgroup_of(self, record: VmRecord) -> VmCgroup | None:
        """The VM's cgroup, when its plan had one."""
        plan = (record.layers or {}).get("cgroup")
        return VmCgroup(self.cgroup_host(), plan["name"]) if plan else None

    def run(self, record: VmRecord, *, timeout: float) -> list[str]:
        """Tear ``record``'s VM down; return warnings (a quarantined chroot).

        The caller holds the row (it claimed it as ``stopping``, or it is the launcher whose
        launch failed), so nobody else acts on this VM meanwhile.

        Raises:
            EnvironmentFailure: something of the VM survived; the lease is kept.
        """
        vlog = log.getChild(record.name)
        process = recorded_process(record)
        if process is not None and is_alive(*process):
            self._quit(record, process, timeout=timeout)
            if is_alive(*process):
                vlog.info("QEMU pid %d ignored quit for %s s: SIGKILL", process[0], timeout)
                signal_pid(*process, signal.SIGKILL)
                wait_until(lambda: not is_alive(*process), 5.0)
        cgroup = self.cgroup_of(record)
        if cgroup is not None:
            cgroup.kill()
        if record.uid is not None and record.kill_by_uid:
            self.kill_uid(record.uid)
            if left := live_pids_of_uid(record.uid):
                raise EnvironmentFailure(
                    f"processes of uid {record.uid} survived the teardown of {record.name!r}: "
                    f"{left[:10]}; the lease is kept so that the uid goes to no other VM"
                )
        if process is not None and is_alive(*process):
            raise EnvironmentFailure(f"QEMU pid {process[0]} of {record.name!r} survived SIGKILL")
        warnings = self.remove_dirs(vm_paths(self.settings.state_dir, record.domid))
        if cgroup is not None:
            cgroup.remove()
        self.store.release(record.domid)
        vlog.info("stopped; nothing of uid %s is left", record.uid)
        return warnings

    def _quit(self, record: VmRecord, process: tuple[int, int], *, timeout: float) -> None:
        paths = vm_paths(self.settings.state_dir, record.domid)
        try:
            with QmpConnection(paths.qmp) as qmp:
                qmp.connect(timeout=min(timeout, 2.0), alive=lambda: is_alive(*process))
                qmp.execute("quit", timeout=min(timeout, 2.0))
        except EnvironmentFailure as exc:
            # QEMU may close the socket before it answers quit: wait all the same.
            log.debug("QMP quit to %s: %s", record.name, exc.message)
        wait_until(lambda: not is_alive(*process), timeout)

    def kill_uid(self, uid: int) -> None:
        """Kill every process of ``uid`` with the reaper.

        Raises:
            EnvironmentFailure: see :func:`qemu_depriv.reaper.kill_uid`.
        """
        kill_uid(uid, self._reaper_uid)

    def _reaper_uid(self, vm_uid: int) -> int:
        """The reaper account's uid, else the range base uid, else the overflow uid.

        Chosen under the reapers' host-wide lock.  A candidate that owns live processes is
        passed over: the reaper would kill them; so is one whose lookup fails.  The last
        resort, (uid_t)-2, is no account's and can own a process only if root gives it one.
        """
        prefix = self.settings.prefix
        for name in (f"{prefix}-reaper", f"{prefix}-range-base", f"{prefix}-base"):
            try:
                account = self.lookup.user_by_name(name)
            except AccountLookupError as exc:
                # A teardown must not stop at a directory outage: a weaker reaper is as safe.
                log.warning("reaper candidate %s: %s", name, exc.message)
                continue
            if (
                account is not None
                and account.uid not in (0, vm_uid)
                and not live_pids_of_uid(account.uid)
            ):
                return account.uid
        if not live_pids_of_uid(LAST_RESORT_REAPER):
            log.warning(
                "no %s-reaper or range base account is usable: reaping with uid %d; "
                "create one with 'qemu-depriv provision reaper'",
                prefix,
                LAST_RESORT_REAPER,
            )
            return LAST_RESORT_REAPER
        raise EnvironmentFailure(
            f"no usable reaper uid to kill the processes of uid {vm_uid}: create one with "
            "'qemu-depriv provision reaper'"
        )

    def remove_dirs(self, paths: VmPaths) -> list[str]:
        """Remove the run directory and the chroot; return warnings for a quarantined chroot."""
        warnings = []
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(paths.run_dir)
        try:
            paths.chroot.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.ENOTEMPTY:
                raise
            warnings.append(self._quarantine(paths.chroot))
        return warnings

    def _quarantine(self, directory: Path) -> str:
        target = self.settings.state_dir / "quarantine" / f"{directory.name}-{int(time.time())}"
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.rename(target)
        message = (
            f"chroot {directory} was not empty: the device model wrote to it; moved to {target} "
            "as evidence"
        )
        log.warning("%s", message)
        return message
