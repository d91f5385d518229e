"""Starting and stopping VMs three ways: raw QEMU, the qemu-depriv CLI, and observing a stop.

Raw QEMU is the floor every launch is compared with: the same machine options qemu-depriv's
standalone mode uses, ``-runas UID:GID``, started by hand and timed until a finished QMP
handshake, made with the launcher's own :class:`~qemu_depriv.qemu.qmp.QmpConnection` (so both
retry alike).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    RANGE_BASE,
    bench_processes,
    end_child,
    parent_pid,
    qd_cli,
    run,
)
from qemu_depriv.host.procfs import read_status, start_time
from qemu_depriv.qemu.qmp import QmpConnection

QEMU = "/usr/bin/qemu-system-x86_64"
MEMORY_MIB = 64


def write_config(directory: Path, name: str) -> Path:
    """An xl.cfg for a small standalone VM: HVM, TCG, 64 MiB, one vcpu, no disk, no NIC."""
    path = directory / f"{name}.cfg"
    path.write_text(
        f'name = "{name}"\ntype = "hvm"\nmemory = {MEMORY_MIB}\nvcpus = 1\n', encoding="utf-8"
    )
    return path


def raw_argv(socket: Path, uid: int, gid: int = RANGE_BASE) -> list[str]:
    """QEMU by hand, with the machine options of qemu-depriv's standalone mode."""
    return [
        QEMU, "-machine", "pc", "-accel", "tcg", "-m", str(MEMORY_MIB), "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none", "-S",
        "-qmp", f"unix:{socket},server=on,wait=off", "-runas", f"{uid}:{gid}",
    ]  # fmt: skip


def qmp_handshake(socket: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Connect and finish the QMP handshake, retrying until QEMU listens; then disconnect.

    Raises:
        EnvironmentFailure: QEMU exited first, or did not answer within ``timeout``.
    """
    with QmpConnection(socket, name="bench-raw") as qmp:
        qmp.connect(timeout=timeout, alive=lambda: process.poll() is None)


def start_raw(socket: Path, uid: int, log: Path) -> subprocess.Popen[bytes]:
    """Start raw QEMU (paused), its stderr to ``log``.

    Started by hand on purpose, not through the library's ``spawn``: it is the baseline.
    """
    with log.open("wb") as stderr:
        return subprocess.Popen(
            raw_argv(socket, uid),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def launch_raw(
    socket: Path, uid: int, log: Path, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], float]:
    """Start raw QEMU and time it until the QMP handshake is done; return (process, seconds)."""
    start = time.perf_counter()
    process = start_raw(socket, uid, log)
    try:
        qmp_handshake(socket, process, timeout)
    except BaseException:
        end_child(process)
        raise
    return process, time.perf_counter() - start


def qd(state_dir: Path, *args: str) -> list[str]:
    """A qemu-depriv command line against ``state_dir``."""
    debug = ["--debug"] if os.environ.get("BENCH_DEBUG") else []
    return [qd_cli(), "--state-dir", str(state_dir), *debug, *args]


@dataclass
class CliRun:
    """One qemu-depriv command: exit code, seconds, JSON output, last error line."""

    code: int
    seconds: float
    data: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def run_qd(state_dir: Path, *args: str, timeout: float = 120.0) -> CliRun:
    """Run ``qemu-depriv --state-dir DIR ARGS --json`` and time it."""
    start = time.perf_counter()
    done = run(qd(state_dir, *args, "--json"), timeout=timeout)
    return finished_run(done.returncode, time.perf_counter() - start, done.stdout, done.stderr)


def finished_run(code: int, seconds: float, stdout: str, stderr: str) -> CliRun:
    """A CliRun from what a qemu-depriv command printed."""
    try:
        data = json.loads(stdout) if stdout.strip() else {}
    except json.JSONDecodeError:
        data = {"unparsed": stdout[-500:]}
    return CliRun(code, seconds, data, error_text(stderr) if code else "")


def error_text(stderr: str) -> str:
    """The error lines of a failed command (qemu-depriv's, else its last lines)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if os.environ.get("BENCH_DEBUG"):
        return " | ".join(lines[-40:])
    errors = [line for line in lines if "error" in line.lower()]
    return " | ".join(errors[-3:] or lines[-3:])


# -- observing a stop ---------------------------------------------------------------------


def proc_state(pid: int, started: int | None) -> str:
    """``alive``, ``zombie`` (dead, not reaped) or ``gone``; a reused pid counts as gone."""
    status = read_status(pid)
    if status is None or (started is not None and start_time(pid) != started):
        return "gone"
    return "zombie" if status.zombie else "alive"


@dataclass
class Watched:
    """A process watched during a stop: when it died and when its pid went away (reaped)."""

    role: str
    pid: int
    parent: int
    started: int | None
    dead: float | None = None
    reaped: float | None = None
    #: The exit code (negative: killed by that signal), when this worker reaped it.
    exit_code: int | None = None


@dataclass
class StopObservation:
    """A stop command and what happened to the VM's processes meanwhile (seconds from start)."""

    returned: float
    code: int
    error: str
    watched: list[Watched]
    reaper: str
    live_at_return: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, with each process's state when the command returned."""
        data = asdict(self)
        for entry in data["watched"]:
            dead, reaped = entry["dead"], entry["reaped"]
            entry["dead_at_return"] = dead is not None and dead <= self.returned
            entry["reaped_at_return"] = reaped is not None and reaped <= self.returned
        return data


def watch(role: str, pid: int) -> Watched | None:
    """Start watching ``pid`` (None when it is already gone)."""
    parent = parent_pid(pid)
    if parent is None:
        return None
    return Watched(role, pid, parent, start_time(pid))


def observe_stop(
    command: list[str], watched: list[Watched], *, reap: bool, cap: float = 10.0
) -> StopObservation:
    """Run ``command`` and poll the watched processes every millisecond until all are gone.

    With ``reap`` the caller is those processes' parent (a child subreaper) and reaps them as
    soon as they die, as a prompt init would; otherwise their parent, PID 1 here, does.  The
    command runs as a child of its own (not through ``run_command``): it is polled meanwhile.
    """
    with tempfile.TemporaryFile() as stderr:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
        returned: float | None = None
        live_at_return: list[int] = []
        deadline = start + cap
        while True:
            now = time.perf_counter() - start
            if returned is None and process.poll() is not None:
                returned = now
                live_at_return = [p.pid for p in bench_processes()]
            pending = False
            for entry in watched:
                if entry.reaped is None:
                    pending |= _poll_watched(entry, now, reap=reap)
            if (returned is not None and not pending) or time.perf_counter() > deadline:
                break
            time.sleep(0.001)
        code = process.wait(timeout=60)
        stderr.seek(0)
        said = stderr.read().decode("utf-8", "replace")
    return StopObservation(
        returned=time.perf_counter() - start if returned is None else returned,
        code=code,
        error=error_text(said) if code else "",
        watched=watched,
        reaper="bench worker (child subreaper, reaps at once)" if reap else "PID 1",
        live_at_return=live_at_return,
    )


def _poll_watched(entry: Watched, now: float, *, reap: bool) -> bool:
    """Note when ``entry`` died and went away (reaping it with ``reap``); whether it is left."""
    state = proc_state(entry.pid, entry.started)
    if state != "alive" and entry.dead is None:
        entry.dead = now
    if state == "zombie" and reap:
        with contextlib.suppress(ChildProcessError):
            pid, status = os.waitpid(entry.pid, os.WNOHANG)
            if pid == entry.pid:
                entry.exit_code = os.waitstatus_to_exitcode(status)
        state = proc_state(entry.pid, entry.started)
    if state == "gone":
        entry.reaped = now
        return False
    return True
