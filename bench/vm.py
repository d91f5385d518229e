"""Starting and stopping VMs three ways: raw QEMU, the qemu-depriv CLI, and observing a stop.

Raw QEMU is the floor every launch is compared with: the same machine options qemu-depriv's
standalone mode uses, ``-runas UID:GID``, started by hand and timed until a finished QMP
handshake (``qemu.qmp``'s ``QMPClient``, retried every 10 ms as the launcher retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qemu.qmp import ConnectError, QMPClient

from bench.common import RANGE_BASE, bench_processes, qd_cli, read_proc

QEMU = "/usr/bin/qemu-system-x86_64"
MEMORY_MIB = 64
QMP_RETRY = 0.01


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


async def qmp_handshake(socket: Path, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Connect and finish the QMP handshake, retrying until QEMU listens; then disconnect."""
    client = QMPClient("bench-raw")
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"raw QEMU exited with {process.returncode} before QMP")
        try:
            await client.connect(str(socket))
        except ConnectError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(QMP_RETRY)
        else:
            break
    await client.disconnect()


def start_raw(socket: Path, uid: int, log: Path) -> subprocess.Popen[bytes]:
    """Start raw QEMU (paused), its stderr to ``log``."""
    with log.open("wb") as stderr:
        return subprocess.Popen(
            raw_argv(socket, uid),
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip


def launch_raw(socket: Path, uid: int, log: Path, timeout: float = 30.0) -> tuple[Any, float]:
    """Start raw QEMU and time it until the QMP handshake is done; return (process, seconds)."""
    start = time.perf_counter()
    process = start_raw(socket, uid, log)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(qmp_handshake(socket, process, timeout))
        elapsed = time.perf_counter() - start
    except BaseException:
        kill_raw(process)
        raise
    finally:
        loop.close()
    return process, elapsed


def kill_raw(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL raw QEMU by its pid and reap it."""
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)


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
    done = subprocess.run(
        qd(state_dir, *args, "--json"), capture_output=True, text=True, timeout=timeout,
        check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
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
    proc = read_proc(pid)
    if proc is None or (started is not None and start_time(pid) != started):
        return "gone"
    return "zombie" if proc.zombie else "alive"


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat, or None when the process is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[19])


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
    proc = read_proc(pid)
    if proc is None:
        return None
    return Watched(role, pid, proc.ppid, start_time(pid))


def observe_stop(
    command: list[str], watched: list[Watched], *, reap: bool, cap: float = 10.0
) -> StopObservation:
    """Run ``command`` and poll the watched processes every millisecond until all are gone.

    With ``reap`` the caller is those processes' parent (a child subreaper) and reaps them as
    soon as they die, as a prompt init would; otherwise their parent, PID 1 here, does.
    """
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
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
            if entry.reaped is not None:
                continue
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
            else:
                pending = True
        if (returned is not None and not pending) or time.perf_counter() > deadline:
            break
        time.sleep(0.001)
    stdout, stderr = process.communicate(timeout=60)
    if returned is None:
        returned = time.perf_counter() - start
    del stdout
    return StopObservation(
        returned=returned,
        code=process.returncode,
        error=error_text(stderr) if process.returncode else "",
        watched=watched,
        reaper="bench worker (child subreaper, reaps at once)" if reap else "PID 1",
        live_at_return=live_at_return,
    )
