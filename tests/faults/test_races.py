"""launch, stop, list and audit in parallel from several processes, on a few domains.

Workers run random commands for ``QEMU_DEPRIV_RACE_SECONDS`` (default 120) while a sampler
watches /proc: never two live QEMUs with one uid; every command ends within its timeout (no
deadlock) with an exit code its contract allows; afterwards nothing is lost or left over.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

from qemu_depriv.host.procfs import qemu_pids, read_status
from tests.faults.conftest import assert_consistent
from tests.system.vmhost import VmHost

SECONDS = float(os.environ.get("QEMU_DEPRIV_RACE_SECONDS", "120"))
WORKERS = 4
DOMAINS = ("a", "b", "c")
ALLOWED = {"launch": {0, 3}, "stop": {0, 2}, "list": {0}, "audit": {0, 1}}


def _ours(state_dir: Path) -> dict[int, int]:
    """Live QEMU pids of this state directory, with their effective uid."""
    marker = f"{state_dir}/vms/".encode()
    found = {}
    for pid in qemu_pids():
        try:
            if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
        except OSError:
            continue
        status = read_status(pid)
        if status is not None and not status.zombie:
            found[pid] = status.uids[1]
    return found


def test_parallel_commands_never_share_a_uid_lose_a_vm_or_deadlock(vmhost: VmHost) -> None:
    configs = {name: str(vmhost.config(name)) for name in DOMAINS}
    deadline = time.monotonic() + SECONDS
    results: Counter[tuple[str, int]] = Counter()
    problems: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < deadline:
            command = rng.choice(("launch", "launch", "stop", "list", "audit"))
            name = rng.choice(DOMAINS)
            args = {"launch": ["launch", configs[name]], "stop": ["stop", name]}.get(
                command, [command]
            )
            try:
                done = vmhost.run(*args, timeout=90)
            except subprocess.TimeoutExpired:
                with lock:
                    problems.append(f"{command} {name}: no answer in 90 s (deadlock?)")
                continue
            with lock:
                results[(command, done.returncode)] += 1
                if done.returncode not in ALLOWED[command]:
                    problems.append(
                        f"{command} {name}: exit {done.returncode}: {done.stderr.strip()}"
                    )
                if "internal error" in done.stderr or "Traceback" in done.stderr:
                    problems.append(f"{command} {name}: {done.stderr.strip()}")

    def sampler() -> None:
        while time.monotonic() < deadline:
            # uid 0 is a QEMU between exec and its own -runas drop: paused, not yet a VM.
            uids = Counter(uid for uid in _ours(vmhost.state_dir).values() if uid != 0)
            shared = {uid: n for uid, n in uids.items() if n > 1}
            if shared:
                with lock:
                    problems.append(f"uids held by two live VMs: {shared}")
            time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(WORKERS)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=SECONDS + 300)
    assert not any(thread.is_alive() for thread in threads)
    print("race results:", dict(sorted(results.items())))
    print("problems:", *problems, sep="\n  ")
    assert problems == []
    assert results[("launch", 0)] > 0
    assert results[("stop", 0)] > 0
    done = vmhost.run("recover")
    assert done.returncode == 0, done.stderr
    assert "torn down: none" in done.stdout  # nothing was lost between the commands
    assert_consistent(vmhost)
    running = {vm["pid"] for vm in vmhost.vms()}
    assert set(_ours(vmhost.state_dir)) == running
