"""Tearing a device model down until nothing of it is left, for every caller.

``stop``, reconciliation and a launch that failed all end here, and nowhere else.  In order:
QMP ``quit`` and a wait; SIGKILL through a pidfd (the pid and its start time come from the
state store, never from a file the VM could rewrite); the VM's cgroup killed, which
reaches every member whatever its uid; every process of the VM's uid killed by the reaper;
then a check that no live process of the uid (or, for the shared tier, the QEMU process) is
left.  Only then are the run directory, the chroot and the cgroup removed and the lease
released.  When anything survives, the lease is kept, so that the uid goes to no other VM.

A chroot found non-empty is evidence that the device model wrote to it: it is moved to the
quarantine directory and reported, not deleted.

Device models that exit on their own (guest poweroff, a crash, a kill from outside) are
cleaned up by :meth:`Teardown.reconcile`, which ``launch`` and ``stop`` run first; ``list``
shows such VMs as ``exited`` until then.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qemu_depriv.errors import AccountLookupError, EnvironmentFailure, InvalidInput
from qemu_depriv.host.processes import is_alive, signal_pid, wait_until
from qemu_depriv.host.procfs import live_pids_of_uid
from qemu_depriv.isolation.cgroups import CgroupHost, VmCgroup
from qemu_depriv.isolation.scopes import vm_group
from qemu_depriv.qemu.qmp import QmpConnection
from qemu_depriv.settings import Settings
from qemu_depriv.vms.paths import VmPaths, vm_paths
from qemu_depriv.vms.reaper import kill_uid
from qemu_depriv.vms.store import (
    LeaseState,
    StateStore,
    VmRecord,
    VmStatus,
    current_owner,
)
from qemu_depriv.vms.taps import remove_leftover_taps

if TYPE_CHECKING:  # NSS (ctypes, nsswitch.conf) loads only when the reaper needs an account
    from qemu_depriv.accounts.nss import Account, AccountLookup, Group

log = logging.getLogger(__name__)
#: (uid_t)-2: no account's, and ownerless unless root hands it to a process.
LAST_RESORT_REAPER = 2**32 - 2


@dataclass
class Teardown:
    """Stops VMs.

    Args:
        settings: the prefix (for the reaper account) and the state directory.
        lookup: account lookups, for the reaper's uid.
        store: the state store.
        cgroup_host: where the cgroup controllers live (asked only for a VM with a cgroup).
        live_pids: the live processes of a uid; the check that nothing survived asks it.
    """

    settings: Settings
    lookup: AccountLookup
    store: StateStore
    cgroup_host: Callable[[], CgroupHost]
    live_pids: Callable[[int], list[int]] = field(default=live_pids_of_uid)

    def cgroup_of(self, record: VmRecord) -> VmCgroup | None:
        """The VM's cgroup (or systemd scope), when its plan had one."""
        plan = record.layers.cgroup if record.layers is not None else None
        return vm_group(self.cgroup_host(), plan) if plan else None

    def run(self, record: VmRecord, *, timeout: float) -> list[str]:
        """Tear ``record``'s VM down; return warnings (a quarantined chroot).

        The caller holds the row (it claimed it as ``stopping``, or it is the launcher whose
        launch failed), so nobody else acts on this VM meanwhile.

        Raises:
            EnvironmentFailure: something of the VM survived; the lease is kept.
        """
        vlog = log.getChild(record.name)
        process = record.process
        if process is not None and is_alive(*process):
            self._quit(record, process, timeout=timeout)
            if is_alive(*process):
                vlog.info("QEMU pid %d ignored quit for %s s: SIGKILL", process[0], timeout)
                signal_pid(*process, signal.SIGKILL)
                wait_until(lambda: not is_alive(*process), 5.0)
        cgroup = self.cgroup_of(record)
        if cgroup is not None:
            cgroup.kill()
        # With no live process of the uid left, none can fork a new one: the reaper (a fork,
        # a host-wide lock and two more scans of /proc) is needed only when one is found.
        if record.uid is not None and record.kill_by_uid and self.live_pids(record.uid):
            self.kill_uid(record.uid)
            if left := self.live_pids(record.uid):
                raise EnvironmentFailure(
                    f"processes of uid {record.uid} survived the teardown of {record.name!r}: "
                    f"{left[:10]}; the lease is kept so that the uid goes to no other VM"
                )
        if process is not None and is_alive(*process):
            raise EnvironmentFailure(f"QEMU pid {process[0]} of {record.name!r} survived SIGKILL")
        if taps_left := remove_leftover_taps(record.taps or []):
            raise EnvironmentFailure(
                f"tap(s) {', '.join(taps_left)} of {record.name!r} outlived QEMU and could not be "
                f"removed: see 'ip link show {taps_left[0]}'; the lease is kept"
            )
        warnings = self.remove_dirs(vm_paths(self.settings.state_dir, record.domid))
        if cgroup is not None:
            cgroup.remove()
        self.store.release(record.domid)
        vlog.info("stopped; nothing of uid %s is left", record.uid)
        return warnings

    def stop(
        self, key: str, *, timeout: float = 10.0, wait: float = 60.0
    ) -> tuple[VmRecord, list[str]]:
        """Tear down the VM named ``key`` (or with domid ``key``); return it and any warnings.

        A VM that another live process is starting or stopping is waited for (``wait``
        seconds at most); one that another stop removed meanwhile counts as stopped.

        Raises:
            InvalidInput: the store knows no such VM.
            EnvironmentFailure: something of the VM survived (the lease is kept), or the
                other process did not finish within ``wait`` seconds.
        """
        record = self.store.find(key) if self.store.exists() else None
        if record is None:
            raise InvalidInput(
                f"no VM named or with domid {key!r} in the state store "
                f"{self.settings.state_dir}: see 'qemu-depriv list'"
            )
        deadline = time.monotonic() + wait
        while True:
            current = self.store.get(record.domid)
            if current is None or current.name != record.name:
                return record, []  # another stop finished it
            status = current.status()
            if status in (VmStatus.STARTING, VmStatus.STOPPING):
                if time.monotonic() > deadline:
                    doing = "started" if status == VmStatus.STARTING else "stopped"
                    raise EnvironmentFailure(
                        f"{record.name} is still being {doing} by pid {current.owner_pid} "
                        f"after {wait} s: try again"
                    )
                time.sleep(0.05)
                continue
            claimed = self.store.claim(current, state=LeaseState.STOPPING, owner=current_owner())
            if claimed is not None:
                return claimed, self.run(claimed, timeout=timeout)

    def reconcile(self) -> list[VmRecord]:
        """Tear down every VM whose QEMU exited or whose launcher or stopper died mid-way."""
        cleaned = []
        for record in self.store.ended():
            status = record.status()  # again: another process may have acted meanwhile
            if status not in (VmStatus.EXITED, VmStatus.STALE):
                continue
            claimed = self.store.claim(record, state=LeaseState.STOPPING, owner=current_owner())
            if claimed is None:
                continue  # another process is on it
            log.info("cleaning up %s (%s)", record.name, status)
            self.run(claimed, timeout=1.0)
            cleaned.append(record)
        return cleaned

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
            EnvironmentFailure: see :func:`qemu_depriv.vms.reaper.kill_uid`.
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


class _HostLookup:
    """This host's account lookups, set up on first use.

    A teardown asks for an account only to pick the reaper's, and only when something of the
    VM's uid outlived QEMU: most stops never load NSS (ctypes) or read nsswitch.conf.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lookup: AccountLookup | None = None

    def _host(self) -> AccountLookup:
        if self._lookup is None:
            from qemu_depriv.accounts.verified import system_lookup  # noqa: PLC0415

            settings = self._settings
            self._lookup = system_lookup(settings.lookup_timeout, settings.sources_without_accounts)
        return self._lookup

    def user_by_name(self, name: str) -> Account | None:
        """As :meth:`AccountLookup.user_by_name`."""
        return self._host().user_by_name(name)

    def user_by_uid(self, uid: int) -> Account | None:
        """As :meth:`AccountLookup.user_by_uid`."""
        return self._host().user_by_uid(uid)

    def group_by_gid(self, gid: int) -> Group | None:
        """As :meth:`AccountLookup.group_by_gid`."""
        return self._host().group_by_gid(gid)

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """As :meth:`AccountLookup.groups_of`."""
        return self._host().groups_of(name, gid)


def system_teardown(settings: Settings, *, lookup: AccountLookup | None = None) -> Teardown:
    """A teardown wired to this host: its NSS (for the reaper's account), the store, cgroups.

    What ``stop`` and ``recover`` use, without importing the launch machinery they never run;
    :func:`~qemu_depriv.vms.launcher.system_launcher` builds its own teardown with it.
    """
    if lookup is None:
        lookup = _HostLookup(settings)
    return Teardown(settings, lookup, StateStore.of(settings), functools.cache(CgroupHost.detect))
