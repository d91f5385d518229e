"""1,000 launch/stop cycles in one process: no leaked process, descriptor, directory or lease,
and the tool's memory flat.  ``QEMU_DEPRIV_ENDURANCE_CYCLES`` (default 1000) sets the count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.system.vmhost import NSEXEC, VmHost, leftovers

CYCLES = int(os.environ.get("QEMU_DEPRIV_ENDURANCE_CYCLES", "1000"))
WORKER = Path(__file__).parent / "endurance_worker.py"


def test_a_thousand_cycles_leak_nothing(vmhost: VmHost) -> None:
    done = subprocess.run(
        [sys.executable, str(NSEXEC), str(vmhost.root / "accounts"), "--",
         sys.executable, str(WORKER), str(vmhost.state_dir), str(CYCLES)],
        capture_output=True, text=True, timeout=CYCLES * 2 + 120, check=False,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
             "PYTHONPATH": str(Path(__file__).parents[2])},
    )  # fmt: skip
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    print("endurance:", *reports, sep="\n  ")
    assert done.returncode == 0, done.stderr[-2000:] + str(reports[-1:])
    assert reports[-1]["cycle"] == CYCLES
    assert all(r["error"] is None for r in reports)
    assert all((r["leases"], r["run_dirs"], r["uid_processes"]) == (0, 0, 0) for r in reports)
    first, last = reports[0], reports[-1]
    assert last["fds"] == first["fds"]  # no descriptor leaks in the tool
    assert last["rss_kib"] - first["rss_kib"] < 8 * 1024  # memory flat (within 8 MiB)
    assert leftovers() == []
