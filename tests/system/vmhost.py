"""A test host for launching real QEMU: scratch accounts, a short state dir, leak checks."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qemu_depriv.accounts.scratch import FILES_ONLY, write_scratch_accounts
from qemu_depriv.host.procfs import live_pids_of_uid

NSEXEC = Path(__file__).parent / "nsexec.py"
#: Ids for launch tests: a range block of their own, away from the host's and the demo's.
RANGE_BASE = 262144
REAPER_UID = 250000
EXPLICIT_UID = 250100
PREFIX = "xen-qemuuser"

PASSWD = (
    f"{PREFIX}-range-base:x:{RANGE_BASE}:{RANGE_BASE}::/nonexistent:/usr/sbin/nologin",
    f"{PREFIX}-reaper:x:{REAPER_UID}:{REAPER_UID}::/nonexistent:/usr/sbin/nologin",
    f"qemu-alice:x:{EXPLICIT_UID}:{EXPLICIT_UID}::/nonexistent:/usr/sbin/nologin",
)
GROUP = (
    f"{PREFIX}-range-base:x:{RANGE_BASE}:",
    f"{PREFIX}-reaper:x:{REAPER_UID}:",
    f"qemu-alice:x:{EXPLICIT_UID}:",
)


def vm_uids() -> list[int]:
    """Every uid a launch test may hand to a VM."""
    return [*range(RANGE_BASE, RANGE_BASE + 64), EXPLICIT_UID]


def leftovers() -> list[int]:
    """Live processes of any test uid."""
    return [pid for uid in vm_uids() for pid in live_pids_of_uid(uid)]


@dataclass
class VmHost:
    """Scratch accounts plus a state directory; runs the CLI against them."""

    root: Path
    state_dir: Path = field(init=False)
    env: dict[str, str] = field(default_factory=dict)
    #: The settings file's text, when the commands should read one.
    settings: str | None = None
    #: What every command runs under (``nsenter --net=/run/netns/NS --``).
    prefix: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.accounts()
        # Unix socket paths are limited to 107 bytes: keep the state directory short.
        self.state_dir = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp")) / "s"

    def accounts(
        self,
        passwd: tuple[str, ...] = PASSWD,
        group: tuple[str, ...] = GROUP,
        nsswitch: str = FILES_ONLY,
    ) -> None:
        """(Re)write the scratch account files the commands see."""
        write_scratch_accounts(self.root / "accounts", passwd, group, nsswitch)

    def config(self, name: str, **settings: str | int) -> Path:
        path = self.root / f"{name}.cfg"
        lines = [f'name = "{name}"', 'type = "hvm"', "memory = 64", "vcpus = 1"]
        lines = [line for line in lines if line.split(" = ")[0] not in settings]
        for key, value in settings.items():
            lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value}")
        path.write_text("\n".join(lines) + "\n")
        return path

    def command(self, *args: str) -> list[str]:
        config: list[str] = []
        if self.settings is not None:
            path = self.root / "qemu-depriv.toml"
            path.write_text(self.settings)
            config = ["--config", str(path)]
        return [
            *self.prefix, sys.executable, str(NSEXEC), str(self.root / "accounts"), "--",
            sys.executable, "-m", "qemu_depriv", "--state-dir", str(self.state_dir), *config,
            *args,
        ]  # fmt: skip

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self.env}
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, env=env, timeout=timeout,
            check=False,
        )  # fmt: skip

    def json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        done = self.run(*args, "--json")
        try:
            data = json.loads(done.stdout) if done.stdout.strip() else {}
        except json.JSONDecodeError:
            data = {"unparsed": done.stdout}
        return done.returncode, data, done.stderr

    def launch(self, name: str, *args: str, **settings: str | int) -> dict[str, Any]:
        code, vm, stderr = self.json("launch", str(self.config(name, **settings)), *args)
        assert code == 0, stderr
        return vm

    def vms(self) -> list[dict[str, Any]]:
        code, data, stderr = self.json("list")
        assert code == 0, stderr
        return list(data["vms"])

    def teardown(self) -> list[int]:
        """Stop what the store knows, kill by pid whatever of the test uids is left."""
        if (self.state_dir / "state.db").exists():
            for vm in self.vms():
                self.run("stop", vm["name"], "--timeout", "2")
        left = leftovers()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.state_dir.parent, ignore_errors=True)
        return left


@contextlib.contextmanager
def private_netns(*bridges: str) -> Iterator[str]:
    """A network namespace of the test's own (``ip netns add``) with ``bridges``, up."""
    name = f"qd-net-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for bridge in bridges:
            for args in (("link", "add", bridge, "type", "bridge"), ("link", "set", bridge, "up")):
                subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def in_netns(netns: str) -> tuple[str, ...]:
    """The prefix that runs a command in ``netns``.

    nsenter, not ip netns exec: that mounts a sysfs of the namespace over /sys, and the cgroup
    hierarchies under it with it.
    """
    return ("nsenter", f"--net=/run/netns/{netns}", "--")


def start_escapee(uid: int, gid: int) -> None:
    """What a compromised device model leaves: double-forked, own session, ignores SIGTERM."""
    subprocess.run(
        [
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            "sh", "-c",
            "setsid sh -c 'trap \"\" TERM HUP; sleep 600 & sleep 600' </dev/null >/dev/null 2>&1 &",
        ],
        check=True,
        timeout=10,
    )  # fmt: skip


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll ``condition`` every 50 ms until it holds or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
