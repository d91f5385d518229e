"""``run``: an existing QEMU command line, run deprivileged, verified and supervised.

The command line is someone else's (libxl's device model through ``device_model_override``, or
a KVM user's script), so it is read as QEMU reads it (:mod:`qemu_depriv.qemu.cmdline`), refused
when it would undo the deprivileging, and otherwise passed through, with what the
deprivileging owns taken out and given again: ``-S``, the supervisor's own QMP socket,
``-sandbox``, the chroot and the account (the one ``-runas``/``-run-with user=`` names is the
explicit tier; otherwise the chain decides).  The VM then starts as ``launch`` starts one
(:meth:`qemu_depriv.vms.launcher.Launcher.start`): every layer applied and verified from /proc
before any guest code runs.

The supervisor stays in the foreground, with the pid its spawner recorded (libxl records it):

- SIGHUP, SIGTERM or SIGINT: the full teardown (:mod:`qemu_depriv.vms.teardown`), exit 0;
- QEMU exits on its own (or libxl killed its uid): the same teardown at once, and the
  supervisor exits with QEMU's status (128+N for a signal N, as a shell says it);
- the supervisor itself is SIGKILLed: its lease turns ``stale`` and the next ``launch``,
  ``stop`` or ``recover`` tears the VM down.

When the command line starts QEMU paused itself (``-S``: libxl under ``dm_restrict``), its
author sends ``cont``: the supervisor does not, and relays libxl's QMP socket only once QEMU
is verified (:mod:`qemu_depriv.vms.relay`), so that libxl's ``cont`` cannot come first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from qemu_depriv.accounts.chain import Request, resolve
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.host.processes import wait_until
from qemu_depriv.host.programs import BASE_ENV
from qemu_depriv.isolation.layers import VmShape
from qemu_depriv.qemu.argv import qmp_args, runas_args, sandbox_args
from qemu_depriv.qemu.caps import QemuCaps
from qemu_depriv.qemu.cmdline import (
    CommandLine,
    Shape,
    is_libxl_probe,
    parse_command_line,
    refusals,
    shape_of,
    supervised_argv,
)
from qemu_depriv.qemu.taps import TapPlan, command_line_taps, opens_own_taps
from qemu_depriv.vms.launcher import SOCKET_PATH_MAX, Launcher, Plan
from qemu_depriv.vms.store import LeaseState, Mode, current_owner
from qemu_depriv.vms.taps import check_taps
from qemu_depriv.vms.waiter import STOP_SIGNALS, VARIABLE, WAITED
from qemu_depriv.xl.domain import validate_domain_name, validate_domid

log = logging.getLogger(__name__)

#: Seconds QEMU gets to ``quit`` when the supervisor is told to stop.
QUIT_TIMEOUT = 5.0
#: What the supervisor execs while its VM runs (:mod:`qemu_depriv.vms.waiter`).
WAITER = Path(__file__).with_name("waiter.py")


@dataclass(frozen=True)
class RunRequest:
    """What ``run`` was asked for.

    ``argv`` is QEMU's command line, its binary first; ``xen`` says it is a Xen domain's
    device model, whose ``-xen-domid`` and ``-name`` are required.
    """

    argv: tuple[str, ...]
    name: str | None = None
    domid: int | None = None
    xen: bool = False
    status_file: Path | None = None
    start_timeout: float = 60.0


@dataclass(frozen=True)
class Prepared:
    """A command line read and checked, before anything is leased or started."""

    cmdline: CommandLine
    caps: QemuCaps
    shape: Shape
    name: str
    domid: int | None
    mode: Mode
    #: libxl's capability probe (Xen 4.20 and later), run as it is: no VM at all.
    libxl_probe: bool = False
    #: The taps the command line names by ``ifname=``, which the launcher opens for QEMU.
    taps: tuple[TapPlan, ...] = ()


@dataclass
class Supervisor:
    """Runs one command line as a supervised VM.

    Args:
        launcher: the launcher (and its store, probe and teardown) the VM starts through.
        echo: where QEMU's own output is copied when it ends (the supervisor's stderr, which
            libxl keeps as the domain's qemu-dm log), or None.
        handover: the command line that starts this process again, when the process is the
            supervisor's own: while the VM runs, it then waits as a bare interpreter
            (:mod:`qemu_depriv.vms.waiter`), and is started again for the teardown.
            Without it (or under libxl's ``dm_restrict``, whose QMP socket the supervisor
            relays while the VM runs) the supervisor waits as it is.
    """

    launcher: Launcher
    echo: TextIO | None = None
    handover: tuple[str, ...] | None = None

    def prepare(self, request: RunRequest) -> Prepared:
        """Read the command line and refuse it if it would undo the deprivileging.

        Raises:
            InvalidInput: no binary, an unknown option, a missing ``-xen-domid``/``-name`` in
                Xen mode, a bad domid or name.
            PolicyRefusal: an option that would undo the deprivileging (each is named).
            EnvironmentFailure: QEMU cannot be probed.
        """
        binary = _binary(request.argv[0] if request.argv else "")
        caps = self.launcher.probe.probe(binary)
        cmdline = parse_command_line((binary, *request.argv[1:]), caps.options)
        shape = shape_of(cmdline)
        if request.xen and is_libxl_probe(cmdline):
            return Prepared(cmdline, caps, shape, "libxl-probe", None, Mode.XEN, libxl_probe=True)
        if request.xen:
            missing = [
                o for o, v in (("-xen-domid", shape.domid), ("-name", shape.name)) if v is None
            ]
            if missing:
                raise InvalidInput(
                    f"a Xen device model's command line needs {' and '.join(missing)}: this "
                    "is not one libxl built (is qemu-depriv-dm named in device_model_override "
                    "of an HVM domain?)"
                )
        if request.domid is not None and shape.domid not in (None, request.domid):
            raise InvalidInput(f"--domid {request.domid} but -xen-domid {shape.domid}: give one")
        domid = request.domid if request.domid is not None else shape.domid
        name = request.name or shape.name
        if name is None:
            raise InvalidInput(
                "the VM needs a name: give --name NAME, or -name in its command line"
            )
        if problems := refusals(cmdline):
            more = f" (and {'; '.join(problems[1:])})" if problems[1:] else ""
            raise PolicyRefusal(
                f"QEMU option {problems[0]}; it would undo the deprivileging: remove it{more}"
            )
        cmdline, taps = command_line_taps(cmdline)
        return Prepared(
            cmdline, caps, shape, validate_domain_name(name),
            validate_domid(domid) if domid is not None else None,
            Mode.XEN if shape.domid is not None else Mode.STANDALONE, taps=tuple(taps),
        )  # fmt: skip

    def run(self, request: RunRequest) -> int:
        """Start the VM, supervise it until a stop signal or its end; return the exit status.

        Raises:
            InvalidInput, PolicyRefusal, EnvironmentFailure: as :meth:`prepare` and the start
                do; nothing is left behind.
        """
        _unbound_files()
        if (handed := _handed_over()) is not None:
            return self._finish(request, handed)
        prepared = self.prepare(request)
        if prepared.libxl_probe:
            exec_libxl_probe(prepared.cmdline.argv())
        with _stop_signals() as stopped:
            launcher = self.launcher
            launcher.teardown.reconcile()
            domid = launcher.store.reserve(
                prepared.name, prepared.domid, mode=prepared.mode, owner=current_owner(),
                supervised=True,
            )  # fmt: skip
            listener = _control_listener(prepared.shape.control_fd)
            try:
                process = launcher.start(
                    domid, lambda: self._plan(prepared, domid), timeout=request.start_timeout,
                    resume=not prepared.shape.paused, env=_environment(),
                    pass_fds=prepared.shape.fds,
                )  # fmt: skip
            except BaseException:
                if listener is not None:
                    listener.close()
                raise
            self._status(request, domid, "running")
            if self.handover is not None and listener is None:
                self._exec_waiter(domid, process, stopped)  # returns only when it did not
            status = self._supervise(domid, process, listener, stopped)
        self._status(request, domid, "stopped", status)
        return status

    def _plan(self, prepared: Prepared, domid: int) -> Plan:
        launcher, settings = self.launcher, self.launcher.settings
        shape, caps = prepared.shape, prepared.caps
        request = Request(domid, prepared.name, shape.user, settings.restrict, settings.prefix)
        decision = resolve(request, launcher.lookup)
        paths = launcher.paths(domid)
        control = paths.run_dir / "libxl-cmd.sock" if shape.control_fd is not None else None
        if len(str(control or paths.qmp)) > SOCKET_PATH_MAX:
            raise InvalidInput(
                f"state directory {settings.state_dir} is too long for a unix socket path: "
                "use a shorter state_dir"
            )
        layers = settings.layers
        launcher.require_sandbox(caps)
        chroot = paths.chroot if layers.chroot else None
        check_taps(prepared.taps)
        extra = [
            "-S", *qmp_args(paths.qmp),
            *(sandbox_args(caps, decision) if layers.seccomp else []),
            *runas_args(caps, decision, chroot),
        ]  # fmt: skip
        argv = supervised_argv(prepared.cmdline, control_socket=control, extra=extra)
        own_taps = opens_own_taps(prepared.cmdline)
        handed = None if own_taps else tuple(t.name for t in prepared.taps)
        vm = VmShape(prepared.name, shape.memory_mib, shape.network, shape.files, handed)
        plan = launcher.layers_for(vm, decision, prepared.mode, domid)
        return Plan(
            prepared.name, prepared.mode, domid, decision, argv, paths, plan, taps=prepared.taps
        )

    def _supervise(
        self,
        domid: int,
        process: subprocess.Popen[bytes],
        listener: socket.socket | None,
        stopped: _Stopped,
    ) -> int:
        """Wait for a stop signal or the end of QEMU; tear down; return the exit status."""
        from qemu_depriv.vms.relay import Relay  # noqa: PLC0415 - only libxl's dm_restrict needs it

        paths = self.launcher.paths(domid)
        relay = Relay(listener, paths.run_dir / "libxl-cmd.sock") if listener else None
        with selectors.DefaultSelector() as selector:
            pidfd = os.pidfd_open(process.pid)
            try:
                selector.register(pidfd, selectors.EVENT_READ, None)
                selector.register(stopped.fd, selectors.EVENT_READ, None)
                if relay is not None:
                    relay.open(selector)
                while not stopped.signal and process.poll() is None:
                    for key, _ in selector.select():
                        if callable(key.data):
                            key.data(selector)
                        elif key.fd == stopped.fd:
                            stopped.drain()
            finally:
                if relay is not None:
                    relay.close(selector)
                os.close(pidfd)
        code = process.poll()
        return self._end(domid, code, lambda: process.wait(timeout=30), stopped.signal)

    def _end(
        self, domid: int, code: int | None, wait_child: Callable[[], object], signum: int | None
    ) -> int:
        """Tear down after QEMU's end (``code``) or a stop signal (``code`` None)."""
        self._echo_log(self.launcher.paths(domid).log)
        ours = self._tear_down(domid, quit_timeout=QUIT_TIMEOUT if code is None else 0)
        if code is None:  # stopped by a signal: QEMU was asked to quit, its wrapper is ours
            wait_child()
            log.info("stopped on signal %s", signum)
            return 0
        if not ours:  # 'qemu-depriv stop' took the VM: a stop on request, not a crash
            return 0
        return 128 - code if code < 0 else code

    def _exec_waiter(self, domid: int, process: subprocess.Popen[bytes], stopped: _Stopped) -> None:
        """Become the waiter, unless a stop signal came first or the exec fails.

        The stop signals and SIGCHLD are blocked first, and stay blocked across the exec: one
        that comes meanwhile waits for the waiter's ``sigwaitinfo``.
        """
        assert self.handover is not None  # noqa: S101 - the caller checked
        signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        if stopped.signal is None:
            argv = [sys.executable, "-I", "-S", str(WAITER), str(domid), str(process.pid)]
            for stream in (sys.stdout, sys.stderr, self.echo):
                if stream is not None:
                    with contextlib.suppress(OSError, ValueError):  # closed, or a closed pipe
                        stream.flush()
            try:
                os.execv(sys.executable, [*argv, "--", *self.handover])  # noqa: S606 - no shell
            except OSError as exc:
                log.warning("could not exec %s (%s): supervising as it is", WAITER, exc.strerror)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)

    def _finish(self, request: RunRequest, handed: _Handover) -> int:
        """The supervisor started again by its waiter: tear down what the waiter saw end."""
        with _stop_signals():  # later stop signals change nothing: the teardown is under way
            signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
            status = self._end(
                handed.domid, handed.code, lambda: _wait_child(handed.child), handed.signum
            )
        self._status(request, handed.domid, "stopped", status)
        return status

    def _tear_down(self, domid: int, *, quit_timeout: float) -> bool:
        """Tear the VM down; False when someone else (``stop``) already took it."""
        store = self.launcher.store
        record = store.get(domid)
        if record is None or record.state != LeaseState.RUNNING or record.owner != current_owner():
            return False
        claimed = store.claim(record, state=LeaseState.STOPPING, owner=current_owner())
        if claimed is None:
            return False
        self.launcher.teardown.run(claimed, timeout=quit_timeout)
        return True

    def _echo_log(self, path: Path) -> None:
        if self.echo is None:
            return
        with contextlib.suppress(OSError):
            self.echo.write(path.read_text(encoding="utf-8", errors="replace"))
            self.echo.flush()

    def _status(
        self, request: RunRequest, domid: int, state: str, status: int | None = None
    ) -> None:
        """Write ``--json-status FILE`` (atomically: a temporary file, then a rename)."""
        if request.status_file is None:
            return
        record = self.launcher.store.get(domid)
        data: dict[str, Any] = {"domid": domid, "state": state, "supervisor": os.getpid()}
        if record is not None:
            data |= {
                "name": record.name, "pid": record.pid, "uid": record.uid, "gid": record.gid,
                "tier": record.tier, "verification": record.verification,
            }  # fmt: skip
        if status is not None:
            data["status"] = status
        temporary = request.status_file.with_name(f".{request.status_file.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        temporary.replace(request.status_file)


class _Stopped:
    """The stop signals, as a descriptor a selector can wait on (Python's wakeup fd)."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.signal: int | None = None

    @property
    def fd(self) -> int:
        """The end to wait on."""
        return self.read

    def handle(self, signum: int, _frame: object) -> None:
        """Remember the first stop signal (the wakeup fd wakes the selector)."""
        self.signal = self.signal or signum

    def drain(self) -> None:
        """Empty the wakeup pipe."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.read, 512):
                pass


@contextlib.contextmanager
def _stop_signals() -> Iterator[_Stopped]:
    """Catch the stop signals from the very start: one during the start is acted on after it."""
    stopped = _Stopped()
    previous = {s: signal.signal(s, stopped.handle) for s in STOP_SIGNALS}
    old_wakeup = signal.set_wakeup_fd(stopped.write)
    try:
        yield stopped
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        os.close(stopped.read)
        os.close(stopped.write)


@dataclass(frozen=True)
class _Handover:
    """What the waiter saw: QEMU's end (``code``) or a stop signal (``signum``)."""

    domid: int
    child: int
    code: int | None = None
    signum: int | None = None


def _handed_over() -> _Handover | None:
    """The waiter's ``QEMU_DEPRIV_SUPERVISED``, taken out of the environment; None without it.

    A forged value can do no harm: the teardown acts only on a lease this very process
    (pid and start time) owns.

    Raises:
        InvalidInput: the value is not what the waiter writes.
    """
    value = os.environ.pop(VARIABLE, None)
    if value is None:
        return None
    domid, _, rest = value.partition(":")
    child, _, event = rest.partition(":")
    kind, _, number = event.partition(":")
    try:
        if kind == "lost":  # not this process's child: its end is unknown
            return _Handover(int(domid), int(child), code=1)
        if kind == "exit":
            return _Handover(int(domid), int(child), code=int(number))
        if kind == "signal":
            return _Handover(int(domid), int(child), signum=int(number))
    except ValueError:
        pass
    raise InvalidInput(f"{VARIABLE}={value!r} is not what the waiter writes: unset it")


def _wait_child(child: int, timeout: float = 30.0) -> None:
    """Reap ``child`` (QEMU's wrapper), waiting ``timeout`` seconds at most."""

    def reaped() -> bool:
        try:
            return os.waitpid(child, os.WNOHANG)[0] == child
        except ChildProcessError:
            return True

    if not wait_until(reaped, timeout):
        log.warning("pid %d did not end within %s s of the teardown", child, timeout)


def _unbound_files() -> None:
    """Lift the file-size limit libxl's ``dm_restrict`` puts on its device model (256 KiB).

    It was meant for QEMU, which the jail limits again; the supervisor writes the state store.
    """
    with contextlib.suppress(ValueError, OSError):
        infinity = resource.RLIM_INFINITY
        resource.setrlimit(resource.RLIMIT_FSIZE, (infinity, infinity))


def _environment() -> dict[str, str]:
    """QEMU's environment: the fixed one, and libxl's ``XEN_*`` settings (XSA-180's limit)."""
    return {**BASE_ENV, **{k: v for k, v in os.environ.items() if k.startswith("XEN_")}}


def _control_listener(fd: int | None) -> socket.socket | None:
    """Libxl's listening QMP socket, kept by the supervisor (closed in QEMU)."""
    if fd is None:
        return None
    try:
        listener = socket.socket(fileno=fd)
    except OSError as exc:
        raise InvalidInput(
            f"-chardev ...,id=libxl-cmd,fd={fd}: descriptor {fd} is no open socket: "
            "libxl passes it open to its device model"
        ) from exc
    os.set_inheritable(listener.fileno(), False)
    return listener


def _binary(name: str) -> str:
    if not name:
        raise InvalidInput("no QEMU command line: give the binary and its options after '--'")
    if "/" in name:
        return name
    found = shutil.which(name, path=BASE_ENV["PATH"])
    if found is None:
        raise EnvironmentFailure(f"QEMU binary {name} not found in {BASE_ENV['PATH']}")
    return found


def exec_libxl_probe(argv: Sequence[str]) -> None:
    """Run libxl's capability probe as it is: it starts no guest, and only libxl talks to it.

    Raises:
        EnvironmentFailure: QEMU cannot be executed.
    """
    try:
        os.execv(argv[0], list(argv))  # noqa: S606 - libxl's own argv, no shell
    except OSError as exc:
        raise EnvironmentFailure(f"{argv[0]}: cannot run libxl's probe: {exc.strerror}") from exc
