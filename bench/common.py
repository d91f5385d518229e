"""What every benchmark shares: its ids, scratch accounts, statistics, processes, output.

The ids are the benchmark's own block, away from the tests' and the demo's: the range base
account ``xen-qemuuser-range-base`` (uid and gid 393216, so a VM of domid N runs as 393216+N)
and the reaper (uid 392000).  Every other account a benchmark needs gets a uid inside the
range block, above any domid or raw-QEMU slot used here.

/proc is read, programs are run and processes are signalled with the library's own helpers
(:mod:`qemu_depriv.host`); what is here is only what the library has no use for.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu_depriv.accounts.scratch import enter_scratch_accounts, write_scratch_accounts
from qemu_depriv.host.processes import signal_pid, wait_until
from qemu_depriv.host.procfs import ProcStatus, read_status, start_time
from qemu_depriv.host.programs import run_command

REPO = Path(__file__).resolve().parent.parent
#: Where every benchmark's state lives, as /tmp/bench-*: short paths, for unix sockets.
TMP = Path("/tmp")  # noqa: S108 - a fixed, documented place, cleaned after each worker
RESULTS = REPO / "bench" / "results"
PREFIX = "xen-qemuuser"
RANGE_BASE = 393216
BLOCK = 65536
REAPER_UID = 392000
#: Raw QEMU runs as RANGE_BASE + RAW_SLOT + i: above every domid a benchmark hands out.
RAW_SLOT = 1000
#: Accounts of the resolution tiers and of libvirt, inside the block, above every VM slot.
NAME_UID = RANGE_BASE + 40000
EXPLICIT_UID = RANGE_BASE + 50000
SHARED_UID = RANGE_BASE + 60000
LIBVIRT_QEMU_UID = RANGE_BASE + 65000
KVM_GID = RANGE_BASE + 65001
NOLOGIN = "/usr/sbin/nologin"


def is_bench_uid(uid: int) -> bool:
    """Whether ``uid`` belongs to the benchmarks' block."""
    return uid == REAPER_UID or RANGE_BASE <= uid < RANGE_BASE + BLOCK


def passwd_line(name: str, uid: int, gid: int | None = None) -> str:
    """A system account with no home and no login shell."""
    return f"{name}:x:{uid}:{uid if gid is None else gid}::/nonexistent:{NOLOGIN}"


def group_line(name: str, gid: int, members: Sequence[str] = ()) -> str:
    """A group entry."""
    return f"{name}:x:{gid}:{','.join(members)}"


#: The accounts a launch needs: the range base (every VM gets base + domid) and the reaper.
LAUNCH_PASSWD = (
    passwd_line(f"{PREFIX}-range-base", RANGE_BASE),
    passwd_line(f"{PREFIX}-reaper", REAPER_UID),
)
LAUNCH_GROUP = (
    group_line(f"{PREFIX}-range-base", RANGE_BASE),
    group_line(f"{PREFIX}-reaper", REAPER_UID),
)


def state_root(tag: str) -> Path:
    """A fresh, short directory ``/tmp/bench-TAG-XXXX`` (unix socket paths stay short)."""
    return Path(tempfile.mkdtemp(prefix=f"bench-{tag}-", dir=TMP))


def exit_on_sigterm() -> None:
    """Turn SIGTERM (the runner's time limit) into SystemExit, so that finally blocks run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def enter_accounts(root: Path, passwd: Iterable[str], group: Iterable[str]) -> Path:
    """Write scratch account files under ``root`` and make them this process's own.

    Call it first thing, while the process is single-threaded; children inherit the namespace.
    A worker refuses to start while processes of the benchmarks' uids run: every benchmark
    uses the same block of ids, so another one is running (or left something behind).
    """
    if early := bench_processes():
        raise SystemExit(
            f"processes of the benchmarks' uids already run: {[str(p) for p in early[:5]]}"
        )
    exit_on_sigterm()
    scratch = write_scratch_accounts(root / "accounts", passwd, group)
    enter_scratch_accounts(scratch)
    return scratch.root


# -- statistics ---------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """n, median, p10, p90, min, max and mean of ``values`` (seconds or any unit)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    deciles = statistics.quantiles(ordered, n=10) if len(ordered) > 1 else [ordered[0]] * 9
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p10": deciles[0],
        "p90": deciles[-1],
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


def ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    """median(numerator) / median(denominator), or None when either is empty."""
    if not numerator or not denominator:
        return None
    return statistics.median(numerator) / statistics.median(denominator)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    """The median of the per-repetition ratios (each pair ran back to back)."""
    pairs = [a / b for a, b in zip(numerator, denominator, strict=False) if b > 0]
    return statistics.median(pairs) if pairs else None


def rotations(variants: Sequence[str], repetitions: int) -> Iterator[tuple[int, str]]:
    """(repetition, variant) with the variants interleaved, the order rotating every time.

    Each repetition runs every variant once, back to back, so that a noisy neighbour hits
    all of them alike; rotating the order keeps any variant from always going first.
    """
    for rep in range(repetitions):
        shift = rep % len(variants)
        for variant in (*variants[shift:], *variants[:shift]):
            yield rep, variant


# -- processes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchProcess:
    """A live process of the benchmarks' block: pid and start time (to signal it safely)."""

    pid: int
    started: int
    status: ProcStatus

    def __str__(self) -> str:
        return f"{self.pid} {self.status.name} uids {self.status.uids}"


def bench_processes() -> list[BenchProcess]:
    """Every live (non-zombie) process with any of its four uids in the benchmarks' block.

    The library's ``live_pids_of_uid`` asks about one uid; this asks about 65,537 at once.
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            status = read_status(pid)
        except ValueError:
            continue
        started = start_time(pid)
        if status is None or started is None or status.zombie:
            continue
        if any(is_bench_uid(uid) for uid in status.uids):
            found.append(BenchProcess(pid, started, status))
    return found


def wait_for_no_bench_processes(timeout: float = 10.0) -> list[BenchProcess]:
    """Wait until no live process of the block is left; return those still there."""
    wait_until(lambda: not bench_processes(), timeout)
    return bench_processes()


def kill_leftovers(processes: Iterable[BenchProcess]) -> None:
    """SIGKILL each process, unless its pid went to another process meanwhile."""
    for process in processes:
        signal_pid(process.pid, process.started, signal.SIGKILL)


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid`` (field 4 of /proc/PID/stat), or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(raw[raw.rindex(b")") + 2 :].split()[1])


def end_child(process: subprocess.Popen[Any], *, grace: float = 0.0) -> None:
    """End and reap a child this worker started: SIGTERM and ``grace`` seconds, then SIGKILL."""
    if process.poll() is None and grace > 0:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace)
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


# -- programs -----------------------------------------------------------------------------


def run(argv: Sequence[str], *, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion through the library, with this worker's environment.

    The worker's environment, not the library's bare one: the CLI and the baselines are timed
    as an administrator's shell would run them.

    Raises:
        EnvironmentFailure: the program is missing, or ran past ``timeout``.
    """
    return run_command(argv, env=os.environ, timeout=timeout)


def qd_cli() -> str:
    """The ``qemu-depriv`` entry point of the running virtual environment."""
    return str(Path(sys.executable).parent / "qemu-depriv")


# -- output -------------------------------------------------------------------------------


def host_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    qemu = run(["/usr/bin/qemu-system-x86_64", "-version"], timeout=30)
    return {
        "kernel": platform.release(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "qemu": (qemu.stdout.splitlines() or ["?"])[0],
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON, creating the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def log(message: str) -> None:
    """Progress on stderr, prefixed with the worker's name."""
    name = Path(sys.argv[0]).stem if sys.argv and sys.argv[0] else "bench"
    print(f"[{name}] {message}", file=sys.stderr, flush=True)
