"""Benchmark 5: 100 VMs launched at once through the CLI, against 100 raw QEMUs at once.

In one private mount namespace over scratch accounts (the range base and the reaper), rounds
alternate between:

``raw``
    100 QEMUs started by hand at once (standalone options, ``-runas 393216+1000+i:393216``),
    timed until every QMP handshake is done, then killed by pid.
``cli``
    100 ``qemu-depriv launch CFG --json`` processes started at once (domids 1-100, so uids
    393217-393316), timed until the last one exits; each must exit 0 with a verified, running
    VM.  Meanwhile the RSS of the live CLI processes is summed every 20 ms; the peak of that sum,
    over 100, is the tool's own memory per VM at launch.  Then 100 ``qemu-depriv stop``
    processes at once, timed the same way, and a check that nothing is left: no live process
    of the VMs' uids, no VM cgroup, no row in the state store.

Target (issue 18): the 100 CLI launches at most 3x the 100 raw starts (medians over rounds).

Failures are reported with their error lines, never retried away: a stop that failed is run
again afterwards only so that the machine is left clean, and counted as failed.

Usage: python -m bench.scale OUT.json
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import forkserver
from bench.common import (
    LAUNCH_GROUP,
    LAUNCH_PASSWD,
    RANGE_BASE,
    RAW_SLOT,
    bench_processes,
    end_child,
    enter_accounts,
    host_info,
    kill_leftovers,
    log,
    parent_pid,
    ratio,
    rotations,
    state_root,
    summarize,
    wait_for_no_bench_processes,
    write_json,
)
from bench.forkserver import client_command
from bench.profiling import pyinstrument_command, render_file
from bench.vm import finished_run, qd, qmp_handshake, run_qd, start_raw, write_config
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.isolation.cgroups import PARENT, CgroupHost, unit_escape

COUNT = 100
ROUNDS = 2
TIMEOUT = 300.0
#: Time of the 100 concurrent CLI launches over that of the 100 concurrent raw starts.
TARGET = 3.0
SAMPLE_EVERY = 0.02
#: In the last CLI round, this VM's launch and stop run under the profiler.
PROFILED = COUNT // 2


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB, 0 when it is gone (or a zombie)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass
class RssSampler:
    """Sums the RSS of a set of pids every 20 ms in a thread; keeps the peak."""

    pids: list[int] = field(default_factory=list)
    peak_kib: int = 0
    peak_live: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            values = [rss_kib(pid) for pid in list(self.pids)]
            live = [v for v in values if v > 0]
            self.peak_kib = max(self.peak_kib, sum(live))
            self.peak_live = max(self.peak_live, len(live))
            self.samples += 1
            self._stop.wait(SAMPLE_EVERY)


@dataclass
class Batch:
    """N commands at once: when each ended, its exit code and error line."""

    seconds: float
    ends: list[float]
    codes: list[int]
    errors: list[str]
    outputs: list[dict[str, Any]]
    rss: RssSampler

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [
            {"index": i, "code": code, "error": self.errors[i]}
            for i, code in enumerate(self.codes)
            if code != 0
        ]


def run_batch(
    commands: list[list[str]], out_dir: Path, tag: str, *, unsampled: int | None = None
) -> Batch:
    """Start every command at once, sample their RSS, wait for all (bounded).

    Command ``unsampled`` (the one run under the profiler) is left out of the RSS sum.
    """
    out_dir.mkdir(exist_ok=True)
    sampler = RssSampler()
    processes: list[subprocess.Popen[bytes]] = []
    sampler.start()
    start = time.perf_counter()
    for i, command in enumerate(commands):
        with (
            (out_dir / f"{tag}-{i}.out").open("wb") as out,
            (out_dir / f"{tag}-{i}.err").open("wb") as err,
        ):
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        processes.append(process)
        if i != unsampled:
            sampler.pids.append(process.pid)
    ends: list[float | None] = [None] * len(processes)
    deadline = start + TIMEOUT
    while any(end is None for end in ends) and time.perf_counter() < deadline:
        for i, process in enumerate(processes):
            if ends[i] is None and process.poll() is not None:
                ends[i] = time.perf_counter() - start
        time.sleep(0.005)
    seconds = time.perf_counter() - start
    sampler.stop()
    for process in processes:
        end_child(process)  # one still running is past the deadline: hung, ours to end
    runs = [
        finished_run(
            process.returncode,
            ends[i] or seconds,
            (out_dir / f"{tag}-{i}.out").read_text(errors="replace"),
            (out_dir / f"{tag}-{i}.err").read_text(errors="replace"),
        )
        for i, process in enumerate(processes)
    ]
    return Batch(
        seconds=max((e for e in ends if e is not None), default=seconds),
        ends=[e if e is not None else seconds for e in ends],
        codes=[r.code for r in runs],
        errors=[r.error for r in runs],
        outputs=[r.data for r in runs],
        rss=sampler,
    )


def raw_round(root: Path) -> dict[str, Any]:
    """100 raw QEMUs at once until every QMP handshake is done; then kill them by pid."""
    sockets = [root / f"r{i}.sock" for i in range(COUNT)]
    for socket in sockets:
        socket.unlink(missing_ok=True)
    processes: list[subprocess.Popen[bytes]] = []

    def handshake(socket: Path, process: subprocess.Popen[bytes]) -> str | None:
        try:
            qmp_handshake(socket, process, TIMEOUT)
        except EnvironmentFailure as exc:
            return repr(exc)
        return None

    try:
        start = time.perf_counter()
        for i, socket in enumerate(sockets):
            uid = RANGE_BASE + RAW_SLOT + i
            processes.append(start_raw(socket, uid, root / f"r{i}.log"))
        with ThreadPoolExecutor(max_workers=COUNT) as pool:  # every handshake at once
            errors = list(pool.map(handshake, sockets, processes))
        seconds = time.perf_counter() - start
        qemu_rss = sum(rss_kib(p.pid) for p in processes)
    finally:
        for process in processes:
            end_child(process)
    failures = [e for e in errors if e is not None]
    return {
        "seconds": seconds,
        "failures": failures,
        "qemu_rss_kib_per_vm": qemu_rss / COUNT,
    }


def leftover_state(state_dir: Path, names: list[str]) -> dict[str, Any]:
    """What of the VMs is still there: live processes, cgroups, rows in the store."""
    listing = run_qd(state_dir, "list")
    rows = [vm["name"] for vm in listing.data.get("vms", []) if vm["name"] in names]
    roots = {root for _, root in CgroupHost.detect().placement().values()}
    escaped = {unit_escape(name) for name in names}
    cgroups = sorted(
        str(group)
        for root in roots
        for group in (root / PARENT).glob("*-*")
        if group.name.split("-", 1)[1] in escaped
    )
    return {
        "processes": [p.pid for p in bench_processes()],
        "cgroups": cgroups,
        "store_rows": rows,
    }


def profiled(commands: list[list[str]], index: int, out: Path) -> list[list[str]]:
    """``commands`` with command ``index`` run under pyinstrument, its profile saved to ``out``."""
    changed = list(commands)
    changed[index] = pyinstrument_command(commands[index][1:], out, interval=0.001)
    return changed


def cli_round(root: Path, state_dir: Path, round_no: int, *, profile: bool) -> dict[str, Any]:
    """100 launches at once, then stops of every VM in the store at once; failures, leftovers.

    With ``profile``, one launch and one stop (of VM PROFILED) run under pyinstrument among
    the others, and are left out of the RSS sums.
    """
    names = [f"bench-s-{i:03d}" for i in range(COUNT)]
    configs = [write_config(root, name) for name in names]
    out = root / f"out{round_no}"
    out.mkdir(exist_ok=True)
    launches = [qd(state_dir, "launch", str(c), "--json") for c in configs]
    if profile:
        launches = profiled(launches, PROFILED, out / "launch.pyisession")
    launch = run_batch(launches, out, "l", unsampled=PROFILED if profile else None)
    verified = [
        o.get("state") == "running" and bool(o.get("verification"))
        for o, code in zip(launch.outputs, launch.codes, strict=True)
        if code == 0
    ]
    pids = [int(o["pid"]) for o in launch.outputs if o.get("pid")]
    qemu_rss = sum(rss_kib(pid) for pid in pids)
    wrappers = [ppid for pid in pids if (ppid := parent_pid(pid)) is not None]
    wrapper_rss = sum(rss_kib(pid) for pid in wrappers)
    log(
        f"round {round_no}: {sum(verified)}/{COUNT} verified in {launch.seconds:.1f} s, "
        f"{len(launch.failures)} failed"
    )
    listed = [vm["name"] for vm in run_qd(state_dir, "list").data.get("vms", [])]
    stops = [qd(state_dir, "stop", name, "--json") for name in listed]
    stop_profiled = profile and names[PROFILED] in listed
    if stop_profiled:
        stops = profiled(stops, listed.index(names[PROFILED]), out / "stop.pyisession")
    stop = run_batch(
        stops, out, "s", unsampled=listed.index(names[PROFILED]) if stop_profiled else None
    )
    log(f"round {round_no}: stopped {len(listed)} in {stop.seconds:.1f} s")
    log(f"round {round_no}: {len(stop.failures)} stops failed")
    left_before_retry = leftover_state(state_dir, names)
    retried = [run_qd(state_dir, "stop", listed[f["index"]]) for f in stop.failures]
    alive = wait_for_no_bench_processes(10)
    left = leftover_state(state_dir, names)
    forced = [p.pid for p in alive]
    kill_leftovers(alive)
    result: dict[str, Any] = {
        "launch_seconds": launch.seconds,
        "launch_ends": launch.ends,
        "verified": sum(verified),
        "launch_failures": [{**f, "name": names[f["index"]]} for f in launch.failures],
        "peak_cli_rss_kib": launch.rss.peak_kib,
        "peak_cli_rss_kib_per_vm": launch.rss.peak_kib / len(launch.rss.pids),
        "peak_live_cli": launch.rss.peak_live,
        "rss_samples": launch.rss.samples,
        "qemu_rss_kib_per_vm": qemu_rss / max(1, len(pids)),
        "wrapper_rss_kib_per_vm": wrapper_rss / max(1, len(wrappers)),
        "stopped": len(listed),
        "teardown_seconds": stop.seconds,
        "teardown_ends": stop.ends,
        "peak_stop_rss_kib_per_vm": stop.rss.peak_kib / max(1, len(stop.rss.pids)),
        "stop_failures": [{**f, "name": listed[f["index"]]} for f in stop.failures],
        "leftovers_after_teardown": left_before_retry,
        "retried_stops": [{"code": r.code, "error": r.error} for r in retried],
        "leftovers_after_retry": left,
        "killed_by_pid": forced,
    }
    if profile:
        result["profiles"] = {
            "launch": render_file(out / "launch.pyisession", ["launch", configs[PROFILED].name]),
            "stop": render_file(out / "stop.pyisession", ["stop", names[PROFILED]]),
        }
    return result


def prototype_round(root: Path, state_dir: Path) -> dict[str, Any]:
    """100 launches at once through the resident-launcher prototype, then 100 stops.

    Not the product (bench/forkserver.py): what that design would do at a host's start. Its
    forked children are not the sampled processes: no memory figure is taken.
    """
    socket_path = root / "server.sock"
    server = forkserver.start(socket_path)
    try:
        names = [f"bench-p-{i:03d}" for i in range(COUNT)]
        out = root / "prototype"
        common = ("--state-dir", str(state_dir))
        launches = [
            client_command(socket_path, *common, "launch", str(write_config(root, n)), "--json")
            for n in names
        ]
        launch = run_batch(launches, out, "l")
        verified = sum(
            o.get("state") == "running" and bool(o.get("verification"))
            for o, code in zip(launch.outputs, launch.codes, strict=True)
            if code == 0
        )
        log(f"prototype: {verified}/{COUNT} verified in {launch.seconds:.1f} s")
        stops = [client_command(socket_path, *common, "stop", n, "--json") for n in names]
        stop = run_batch(stops, out, "s")
        log(f"prototype: stopped in {stop.seconds:.1f} s, {len(stop.failures)} failed")
    finally:
        end_child(server, grace=5)
    return {
        "launch_seconds": launch.seconds,
        "verified": verified,
        "launch_failures": launch.failures,
        "teardown_seconds": stop.seconds,
        "stop_failures": stop.failures,
    }


def main() -> None:
    out = Path(sys.argv[1])
    root = state_root("s")
    enter_accounts(root, LAUNCH_PASSWD, LAUNCH_GROUP)
    state_dir = root / "s"
    warm = run_qd(state_dir, "launch", str(write_config(root, "bench-s-warm")))
    assert warm.code == 0, warm.error
    assert run_qd(state_dir, "stop", "bench-s-warm").code == 0
    rounds: dict[str, list[dict[str, Any]]] = {"raw": [], "cli": []}
    try:
        for rep, variant in rotations(("raw", "cli"), ROUNDS):
            if variant == "raw":
                rounds["raw"].append(raw_round(root))
                log(f"round {rep}: raw {rounds['raw'][-1]['seconds']:.1f} s")
            else:
                last = rep == ROUNDS - 1
                rounds["cli"].append(cli_round(root, state_dir, rep, profile=last))
        prototype = prototype_round(root, state_dir)
    finally:
        for vm in run_qd(state_dir, "list").data.get("vms", []):  # after a failure: stop all
            run_qd(state_dir, "stop", vm["name"])
        kill_leftovers(wait_for_no_bench_processes(10))
    raw_seconds = [r["seconds"] for r in rounds["raw"]]
    cli_seconds = [r["launch_seconds"] for r in rounds["cli"]]
    write_json(
        out,
        {
            "benchmark": "scale",
            "count": COUNT,
            "rounds": rounds,
            "raw": summarize(raw_seconds),
            "cli_launch": summarize(cli_seconds),
            "cli_teardown": summarize([r["teardown_seconds"] for r in rounds["cli"]]),
            "ratio": ratio(cli_seconds, raw_seconds),
            "prototype": prototype | {"ratio": ratio([prototype["launch_seconds"]], raw_seconds)},
            "target_ratio": TARGET,
            "host": host_info(),
            "state_dir": str(root),
        },
    )
    assert not bench_processes(), "processes of the benchmark's uids survived"


if __name__ == "__main__":
    main()
