"""The demo: the resolution chain and real device models, on a bare machine.

It writes temporary account files and enters a private mount namespace in which they are the
system's ``/etc/passwd`` and ``/etc/group`` (the host's own files are never written).  Then it
resolves a set of domains through glibc, across every tier and some refusals; launches three
small real VMs (TCG, 64 MiB, no disk) as three different accounts and shows from /proc that
each runs as its own uid with no capabilities; shows one refused launch; leaves a process
behind as one VM's uid, as a compromised QEMU would; and stops every VM, showing that nothing
of any is left.  Each step states what it must show, so the demo fails loudly (exit 4) if the
product ever stops behaving as documented.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.directory import system_lookup
from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import EnvironmentFailure, PolicyRefusal, QemuDeprivError
from qemu_depriv.inspect import snapshot
from qemu_depriv.launcher import Launcher, LaunchRequest
from qemu_depriv.nss import AccountLookup
from qemu_depriv.policy import Decision, Request, resolve
from qemu_depriv.process import run_command
from qemu_depriv.procs import live_pids_of_uid
from qemu_depriv.qemu.caps import CapsProbe
from qemu_depriv.scratch import enter_scratch_accounts, write_scratch_accounts
from qemu_depriv.settings import Settings
from qemu_depriv.state import StateStore

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


Event = VmShown | Refused | Escapee | Stopped
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
            record, _ = launcher.stop(name)
            assert record.uid is not None  # noqa: S101 - a started VM has a uid
            left = tuple(live_pids_of_uid(record.uid))
            yield Stopped(name, record.uid, left)
            if left:
                raise EnvironmentFailure(f"demo: processes of {name} survived stop: {left}")


def demo_launcher(state_dir: Path) -> Launcher:
    """A launcher for the demo's state directory, over real NSS and the real QEMU."""
    settings = Settings(state_dir=state_dir)
    return Launcher(
        settings=settings,
        lookup=system_lookup(settings),
        store=StateStore(state_dir),
        probe=CapsProbe(),
    )
