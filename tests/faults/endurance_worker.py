"""Endurance: launch and stop one VM many times in one process, reporting its own resources.

Usage: python endurance_worker.py STATE_DIR CYCLES  (run under nsexec.py, with scratch accounts)
Prints one JSON line every 100 cycles: cycle, open descriptors, resident memory, leases,
run directories, live processes of the VM's uid, and any error.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qemu_depriv.host.procfs import live_pids_of_uid
from qemu_depriv.settings import Settings
from qemu_depriv.vms.launcher import LaunchRequest, system_launcher
from qemu_depriv.xl.domain import DomainConfig


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def main() -> None:
    state_dir, cycles = Path(sys.argv[1]), int(sys.argv[2])
    launcher = system_launcher(Settings(state_dir=state_dir))
    config = DomainConfig(name="endure", type="hvm", memory=64)
    uid = None
    for cycle in range(1, cycles + 1):
        error = None
        try:
            record = launcher.launch(LaunchRequest(config=config, domid=9))
            uid = record.uid
            launcher.teardown.stop("endure")
        except Exception as exc:  # noqa: BLE001 - reported, and the test fails on it
            error = repr(exc)
        if cycle % 100 == 0 or error:
            print(
                json.dumps(
                    {
                        "cycle": cycle,
                        "fds": len(list(Path("/proc/self/fd").iterdir())),
                        "rss_kib": rss_kib(),
                        "leases": len(launcher.store.all()),
                        "run_dirs": len(list((state_dir / "vms").iterdir())),
                        "uid_processes": len(live_pids_of_uid(uid)) if uid else 0,
                        "error": error,
                    }
                ),
                flush=True,
            )
        if error:
            sys.exit(1)


if __name__ == "__main__":
    main()
