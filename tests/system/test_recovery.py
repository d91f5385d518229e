"""``recover`` and an orphan QEMU: a real QEMU naming a run directory, with no lease.

The uid of the orphan stands for a device-model account; no account exists for it (the
teardown's lookup is a table with none, so the reaper runs as the last-resort uid).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.host.processes import signal_pid, wait_until
from qemu_depriv.host.procfs import live_pids_of_uid, read_status
from qemu_depriv.settings import Settings
from qemu_depriv.vms import recovery
from qemu_depriv.vms.store import Mode, current_owner
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
