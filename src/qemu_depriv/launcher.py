"""Launch, verify and resume device models; stop them (DESIGN.md, "Launch, verify, tear down").

Launch: lease the domid and name; resolve the account; lease its uid; probe QEMU; plan every
isolation layer (:mod:`qemu_depriv.layers`); build the argv; create the run directory (owned by
the VM's uid), the empty chroot and the cgroup; spawn QEMU paused inside them
(:mod:`qemu_depriv.jail`); finish a QMP handshake; read /proc and check every planned layer;
only then ``cont``.  Any failure after the lease kills what was started, removes what was
created and releases the lease.

Stop and reconciliation are :mod:`qemu_depriv.teardown`.  Device models that exit on their
own (guest poweroff, a crash, a kill from outside) are cleaned up by :meth:`Launcher.reconcile`,
which ``launch`` and ``stop`` run first; ``list`` shows such VMs as ``exited`` until then.  See
docs/qemu-deprivilege.md for why reconciliation rather than a per-VM monitor process.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.cgroups import CgroupHost, VmCgroup
from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.inspect import own_namespaces, snapshot, start_time
from qemu_depriv.jail import Jail, jail_for
from qemu_depriv.layers import LayerPlan, check_layers, plan_layers, verification
from qemu_depriv.nss import AccountLookup
from qemu_depriv.policy import Decision, Request, Tier, resolve
from qemu_depriv.process import BASE_ENV, spawn
from qemu_depriv.procs import is_alive, live_pids_of_uid
from qemu_depriv.qemu.argv import VmPaths, standalone_argv, standalone_warnings, vm_paths
from qemu_depriv.qemu.caps import CapsProbe
from qemu_depriv.qemu.qmp import QmpConnection
from qemu_depriv.qemu.xen import device_model_need, xen_argv, xen_pv_argv
from qemu_depriv.reaper import signal_pid
from qemu_depriv.settings import Settings
from qemu_depriv.state import StateStore, VmRecord, current_owner, smallest_free_domid
from qemu_depriv.teardown import Teardown, recorded_process, wait_until

if TYPE_CHECKING:  # recovery imports the audit: only `recover` needs it, not every launch
    from qemu_depriv.recovery import RecoveryReport

log = logging.getLogger(__name__)

#: sun_path is 108 bytes with its terminating NUL.
SOCKET_PATH_MAX = 107


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
    layers: LayerPlan
    warnings: tuple[str, ...] = ()


@dataclass
class Launcher:
    """Starts and stops device models; every dependency is passed in.

    Args:
        settings: prefix, restrict, the layers and the state directory.
        lookup: account lookups (real NSS in production).
        store: the state store.
        probe: the QEMU capability probe.
        kvm_works: whether KVM is usable here (asked only when KVM is requested).
        cgroup_host: where the cgroup controllers live (detected once, when first needed).
        jail_for: builds the pre-exec restrictions from the layer plan.
    """

    settings: Settings
    lookup: AccountLookup
    store: StateStore
    probe: CapsProbe
    kvm_works: Callable[[], bool] = field(default=lambda: False)
    cgroup_host: CgroupHost | None = None
    jail_for: Callable[[LayerPlan, VmCgroup | None], Jail] = jail_for

    def _cgroups(self) -> CgroupHost:
        if self.cgroup_host is None:
            self.cgroup_host = CgroupHost.detect()
        return self.cgroup_host

    @property
    def teardown(self) -> Teardown:
        """The teardown that ``stop`` and reconciliation use."""
        return Teardown(self.settings, self.lookup, self.store, self._cgroups)

    def paths(self, domid: int) -> VmPaths:
        """Where VM ``domid``'s files live under the state directory."""
        return vm_paths(self.settings.state_dir, domid)

    # -- planning (no side effects but reading the store) -----------------------------------

    def plan(self, request: LaunchRequest, domid: int) -> Plan:
        """Resolve, plan the layers and build the argv for ``request`` at ``domid``.

        Raises:
            InvalidInput, PolicyRefusal, EnvironmentFailure: as resolution, the probe and the
                argv builders do.
        """
        config, layers = request.config, self.settings.layers
        restrict = self._restrict(request)
        if request.mode == "xen" and config.device_model_version == "qemu-xen-traditional":
            raise InvalidInput(
                f"{config.source}: device_model_version qemu-xen-traditional is not supported: "
                "it cannot drop privileges; use qemu-xen"
            )
        needed, reason = self.device_model_need(request)
        if not needed:
            raise InvalidInput(f"{config.source}: {reason}")
        decision = resolve(
            Request(domid, config.name, config.device_model_user, restrict, self.settings.prefix),
            self.lookup,
        )
        paths = self.paths(domid)
        if len(str(paths.qmp)) > SOCKET_PATH_MAX:
            raise InvalidInput(
                f"state directory {self.settings.state_dir} is too long for a unix socket "
                f"path ({len(str(paths.qmp))} > {SOCKET_PATH_MAX} bytes): use a shorter --state-dir"
            )
        caps = self.probe.probe(self._binary(request))
        if layers.seccomp and not caps.sandbox:
            raise EnvironmentFailure(
                f"QEMU {caps.binary} has no -sandbox, which the seccomp layer needs: install a "
                "QEMU built with libseccomp, or turn the layer off ([layers] seccomp = false)"
            )
        switches = {"restrict": restrict, "chroot": layers.chroot, "seccomp": layers.seccomp}
        warnings: list[str] = []
        if request.mode == "xen":
            build = xen_argv if config.type == "hvm" else xen_pv_argv
            argv = build(caps, config, decision, paths, domid=domid, **switches)
        else:
            accel = config.accel or request.accel
            if accel == "kvm" and not self.kvm_works():
                raise EnvironmentFailure(
                    "KVM was asked for but does not work here (/dev/kvm missing, or the CPU "
                    "lacks virtualisation): use --accel tcg"
                )
            argv = standalone_argv(caps, config, decision, paths, accel=accel, **switches)
            warnings = standalone_warnings(config)
        plan = plan_layers(layers, config, decision, paths, mode=request.mode, domid=domid)
        return Plan(request.mode, domid, decision, argv, paths, plan, tuple(warnings))

    @staticmethod
    def device_model_need(request: LaunchRequest) -> tuple[bool, str]:
        """Whether the domain needs a device model in this mode, and why (or why not)."""
        if request.mode == "standalone":
            return True, "a standalone VM is QEMU itself"
        return device_model_need(request.config)

    def free_domid(self) -> int:
        """The domid a launch without ``--domid`` would get now (for ``--dry-run``)."""
        taken = [vm.domid for vm in self.store.all()] if self.store.exists() else []
        domid = smallest_free_domid(taken)
        if domid is None:
            raise PolicyRefusal("every domid from 1 to 32751 is in use")
        return domid

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
        process: subprocess.Popen[bytes] | None = None
        plan: Plan | None = None
        cgroup: VmCgroup | None = None
        try:
            plan = self.plan(request, domid)
            decision = plan.decision
            for warning in (*decision.warnings, *plan.warnings):  # before anything starts
                log.getChild(request.config.name).warning("%s", warning)
            busy = decision.tier != Tier.ROOT and bool(live_pids_of_uid(decision.uid))
            self.store.assign(domid, decision, uid_busy=busy, layers=plan.layers.as_dict())
            log_fd = self._prepare_dirs(plan)
            try:
                if plan.layers.cgroup is not None:
                    cgroup = VmCgroup(self._cgroups(), plan.layers.cgroup.name)
                    cgroup.create(plan.layers.cgroup)
                jail = self.jail_for(plan.layers, cgroup)
                process = spawn(
                    jail.wrap(plan.argv), env=BASE_ENV, stderr_fd=log_fd,
                    before_exec=jail.before_exec(),
                )  # fmt: skip
                qemu_pid = self._qemu_pid(process, log_fd, wrapped=jail.pid_namespace)
                started = start_time(qemu_pid)
                if started is None:
                    raise EnvironmentFailure(f"QEMU exited at once: {_qemu_said(log_fd, process)}")
                self.store.set_process(domid, qemu_pid, started)
                log.getChild(request.config.name).info("started QEMU pid %d, paused", qemu_pid)
                checked = self._verify_and_resume(
                    plan, process, qemu_pid, cgroup, log_fd, timeout=request.start_timeout
                )
            finally:
                os.close(log_fd)
            self.store.set_running(domid, checked)
        except BaseException:
            self._abort(domid, plan, process, cgroup)
            raise
        record = self.store.get(domid)
        assert record is not None  # noqa: S101 - we hold the lease
        return record

    def _prepare_dirs(self, plan: Plan) -> int:
        decision, paths = plan.decision, plan.paths
        for directory in (paths.run_dir.parent, paths.chroot.parent):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.teardown.remove_dirs(paths)
        paths.run_dir.mkdir(mode=0o700)
        paths.chroot.mkdir(mode=0o000)
        paths.chroot.chmod(0o000)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        log_fd = os.open(paths.log, flags, 0o600)
        os.chown(paths.run_dir, decision.uid, decision.gid)
        return log_fd

    @staticmethod
    def _qemu_pid(process: subprocess.Popen[bytes], log_fd: int, *, wrapped: bool) -> int:
        """QEMU's pid: the spawned process, or the child of the PID-namespace wrapper."""
        if not wrapped:
            return process.pid
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
        found: list[int] = []

        def child_appeared() -> bool:
            try:
                found[:] = [int(p) for p in children.read_text().split()]
            except FileNotFoundError:
                return process.poll() is not None
            return bool(found) or process.poll() is not None

        wait_until(child_appeared, 10.0)
        if not found:
            raise EnvironmentFailure(f"QEMU did not start: {_qemu_said(log_fd, process)}")
        return found[0]

    def _verify_and_resume(
        self,
        plan: Plan,
        process: subprocess.Popen[bytes],
        qemu_pid: int,
        cgroup: VmCgroup | None,
        log_fd: int,
        *,
        timeout: float,
    ) -> dict[str, Any]:
        with QmpConnection(plan.paths.qmp) as qmp:
            try:
                qmp.connect(timeout=timeout, alive=lambda: process.poll() is None)
            except EnvironmentFailure as exc:
                raise EnvironmentFailure(
                    f"QEMU failed to start ({exc.message}): {_qemu_said(log_fd, process)}"
                ) from exc
            snap = snapshot(qemu_pid)
            if snap is None:
                raise EnvironmentFailure(
                    f"QEMU exited during verification: {_qemu_said(log_fd, process)}"
                )
            checks = check_layers(
                plan.layers,
                snap,
                host_namespaces=own_namespaces(),
                cgroup_paths=cgroup.paths_by_controller() if cgroup else None,
                cgroup_limits=cgroup.limits_read_back() if cgroup else None,
            )
            checked = verification(checks, qemu_pid)
            qmp.execute("cont")
        return checked

    def _abort(
        self,
        domid: int,
        plan: Plan | None,
        process: subprocess.Popen[bytes] | None,
        cgroup: VmCgroup | None,
    ) -> None:
        """Undo a launch that failed at any step after the lease."""
        try:
            record = self.store.get(domid)
            qemu = recorded_process(record) if record is not None else None
            if qemu is not None:  # QEMU itself, not only its PID-namespace wrapper
                signal_pid(*qemu, signal.SIGKILL)
            if process is not None and process.poll() is None:
                process.kill()
                process.wait(timeout=10)
            if cgroup is not None:
                cgroup.kill()
            if qemu is not None:
                wait_until(lambda: not is_alive(*qemu), 5.0)
            if record is not None and record.uid is not None and record.kill_by_uid:
                self.teardown.kill_uid(record.uid)
            if plan is not None:
                self.teardown.remove_dirs(plan.paths)
            if cgroup is not None:
                cgroup.remove()
        except (OSError, EnvironmentFailure):
            # Keep the lease: the uid must not go to another VM while in doubt.
            log.exception("cleaning up after a failed launch of domid %d", domid)
        else:
            self.store.release(domid)

    # -- stop and reconciliation ------------------------------------------------------------

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
        record = self.store.find(key)
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
            if self.status(current) in ("starting", "stopping"):
                if time.monotonic() > deadline:
                    doing = {"starting": "started", "stopping": "stopped"}[self.status(current)]
                    raise EnvironmentFailure(
                        f"{record.name} is still being {doing} by pid {current.owner_pid} "
                        f"after {wait} s: try again"
                    )
                time.sleep(0.05)
                continue
            claimed = self.store.claim(current, state="stopping", owner=current_owner())
            if claimed is not None:
                return claimed, self.teardown.run(claimed, timeout=timeout)

    def status(self, record: VmRecord) -> str:
        """``running``, ``exited`` (QEMU gone), ``starting``, ``stopping``, or ``stale``.

        ``stale`` is a row whose launcher or stopper died mid-way.
        """
        if record.state == "running":
            process = recorded_process(record)
            return "running" if process is not None and is_alive(*process) else "exited"
        return record.state if is_alive(record.owner_pid, record.owner_start) else "stale"

    def recover(self) -> RecoveryReport:
        """Reconcile, then clean up what a crash left without a lease (see recovery.py)."""
        from qemu_depriv.recovery import RecoveryReport, recover_orphans  # noqa: PLC0415

        report = RecoveryReport(torn_down=[r.name for r in self.reconcile()])
        recover_orphans(self.teardown, report)
        return report

    def reconcile(self) -> list[VmRecord]:
        """Tear down every VM whose QEMU exited or whose launcher or stopper died mid-way."""
        cleaned = []
        for record in self.store.all():
            if self.status(record) not in ("exited", "stale"):
                continue
            claimed = self.store.claim(record, state="stopping", owner=current_owner())
            if claimed is None:
                continue  # another process is on it
            log.info("cleaning up %s (%s)", record.name, self.status(record))
            self.teardown.run(claimed, timeout=1.0)
            cleaned.append(record)
        return cleaned


def _qemu_said(log_fd: int, process: subprocess.Popen[bytes]) -> str:
    code = process.poll()
    text = os.pread(log_fd, 4096, 0).decode("utf-8", "replace").strip()
    status = "still running" if code is None else f"exit {code}"
    return f"QEMU {status}, stderr: {' | '.join(text.splitlines()[-5:]) or '(empty)'}"


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
