"""The CLI SIGKILLed at random moments of launch and of stop; then ``recover``.

Each trial kills the command at a moment drawn uniformly over its measured duration, runs
``qemu-depriv recover``, and checks that every lease is a verified running VM and that nothing
runs, or lies on disk, without a lease; the SQLite store must pass integrity_check.
"""

from __future__ import annotations

import random
import subprocess
import time
from collections import Counter

from tests.faults.conftest import assert_consistent
from tests.system.vmhost import VmHost

TRIALS = 50


def _duration(host: VmHost, *args: str) -> float:
    started = time.monotonic()
    done = host.run(*args)
    assert done.returncode == 0, done.stderr
    return time.monotonic() - started


def _kill_at(host: VmHost, delay: float, *args: str) -> str:
    """Run a command, SIGKILL it after ``delay`` seconds; say how it ended."""
    process = subprocess.Popen(
        host.command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        process.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=30)
        return "killed"
    return f"finished ({process.returncode})"


def _recover(host: VmHost) -> None:
    done = host.run("recover")
    assert done.returncode == 0, done.stderr


def _trials(
    host: VmHost, seed: int, span: float, *, before: list[str], kill: list[str]
) -> Counter[str]:
    """Run ``before`` (if any), SIGKILL ``kill`` at a random moment, recover, check; repeat."""
    rng = random.Random(seed)  # reproducible moments
    outcomes: Counter[str] = Counter()
    for _ in range(TRIALS):
        if before:
            assert host.run(*before).returncode == 0
        how = _kill_at(host, rng.uniform(0, span), *kill)
        _recover(host)
        assert_consistent(host)
        running = bool(host.vms())
        outcomes[f"{how}, then {'running' if running else 'nothing'}"] += 1
        if running:
            assert host.run("stop", "web").returncode == 0
        assert_consistent(host)
    assert sum(n for o, n in outcomes.items() if o.startswith("killed")) >= TRIALS // 3
    return outcomes


def test_launch_killed_at_random_moments_leaves_a_running_vm_or_nothing(vmhost: VmHost) -> None:
    config = str(vmhost.config("web"))
    span = _duration(vmhost, "launch", config) * 1.2
    assert vmhost.run("stop", "web").returncode == 0
    print("launch trials:", dict(_trials(vmhost, 9, span, before=[], kill=["launch", config])))


def test_stop_killed_at_random_moments_leaves_a_running_vm_or_nothing(vmhost: VmHost) -> None:
    config = str(vmhost.config("web"))
    assert vmhost.run("launch", config).returncode == 0
    span = _duration(vmhost, "stop", "web") * 1.2
    outcomes = _trials(vmhost, 11, span, before=["launch", config], kill=["stop", "web"])
    print("stop trials:", dict(outcomes))


def test_the_next_launch_recovers_by_itself(vmhost: VmHost) -> None:
    """Without recover: a launch killed mid-way is cleaned up by the next command."""
    config = str(vmhost.config("web"))
    span = _duration(vmhost, "launch", config)
    assert vmhost.run("stop", "web").returncode == 0
    rng = random.Random(5)
    for _ in range(10):
        _kill_at(vmhost, rng.uniform(span * 0.3, span * 0.9), "launch", config)
        done = vmhost.run("launch", config)
        if done.returncode == 3:  # the killed launch won: its VM runs, verified
            assert "already has a device model" in done.stderr
        else:
            assert done.returncode == 0, done.stderr
        assert [vm["name"] for vm in vmhost.vms()] == ["web"]
        assert vmhost.run("stop", "web").returncode == 0
        assert_consistent(vmhost)
