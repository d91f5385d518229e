"""Benchmark 7: launch, stop, list and audit as the host fills up, against raw QEMU each time.

In one private mount namespace over scratch accounts (the range base and the reaper), the host
is filled with background VMs, level by level (0, 50, 100, 150, 200 running VMs): each is
launched through the library in this process (``system_launcher(...).launch``, named
``bench-bg-N``, its domid the store's smallest free one), resumed and left running, as a real
guest would be.  The background grows from one level to the next; it is never relaunched.

At each level, after one warm-up round that is not counted, every variant runs once per
repetition, interleaved with a rotating order:

``raw``
    QEMU by hand (standalone options, ``-runas 393216+1000:393216``) until a finished QMP
    handshake; killed by pid afterwards.
``launch`` and ``stop``
    ``qemu-depriv --state-dir DIR launch CFG --json`` until it exits (exit 0, state running,
    verification present), then ``qemu-depriv --state-dir DIR stop NAME --json`` of that VM
    until it exits (exit 0): one slot of the rotation, each timed on its own.
``list``
    ``qemu-depriv --state-dir DIR list --json`` until it exits; it must list every background
    VM as running.
``audit_library``
    ``audit_host(DIR, LibcLookup())`` in this process.
``audit_cli``
    ``qemu-depriv --state-dir DIR audit --json`` until it exits.  Audit exits 1 when any QEMU
    on the host has a warning or worse; this worker's VMs must audit clean (and all be seen),
    foreign QEMUs (another user's) are only counted.  A finding on one of ours is recorded,
    and the worker fails after writing its JSON.

Each is compared with the raw start at the same level.  Flatness (issue 18): for launch, stop,
list and audit, (ratio to raw at the top level) / (ratio to raw at level 0), at most 1.10;
the library's audit at the top level at most 100 ms; and stop at level 0 at most 3x a raw
start.

Usage: python -m bench.load OUT.json [LEVELS [REPETITIONS]]
       (LEVELS comma-separated, e.g. ``0,20 3`` for a quick check; the first must be 0)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    LAUNCH_GROUP,
    LAUNCH_PASSWD,
    RANGE_BASE,
    RAW_SLOT,
    bench_processes,
    end_child,
    enter_accounts,
    host_info,
    log,
    paired_ratio,
    ratio,
    rotations,
    state_root,
    summarize,
    wait_for_no_bench_processes,
    write_json,
)
from bench.vm import launch_raw, run_qd, write_config
from qemu_depriv.accounts.nss import LibcLookup
from qemu_depriv.checks.audit import Audited, Severity, audit_host
from qemu_depriv.settings import Settings
from qemu_depriv.vms.launcher import LaunchRequest, system_launcher
from qemu_depriv.xl.config import load_domain

LEVELS = (0, 50, 100, 150, 200)
REPETITIONS = 7
WARMUP = 1
#: Seconds the background gets after it grew (the new guests' firmware runs) before timing.
SETTLE = 5.0
#: Longest wait for the host to be quiet (the background's boots, an earlier worker's load);
#: quiet is under this many CPUs busy, over one second (halted guests' timers stay on it).
QUIET_WAIT, QUIET_CPUS = 120.0, 0.5
#: A boot sector that halts the guest's CPU for good (cli; hlt; jmp back to the hlt): an idle
#: guest, where a diskless one would rerun SeaBIOS's boot every 60 s.
HALT_SECTOR = b"\xfa\xf4\xeb\xfd".ljust(510, b"\0") + b"\x55\xaa"
#: The slots of a rotation; ``launch`` is a launch then a stop of the same VM.
SLOTS = ("raw", "launch", "list", "audit_library", "audit_cli")
SERIES = ("raw", "launch", "stop", "list", "audit_library", "audit_cli")
#: The commands whose flatness is judged, each against raw at the same level.
FLAT = {"launch": "launch", "stop": "stop", "list": "list", "audit": "audit_cli"}
TARGETS = {"flatness": 1.10, "audit_library_seconds": 0.100, "stop_to_raw_at_0": 3.0}
#: Audit's findings from this severity up are failures on this worker's VMs.
FAILING = Severity.WARNING
#: What the plot needs of each level's launch and raw summaries.
PLOTTED = ("median", "p10", "p90")


class Load:
    """The namespace, the state directory, a launcher over it and the background VMs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "s"
        self.launcher = system_launcher(Settings(state_dir=self.state_dir))
        self.lookup = LibcLookup()
        self.background: list[str] = []
        self.count = 0
        self.level = 0
        #: Findings of warning or worse on this worker's VMs (with level and VM): must stay empty.
        self.bad: list[dict[str, Any]] = []
        #: Such findings on foreign QEMUs, by code over every audit, only counted; and how many
        #: QEMUs (ours and all) each audit saw.
        self.foreign: Counter[str] = Counter()
        self.audited: list[dict[str, int]] = []

    # -- the background ---------------------------------------------------------------------

    def grow(self, target: int) -> list[float]:
        """Launch background VMs through the library until ``target`` run; their seconds."""
        seconds = []
        while len(self.background) < target:
            name = f"bench-bg-{len(self.background)}"
            config, disk = self.root / "bg.cfg", self.root / f"{name}.img"
            disk.write_bytes(HALT_SECTOR)  # one each: QEMU locks a disk it may write
            config.write_text(
                f'name = "{name}"\ntype = "hvm"\nmemory = 64\n'
                f'disk = [ "format=raw, vdev=hda, access=rw, target={disk}" ]\n',
                encoding="utf-8",
            )
            request = LaunchRequest(config=load_domain(config), start_timeout=60)
            start = time.perf_counter()
            record = self.launcher.launch(request)
            seconds.append(time.perf_counter() - start)
            assert record.state == "running", record
            assert record.verification, record
            self.background.append(name)
            if len(self.background) % 25 == 0:
                log(f"background: {len(self.background)} running")
        return seconds

    def quiet(self) -> dict[str, float]:
        """Wait until the host is quiet: the background booted, nothing else running hard.

        Returns how long that took, the CPUs the whole host kept busy over the last second,
        and those the background's QEMUs did.
        """
        pids = [r.pid for r in self.launcher.store.all() if r.pid is not None]
        tick = os.sysconf("SC_CLK_TCK")
        start = time.monotonic()
        busy = background = 0.0
        while time.monotonic() - start < QUIET_WAIT:
            host, ours = busy_ticks(), sum(cpu_ticks(pid) for pid in pids)
            time.sleep(1.0)
            busy = (busy_ticks() - host) / tick
            background = (sum(cpu_ticks(pid) for pid in pids) - ours) / tick
            if busy < QUIET_CPUS:
                break
        return {
            "seconds": time.monotonic() - start,
            "host_cpus": busy,
            "background_cpus": background,
        }

    # -- the variants -----------------------------------------------------------------------

    def raw(self) -> float:
        socket = self.root / "raw.sock"
        socket.unlink(missing_ok=True)
        process, seconds = launch_raw(socket, RANGE_BASE + RAW_SLOT, self.root / "raw.log")
        end_child(process)
        return seconds

    def launch_stop(self) -> tuple[float, float]:
        """CLI launch of a new VM, then CLI stop of it: (launch seconds, stop seconds)."""
        self.count += 1
        name = f"bench-ld-{self.count}"
        config = write_config(self.root, name)
        launched = run_qd(self.state_dir, "launch", str(config))
        try:
            assert launched.code == 0, f"launch {name}: {launched.error}"
            assert launched.data.get("state") == "running", launched.data
            assert launched.data.get("verification"), launched.data
            stopped = run_qd(self.state_dir, "stop", name)
            assert stopped.code == 0, f"stop {name}: {stopped.error}"
            assert stopped.data.get("state") == "stopped", stopped.data
        finally:
            if self.launcher.store.find(name) is not None:
                self.launcher.teardown.stop(name, timeout=5)
        return launched.seconds, stopped.seconds

    def listing(self) -> float:
        listed = run_qd(self.state_dir, "list")
        assert listed.code == 0, f"list: {listed.error}"
        states = {vm["name"]: vm["state"] for vm in listed.data.get("vms", [])}
        missing = [n for n in self.background if states.get(n) != "running"]
        assert not missing, f"list: background VMs not running: {missing[:10]}"
        return listed.seconds

    def audit_library(self) -> float:
        start = time.perf_counter()
        audited = audit_host(self.state_dir, self.lookup)
        seconds = time.perf_counter() - start
        self.check_audit(
            "library",
            [
                (a.vm, a.ours, a.observed.snap.pid, [f.as_dict() for f in failing(a)])
                for a in audited
            ],
        )
        return seconds

    def audit_cli(self) -> float:
        done = run_qd(self.state_dir, "audit")
        entries = done.data.get("processes", [])
        worst = Severity.INFO
        for entry in entries:
            for finding in entry["findings"]:
                worst = max(worst, Severity[finding["severity"].upper()])
        # 0: nothing of warning or worse anywhere; 1: something is (audit's documented codes).
        expected = 1 if worst >= FAILING else 0
        assert "summary" in done.data, f"audit exited {done.code}: {done.error or done.data}"
        assert done.code == expected, f"audit exited {done.code}, expected {expected}"
        self.check_audit(
            "cli",
            [
                (e["vm"], e["ours"], e["pid"],
                 [f for f in e["findings"] if Severity[f["severity"].upper()] >= FAILING])
                for e in entries
            ],
        )  # fmt: skip
        return done.seconds

    def check_audit(
        self, how: str, entries: list[tuple[str | None, bool, int, list[dict[str, str]]]]
    ) -> None:
        """Record findings on our VMs (failures) and on foreign QEMUs (counted); count ours."""
        ours = 0
        for vm, is_ours, pid, findings in entries:
            if is_ours:
                ours += 1
                self.bad += [
                    {"level": self.level, "via": how, "vm": vm, "pid": pid, **f} for f in findings
                ]
            else:
                self.foreign.update(f["code"] for f in findings)
        self.audited.append({"level": self.level, "ours": ours, "device_models": len(entries)})
        if ours != len(self.background):
            self.bad.append({
                "level": self.level, "via": how, "vm": None, "pid": None, "code": "missed",
                "severity": "critical",
                "message": f"the audit saw {ours} of this worker's VMs, {len(self.background)} run",
            })  # fmt: skip

    def stop_all(self) -> None:
        """Stop every VM of the store (the background and any measured one left)."""
        for record in self.launcher.store.all() if self.launcher.store.exists() else []:
            self.launcher.teardown.stop(record.name, timeout=5)


def failing(audited: Audited) -> list[Any]:
    """The findings of warning or worse."""
    return [f for f in audited.findings if f.severity >= FAILING]


def measure_level(load: Load, repetitions: int) -> dict[str, list[float]]:
    """One warm-up round, then ``repetitions`` rounds of every slot, interleaved."""
    series: dict[str, list[float]] = {s: [] for s in SERIES}
    measure = {
        "raw": load.raw,
        "list": load.listing,
        "audit_library": load.audit_library,
        "audit_cli": load.audit_cli,
    }
    for rep, slot in [(-1, s) for _ in range(WARMUP) for s in SLOTS] + list(
        rotations(SLOTS, repetitions)
    ):
        if slot == "launch":
            launched, stopped = load.launch_stop()
            values = {"launch": launched, "stop": stopped}
        else:
            values = {slot: measure[slot]()}
        if rep >= 0:
            for key, value in values.items():
                series[key].append(value)
        if slot == "launch" and rep >= 0:
            log(
                f"level {load.level} rep {rep}: launch {launched * 1000:.0f} ms, "
                f"stop {stopped * 1000:.0f} ms"
            )
    return series


def level_result(series: dict[str, list[float]]) -> dict[str, Any]:
    """Summaries, ratios to raw (of medians and per pair) and what the CLI's audit adds."""
    compared = ("launch", "stop", "list", "audit_cli", "audit_library")
    raw = series["raw"]
    library, cli = (summarize(series[v]) for v in ("audit_library", "audit_cli"))
    return {
        "variants": {v: summarize(series[v]) for v in SERIES},
        "ratios": {v: ratio(series[v], raw) for v in compared},
        "paired_ratios": {v: paired_ratio(series[v], raw) for v in compared},
        "audit_cli_minus_library": (
            cli["median"] - library["median"] if cli["n"] and library["n"] else None
        ),
        "samples": series,
    }


def flatness(levels: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """For each command, (ratio to raw at the top level) / (ratio to raw at level 0)."""
    first, last = min(levels), max(levels)
    found: dict[str, Any] = {"from_level": first, "to_level": last, "commands": {}}
    for command, variant in FLAT.items():
        low, high = levels[first]["ratios"][variant], levels[last]["ratios"][variant]
        paired_low = levels[first]["paired_ratios"][variant]
        paired_high = levels[last]["paired_ratios"][variant]
        found["commands"][command] = {
            "variant": variant,
            "ratio_at_first": low,
            "ratio_at_last": high,
            "flatness": high / low if low and high is not None else None,
            "paired_flatness": (
                paired_high / paired_low if paired_low and paired_high is not None else None
            ),
        }
    values = [c["flatness"] for c in found["commands"].values()]
    found["worst"] = None if None in values else max(values)
    return found


def arguments() -> tuple[Path, tuple[int, ...], int]:
    """OUT.json, the levels and the repetitions, from the command line."""
    out = Path(sys.argv[1])
    levels = tuple(int(x) for x in sys.argv[2].split(",")) if len(sys.argv) > 2 else LEVELS
    repetitions = int(sys.argv[3]) if len(sys.argv) > 3 else REPETITIONS
    if levels[0] != 0 or list(levels) != sorted(set(levels)) or repetitions < 1:
        raise SystemExit(
            "usage: python -m bench.load OUT.json [LEVELS [REPETITIONS]]: LEVELS ascending, "
            "comma-separated, from 0; REPETITIONS at least 1"
        )
    return out, levels, repetitions


def busy_ticks() -> int:
    """The host's busy CPU time so far, in clock ticks: /proc/stat's cpu line but idle, iowait."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields) - fields[3] - fields[4]


def cpu_ticks(pid: int) -> int:
    """The CPU time of ``pid`` (utime + stime) in clock ticks; 0 once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def main() -> None:
    out, levels, repetitions = arguments()
    root = state_root("ld")
    enter_accounts(root, LAUNCH_PASSWD, LAUNCH_GROUP)
    load = Load(root)
    results: dict[int, dict[str, Any]] = {}
    background: dict[int, dict[str, Any]] = {}
    began = time.monotonic()
    try:
        for level in levels:
            grown = load.grow(level)
            time.sleep(SETTLE if grown else 0)
            settled = load.quiet()
            load.level = level
            background[level] = {
                "launch_seconds": summarize(grown),
                "settled": settled,
                "loadavg": Path("/proc/loadavg").read_text().split()[:3],
            }
            results[level] = level_result(measure_level(load, repetitions))
            ratios = results[level]["ratios"]
            log(
                f"level {level}: launch/raw {ratios['launch']:.2f}, stop/raw {ratios['stop']:.2f}"
                f", list/raw {ratios['list']:.2f}, audit/raw {ratios['audit_cli']:.2f}, "
                f"{time.monotonic() - began:.0f} s so far"
            )
    finally:
        teardown_start = time.monotonic()
        load.stop_all()
        log(f"stopped {len(load.background)} background VMs in "
            f"{time.monotonic() - teardown_start:.0f} s")  # fmt: skip
    left = wait_for_no_bench_processes(20)
    first, top = levels[0], levels[-1]
    flat = flatness(results)
    stop_at_0 = results[first]["ratios"]["stop"]
    library_top = results[top]["variants"]["audit_library"]["median"]
    write_json(
        out,
        {
            "benchmark": "load",
            "levels": list(levels),
            "repetitions": repetitions,
            "warmup_rounds": WARMUP,
            "results": {str(level): data for level, data in results.items()},
            "background": {str(level): data for level, data in background.items()},
            "flatness": flat,
            "audit_library_at_top": {
                "level": top,
                "median": library_top,
                "met": library_top <= TARGETS["audit_library_seconds"],
            },
            "audit_cli_minus_library": {
                str(level): data["audit_cli_minus_library"] for level, data in results.items()
            },
            "stop_to_raw_at_0": {
                "ratio": stop_at_0,
                "paired": results[first]["paired_ratios"]["stop"],
                "met": stop_at_0 is not None and stop_at_0 <= TARGETS["stop_to_raw_at_0"],
            },
            "targets": TARGETS,
            "plot": {
                variant: [
                    {"level": level, **{k: data["variants"][variant][k] for k in PLOTTED}}
                    for level, data in results.items()
                ]
                for variant in ("launch", "raw")
            },
            "audits": load.audited,
            "audit_findings_on_ours": load.bad,
            "audit_findings_on_foreign": dict(load.foreign),
            "leftovers": [p.pid for p in left],
            "seconds": time.monotonic() - began,
            "commands": {
                "background": "system_launcher(Settings(state_dir=DIR)).launch(LaunchRequest("
                "DomainConfig(name='bench-bg-N', memory=64), start_timeout=60))  (resumed)",
                "raw": "qemu-system-x86_64 -machine pc -accel tcg -m 64 -smp 1 -nodefaults "
                "-no-user-config -display none -S -qmp unix:SOCK,server=on,wait=off "
                f"-runas {RANGE_BASE + RAW_SLOT}:{RANGE_BASE}  (until QMP handshake)",
                "launch": "qemu-depriv --state-dir DIR launch CFG --json",
                "stop": "qemu-depriv --state-dir DIR stop NAME --json  (the VM launch started)",
                "list": "qemu-depriv --state-dir DIR list --json",
                "audit_library": "audit_host(DIR, LibcLookup())",
                "audit_cli": "qemu-depriv --state-dir DIR audit --json",
            },
            "host": host_info(),
        },
    )
    assert not load.bad, f"audit findings on this worker's VMs: {load.bad[:5]}"
    assert not bench_processes(), "processes of the benchmark's uids survived"
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
