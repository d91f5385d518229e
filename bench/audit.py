"""6. ``audit`` over 100 running device models, against ``ps`` listing the same processes.

100 QEMUs (``-machine none``, paused) run as 100 uids of the benchmarks' block; each round
audits the host through the library (``audit_host``) and through the CLI, alternating with a
``ps -e -o pid,uid,gid,args`` baseline.  Target: at most 100 ms.

Usage: python -m bench.audit OUT.json
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.common import (
    RANGE_BASE,
    TMP,
    exit_on_sigterm,
    host_info,
    kill_pids,
    log,
    paired_ratio,
    qd_cli,
    ratio,
    rotations,
    summarize,
    write_json,
)
from qemu_depriv.audit import audit_host
from qemu_depriv.inspect import read_status
from qemu_depriv.nss import LibcLookup

COUNT = 100
REPETITIONS = 15
TARGET = 0.100
FIRST_UID = RANGE_BASE + 3000
PS = ["/usr/bin/ps", "-e", "-o", "pid,uid,gid,args"]
QEMU = ["/usr/bin/qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S"]


def start_device_models() -> list[subprocess.Popen[bytes]]:
    started = []
    for index in range(COUNT):
        uid = FIRST_UID + index
        started.append(
            subprocess.Popen([*QEMU, "-runas", f"{uid}:{uid}"], stderr=subprocess.DEVNULL)
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses = [read_status(p.pid) for p in started]
        if all(s is not None and s.uids[1] >= FIRST_UID for s in statuses):
            return started
        time.sleep(0.05)
    raise RuntimeError("the device models did not all drop to their uids within 60 s")


def main() -> None:
    exit_on_sigterm()
    out = Path(sys.argv[1])
    state_dir = TMP / "bench-audit-state"  # never created: no VM of ours, every QEMU foreign
    started: list[subprocess.Popen[bytes]] = []
    samples: dict[str, list[float]] = {"library": [], "cli": [], "ps": []}
    try:
        started = start_device_models()
        pids = {p.pid for p in started}
        lookup = LibcLookup()
        found = {a.observed.snap.pid for a in audit_host(state_dir, lookup)}
        assert pids <= found, f"the audit missed {len(pids - found)} device models"
        cli = [qd_cli(), "--state-dir", str(state_dir), "audit", "--json"]
        for repetition, variant in rotations(list(samples), REPETITIONS):
            begin = time.perf_counter()
            if variant == "library":
                audit_host(state_dir, lookup)
            elif variant == "cli":
                subprocess.run(cli, stdout=subprocess.DEVNULL, check=False)
            else:
                subprocess.run(PS, stdout=subprocess.DEVNULL, check=True)
            samples[variant].append(time.perf_counter() - begin)
            log(f"[audit] rep {repetition} {variant}: {samples[variant][-1] * 1000:.0f} ms")
    finally:
        kill_pids(p.pid for p in started)
        for process in started:
            process.wait(timeout=30)
    write_json(
        out,
        {
            "benchmark": "audit",
            "device_models": COUNT,
            "repetitions": REPETITIONS,
            "variants": {name: summarize(values) for name, values in samples.items()},
            "samples": samples,
            "ratios": {v: ratio(samples[v], samples["ps"]) for v in ("library", "cli")},
            "paired_ratios": {
                v: paired_ratio(samples[v], samples["ps"]) for v in ("library", "cli")
            },
            "target_seconds": TARGET,
            "commands": {
                "library": "audit_host(state_dir, LibcLookup())",
                "cli": "qemu-depriv --state-dir DIR audit --json",
                "ps": "ps -e -o pid,uid,gid,args",
            },
            "host": host_info(),
        },
    )


if __name__ == "__main__":
    main()
