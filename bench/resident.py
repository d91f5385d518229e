"""Benchmark 8: what stays resident per supervised VM (``qemu-depriv run``).

In one private mount namespace over scratch accounts (the range base and the reaper), 50
``qemu-depriv --state-dir DIR run --name bench-res-N --json-status FILE -- qemu-system-x86_64
-machine pc -accel tcg -m 64 -smp 1 -nodefaults -no-user-config -display none`` are started
one after the other, each a child of this worker (its output to a log file), each waited for
until its status file says ``running`` with a verification.  ``run`` adds ``-S``, its QMP
socket, ``-sandbox``, the chroot and the account itself; the command line is a user's own.

With all 50 running, /proc/PID/smaps_rollup is read for each VM's two resident processes of
ours: the supervisor (the ``run`` process, which stays in the foreground) and its PID-namespace
wrapper (the ``unshare`` child between the supervisor and QEMU): Pss, Rss and
Private_Clean + Private_Dirty, in KiB.  Target: supervisor + wrapper PSS at most 8 MiB per VM
(median).  For reference: a bare interpreter of the same venv started alongside (``python -c
'import time; time.sleep(60)'``), and QEMU's own PSS (not ours).

Then each supervisor gets SIGTERM, its documented stop (the full teardown, exit 0); all must
exit 0 in time and leave nothing.  Anything still alive at the end gets SIGTERM, then SIGKILL,
by pid, and a stale lease left by a killed supervisor is torn down with the library.

Usage: python -m bench.resident OUT.json [COUNT]  (50 by default; fewer for a quick check)
"""

from __future__ import annotations

import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    LAUNCH_GROUP,
    LAUNCH_PASSWD,
    bench_processes,
    end_child,
    enter_accounts,
    host_info,
    kill_leftovers,
    log,
    state_root,
    summarize,
    wait_for_no_bench_processes,
    write_json,
)
from bench.vm import QEMU, qd
from qemu_depriv.host.procfs import children, read_status
from qemu_depriv.settings import Settings
from qemu_depriv.vms.launcher import system_launcher

COUNT = 50
#: KiB: supervisor + wrapper PSS per VM, median.
TARGET_KIB = 8192
START_TIMEOUT = 60.0
STOP_TIMEOUT = 120.0
TERM_GRACE = 15.0
QEMU_ARGS = (
    "-machine", "pc", "-accel", "tcg", "-m", "64", "-smp", "1", "-nodefaults",
    "-no-user-config", "-display", "none",
)  # fmt: skip
#: The bare interpreter, for reference; it says when it is up, then sleeps.
BARE = "import time; print('up', flush=True); time.sleep(60)"
FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty")


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """Rss, Pss and Private (clean + dirty) of ``pid`` in KiB; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    found: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            found[key] = int(rest.split()[0])
    if not found:  # a zombie's rollup is empty
        return None
    return {
        "rss": found["Rss"],
        "pss": found["Pss"],
        "private": found["Private_Clean"] + found["Private_Dirty"],
    }


def comm(pid: int) -> str | None:
    """The process's name, None when it is gone."""
    status = read_status(pid)
    return None if status is None else status.name


def read_json(path: Path) -> dict[str, Any]:
    """The status file ``run`` writes (atomically), or {} before it exists."""
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    return data


class Resident:
    """The supervisors this worker started, their status files and logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "s"
        self.supervisors: list[subprocess.Popen[bytes]] = []
        self.names: list[str] = []

    def status_file(self, index: int) -> Path:
        return self.root / f"status-{index}.json"

    def log_file(self, index: int) -> Path:
        return self.root / f"run-{index}.log"

    def start(self, index: int) -> float:
        """Start supervisor ``index`` and wait until its VM runs verified; the seconds."""
        name = f"bench-res-{index}"
        command = qd(
            self.state_dir, "run", "--name", name, "--json-status", str(self.status_file(index)),
            "--", QEMU, *QEMU_ARGS,
        )  # fmt: skip
        begin = time.perf_counter()
        with self.log_file(index).open("wb") as output:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.supervisors.append(process)
        self.names.append(name)
        deadline = begin + START_TIMEOUT
        while True:
            status = read_json(self.status_file(index))
            if status.get("state") == "running":
                break
            if process.poll() is not None or time.perf_counter() > deadline:
                tail = self.log_file(index).read_text(errors="replace")[-800:]
                raise RuntimeError(f"run {name}: exit {process.poll()}, not running: {tail}")
            time.sleep(0.02)
        seconds = time.perf_counter() - begin
        assert (status.get("verification") or {}).get("ok"), status
        assert status.get("supervisor") == process.pid, status
        return seconds

    def measure(self, index: int) -> dict[str, Any]:
        """smaps_rollup of VM ``index``'s supervisor, wrapper and QEMU."""
        supervisor = self.supervisors[index].pid
        status = read_json(self.status_file(index))
        wrappers = [p for p in children(supervisor) or [] if comm(p) == "unshare"]
        assert len(wrappers) == 1, f"supervisor {supervisor}: unshare children {wrappers}"
        (wrapper,) = wrappers
        qemu = int(status["pid"])
        assert qemu in (children(wrapper) or []), f"QEMU {qemu} is no child of {wrapper}"
        found = {
            "supervisor": smaps_rollup(supervisor),
            "wrapper": smaps_rollup(wrapper),
            "qemu": smaps_rollup(qemu),
        }
        missing = [role for role, value in found.items() if value is None]
        assert not missing, f"{self.names[index]}: gone while measured: {missing}"
        return {
            "name": self.names[index],
            "domid": status["domid"],
            "pids": {"supervisor": supervisor, "wrapper": wrapper, "qemu": qemu},
            **found,
        }

    def stop(self) -> dict[str, Any]:
        """SIGTERM to every supervisor at once; wait (bounded); their exit codes and times."""
        begin = time.perf_counter()
        for process in self.supervisors:
            process.send_signal(signal.SIGTERM)
        ends: list[float | None] = [None] * len(self.supervisors)
        deadline = begin + STOP_TIMEOUT
        while any(e is None for e in ends) and time.perf_counter() < deadline:
            for i, process in enumerate(self.supervisors):
                if ends[i] is None and process.poll() is not None:
                    ends[i] = time.perf_counter() - begin
            time.sleep(0.01)
        codes = [p.poll() for p in self.supervisors]
        states = [read_json(self.status_file(i)).get("state") for i in range(len(codes))]
        failures = [
            {"name": self.names[i], "code": code, "state": states[i],
             "log": self.log_file(i).read_text(errors="replace")[-400:]}
            for i, code in enumerate(codes)
            if code != 0 or states[i] != "stopped"
        ]  # fmt: skip
        done = [e for e in ends if e is not None]
        return {
            "seconds": max(done, default=time.perf_counter() - begin),
            "ends": summarize(done),
            "exited": len(done),
            "failures": failures,
        }

    def end_all(self) -> None:
        """SIGTERM to every supervisor still alive, a grace period, then SIGKILL; reap all."""
        alive = [p for p in self.supervisors if p.poll() is None]
        for process in alive:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)
        for process in alive:
            end_child(process)  # SIGKILL if it is still there; reap


def medians(rows: list[dict[str, Any]], role: str) -> dict[str, float]:
    """Median of each of ``role``'s fields over the VMs."""
    return {key: statistics.median(r[role][key] for r in rows) for key in ("pss", "rss", "private")}


def main() -> None:
    out = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else COUNT
    root = state_root("res")
    enter_accounts(root, LAUNCH_PASSWD, LAUNCH_GROUP)
    resident = Resident(root)
    bare: subprocess.Popen[str] | None = None
    rows: list[dict[str, Any]] = []
    started: list[float] = []
    stopped: dict[str, Any] = {}
    try:
        for index in range(count):
            started.append(resident.start(index))
            if (index + 1) % 10 == 0:
                log(f"{index + 1} supervised VMs running")
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert bare.stdout is not None
        assert bare.stdout.readline().strip() == "up", "the bare interpreter did not start"
        rows = [resident.measure(index) for index in range(count)]
        reference = smaps_rollup(bare.pid)
        assert reference is not None
        log(f"measured {count} VMs; stopping them by SIGTERM")
        stopped = resident.stop()
    finally:
        if bare is not None:
            end_child(bare)
        resident.end_all()
        # A supervisor that had to be killed leaves a stale lease: the library tears it down.
        launcher = system_launcher(Settings(state_dir=resident.state_dir))
        if launcher.store.exists():
            launcher.teardown.reconcile()
        left_rows = [r.name for r in launcher.store.all()] if launcher.store.exists() else []
        alive = wait_for_no_bench_processes(20)
        forced = [p.pid for p in alive]
        kill_leftovers(alive)
    for row in rows:
        row["ours_pss"] = row["supervisor"]["pss"] + row["wrapper"]["pss"]
    ours = [r["ours_pss"] for r in rows]
    median_ours = statistics.median(ours)
    write_json(
        out,
        {
            "benchmark": "resident",
            "count": count,
            "vms": rows,
            "kib": {
                "supervisor": medians(rows, "supervisor"),
                "wrapper": medians(rows, "wrapper"),
                "qemu": medians(rows, "qemu"),
                "bare_interpreter": reference,
            },
            "pss_kib": {
                "supervisor": summarize([r["supervisor"]["pss"] for r in rows]),
                "wrapper": summarize([r["wrapper"]["pss"] for r in rows]),
                "ours": summarize(ours),
                "qemu": summarize([r["qemu"]["pss"] for r in rows]),
            },
            "ours_pss_median_kib": median_ours,
            "target_kib": TARGET_KIB,
            "met": median_ours <= TARGET_KIB,
            "start_seconds": summarize(started),
            "stop": stopped,
            "store_rows_left": left_rows,
            "killed_by_pid": forced,
            "commands": {
                "run": "qemu-depriv --state-dir DIR run --name bench-res-N --json-status FILE "
                f"-- {QEMU} {' '.join(QEMU_ARGS)}",
                "bare_interpreter": f"{Path(sys.executable).name} -c {BARE!r}",
            },
            "host": host_info(),
        },
    )
    assert not stopped["failures"], f"supervisors that did not stop clean: {stopped['failures']}"
    assert stopped["exited"] == count, f"{count - stopped['exited']} supervisors did not exit"
    assert not left_rows, f"store rows left: {left_rows}"
    assert not forced, f"processes of the benchmark's uids survived: {forced}"
    assert not bench_processes(), "processes of the benchmark's uids survived"
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
