"""The booted host as the host suite sees it: the CLI, systemd's units, the cgroup tree."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CGROUP = Path("/sys/fs/cgroup")
SLICE_DIR = CGROUP / "qemu.slice" / "qemu-depriv.slice"
PREFIX = "xen-qemuuser"
#: Nested QEMU under a TCG guest is slow: generous timeouts, never asserted as speed.
START_TIMEOUT = "240"


def systemctl(*args: str, check: bool = True) -> str:
    """systemctl's output; raises on failure when ``check``."""
    done = subprocess.run(
        ["systemctl", "--no-pager", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"systemctl {' '.join(args)}: {done.returncode} {done.stderr}")
    return done.stdout


def unit_show(unit: str, *properties: str) -> dict[str, str]:
    """``systemctl show`` of ``unit``'s ``properties``."""
    text = systemctl("show", *(f"--property={p}" for p in properties), "--", unit)
    return dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)


def scope_units() -> list[str]:
    """Every loaded qemu-depriv scope unit."""
    text = systemctl("list-units", "--all", "--plain", "--no-legend", "qemu-depriv-*.scope")
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of ``pid`` (the ``0::`` line)."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return line[3:]
    raise AssertionError(f"pid {pid} has no cgroup v2 line")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def range_uids() -> range:
    """The uids of the provisioned range (the VMs' accounts)."""
    base = pwd.getpwnam(f"{PREFIX}-range-base").pw_uid
    return range(base, base + 65536)


def pids_of_uids(uids: range) -> list[int]:
    """Live processes whose real, effective or saved uid is in ``uids``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            status = (entry / "status").read_text()
            fields = next(line for line in status.splitlines() if line.startswith("Uid:"))
            if any(int(u) in uids for u in fields.split()[1:4]) and "\nState:\tZ" not in status:
                found.append(int(entry.name))
    return found


@dataclass
class Host:
    """The CLI on this host, against the state directory ``state_dir``.

    ``workdir`` holds the domain files and the settings file (``layers``, the ``[layers]``
    table, when set).
    """

    state_dir: Path
    workdir: Path | None = None
    layers: str = ""

    def fresh(self, workdir: Path) -> Host:
        """This host for one test: its own files, no settings."""
        return Host(self.state_dir, workdir)

    def command(self, *args: str) -> list[str]:
        """The CLI's argv for ``args``."""
        config: list[str] = []
        if self.layers and self.workdir is not None:
            path = self.workdir / "qemu-depriv.toml"
            path.write_text(f"[layers]\n{self.layers}\n")
            config = ["--config", str(path)]
        return [
            sys.executable, "-m", "qemu_depriv", "--state-dir", str(self.state_dir), *config,
            *args,
        ]  # fmt: skip

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run the CLI; its outcome, whatever it is."""
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, timeout=timeout, check=False
        )

    def json(self, *args: str) -> tuple[int, Any, str]:
        """Run the CLI with ``--json``: exit status, the parsed output, stderr."""
        done = self.cli(*args, "--json")
        try:
            data = json.loads(done.stdout) if done.stdout.strip() else {}
        except json.JSONDecodeError:
            data = {"unparsed": done.stdout}
        return done.returncode, data, done.stderr

    def domain(self, name: str, memory: int = 64) -> Path:
        """An xl domain file: a small HVM guest (SeaBIOS with nothing to boot)."""
        assert self.workdir is not None
        path = self.workdir / f"{name}.cfg"
        path.write_text(f'name = "{name}"\ntype = "hvm"\nmemory = {memory}\nvcpus = 1\n')
        return path

    def launch(self, name: str, memory: int = 64) -> dict[str, Any]:
        """Launch ``name``; its record (the test fails when the launch does)."""
        code, vm, stderr = self.json(
            "launch", str(self.domain(name, memory)), "--start-timeout", START_TIMEOUT
        )
        assert code == 0, stderr
        return dict(vm)

    def stop(self, name: str) -> None:
        """Stop ``name``; the test fails when the stop does."""
        done = self.cli("stop", name)
        assert done.returncode == 0, done.stderr

    def vms(self) -> list[dict[str, Any]]:
        """What ``list`` shows."""
        code, data, stderr = self.json("list")
        assert code == 0, stderr
        return list(data["vms"])

    def clean_up(self) -> dict[str, list[Any]]:
        """Stop what the store knows; kill by pid what of the range is left; say what was."""
        if (self.state_dir / "state.db").exists():
            for vm in self.vms():
                self.cli("stop", vm["name"], "--timeout", "5")
        pids, units = pids_of_uids(range_uids()), scope_units()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for unit in units:
            systemctl("stop", unit, check=False)
            systemctl("reset-failed", unit, check=False)
        return {"pids": pids, "units": units}


def in_scope(unit: str, script: str) -> subprocess.Popen[str]:
    """Run Python ``script`` as a root process that first moves itself into ``unit``'s scope.

    That is what a helper QEMU forks would be: a member of the VM's group, counted against its
    limits, whatever its uid.
    """
    procs = SLICE_DIR / unit / "cgroup.procs"
    prologue = f"import os\nopen({str(procs)!r}, 'w').write(str(os.getpid()))\n"
    return subprocess.Popen(
        [sys.executable, "-c", prologue + script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
