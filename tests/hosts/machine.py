"""A Debian host booted under QEMU: its command line (pure), booting it, running commands in it.

Boot choices, and why:

- ``-kernel/-initrd/-append`` with the distribution's own kernel and initrd (``images``): no boot
  loader or firmware to maintain, and the kernel command line is ours to set. It sets nothing
  about cgroups: the guest runs cgroup v2 only because that is Debian's default, which is what
  the tier exists to test.
- The root filesystem is a virtio disk opened with ``snapshot=on``: the guest writes to a
  temporary overlay that QEMU creates in ``$TMPDIR`` (pytest's directory) and deletes, so the
  cached image stays pristine and every boot starts from the same state.
- The console is the first serial port, written to ``serial-ACCEL.log`` in the work directory,
  for a developer reading what the guest did; the harness never parses it.
- Commands travel over virtio-serial to qemu-ga (``qga``); files travel over two 9p shares:
  ``payload`` (read-only: the checkout and wheels) and ``results`` (written by the guest, read
  by the host as it goes, so even a guest that hangs later leaves what it had written).
- ``-no-reboot``, ``panic=1`` and ``oops=panic``: a guest whose kernel oopses, panics or reboots
  ends QEMU (the harness reports it with the console's tail) instead of limping on or looping.
- Every guest QEMU has ``GUEST_MARKER`` in its command line (``-name``), so a suite-wide check for
  leftover QEMU processes, or an audit of the machine, can tell the harness's guests from the
  product's VMs.
- KVM is tried only when ``/dev/kvm`` opens, and believed only when the guest actually boots:
  ``/dev/kvm`` may run a trivial VM and still fail a real kernel. This development machine's
  nested ``kvm_pvm`` is one: with ``-cpu host`` QEMU aborts on an MSR write, with a named CPU
  model the kernel stops in a "KVM internal error" (emulation failure; QMP then reports
  ``internal-error``) or prints nothing at all. The first two end the attempt within seconds,
  a silent guest after ``BOOT_TIMEOUT["kvm"]``; TCG follows, and the reason is kept in
  ``Guest.notes``.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import logging
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from tests.hosts.commands import host_env, tail
from tests.hosts.errors import CommandFailed, GuestError, GuestTimeout, HostsError
from tests.hosts.images import Image
from tests.hosts.qga import AgentError, AgentTimeout, ExecStatus, GuestAgent

log = logging.getLogger(__name__)

#: In every guest QEMU's command line; nothing else on the machine carries it.
GUEST_MARKER = "qemu-depriv-hosts-guest"
QEMU = "qemu-system-x86_64"
#: Enough for the guest's own services plus the small nested VMs of the host suite.
MEMORY_MIB = 4096
#: The machine has two cores; more vCPUs would only add contention under TCG.
CPUS = 2
#: One host thread for all vCPUs. Multi-threaded TCG boots ~20 s faster, but on QEMU 7.2 the
#: Debian 13 kernel died in one boot of about eight with "Oops: int3" in code it had just
#: patched (text_poke across vCPUs); systemd flips such static keys at run time too.
TCG_THREADS = "single"
#: Booting a Debian kernel and systemd to qemu-ga: ~80 s under TCG on an idle two-core machine.
BOOT_TIMEOUT = {"kvm": 120.0, "tcg": 600.0}
#: From qemu-ga answering to ``systemctl is-system-running`` settling.
SETTLE_TIMEOUT = 300.0
#: Extra host-side patience beyond a command's own timeout, before the guest counts as hung.
AGENT_GRACE = 60.0
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_PR_SET_PDEATHSIG = 1
_MAX_SOCKET_PATH = 107


@dataclass(frozen=True)
class MachineConfig:
    """One boot of one image: what QEMU gets, and where its files go."""

    name: str
    image: Image
    accel: str
    workdir: Path
    payload: Path
    results: Path
    memory_mib: int = MEMORY_MIB
    cpus: int = CPUS

    @property
    def serial_log(self) -> Path:
        """The guest's console (kernel, systemd, getty)."""
        return self.workdir / f"serial-{self.accel}.log"

    @property
    def qemu_log(self) -> Path:
        """QEMU's own stdout and stderr (its warnings, a KVM error dump)."""
        return self.workdir / f"qemu-{self.accel}.log"

    @property
    def agent_socket(self) -> Path:
        """The unix socket QEMU serves for qemu-ga's virtio-serial port."""
        return self.workdir / "qga.sock"

    @property
    def qmp_socket(self) -> Path:
        """QMP, to see a guest the accelerator stopped (``internal-error``)."""
        return self.workdir / "qmp.sock"


def qemu_argv(config: MachineConfig) -> list[str]:
    """The guest's QEMU command line (see the module docstring for each choice)."""
    image = config.image
    cpu = "host" if config.accel == "kvm" else "max"
    accel = "kvm" if config.accel == "kvm" else f"tcg,thread={TCG_THREADS}"
    append = "root=/dev/vda rw console=ttyS0 panic=1 oops=panic systemd.show_status=1"
    return [
        QEMU,
        "-name", f"{GUEST_MARKER}-{config.name},process=qdh-{config.name}",
        "-machine", "q35",
        "-accel", accel,
        "-cpu", cpu,
        "-m", str(config.memory_mib),
        "-smp", str(config.cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", append,
        "-drive", f"file={image.rootfs},format=raw,if=virtio,snapshot=on,cache=unsafe",
        "-chardev", f"file,id=console,path={config.serial_log}",
        "-serial", "chardev:console",
        "-device", "virtio-serial-pci",
        "-chardev", f"socket,id=qga,path={config.agent_socket},server=on,wait=off",
        "-device", "virtserialport,chardev=qga,name=org.qemu.guest_agent.0",
        "-qmp", f"unix:{config.qmp_socket},server=on,wait=off",
        "-virtfs", f"local,path={config.payload},mount_tag=payload,security_model=none,readonly=on",
        "-virtfs", f"local,path={config.results},mount_tag=results,security_model=none",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip


def kvm_usable() -> bool:
    """Whether ``/dev/kvm`` opens for read and write (necessary, far from sufficient)."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


@dataclass(frozen=True)
class GuestResult:
    """A command's outcome in the guest. ``returncode`` 124 or 137: its own timeout fired."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    truncated: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command exited 0."""
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        """Whether ``timeout(1)`` ended the command (TERM: 124, KILL after the grace: 137)."""
        return self.returncode in (124, 137)


class Runstate(enum.Enum):
    """Where a guest is in its life; ``run`` is refused outside ``RUNNING``."""

    BOOTING = "booting"
    RUNNING = "running"
    DEAD = "dead"


@dataclass
class Guest:
    """A booted Debian host. Use ``run``/``check``; ``close`` (or the fixture) kills its QEMU.

    ``notes`` says how it came up (which accelerator, and why not the other); ``timings`` holds
    seconds from starting QEMU to qemu-ga answering (``agent``) and to systemd settling
    (``running``).
    """

    config: MachineConfig
    process: subprocess.Popen[bytes]
    agent: GuestAgent
    state: Runstate = Runstate.BOOTING
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    system_state: str = ""
    #: Host-side patience beyond a command's own timeout before the guest counts as hung.
    grace: float = AGENT_GRACE
    _death: str = ""

    @property
    def name(self) -> str:
        """The distribution's name (``bookworm``, ``trixie``)."""
        return self.config.name

    @property
    def accel(self) -> str:
        """The accelerator the guest runs on (``kvm`` or ``tcg``)."""
        return self.config.accel

    @property
    def results(self) -> Path:
        """The host side of ``/mnt/results`` once ``provision.mount_shares`` mounted it."""
        return self.config.results

    def run(
        self,
        argv: list[str],
        *,
        timeout: float,
        env: dict[str, str] | None = None,
        cwd: str = "/root",
        stdin: bytes | None = None,
        doing: str | None = None,
    ) -> GuestResult:
        """Run ``argv`` in the guest as root, in ``cwd``, with exactly ``env`` (plus PATH, LANG).

        ``timeout`` is enforced inside the guest by ``timeout(1)`` (the result then says
        ``timed_out``); a guest that does not report back ``grace`` seconds after that is
        hung: its QEMU is killed and ``GuestTimeout`` raised, naming ``doing`` (by default, the
        command). Raises ``GuestError`` when the guest is not running.
        """
        doing = doing or f"running {shlex.join(argv)}"
        self._require_running(doing)
        wrapped = ["/usr/bin/timeout", "--kill-after=10", f"{timeout:g}", "/usr/bin/env"]
        wrapped += ["-C", cwd, "--", *argv]
        full_env = {"PATH": GUEST_PATH, "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        started = time.monotonic()
        try:
            pid = self.agent.spawn(wrapped, full_env, stdin)
            status = self._wait_for_exit(pid, started + timeout + self.grace)
        except AgentTimeout as exc:
            self.kill(f"hung while {doing}")
            raise GuestTimeout(
                self.name, doing, f"{exc}; QEMU killed", self.config.serial_log, self._tail()
            ) from exc
        except AgentError as exc:
            self.kill(f"lost while {doing}")
            raise GuestError(
                self.name, doing, str(exc), self.config.serial_log, self._tail()
            ) from exc
        return GuestResult(
            argv=tuple(argv),
            returncode=status.returncode,
            stdout=status.stdout.decode(errors="replace"),
            stderr=status.stderr.decode(errors="replace"),
            seconds=time.monotonic() - started,
            truncated=status.truncated,
        )

    def _wait_for_exit(self, pid: int, deadline: float) -> ExecStatus:
        """Poll qemu-ga, quickly at first, until ``pid`` exits; ``AgentTimeout`` at ``deadline``."""
        pause = 0.05
        while (status := self.agent.status(pid)) is None:
            if time.monotonic() > deadline:
                raise AgentTimeout(f"pid {pid} did not exit by the harness's deadline")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
        return status

    def check(
        self,
        argv: list[str],
        *,
        timeout: float,
        doing: str,
        env: dict[str, str] | None = None,
        cwd: str = "/root",
        stdin: bytes | None = None,
    ) -> GuestResult:
        """``run``, and raise ``CommandFailed`` (with both outputs' tails) unless it exits 0."""
        result = self.run(argv, timeout=timeout, env=env, cwd=cwd, stdin=stdin, doing=doing)
        if not result.ok:
            raise CommandFailed(
                self.name,
                doing,
                f"{shlex.join(argv)} exited {result.returncode}"
                + (" (its timeout fired)" if result.timed_out else "")
                + f"\nstdout:\n{_last(result.stdout)}\nstderr:\n{_last(result.stderr)}",
                self.config.serial_log,
                self._tail(),
            )
        return result

    def shell(self, script: str, *, timeout: float, doing: str) -> GuestResult:
        """``check`` a POSIX shell script (``set -eu``), passed on standard input."""
        return self.check(["/bin/sh", "-eu"], timeout=timeout, doing=doing, stdin=script.encode())

    def kill(self, why: str) -> None:
        """End QEMU now (SIGTERM, then SIGKILL), by its pid; idempotent."""
        if self.state is not Runstate.DEAD:
            self._death = why
        self.state = Runstate.DEAD
        self.agent.close()
        stop(self.process)

    def close(self) -> None:
        """Shut the guest down for good. Its disk was a snapshot: there is nothing to save."""
        self.kill("closed")

    def _require_running(self, doing: str) -> None:
        if self.state is not Runstate.RUNNING:
            problem = f"the guest is {self.state.value}"
            if self._death:
                problem += f" ({self._death})"
            raise GuestError(self.name, doing, problem, self.config.serial_log, self._tail())

    def _tail(self) -> str:
        return tail(self.config.serial_log, 15)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (QEMU exits cleanly on it), SIGKILL after 10 s; reap it either way."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def boot(
    name: str, image: Image, *, accels: list[str], workdir: Path, payload: Path, results: Path
) -> Guest:
    """Boot ``image`` with the first accelerator in ``accels`` that brings it up.

    Each failed attempt's QEMU is killed and the reason added to the guest's ``notes``. Raises
    ``GuestTimeout`` or ``GuestError`` (with the serial log's tail) when no accelerator works.
    """
    notes: list[str] = []
    for position, accel in enumerate(accels):
        config = MachineConfig(name, image, accel, workdir, payload, results)
        try:
            guest = _boot_once(config)
        except GuestError as exc:
            if position == len(accels) - 1:
                raise
            notes.append(f"{accel} failed: {exc.args[0].splitlines()[0]}")
            log.warning("%s: %s; trying %s", name, notes[-1], accels[position + 1])
            continue
        guest.notes = [*notes, f"booted with {accel}"]
        return guest
    raise HostsError(f"no accelerator to boot {name} with")


def _boot_once(config: MachineConfig) -> Guest:
    for path in (config.agent_socket, config.qmp_socket):
        if len(str(path)) > _MAX_SOCKET_PATH:
            raise HostsError(f"socket path too long for a unix socket: {path}")
        path.unlink(missing_ok=True)
    argv = qemu_argv(config)
    log.info("booting %s: %s", config.name, shlex.join(argv))
    started = time.monotonic()
    with config.qemu_log.open("wb") as qemu_out:
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=qemu_out,
            stderr=subprocess.STDOUT,
            env=host_env({"TMPDIR": str(config.workdir)}),
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, before exec
        )
    guest = Guest(config, process, GuestAgent(config.agent_socket))
    try:
        _wait_for_agent(guest, started)
        guest.timings["agent"] = time.monotonic() - started
        guest.state = Runstate.RUNNING
        settled = guest.run(
            ["systemctl", "is-system-running", "--wait"],
            timeout=SETTLE_TIMEOUT,
            doing="waiting for systemd to finish booting",
        )
        guest.system_state = settled.stdout.strip()
        guest.timings["running"] = time.monotonic() - started
    except BaseException:
        guest.kill("failed to boot")
        raise
    return guest


def _wait_for_agent(guest: Guest, started: float) -> None:
    """Until qemu-ga answers; fail fast when QEMU exits or the accelerator stops the guest."""
    config = guest.config
    doing = f"booting with {config.accel}"
    deadline = started + BOOT_TIMEOUT[config.accel]
    monitor: QEMUMonitorProtocol | None = None
    try:
        while True:
            problem = _dead_or_stopped(guest.process, config, monitor)
            if problem:
                raise GuestError(config.name, doing, problem, config.serial_log, _both(config))
            if time.monotonic() > deadline:
                raise GuestTimeout(
                    config.name,
                    doing,
                    f"qemu-ga did not answer within {BOOT_TIMEOUT[config.accel]:.0f} s",
                    config.serial_log,
                    _both(config),
                )
            if monitor is None:
                monitor = _monitor(config.qmp_socket)
            try:
                if not guest.agent.connected:
                    guest.agent.connect()
                if guest.agent.sync(2.0):
                    return
            except OSError:
                time.sleep(0.5)
            except AgentError:
                guest.agent.close()
                time.sleep(0.5)
    finally:
        if monitor is not None:
            with contextlib.suppress(Exception):
                monitor.close()


def _monitor(path: Path) -> QEMUMonitorProtocol | None:
    if not path.exists():
        return None
    monitor = QEMUMonitorProtocol(str(path))
    monitor.settimeout(5)
    try:
        monitor.connect()
    except Exception:  # noqa: BLE001 - QEMU not ready yet: try again on the next round
        return None
    return monitor


def _dead_or_stopped(
    process: subprocess.Popen[bytes], config: MachineConfig, monitor: QEMUMonitorProtocol | None
) -> str:
    """Why booting cannot succeed any more, or an empty string."""
    status = process.poll()
    if status is not None:
        return f"QEMU exited with status {status} ({_first_error(config.qemu_log)})"
    if monitor is None:
        return ""
    try:
        reply = monitor.cmd("query-status")
    except Exception:  # noqa: BLE001 - a monitor hiccup is not a verdict on the guest
        return ""
    state = reply.get("status") if isinstance(reply, dict) else None
    if state in ("internal-error", "guest-panicked", "shutdown", "io-error"):
        return f"QEMU reports the guest {state}; its output: {config.qemu_log}"
    return ""


def _first_error(qemu_log: Path) -> str:
    """The line of QEMU's output that says why it stopped, and where the rest is."""
    lines = tail(qemu_log, 200).splitlines()
    errors = [line for line in lines if "error" in line.lower() or "assert" in line.lower()]
    found = (errors or lines or ["no output"])[0]
    return f"{found.strip()[:200]}; all of it in {qemu_log}"


def _both(config: MachineConfig) -> str:
    return f"{tail(config.serial_log, 10)}\n-- QEMU's output:\n{tail(config.qemu_log, 10)}"


def _last(text: str, lines: int = 30) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL QEMU if pytest dies without running its finally."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
