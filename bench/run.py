"""Run every benchmark worker, check for leftovers after each, write bench/results/.

``python -m bench`` (what ``make bench`` runs), as root.  Each worker is a process of its own
(it enters its own mount namespace), bounded in time; after each, no live process of the
benchmarks' uids may be left (any that is, is reported and killed by pid), and the worker's
``/tmp/bench-*`` directories are removed.  Exit 0 when every worker ran (libvirt being
unavailable is a reported result, not a failure) and nothing was left behind; 1 otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import report
from bench.common import (
    REPO,
    RESULTS,
    TMP,
    bench_processes,
    kill_leftovers,
    wait_for_no_bench_processes,
    write_json,
)

#: name, module and arguments, time limit in seconds.
WORKERS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("resolution-large", ("bench.resolution", "large"), 300),
    ("resolution-small", ("bench.resolution", "small"), 300),
    ("launch", ("bench.launch",), 300),
    ("libvirt", ("bench.libvirt",), 600),
    ("scale", ("bench.scale",), 900),
    ("audit", ("bench.audit",), 300),
    ("load", ("bench.load",), 1500),
    ("resident", ("bench.resident",), 600),
)
TERM_GRACE = 30.0


def bench_dirs() -> set[Path]:
    return set(TMP.glob("bench-*"))


def run_worker(name: str, module: tuple[str, ...], limit: float, logs: Path) -> dict[str, Any]:
    """Run one worker, echoing its progress; end it (SIGTERM, then SIGKILL) past ``limit``."""
    out = RESULTS / f"{name}.json"
    out.unlink(missing_ok=True)
    log_path = logs / f"{name}.log"
    command = [sys.executable, "-m", *module, str(out)]
    print(f"== {name}: {' '.join(command[1:])}", file=sys.stderr, flush=True)
    start = time.monotonic()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with log_path.open("w", encoding="utf-8") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace",
        )  # fmt: skip
        assert process.stdout is not None
        timer_fired = False

        def on_alarm(_signum: int, _frame: object) -> None:
            nonlocal timer_fired
            if timer_fired:  # SIGTERM did not end it within the grace period
                process.kill()
                return
            timer_fired = True
            process.send_signal(signal.SIGTERM)
            signal.setitimer(signal.ITIMER_REAL, TERM_GRACE)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, limit)
        try:
            for line in process.stdout:
                log.write(line)
                print(f"   {line.rstrip()}", file=sys.stderr, flush=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        try:
            code = process.wait(timeout=TERM_GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
    tail = log_path.read_text(errors="replace").splitlines()[-25:]
    status = "ok" if code == 0 and out.exists() else "failed"
    if timer_fired:
        status = "timed out"
    return {
        "status": status,
        "code": code,
        "seconds": time.monotonic() - start,
        "tail": tail,
        "log": str(log_path.relative_to(REPO)),
    }


def main() -> int:
    if os.geteuid() != 0:
        print("bench: run as root (namespaces, QEMU -runas, libvirtd)", file=sys.stderr)
        return 1
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    clean = True
    if early := bench_processes():
        print(
            f"bench: processes of the benchmark uids already run: {[str(p) for p in early]}",
            file=sys.stderr,
        )
        return 1
    for name, module, limit in WORKERS:
        before = bench_dirs()
        runs[name] = run_worker(name, module, limit, logs)
        left = wait_for_no_bench_processes(10)
        if left:
            clean = False
            runs[name]["leftovers"] = [str(p) for p in left]
            kill_leftovers(left)
            print(f"bench: {name} left {runs[name]['leftovers']}: killed", file=sys.stderr)
        for directory in bench_dirs() - before:
            shutil.rmtree(directory, ignore_errors=True)
        print(
            f"== {name}: {runs[name]['status']} in {runs[name]['seconds']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    results = {}
    for name, *_ in WORKERS:
        path = RESULTS / f"{name}.json"
        if path.exists():
            results[name] = json.loads(path.read_text(encoding="utf-8"))
    write_json(RESULTS / "runs.json", runs)
    summary = report.write(results, runs, RESULTS)
    print(f"bench: wrote {summary.relative_to(REPO)} and the JSON and PNG beside it")
    failed = [name for name, run in runs.items() if run["status"] != "ok"]
    if failed:
        print(f"bench: failed: {', '.join(failed)} (see bench/results/logs/)", file=sys.stderr)
    return 0 if clean and not failed else 1
