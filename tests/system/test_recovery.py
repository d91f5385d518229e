"""``recover`` and an orphan QEMU: a real QEMU naming a run directory, with no lease.

The uid of the orphan stands for a device-model account; no account exists for it (the
teardown's lookup is a table with none, so the reaper runs as the last-resort uid).
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.accounts.nss import Account
from qemu_depriv.host.processes import signal_pid, wait_until
from qemu_depriv.host.procfs import live_pids_of_uid, read_status
from qemu_depriv.settings import Settings
from qemu_depriv.vms import recovery
from qemu_depriv.vms.store import Mode, StateStore, current_owner
from qemu_depriv.vms.teardown import Teardown, system_teardown
from tests.unit.table_lookup import TableLookup

QEMU = "/usr/bin/qemu-system-x86_64"
GID = 431000
UID = GID + 1


@pytest.fixture
def teardown(tmp_path: Path) -> Teardown:
    assert live_pids_of_uid(UID) == [], f"uid {UID} is in use on this host"
    return system_teardown(Settings(state_dir=tmp_path / "s"), lookup=TableLookup())


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts; each is killed by pid at the end, and none of UID may remain."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield processes
    finally:
        for process in processes:
            process.kill()
            process.wait()
        assert wait_until(lambda: not live_pids_of_uid(UID), 5), live_pids_of_uid(UID)


def orphan(state_dir: Path, started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A QEMU as UID naming domid 9's run directory, which no lease holds."""
    state_dir.mkdir(mode=0o700, exist_ok=True)  # as the store makes it
    run_dir = state_dir / "vms" / "9"
    run_dir.mkdir(parents=True)
    argv = [
        QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S",
        "-qmp", f"unix:{run_dir}/qmp.sock,server=on,wait=off", "-runas", f"{UID}:{GID}",
    ]  # fmt: skip
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    started.append(process)

    def dropped() -> bool:
        status = read_status(process.pid)
        return status is not None and status.uids[1] == UID

    assert wait_until(dropped, 30), "QEMU did not drop to its uid"
    return process


def of_uid(started: list[subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """A process running as UID (for the test, what is left of the orphan, or another VM's)."""
    process = subprocess.Popen(["sleep", "60"], user=UID, group=GID, extra_groups=[])
    started.append(process)
    return process


def test_recover_kills_an_orphan_and_what_runs_as_its_uid(
    teardown: Teardown, started: list[subprocess.Popen[bytes]]
) -> None:
    qemu = orphan(teardown.settings.state_dir, started)
    left = of_uid(started)
    report = recovery.recover(teardown)
    assert report.orphans_killed == [qemu.pid]
    assert left.wait(timeout=5) is not None
    assert live_pids_of_uid(UID) == []
    assert report.directories_removed == [str(teardown.settings.state_dir / "vms" / "9")]


def test_recover_leaves_the_uid_alone_once_a_launch_took_it_meanwhile(
    teardown: Teardown, started: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orphan dies; a launch then takes its uid (nothing of it was left) and starts a VM.

    That VM's processes run as the uid: recover must not kill them by uid.
    """
    qemu = orphan(teardown.settings.state_dir, started)
    kill = signal_pid
    newcomer: list[subprocess.Popen[bytes]] = []

    def kill_then_launch(pid: int, start: int, signum: int) -> bool:
        sent = kill(pid, start, signum)
        assert wait_until(lambda: not live_pids_of_uid(UID), 5)
        store = teardown.store
        domid = store.reserve("newcomer", None, mode=Mode.STANDALONE, owner=current_owner())
        decision = Decision(Tier.RANGE, f"{UID}:{GID}", UID, GID, (GID,), None, kill_by_uid=True)
        store.assign(domid, decision, uid_busy=False)
        newcomer.append(of_uid(started))
        return sent

    monkeypatch.setattr(recovery, "signal_pid", kill_then_launch)
    report = recovery.recover(teardown)
    assert report.orphans_killed == [qemu.pid]
    assert newcomer[0].poll() is None, "recover killed the processes of a uid a lease holds"
    assert live_pids_of_uid(UID) == [newcomer[0].pid]


def launch_as_uid(state_dir: Path, started: list[subprocess.Popen[bytes]]) -> None:
    """What a launch does with the uid, with its own connection to the store, as one would.

    It looks for live processes of the uid first (nothing of it may run), takes the lease,
    then starts the VM's process.
    """
    store = StateStore(state_dir)
    try:
        domid = store.reserve("newcomer", None, mode=Mode.STANDALONE, owner=current_owner())
        decision = Decision(Tier.RANGE, f"{UID}:{GID}", UID, GID, (GID,), None, kill_by_uid=True)
        store.assign(domid, decision, uid_busy=bool(live_pids_of_uid(UID)))
        of_uid(started)
    finally:
        store.close()


@dataclasses.dataclass
class LaunchDuringReaper(TableLookup):
    """The teardown's lookup, asked for the reaper's account once recover decided to kill.

    On the first question, ``left`` (what was left of the orphan) exits, and ``launch`` takes
    the uid on another thread; the answer waits up to ``patience`` seconds for that launch to
    have started its VM.  A recover that let go of the leases between its check and its kill
    then kills that VM.
    """

    left: subprocess.Popen[bytes] | None = None
    launch: Callable[[], None] | None = None
    patience: float = 2.0
    launched: threading.Thread | None = None

    def user_by_name(self, name: str) -> Account | None:
        if self.launched is None and self.left is not None and self.launch is not None:
            self.left.kill()
            self.left.wait()
            self.launched = threading.Thread(target=self.launch)
            self.launched.start()
            self.launched.join(self.patience)
        return super().user_by_name(name)


def test_recover_holds_the_leases_from_its_check_to_its_kill(
    teardown: Teardown, started: list[subprocess.Popen[bytes]]
) -> None:
    """Something of the orphan's uid still runs, so recover decides to kill by uid.

    It then exits, and a launch takes the uid before the reaper runs: the launch must wait
    until the kill is done, and its VM survive it.
    """
    qemu = orphan(teardown.settings.state_dir, started)
    errors: list[BaseException] = []

    def launch() -> None:
        try:
            launch_as_uid(teardown.settings.state_dir, started)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    lookup = LaunchDuringReaper(left=of_uid(started), launch=launch)
    report = recovery.recover(dataclasses.replace(teardown, lookup=lookup))
    assert lookup.launched is not None, "recover did not kill by uid"
    lookup.launched.join(30)
    assert not lookup.launched.is_alive(), "the launch still waits for the store"
    assert not errors, errors
    assert report.orphans_killed == [qemu.pid]
    newcomer = started[-1]
    assert newcomer.poll() is None, "recover killed the processes of a uid a lease holds"
    assert live_pids_of_uid(UID) == [newcomer.pid]
