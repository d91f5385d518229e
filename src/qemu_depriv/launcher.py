"""Launch, verify, resume and stop device models (DESIGN.md, "Launch, verify, tear down").

Launch: lease the domid and name; resolve the account; lease its uid; probe QEMU; build the
argv; create the run directory (owned by the VM's uid) and an empty chroot; spawn QEMU paused
in new mount and IPC namespaces with zeroed rlimits; finish a QMP handshake; read /proc and
compare every field with the plan; only then ``cont``.  Any failure after the lease kills what
was started, removes what was created and releases the lease.

Stop: QMP ``quit``, wait, SIGKILL through a pidfd, kill every process of the uid with the
reaper, check that no live process of the uid is left, remove the directories, release the
lease.  Nothing the VM can write (its run directory) decides whom to kill: the pid and its
start time come from the state store.

Device models that exit on their own (guest poweroff, a crash, a kill from outside) are
cleaned up by :meth:`Launcher.reconcile`, which ``launch`` and ``stop`` run first; ``list``
shows such VMs as ``exited`` until then.  See docs/qemu-deprivilege.md for why reconciliation
rather than a per-VM monitor process.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, QemuDeprivError
from qemu_depriv.inspect import Snapshot, snapshot, start_time
from qemu_depriv.jail import Jail
from qemu_depriv.nss import AccountLookup
from qemu_depriv.policy import Decision, Request, Tier, resolve
from qemu_depriv.process import BASE_ENV, spawn
from qemu_depriv.procs import is_alive, live_pids_of_uid
from qemu_depriv.qemu.argv import VmPaths, standalone_argv, standalone_warnings
from qemu_depriv.qemu.caps import CapsProbe
from qemu_depriv.qemu.qmp import QmpConnection
from qemu_depriv.qemu.xen import device_model_need, xen_argv, xen_pv_argv
from qemu_depriv.reaper import kill_uid, signal_pid
from qemu_depriv.settings import Settings
from qemu_depriv.state import StateStore, VmRecord, current_owner

log = logging.getLogger(__name__)

MODES = ("standalone", "xen")
#: sun_path is 108 bytes with its terminating NUL.
SOCKET_PATH_MAX = 107
_POLL = 0.01


@dataclass(frozen=True)
class LaunchRequest:
    """What ``launch`` was asked for."""

    config: DomainConfig
    domid: int | None = None
    mode: str = "standalone"
    qemu: str | None = None
    accel: str = "tcg"
    restrict: bool | None = None
    start_timeout: float = 30.0


@dataclass(frozen=True)
class Plan:
    """A launch worked out but not started: what ``--dry-run`` prints."""

    mode: str
    domid: int
    decision: Decision
    argv: list[str]
    paths: VmPaths
    warnings: tuple[str, ...] = ()


def verify(snap: Snapshot, decision: Decision, chroot: Path) -> dict[str, Any]:
    """Compare what /proc shows with the plan (pure).

    Raises:
        EnvironmentFailure: any field differs; the message lists every difference.
    """
    status = snap.status
    want_caps = decision.tier == Tier.ROOT
    observed = {
        "uids": list(status.uids),
        "gids": list(status.gids),
        "groups": sorted(status.groups),
        "cap_eff": f"{status.cap_eff:016x}",
        "root": snap.root,
    }
    expected = {
        "uids": [decision.uid] * 4,
        "gids": [decision.gid] * 4,
        "groups": sorted(set(decision.groups)),
        "cap_eff": None if want_caps else f"{0:016x}",
        "root": str(chroot),
    }
    wrong = [
        f"{key}: expected {expected[key]}, /proc shows {observed[key]}"
        for key in observed
        if expected[key] is not None and observed[key] != expected[key]
    ]
    if wrong:
        raise EnvironmentFailure(
            f"QEMU pid {snap.pid} does not run as planned ({'; '.join(wrong)}): killed it"
        )
    return {"pid": snap.pid, "observed": observed, "ok": True}


@dataclass
class Launcher:
    """Starts and stops device models; every dependency is passed in.

    Args:
        settings: prefix, restrict and the state directory.
        lookup: account lookups (real NSS in production).
        store: the state store.
        probe: the QEMU capability probe.
        kvm_works: whether KVM is usable here (asked only when KVM is requested).
    """

    settings: Settings
    lookup: AccountLookup
    store: StateStore
    probe: CapsProbe
    kvm_works: Callable[[], bool] = field(default=lambda: False)

    # -- paths ------------------------------------------------------------------------------

    def paths(self, domid: int) -> VmPaths:
        """Where VM ``domid``'s files live under the state directory."""
        base = self.settings.state_dir
        return VmPaths(run_dir=base / "vms" / str(domid), chroot=base / "chroot" / str(domid))

    # -- planning (no side effects but reading the store) -----------------------------------

    def plan(self, request: LaunchRequest, domid: int) -> Plan:
        """Resolve and build the argv for ``request`` at ``domid``, starting nothing.

        Raises:
            InvalidInput, PolicyRefusal, EnvironmentFailure: as resolution, the probe and the
                argv builders do.
        """
        config = request.config
        restrict = self._restrict(request)
        if request.mode == "xen" and config.device_model_version == "qemu-xen-traditional":
            raise InvalidInput(
                f"{config.source}: device_model_version qemu-xen-traditional is not supported: "
                "it cannot drop privileges; use qemu-xen"
            )
        if not self.device_model_need(request)[0]:
            raise InvalidInput(f"{config.source}: {self.device_model_need(request)[1]}")
        decision = resolve(
            Request(
                domid=domid,
                name=config.name,
                user=config.device_model_user,
                restrict=restrict,
                prefix=self.settings.prefix,
            ),
            self.lookup,
        )
        paths = self.paths(domid)
        if len(str(paths.qmp)) > SOCKET_PATH_MAX:
            raise InvalidInput(
                f"state directory {self.settings.state_dir} is too long for a unix socket "
                f"path ({len(str(paths.qmp))} > {SOCKET_PATH_MAX} bytes): use a shorter --state-dir"
            )
        caps = self.probe.probe(self._binary(request))
        warnings: list[str] = []
        if request.mode == "xen":
            build = xen_argv if config.type == "hvm" else xen_pv_argv
            argv = build(caps, config, decision, paths, domid=domid, restrict=restrict)
        else:
            accel = config.accel or request.accel
            if accel == "kvm" and not self.kvm_works():
                raise EnvironmentFailure(
                    "KVM was asked for but does not work here (/dev/kvm missing, or the CPU "
                    "lacks virtualisation): use --accel tcg"
                )
            argv = standalone_argv(caps, config, decision, paths, accel=accel, restrict=restrict)
            warnings = standalone_warnings(config)
        return Plan(request.mode, domid, decision, argv, paths, tuple(warnings))

    @staticmethod
    def device_model_need(request: LaunchRequest) -> tuple[bool, str]:
        """Whether the domain needs a device model in this mode, and why (or why not)."""
        if request.mode == "standalone":
            return True, "a standalone VM is QEMU itself"
        return device_model_need(request.config)

    def free_domid(self) -> int:
        """The domid a launch without ``--domid`` would get now (for ``--dry-run``)."""
        taken = {vm.domid for vm in self.store.all()} if self.store.exists() else set()
        return next(d for d in range(1, 32752) if d not in taken)

    def _restrict(self, request: LaunchRequest) -> bool:
        if request.restrict is not None:
            return request.restrict
        if request.config.dm_restrict is not None:
            return request.config.dm_restrict
        return self.settings.restrict

    def _binary(self, request: LaunchRequest) -> str:
        name = (
            request.qemu
            or request.config.device_model_override
            or ("qemu-system-i386" if request.mode == "xen" else "qemu-system-x86_64")
        )
        if "/" in name:
            return name
        found = shutil.which(name, path=BASE_ENV["PATH"])
        if found is None:
            raise EnvironmentFailure(
                f"QEMU binary {name} not found in {BASE_ENV['PATH']}: install "
                "qemu-system-x86 or pass --qemu PATH"
            )
        return found

    # -- launch -----------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> VmRecord:
        """Start, verify and resume a device model; return its record.

        Raises:
            InvalidInput, PolicyRefusal, EnvironmentFailure: nothing is left behind.
        """
        self.reconcile()
        domid = self.store.reserve(
            request.config.name, request.domid, mode=request.mode, owner=current_owner()
        )
        vlog = log.getChild(request.config.name)
        process: Any = None
        plan: Plan | None = None
        try:
            plan = self.plan(request, domid)
            decision = plan.decision
            busy = bool(live_pids_of_uid(decision.uid)) if decision.tier != Tier.ROOT else False
            self.store.assign(domid, decision, uid_busy=busy)
            log_fd = self._prepare_dirs(plan)
            try:
                process = spawn(
                    plan.argv, env=BASE_ENV, stderr_fd=log_fd, before_exec=Jail().before_exec()
                )
                started = start_time(process.pid)
                if started is None:
                    raise EnvironmentFailure(
                        f"QEMU exited at once: {self._qemu_said(log_fd, process)}"
                    )
                self.store.set_process(domid, process.pid, started)
                vlog.info("started QEMU pid %d, paused", process.pid)
                verification = self._verify_and_resume(plan, process, log_fd, request)
            finally:
                os.close(log_fd)
            self.store.set_running(domid, verification)
            vlog.info("verified and resumed QEMU pid %d", process.pid)
        except BaseException:
            self._abort(domid, plan, process)
            raise
        record = self.store.get(domid)
        assert record is not None  # noqa: S101 - we hold the lease
        return record

    def _prepare_dirs(self, plan: Plan) -> int:
        decision, paths = plan.decision, plan.paths
        for directory in (paths.run_dir.parent, paths.chroot.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (paths.run_dir, paths.chroot):
            if directory.exists():
                self._remove_dir(directory)
        paths.run_dir.mkdir(mode=0o700)
        paths.chroot.mkdir(mode=0o000)
        paths.chroot.chmod(0o000)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        log_fd = os.open(paths.log, flags, 0o600)
        os.chown(paths.run_dir, decision.uid, decision.gid)
        return log_fd

    def _verify_and_resume(
        self, plan: Plan, process: Any, log_fd: int, request: LaunchRequest
    ) -> dict[str, Any]:
        with QmpConnection(plan.paths.qmp) as qmp:
            try:
                qmp.connect(timeout=request.start_timeout, alive=lambda: process.poll() is None)
            except EnvironmentFailure as exc:
                raise EnvironmentFailure(
                    f"QEMU for {request.config.name!r} failed to start ({exc.message}): "
                    f"{self._qemu_said(log_fd, process)}"
                ) from exc
            snap = snapshot(process.pid)
            if snap is None:
                raise EnvironmentFailure(
                    f"QEMU exited during verification: {self._qemu_said(log_fd, process)}"
                )
            verification = verify(snap, plan.decision, plan.paths.chroot)
            qmp.execute("cont")
        return verification

    @staticmethod
    def _qemu_said(log_fd: int, process: Any) -> str:
        code = process.poll()
        text = os.pread(log_fd, 4096, 0).decode("utf-8", "replace").strip()
        status = "still running" if code is None else f"exit {code}"
        return f"QEMU {status}, stderr: {' | '.join(text.splitlines()[-5:]) or '(empty)'}"

    def _abort(self, domid: int, plan: Plan | None, process: Any) -> None:
        """Undo a launch that failed at any step after the lease."""
        try:
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            record = self.store.get(domid)
            if record is not None and record.uid is not None and record.kill_by_uid:
                self._kill_uid(record.uid)
            if plan is not None:
                self._remove_vm_dirs(plan.paths)
        except (OSError, QemuDeprivError):
            # Keep the lease: the uid must not go to another VM while in doubt.
            log.exception("cleaning up after a failed launch of domid %d", domid)
        else:
            self.store.release(domid)

    # -- stop -------------------------------------------------------------------------------

    def stop(self, key: str, *, timeout: float = 10.0) -> VmRecord:
        """Tear down the VM named ``key`` (or with domid ``key``) until nothing of it is left.

        Raises:
            InvalidInput: the store knows no such VM.
            EnvironmentFailure: something of the VM survived; the lease is kept.
        """
        record = self.store.find(key)
        if record is None:
            raise InvalidInput(
                f"no VM named or with domid {key!r} in the state store "
                f"{self.settings.state_dir}: see 'qemu-depriv list'"
            )
        self._teardown(record, timeout=timeout)
        return record

    def _teardown(self, record: VmRecord, *, timeout: float) -> None:
        vlog = log.getChild(record.name)
        if (process := _process(record)) is not None:
            pid, started = process
            if is_alive(pid, started):
                self._quit(record, timeout=timeout)
            if is_alive(pid, started):
                vlog.info("QEMU pid %d ignored quit for %s s: SIGKILL", pid, timeout)
                signal_pid(pid, started, signal.SIGKILL)
                _wait_until(lambda: not is_alive(pid, started), 5.0)
            if is_alive(pid, started):
                raise EnvironmentFailure(f"QEMU pid {pid} of {record.name!r} survived SIGKILL")
        if record.uid is not None and record.kill_by_uid:
            self._kill_uid(record.uid)
            left = live_pids_of_uid(record.uid)
            if left:
                raise EnvironmentFailure(
                    f"processes of uid {record.uid} survived the teardown of {record.name!r}: "
                    f"{left[:10]}; the lease is kept so that the uid goes to no other VM"
                )
        self._remove_vm_dirs(self.paths(record.domid))
        self.store.release(record.domid)
        vlog.info("stopped; nothing of uid %s is left", record.uid)

    def _quit(self, record: VmRecord, *, timeout: float) -> None:
        process = _process(record)
        if process is None:
            return
        pid, started = process
        try:
            with QmpConnection(self.paths(record.domid).qmp) as qmp:
                qmp.connect(timeout=min(timeout, 2.0), alive=lambda: is_alive(pid, started))
                qmp.execute("quit", timeout=min(timeout, 2.0))
        except EnvironmentFailure as exc:
            # QEMU may close the socket before it answers quit: wait all the same.
            log.debug("QMP quit to %s: %s", record.name, exc.message)
        _wait_until(lambda: not is_alive(pid, started), timeout)

    def _kill_uid(self, uid: int) -> None:
        kill_uid(uid, self._reaper_uid(uid))

    def _reaper_uid(self, vm_uid: int) -> int:
        """The reaper account's uid, else the range base uid, else the VM's own uid.

        A candidate that owns live processes is passed over: the reaper would kill them.
        """
        prefix = self.settings.prefix
        for name in (f"{prefix}-reaper", f"{prefix}-range-base", f"{prefix}-base"):
            account = self.lookup.user_by_name(name)
            if (
                account is not None
                and account.uid not in (0, vm_uid)
                and not live_pids_of_uid(account.uid)
            ):
                return account.uid
        log.warning(
            "no %s-reaper or range base account owns no processes: killing uid %d with itself "
            "as the real uid, which its processes could resist; create %s-reaper",
            prefix,
            vm_uid,
            prefix,
        )
        return vm_uid

    def _remove_vm_dirs(self, paths: VmPaths) -> None:
        for directory in (paths.run_dir, paths.chroot):
            if directory.exists():
                self._remove_dir(directory)

    def _remove_dir(self, directory: Path) -> None:
        if directory.parent.name == "chroot":
            try:
                directory.rmdir()
            except OSError as exc:
                if exc.errno != errno.ENOTEMPTY:
                    raise
                self._quarantine(directory)
            return
        shutil.rmtree(directory)

    def _quarantine(self, directory: Path) -> None:
        target = self.settings.state_dir / "quarantine" / f"{directory.name}-{int(time.time())}"
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.rename(target)
        log.warning(
            "chroot %s was not empty: moved to %s as evidence (the device model wrote to it)",
            directory,
            target,
        )

    # -- reconciliation ---------------------------------------------------------------------

    def status(self, record: VmRecord) -> str:
        """``running``, ``starting``, ``exited`` (QEMU gone) or ``stale`` (launcher gone)."""
        if record.state == "running":
            process = _process(record)
            return "running" if process is not None and is_alive(*process) else "exited"
        return "starting" if is_alive(record.owner_pid, record.owner_start) else "stale"

    def reconcile(self) -> list[VmRecord]:
        """Tear down every VM whose QEMU exited or whose launcher died mid-launch."""
        cleaned = []
        for record in self.store.all():
            if self.status(record) in ("exited", "stale"):
                log.info("cleaning up %s (%s)", record.name, self.status(record))
                self._teardown(record, timeout=1.0)
                cleaned.append(record)
        return cleaned


def _process(record: VmRecord) -> tuple[int, int] | None:
    """The recorded QEMU (pid, start time), or None before it was spawned."""
    if record.pid is None or record.start_time is None:
        return None
    return record.pid, record.start_time


def _wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL)
    return True


def kvm_works() -> bool:
    """Whether /dev/kvm opens and answers KVM_GET_API_VERSION with 12 and creates a VM."""
    import fcntl  # noqa: PLC0415 - only needed when KVM is asked for

    kvm_get_api_version, kvm_create_vm = 0xAE00, 0xAE01
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if fcntl.ioctl(fd, kvm_get_api_version, 0) != 12:
            return False
        os.close(fcntl.ioctl(fd, kvm_create_vm, 0))
    except OSError:
        return False
    else:
        return True
    finally:
        os.close(fd)
