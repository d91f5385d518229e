"""Benchmark 2: launch until verified and running, against raw QEMU until QMP answers.

Three variants, interleaved with a rotating order, in one private mount namespace over scratch
accounts (the range base at 393216 and the reaper):

``raw``
    QEMU by hand: the standalone machine options, ``-runas 393216+1000:393216``, timed until a
    finished QMP handshake; killed by pid afterwards.
``library``
    ``launch`` of a launcher built by ``system_launcher``, as the CLI and the demo build it, in
    this process, timed until it returns: QEMU started paused inside every layer, verified
    from /proc, resumed.
``cli``
    ``qemu-depriv --state-dir DIR launch CFG --json``, timed until it exits.

Two more variants, which start no VM, split the CLI's time: ``cli_startup`` is
``qemu-depriv --version`` (the interpreter, every import and the parser) and ``python`` is the
bare interpreter (``python -c pass``).

Every VM is stopped right after it is measured (the stop is not timed here; see
:mod:`bench.libvirt`).  Targets: library at most 1.3x raw, CLI at most 4x raw.

Usage: python -m bench.launch OUT.json [REPETITIONS]  (20 by default; fewer for a quick check)
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
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
    log,
    paired_ratio,
    qd_cli,
    ratio,
    rotations,
    run,
    state_root,
    summarize,
    wait_for_no_bench_processes,
    write_json,
)
from bench.forkserver import client_command
from bench.profiling import profile_call, profile_cli
from bench.vm import launch_raw, qd, run_qd, write_config
from qemu_depriv.settings import Settings
from qemu_depriv.vms.launcher import LaunchRequest, system_launcher
from qemu_depriv.xl.domain import DomainConfig

REPETITIONS = 20
WARMUP = 2
TARGETS = {"library": 1.3, "cli": 4.0}
VARIANTS = ("raw", "library", "cli", "cli_startup", "python", "prototype")
#: Not a variant of its own: the stop of each ``prototype`` launch, timed through the prototype.
PROTOTYPE_STOP = "prototype_stop"


class Bench:
    """The namespace, the state directory and a launcher over it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "s"
        self.launcher = system_launcher(Settings(state_dir=self.state_dir))
        self.count = 0
        self.server_socket = root / "server.sock"
        self.server: subprocess.Popen[bytes] | None = None
        self.stops: list[float] = []

    def name(self, variant: str) -> str:
        self.count += 1
        return f"bench-{variant[:3]}-{self.count}"

    def raw(self) -> float:
        socket = self.root / "raw.sock"
        socket.unlink(missing_ok=True)
        process, seconds = launch_raw(socket, RANGE_BASE + RAW_SLOT, self.root / "raw.log")
        end_child(process)
        return seconds

    def library(self) -> float:
        name = self.name("library")
        request = LaunchRequest(config=DomainConfig(name=name, memory=64), start_timeout=30)
        start = time.perf_counter()
        record = self.launcher.launch(request)
        seconds = time.perf_counter() - start
        assert record.state == "running", record
        assert record.verification, record
        self.launcher.teardown.stop(name)
        return seconds

    def cli(self) -> float:
        name = self.name("cli")
        config = write_config(self.root, name)
        launched = run_qd(self.state_dir, "launch", str(config))
        try:
            assert launched.code == 0, launched.error
            assert launched.data.get("state") == "running", launched.data
            assert launched.data.get("verification"), launched.data
        finally:
            if self.launcher.store.find(name) is not None:
                self.launcher.teardown.stop(name)
        return launched.seconds

    @staticmethod
    def cli_startup() -> float:
        return timed([qd_cli(), "--version"])

    @staticmethod
    def python() -> float:
        return timed([sys.executable, "-c", "pass"])

    def prototype(self) -> float:
        """Launch, then stop, through the resident-launcher prototype (bench.forkserver)."""
        name = self.name("prototype")
        config = write_config(self.root, name)
        start = time.perf_counter()
        launched = run(client_command(self.server_socket, *self.args("launch", str(config))))
        seconds = time.perf_counter() - start
        try:
            assert launched.returncode == 0, launched.stderr[-400:]
            data = json.loads(launched.stdout)
            assert data.get("state") == "running", data
            assert data.get("verification"), data
            start = time.perf_counter()
            stopped = run(client_command(self.server_socket, *self.args("stop", name)))
            self.stops.append(time.perf_counter() - start)
            assert stopped.returncode == 0, stopped.stderr[-400:]
        finally:
            if self.launcher.store.find(name) is not None:
                self.launcher.teardown.stop(name)
        return seconds

    def args(self, *command: str) -> list[str]:
        return ["--state-dir", str(self.state_dir), *command, "--json"]

    def stop_all(self) -> None:
        if self.server is not None:
            end_child(self.server, grace=5)
        for record in self.launcher.store.all() if self.launcher.store.exists() else []:
            self.launcher.teardown.stop(record.name, timeout=5)


def timed(command: list[str]) -> float:
    """Seconds a command takes to run to completion; it must succeed."""
    start = time.perf_counter()
    done = run(command, timeout=60)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"{command}: exit {done.returncode}: {done.stderr[-400:]}"
    return seconds


def profiles(bench: Bench, missed: list[str]) -> dict[str, Any]:
    """Profile one launch of each variant that missed its target (``stop_all`` stops them)."""
    found: dict[str, Any] = {}
    if "library" in missed:
        name = bench.name("library")
        request = LaunchRequest(config=DomainConfig(name=name, memory=64), start_timeout=30)
        found["library"] = profile_call(lambda: bench.launcher.launch(request), interval=0.0002)
    if "cli" in missed:
        config = write_config(bench.root, bench.name("cli"))
        found["cli"], _ = profile_cli(qd(bench.state_dir, "launch", str(config), "--json")[1:])
    return found


def main() -> None:
    out = Path(sys.argv[1])
    repetitions = int(sys.argv[2]) if len(sys.argv) > 2 else REPETITIONS
    root = state_root("l")
    enter_accounts(root, LAUNCH_PASSWD, LAUNCH_GROUP)
    bench = Bench(root)
    series: dict[str, list[float]] = {v: [] for v in VARIANTS}
    measure = {
        "raw": bench.raw,
        "library": bench.library,
        "cli": bench.cli,
        "cli_startup": bench.cli_startup,
        "python": bench.python,
        "prototype": bench.prototype,
    }
    bench.server = forkserver.start(bench.server_socket)
    try:
        for _ in range(WARMUP):
            for variant in VARIANTS:
                measure[variant]()
        for rep, variant in rotations(VARIANTS, repetitions):
            series[variant].append(measure[variant]())
            if variant == "cli":
                log(f"rep {rep} {variant}: {series[variant][-1] * 1000:.0f} ms")
        ratios = {v: ratio(series[v], series["raw"]) for v in TARGETS}
        missed = [v for v, r in ratios.items() if r is None or r > TARGETS[v]]
        found = profiles(bench, missed)
    finally:
        bench.stop_all()
    left = wait_for_no_bench_processes(10)
    write_json(
        out,
        {
            "benchmark": "launch",
            "repetitions": repetitions,
            "variants": {v: summarize(series[v]) for v in VARIANTS}
            | {PROTOTYPE_STOP: summarize(bench.stops)},
            "ratios": ratios,
            "prototype_ratios": {
                "launch": ratio(series["prototype"], series["raw"]),
                "stop": ratio(bench.stops, series["raw"]),
            },
            "paired_ratios": {v: paired_ratio(series[v], series["raw"]) for v in TARGETS},
            "targets": TARGETS,
            "missed": missed,
            "profiles": found,
            "samples": series,
            "leftovers": [p.pid for p in left],
            "commands": {
                "raw": "qemu-system-x86_64 -machine pc -accel tcg -m 64 -smp 1 -nodefaults "
                "-no-user-config -display none -S -qmp unix:SOCK,server=on,wait=off "
                f"-runas {RANGE_BASE + RAW_SLOT}:{RANGE_BASE}  (until QMP handshake)",
                "library": "system_launcher(Settings(state_dir=DIR))"
                ".launch(LaunchRequest(DomainConfig(name, memory=64)))",
                "cli": "qemu-depriv --state-dir DIR launch CFG --json",
                "cli_startup": "qemu-depriv --version  (no VM: interpreter, imports, parser)",
                "python": "python -c pass  (no VM: the bare interpreter of the venv)",
                "prototype": "python -I -S -c CLIENT SOCK --state-dir DIR launch CFG --json: "
                "the resident-launcher prototype of bench/forkserver.py (not the product)",
                PROTOTYPE_STOP: "the same client, stop NAME --json, after each prototype launch",
            },
            "host": host_info(),
        },
    )
    assert not bench_processes(), "processes of the benchmark's uids survived"
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
