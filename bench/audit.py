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
    end_child,
    exit_on_sigterm,
    host_info,
    log,
    paired_ratio,
    qd_cli,
    ratio,
    rotations,
    run,
    summarize,
    write_json,
)
from qemu_depriv.accounts.nss import LibcLookup
from qemu_depriv.checks.audit import audit_host
from qemu_depriv.host.processes import wait_until
from qemu_depriv.host.procfs import read_status

COUNT = 100
REPETITIONS = 15
TARGET = 0.100
FIRST_UID = RANGE_BASE + 3000
PS = ["/usr/bin/ps", "-e", "-o", "pid,uid,gid,args"]
QEMU = ["/usr/bin/qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S"]


def start_device_models(started: list[subprocess.Popen[bytes]]) -> None:
    """Start the QEMUs (into ``started``, which the caller stops) and wait for their uids."""
    for index in range(COUNT):
        uid = FIRST_UID + index
        started.append(
            subprocess.Popen([*QEMU, "-runas", f"{uid}:{uid}"], stderr=subprocess.DEVNULL)
        )

    def dropped() -> bool:
        statuses = [read_status(p.pid) for p in started]
        return all(s is not None and s.uids[1] >= FIRST_UID for s in statuses)

    if not wait_until(dropped, 60):
        raise RuntimeError("the device models did not all drop to their uids within 60 s")


def main() -> None:
    exit_on_sigterm()
    out = Path(sys.argv[1])
    state_dir = TMP / "bench-audit-state"  # never created: no VM of ours, every QEMU foreign
    started: list[subprocess.Popen[bytes]] = []
    samples: dict[str, list[float]] = {"library": [], "cli": [], "ps": []}
    try:
        start_device_models(started)
        pids = {p.pid for p in started}
        lookup = LibcLookup()
        found = {a.observed.snap.pid for a in audit_host(state_dir, lookup)}
        assert pids <= found, f"the audit missed {len(pids - found)} device models"
        cli = [qd_cli(), "--state-dir", str(state_dir), "audit", "--json"]
        for repetition, variant in rotations(list(samples), REPETITIONS):
            begin = time.perf_counter()
            if variant == "library":
                audit_host(state_dir, lookup)
            else:
                done = run(cli if variant == "cli" else PS)
                assert variant == "cli" or done.returncode == 0, done.stderr
            samples[variant].append(time.perf_counter() - begin)
            log(f"[audit] rep {repetition} {variant}: {samples[variant][-1] * 1000:.0f} ms")
    finally:
        for process in started:
            end_child(process)
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
