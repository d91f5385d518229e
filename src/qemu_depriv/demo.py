"""The demo: the resolution chain and real device models, on a bare machine.

It writes temporary account files and enters a private mount namespace in which they are the
system's ``/etc/passwd`` and ``/etc/group`` (the host's own files are never written).  Then it
resolves a set of domains through glibc, across every tier and some refusals; launches three
small real VMs (TCG, 64 MiB, no disk) as three different accounts and shows from /proc that
each runs as its own uid with no capabilities; shows one refused launch; leaves a process
behind as one VM's uid, as a compromised QEMU would; stops every VM, showing that nothing of
any is left; and runs an existing QEMU command line through ``qemu-depriv run``, supervised,
until a SIGTERM ends it clean.  Each step states what it must show, so the demo fails loudly
(exit 4) if the product ever stops behaving as documented.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.accounts.chain import Decision, Request, resolve
from qemu_depriv.accounts.nss import AccountLookup
from qemu_depriv.accounts.scratch import enter_scratch_accounts, write_scratch_accounts
from qemu_depriv.errors import EnvironmentFailure, PolicyRefusal, QemuDeprivError
from qemu_depriv.host.processes import wait_until
from qemu_depriv.host.procfs import live_pids_of_uid, snapshot
from qemu_depriv.host.programs import run_command
from qemu_depriv.vms.launcher import Launcher, LaunchRequest
from qemu_depriv.xl.domain import DomainConfig

RANGE_BASE = 131072
DEMO_PASSWD = (
    f"xen-qemuuser-range-base:x:{RANGE_BASE}:{RANGE_BASE}::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-web:x:120001:120001::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-domid9:x:120009:120009::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-web.example.org:x:120010:120010::/nonexistent:/usr/sbin/nologin",
    "alice-qemu:x:120100:120100::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-reaper:x:120900:120900::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-evil:x:0:120200::/nonexistent:/usr/sbin/nologin",
    f"bob:x:{RANGE_BASE + 12}:{RANGE_BASE + 12}:Bob:/home/bob:/bin/bash",
    "xen-qemudepriv-shared:x:120300:120300::/nonexistent:/usr/sbin/nologin",
)
DEMO_GROUP = (
    f"xen-qemuuser-range-base:x:{RANGE_BASE}:",
    "xen-qemuuser-web:x:120001:",
    "xen-qemuuser-domid9:x:120009:",
    "xen-qemuuser-web.example.org:x:120010:",
    "alice-qemu:x:120100:",
    "xen-qemuuser-reaper:x:120900:",
    "xen-qemuuser-evil:x:120200:",
    f"bob:x:{RANGE_BASE + 12}:",
    "xen-qemudepriv-shared:x:120300:",
)


@dataclass(frozen=True)
class Scenario:
    """One domain to resolve and what it must give: a tier, or a refusal's exit code."""

    title: str
    request: Request
    expect: str


SCENARIOS = (
    Scenario("a user named after the domain", Request(1, name="web"), "name"),
    Scenario("a dotted name has its own account too", Request(10, name="web.example.org"), "name"),
    Scenario("no account named after the domain: per-domid user", Request(9, name="Mail"), "domid"),
    Scenario("device_model_user wins", Request(5, name="db", user="alice-qemu"), "explicit"),
    Scenario("range: uid base+domid, no account needed", Request(3, name="build"), "range"),
    Scenario("the seed's prefix, shared user", Request(6, prefix="xen-qemudepriv"), "shared"),
    Scenario(
        "no account, restrict off: root, loudly",
        Request(8, prefix="qemu-none", restrict=False),
        "root",
    ),
    Scenario("refused: the account has uid 0", Request(4, name="evil"), "exit 3"),
    Scenario("refused: base+domid is a human's uid", Request(12, name="ci"), "exit 3"),
    Scenario("refused: nothing found under restrict", Request(2, prefix="qemu-none"), "exit 3"),
)


@dataclass(frozen=True)
class Result:
    """A scenario and what the chain gave: a decision or an error."""

    scenario: Scenario
    decision: Decision | None
    error: QemuDeprivError | None

    @property
    def got(self) -> str:
        """The tier chosen, or ``exit N`` for an error."""
        if self.decision is not None:
            return self.decision.tier.value
        assert self.error is not None  # noqa: S101 - one of the two is always set
        return f"exit {self.error.exit_code}"


@dataclass(frozen=True)
class VmShown:
    """A launched VM and what /proc says of its QEMU."""

    name: str
    domid: int
    tier: str
    pid: int
    uids: tuple[int, int, int, int]
    gids: tuple[int, int, int, int]
    cap_eff: int
    root: str
    verified: tuple[str, ...] = ()


@dataclass(frozen=True)
class Refused:
    """A launch the policy refused, and the proof that it started nothing."""

    name: str
    exit_code: int
    message: str
    vms_after: int


@dataclass(frozen=True)
class Escapee:
    """A process started as a VM's uid in its own session, as a compromised QEMU would."""

    name: str
    uid: int
    pids: tuple[int, ...]


@dataclass(frozen=True)
class Stopped:
    """A stopped VM and the live processes of its uid afterwards (none, or the demo fails)."""

    name: str
    uid: int
    left: tuple[int, ...]


@dataclass(frozen=True)
class Supervised:
    """An existing QEMU command line run by ``qemu-depriv run``, then stopped by a signal."""

    name: str
    command: tuple[str, ...]
    pid: int
    uid: int
    tier: str
    verified: tuple[str, ...]
    exit_code: int
    left: tuple[int, ...]


Event = VmShown | Refused | Escapee | Stopped | Supervised
#: A command line as a KVM user would have it in a script: ``run`` takes it as it is.
USER_COMMAND = (
    "qemu-system-x86_64", "-name", "legacy", "-machine", "pc", "-accel", "tcg", "-m", "64",
    "-nodefaults", "-display", "none",
)  # fmt: skip
DEMO_VMS = (
    DomainConfig(name="web", memory=64),
    DomainConfig(name="build", memory=64),
    DomainConfig(name="db", memory=64, device_model_user="alice-qemu"),
)


@contextmanager
def demo_host() -> Iterator[Path]:
    """Enter a private mount namespace with the demo's accounts; yield a state directory.

    Raises:
        EnvironmentFailure: not root, or the namespace could not be made.
    """
    with tempfile.TemporaryDirectory(prefix="qd-demo-") as tmp:
        scratch = write_scratch_accounts(Path(tmp) / "accounts", DEMO_PASSWD, DEMO_GROUP)
        try:
            enter_scratch_accounts(scratch)
        except OSError as exc:
            raise EnvironmentFailure(
                f"demo: cannot make a private mount namespace ({exc.strerror}): run it as root"
            ) from exc
        yield Path(tmp) / "state"


def resolution_scenarios(lookup: AccountLookup) -> Iterator[Result]:
    """Resolve every scenario; each must give what it states.

    Raises:
        EnvironmentFailure: a scenario did not give what it must.
    """
    for scenario in SCENARIOS:
        try:
            result = Result(scenario, resolve(scenario.request, lookup), None)
        except QemuDeprivError as exc:
            result = Result(scenario, None, exc)
        yield result
        if result.got != scenario.expect:
            raise EnvironmentFailure(
                f"demo: {scenario.title!r} gave {result.got}, expected {scenario.expect}"
            )


def vm_walkthrough(launcher: Launcher) -> Iterator[Event]:
    """Launch three real VMs, show them from /proc, refuse one, stop all, show nothing left.

    Whatever happens, every VM the walkthrough started is stopped before it returns.

    Raises:
        EnvironmentFailure: a VM did not run as planned, or something survived its stop.
    """
    started: list[str] = []
    try:
        for config in DEMO_VMS:
            record = launcher.launch(LaunchRequest(config=config, start_timeout=60))
            started.append(record.name)
            assert record.pid is not None  # noqa: S101 - a running VM has a pid
            snap = snapshot(record.pid)
            if snap is None:
                raise EnvironmentFailure(f"demo: QEMU of {record.name} exited at once")
            verified = tuple((record.verification or {}).get("layers", {}))
            yield VmShown(
                record.name, record.domid, record.tier or "", record.pid, snap.status.uids,
                snap.status.gids, snap.status.cap_eff, snap.root, verified,
            )  # fmt: skip
        try:
            launcher.launch(LaunchRequest(config=DomainConfig(name="evil", memory=64)))
            raise EnvironmentFailure("demo: the launch of 'evil' (uid 0) was not refused")
        except PolicyRefusal as exc:
            yield Refused("evil", exc.exit_code, exc.message, len(launcher.store.all()))
        build = next(r for r in launcher.store.all() if r.name == "build")
        if build.uid is None or build.gid is None:
            raise EnvironmentFailure("demo: 'build' runs without a recorded uid")
        run_command(
            [
                "setpriv", f"--reuid={build.uid}", f"--regid={build.gid}", "--clear-groups",
                "--", "sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &",
            ]
        )  # fmt: skip
        yield Escapee("build", build.uid, tuple(p for p in live_pids_of_uid(build.uid)))
    finally:
        for name in started:
            record, _ = launcher.teardown.stop(name)
            assert record.uid is not None  # noqa: S101 - a started VM has a uid
            left = tuple(live_pids_of_uid(record.uid))
            yield Stopped(name, record.uid, left)
            if left:
                raise EnvironmentFailure(f"demo: processes of {name} survived stop: {left}")


def supervised_walkthrough(state_dir: Path) -> Iterator[Event]:
    """Run an existing command line through ``qemu-depriv run``, show it, stop it by SIGTERM.

    Raises:
        EnvironmentFailure: it did not run verified as its own uid, or something survived.
    """
    status = state_dir.parent / "legacy.json"
    command = [sys.executable, "-m", "qemu_depriv", "--state-dir", str(state_dir), "run",
               "--json-status", str(status), "--", *USER_COMMAND]  # fmt: skip
    supervisor = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        if not wait_until(lambda: _state(status) in ("running", "stopped"), 60.0):
            raise EnvironmentFailure("demo: 'qemu-depriv run' did not start within 60 s")
        shown = json.loads(status.read_text())
        if shown["state"] != "running":
            raise EnvironmentFailure(f"demo: 'qemu-depriv run' ended: {supervisor.stderr}")
        supervisor.send_signal(signal.SIGTERM)
        code = supervisor.wait(timeout=60)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    left = tuple(live_pids_of_uid(shown["uid"]))
    yield Supervised(
        shown["name"], USER_COMMAND, shown["pid"], shown["uid"], shown["tier"],
        tuple(shown["verification"]["layers"]), code, left,
    )  # fmt: skip
    if code != 0 or left:
        raise EnvironmentFailure(f"demo: the supervised VM ended with {code}, leaving {left}")


def _state(status: Path) -> str | None:
    try:
        return str(json.loads(status.read_text())["state"])
    except (OSError, ValueError, KeyError):
        return None
