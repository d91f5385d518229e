"""Launch, verify and resume device models (DESIGN.md, "Launch, verify, tear down").

Launch: lease the domid and name; resolve the account; lease its uid; probe QEMU; plan every
isolation layer (:mod:`qemu_depriv.isolation.layers`); check the VM's bridges; build the argv;
create the run directory (owned by the VM's uid), the empty chroot and the cgroup; open the
VM's taps (:mod:`qemu_depriv.vms.taps`); spawn QEMU paused inside them, handed the taps
(:mod:`qemu_depriv.isolation.jail`); finish a QMP handshake; read /proc and check every planned
layer; only then ``cont``.  A launch that fails after the lease is torn down by the
same teardown as ``stop`` (:mod:`qemu_depriv.vms.teardown`), which keeps the lease when
anything of the VM survives.

:func:`system_launcher` is the one way to build a launcher wired to this host (the command
line, the demo and the benchmarks all use it).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from qemu_depriv.accounts.chain import Decision, Request, Tier, resolve
from qemu_depriv.accounts.nss import AccountLookup
from qemu_depriv.accounts.verified import system_lookup
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal, QemuStartFailure
from qemu_depriv.host.kvm import kvm_works
from qemu_depriv.host.processes import wait_until
from qemu_depriv.host.procfs import children, live_pids_of_uid, own_namespaces, snapshot, start_time
from qemu_depriv.host.programs import BASE_ENV, spawn
from qemu_depriv.isolation.cgroups import CgroupHost, VmCgroup
from qemu_depriv.isolation.jail import Jail, jail_for
from qemu_depriv.isolation.layers import (
    LayerPlan,
    VmShape,
    check_layers,
    plan_layers,
    verification,
)
from qemu_depriv.isolation.scopes import vm_group
from qemu_depriv.qemu.argv import standalone_argv, standalone_warnings
from qemu_depriv.qemu.caps import CapsProbe, QemuCaps
from qemu_depriv.qemu.qmp import QmpConnection
from qemu_depriv.qemu.taps import TapPlan, standalone_taps, with_fds
from qemu_depriv.qemu.xen import device_model_need, xen_argv, xen_pv_argv
from qemu_depriv.settings import Settings
from qemu_depriv.vms.paths import VmPaths, vm_paths
from qemu_depriv.vms.store import Mode, StateStore, VmRecord, current_owner, smallest_free_domid
from qemu_depriv.vms.taps import check_taps, open_taps
from qemu_depriv.vms.teardown import Teardown, system_teardown
from qemu_depriv.xl.domain import DomainConfig

log = logging.getLogger(__name__)

#: sun_path is 108 bytes with its terminating NUL.
SOCKET_PATH_MAX = 107


@dataclass(frozen=True)
class LaunchRequest:
    """What ``launch`` was asked for."""

    config: DomainConfig
    domid: int | None = None
    mode: Mode = Mode.STANDALONE
    qemu: str | None = None
    accel: str = "tcg"
    restrict: bool | None = None
    start_timeout: float = 30.0


@dataclass(frozen=True)
class Plan:
    """A launch worked out but not started: what ``--dry-run`` prints."""

    name: str
    mode: Mode
    domid: int
    decision: Decision
    argv: list[str]
    paths: VmPaths
    layers: LayerPlan
    warnings: tuple[str, ...] = ()
    #: The taps the launcher opens and hands QEMU; ``argv`` holds ``fd=@NAME`` for each.
    taps: tuple[TapPlan, ...] = ()


@dataclass
class Launcher:
    """Starts device models; every dependency is passed in.

    Args:
        settings: prefix, restrict, the layers and the state directory.
        lookup: account lookups (real NSS in production).
        store: the state store.
        probe: the QEMU capability probe.
        teardown: what undoes a launch that failed (and what ``stop`` uses).
        cgroup_host: where the cgroup controllers live (asked only when a cgroup is planned).
        kvm_works: whether KVM is usable here (asked only when KVM is requested).
        jail_for: builds the pre-exec restrictions from the layer plan.
    """

    settings: Settings
    lookup: AccountLookup
    store: StateStore
    probe: CapsProbe
    teardown: Teardown
    cgroup_host: Callable[[], CgroupHost]
    kvm_works: Callable[[], bool] = field(default=lambda: False)
    jail_for: Callable[[LayerPlan, VmCgroup | None], Jail] = jail_for

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
        if request.mode == Mode.XEN and config.device_model_version == "qemu-xen-traditional":
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
        self.require_sandbox(caps)
        chroot = paths.chroot if layers.chroot else None
        warnings: list[str] = []
        taps: list[TapPlan] = []
        if request.mode == Mode.XEN:
            build = xen_argv if config.type == "hvm" else xen_pv_argv
            argv = build(
                caps, config, decision, domid=domid, qmp=paths.qmp, chroot=chroot,
                restrict=restrict, seccomp=layers.seccomp,
            )  # fmt: skip
        else:
            accel = config.accel or request.accel
            if accel == "kvm" and not self.kvm_works():
                raise EnvironmentFailure(
                    "KVM was asked for but does not work here (/dev/kvm missing, or the CPU "
                    "lacks virtualisation): use --accel tcg"
                )
            taps, nics, tap_warnings = standalone_taps(config, domid)
            argv = standalone_argv(
                caps, config, decision, qmp=paths.qmp, chroot=chroot, accel=accel,
                restrict=restrict, seccomp=layers.seccomp, nics=nics,
            )  # fmt: skip
            check_taps(taps)  # after the config's own refusals: a PV domain is exit 2
            warnings = [*standalone_warnings(config), *tap_warnings]
        handed = tuple(t.name for t in taps) if request.mode == Mode.STANDALONE else None
        vm = VmShape.of(config, request.mode, handed)
        plan = self.layers_for(vm, decision, request.mode, domid)
        return Plan(
            config.name, request.mode, domid, decision, argv, paths, plan, tuple(warnings),
            tuple(taps),
        )  # fmt: skip

    def require_sandbox(self, caps: QemuCaps) -> None:
        """Refuse a QEMU without ``-sandbox`` when the seccomp layer is on.

        Raises:
            EnvironmentFailure: the binary was built without libseccomp.
        """
        if self.settings.layers.seccomp and not caps.sandbox:
            raise EnvironmentFailure(
                f"QEMU {caps.binary} has no -sandbox, which the seccomp layer needs: install a "
                "QEMU built with libseccomp, or turn the layer off ([layers] seccomp = false)"
            )

    def layers_for(self, vm: VmShape, decision: Decision, mode: Mode, domid: int) -> LayerPlan:
        """Every layer of ``vm``'s device model, its group placed where this host wants it.

        Raises:
            EnvironmentFailure: ``[layers] cgroup_manager`` asks for what the host lacks.
        """
        layers, paths = self.settings.layers, self.paths(domid)
        scope = layers.cgroup and self.cgroup_host().manager(layers.cgroup_manager) == "systemd"
        return plan_layers(
            layers, vm, decision, mode=mode, domid=domid, log=paths.log, chroot=paths.chroot,
            scope=scope,
        )  # fmt: skip

    @staticmethod
    def device_model_need(request: LaunchRequest) -> tuple[bool, str]:
        """Whether the domain needs a device model in this mode, and why (or why not)."""
        if request.mode == Mode.STANDALONE:
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
            or ("qemu-system-i386" if request.mode == Mode.XEN else "qemu-system-x86_64")
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
            InvalidInput, PolicyRefusal, EnvironmentFailure: nothing is left behind (or, when
                something of the VM survived, the lease is kept).
        """
        self.teardown.reconcile()
        domid = self.store.reserve(
            request.config.name, request.domid, mode=request.mode, owner=current_owner()
        )
        self.start(domid, lambda: self.plan(request, domid), timeout=request.start_timeout)
        record = self.store.get(domid)
        assert record is not None  # noqa: S101 - we hold the lease
        return record

    def start(
        self,
        domid: int,
        make_plan: Callable[[], Plan],
        *,
        timeout: float,
        resume: bool = True,
        env: Mapping[str, str] = BASE_ENV,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Plan the VM leased at ``domid``, start it paused, verify every layer, resume it.

        The plan is made under the lease (resolution needs the domid).  ``resume`` False
        leaves a verified QEMU paused, for the author of its command line to ``cont`` (libxl
        does).  Returns the spawned process (QEMU, or its PID-namespace wrapper): a supervisor
        waits on it.

        Raises:
            InvalidInput, PolicyRefusal, EnvironmentFailure: torn down with the teardown
                ``stop`` uses; the lease is released, or kept when something survived.
        """
        process: subprocess.Popen[bytes] | None = None
        try:
            plan = make_plan()
            vlog = log.getChild(plan.name)
            decision = plan.decision
            for warning in (*decision.warnings, *plan.warnings):  # before anything starts
                vlog.warning("%s", warning)
            busy = decision.tier != Tier.ROOT and bool(live_pids_of_uid(decision.uid))
            self.store.assign(domid, decision, uid_busy=busy, layers=plan.layers)
            log_fd = self._prepare_dirs(plan)
            try:
                cgroup = None
                if plan.layers.cgroup is not None:
                    cgroup = vm_group(self.cgroup_host(), plan.layers.cgroup)
                    cgroup.create(plan.layers.cgroup)
                jail = self.jail_for(plan.layers, cgroup)
                taps = open_taps(plan.taps)
                try:
                    if plan.taps:
                        self.store.set_taps(domid, taps.records)
                    argv = with_fds(plan.argv, plan.taps, taps.fds)
                    process = spawn(
                        jail.wrap(argv), env=env, stderr_fd=log_fd,
                        before_exec=jail.before_exec(), pass_fds=(*pass_fds, *taps.fds),
                    )  # fmt: skip
                finally:
                    taps.close()  # QEMU holds its own copies
                started = _Started(argv, process, log_fd)
                qemu_pid = started.qemu_pid(wrapped=jail.pid_namespace)
                self.store.set_process(domid, *qemu_pid)
                vlog.info("started QEMU pid %d, paused", qemu_pid[0])
                checked = self._verify(
                    plan, started, qemu_pid[0], cgroup, timeout=timeout, resume=resume
                )
            finally:
                os.close(log_fd)
            self.store.set_running(domid, checked)
        except BaseException:
            self._undo(domid, process)
            raise
        return process

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

    def _verify(
        self,
        plan: Plan,
        started: _Started,
        qemu_pid: int,
        cgroup: VmCgroup | None,
        *,
        timeout: float,
        resume: bool,
    ) -> dict[str, Any]:
        with QmpConnection(plan.paths.qmp) as qmp:
            try:
                qmp.connect(timeout=timeout, alive=started.running)
            except EnvironmentFailure as exc:
                raise started.failure(f"QEMU failed to start ({exc.message})") from exc
            snap = snapshot(qemu_pid)
            if snap is None:
                raise started.failure("QEMU exited during verification")
            checks = check_layers(
                plan.layers,
                snap,
                host_namespaces=own_namespaces(),
                cgroup_paths=cgroup.paths_by_controller() if cgroup else None,
                cgroup_limits=cgroup.limits_read_back() if cgroup else None,
            )
            checked = verification(checks, qemu_pid)
            if resume:
                qmp.execute("cont")
        return checked

    def _undo(self, domid: int, process: subprocess.Popen[bytes] | None) -> None:
        """Undo a launch that failed after the lease, with the teardown that ``stop`` uses.

        Only the PID-namespace wrapper, this process's own child, is reaped here.  When
        something of the VM survives, the lease is kept: the uid must go to no other VM.
        """
        try:
            record = self.store.get(domid)
            if record is not None:
                self.teardown.run(record, timeout=0)
        except (OSError, EnvironmentFailure) as exc:
            # One line for the administrator; the traceback only with --debug.
            log.error("cleaning up after the failed launch of domid %d: %s", domid, exc)  # noqa: TRY400
            log.debug("the cleanup's traceback", exc_info=exc)
        finally:
            if process is not None:
                if process.poll() is None:
                    process.kill()
                process.wait(timeout=10)


class _Started:
    """A QEMU just spawned: its wrapper process, argv and log, for the errors it may end in."""

    def __init__(self, argv: list[str], process: subprocess.Popen[bytes], log_fd: int) -> None:
        self.argv, self.process, self.log_fd = argv, process, log_fd

    def running(self) -> bool:
        """Whether the spawned process still runs."""
        return self.process.poll() is None

    def failure(self, what: str) -> QemuStartFailure:
        """QEMU failed: its status and the end of what it wrote on stderr."""
        text = os.pread(self.log_fd, 4096, 0).decode("utf-8", "replace").strip()
        return QemuStartFailure(
            what, status=self.process.poll(), argv=self.argv, stderr_tail=text.splitlines()[-5:]
        )

    def qemu_pid(self, *, wrapped: bool) -> tuple[int, int]:
        """QEMU's (pid, start time): the spawned process, or the PID-namespace wrapper's child.

        Raises:
            QemuStartFailure: QEMU exited at once.
        """
        pid: int | None = self.process.pid
        if wrapped:
            found: list[int] = []

            def child_appeared() -> bool:
                found[:] = children(self.process.pid) or []
                return bool(found) or not self.running()

            wait_until(child_appeared, 10.0)
            pid = found[0] if found else None
        started = start_time(pid) if pid is not None else None
        if pid is None or started is None:
            raise self.failure("QEMU did not start")
        return pid, started


def system_launcher(
    settings: Settings,
    *,
    lookup: AccountLookup | None = None,
    jail: Callable[[LayerPlan, VmCgroup | None], Jail] = jail_for,
) -> Launcher:
    """A launcher wired to this host: its NSS, the state store, QEMU, cgroups and KVM.

    ``lookup`` and ``jail`` replace this host's NSS and the layer plan's jail (the tests
    use them to make a resolution or an isolation layer go wrong on purpose).
    """
    if lookup is None:
        lookup = system_lookup(settings.lookup_timeout, settings.sources_without_accounts)
    teardown = system_teardown(settings, lookup=lookup)
    return Launcher(
        settings=settings,
        lookup=teardown.lookup,
        store=teardown.store,
        probe=CapsProbe(cache_file=settings.state_dir / "caps.json"),
        teardown=teardown,
        cgroup_host=teardown.cgroup_host,
        kvm_works=kvm_works,
        jail_for=jail,
    )
