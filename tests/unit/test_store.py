"""The state store on a real SQLite file: leases, claims, and stores from earlier versions."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.vms.store import (
    Lease,
    LeaseState,
    Mode,
    StateStore,
    VmStatus,
    current_owner,
)

ME = (1234, 5678)
DECISION = Decision(Tier.RANGE, "131073:131072", 131073, 131072, (131072,), None, kill_by_uid=True)


def test_domids_are_the_smallest_free_and_names_unique(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    assert store.reserve("a", None, mode=Mode.STANDALONE, owner=ME) == 1
    assert store.reserve("b", None, mode=Mode.STANDALONE, owner=ME) == 2
    store.release(1)
    assert store.reserve("c", None, mode=Mode.STANDALONE, owner=ME) == 1
    with pytest.raises(PolicyRefusal, match="already has a device model"):
        store.reserve("b", None, mode=Mode.STANDALONE, owner=ME)
    with pytest.raises(PolicyRefusal, match="domid 2 is in use"):
        store.reserve("d", 2, mode=Mode.STANDALONE, owner=ME)


def test_a_uid_goes_to_one_vm_of_a_non_shared_tier(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    first = store.reserve("a", None, mode=Mode.STANDALONE, owner=ME)
    second = store.reserve("b", None, mode=Mode.STANDALONE, owner=ME)
    store.assign(first, DECISION, uid_busy=False)
    with pytest.raises(PolicyRefusal, match="already held by domain 'a'"):
        store.assign(second, DECISION, uid_busy=False)


def test_a_claim_succeeds_once_and_only_on_the_row_as_read(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    domid = store.reserve("a", None, mode=Mode.STANDALONE, owner=ME)
    seen = store.get(domid)
    assert seen is not None
    claimed = store.claim(seen, state=LeaseState.STOPPING, owner=(99, 100))
    assert claimed is not None
    assert (claimed.state, claimed.owner_pid) == (LeaseState.STOPPING, 99)
    stale = store.claim(seen, state=LeaseState.STOPPING, owner=(77, 78))
    assert stale is None  # a view of the row as it no longer is: refused


def test_a_store_from_the_first_schema_is_migrated_with_its_rows(tmp_path: Path) -> None:
    state = tmp_path / "s"
    state.mkdir(mode=0o700)  # as the store makes it
    with contextlib.closing(sqlite3.connect(state / "state.db")) as db, db:
        db.executescript(
            """
            CREATE TABLE vms (
                domid INTEGER PRIMARY KEY CHECK (domid BETWEEN 1 AND 32751),
                name TEXT NOT NULL UNIQUE, mode TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('starting', 'running')),
                owner_pid INTEGER NOT NULL, owner_start INTEGER NOT NULL, uid INTEGER,
                gid INTEGER, tier TEXT, runas TEXT, kill_by_uid INTEGER NOT NULL DEFAULT 0,
                decision TEXT, pid INTEGER, start_time INTEGER, verification TEXT,
                created REAL NOT NULL
            );
            CREATE UNIQUE INDEX one_vm_per_uid ON vms (uid)
                WHERE uid IS NOT NULL AND tier IS NOT 'shared';
            INSERT INTO vms (domid, name, mode, state, owner_pid, owner_start, uid, created)
                VALUES (3, 'old', 'standalone', 'running', 1, 2, 131075, 12.5);
            """
        )
    store = StateStore(state)
    record = store.find("old")
    assert record is not None
    assert (record.domid, record.uid, record.created, record.layers) == (3, 131075, 12.5, None)
    claimed = store.claim(record, state=LeaseState.STOPPING, owner=ME)  # the new state is allowed
    assert claimed is not None
    assert claimed.state == LeaseState.STOPPING


def test_ended_finds_exactly_the_leases_whose_status_says_so(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    me = current_owner()
    with subprocess.Popen(["true"]) as gone:
        gone.wait()
    dead = (gone.pid, 1)  # a pid that exited, with a start time no process has
    leases = {
        "live": (me, me),  # running, QEMU alive (this process plays it)
        "exited": (me, dead),  # running, QEMU gone
        "starting": (me, None),  # its launcher is alive
        "orphan": (dead, None),  # its launcher died
    }
    for name, (owner, process) in leases.items():
        domid = store.reserve(name, None, mode=Mode.STANDALONE, owner=owner)
        if process is not None:
            store.set_process(domid, *process)
            store.set_running(domid, {"ok": True})
    found = store.ended()
    assert sorted(r.name for r in found) == ["exited", "orphan"]
    assert {r.name: r.status() for r in found} == {
        "exited": VmStatus.EXITED,
        "orphan": VmStatus.STALE,
    }
    assert [r.name for r in store.all() if r.status() in (VmStatus.EXITED, VmStatus.STALE)] == [
        "exited",
        "orphan",
    ]


def test_leases_name_each_vm_its_qemu_and_its_uid(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    first = store.reserve("a", None, mode=Mode.STANDALONE, owner=ME)
    store.assign(first, DECISION, uid_busy=False)
    store.set_process(first, 4321, 8765)
    store.reserve("b", None, mode=Mode.STANDALONE, owner=ME)
    assert store.leases() == [
        Lease(domid=1, name="a", pid=4321, start_time=8765, uid=131073),
        Lease(domid=2, name="b", pid=None, start_time=None, uid=None),
    ]


def test_a_missing_state_directory_is_created_root_only(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "a" / "s")
    store.reserve("a", None, mode=Mode.STANDALONE, owner=ME)
    info = (tmp_path / "a" / "s").stat()
    assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o700)


@pytest.mark.parametrize(("mode", "owner"), [(0o1777, 0), (0o755, 0), (0o700, 4321)])
def test_a_state_directory_others_may_reach_is_refused_and_left_as_it_was(
    tmp_path: Path, mode: int, owner: int
) -> None:
    """``--state-dir /tmp`` by mistake: neither made root's alone nor written to."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    os.chown(shared, owner, 0)
    with pytest.raises(InvalidInput, match=f"owned by uid {owner} with mode {mode:o}"):
        StateStore(shared).all()
    info = shared.stat()
    assert (info.st_uid, info.st_mode & 0o7777) == (owner, mode)
    assert list(shared.iterdir()) == []


def test_a_file_as_state_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(InvalidInput, match="is not a directory"):
        StateStore(tmp_path / "f").all()


def _damaged_json(store: StateStore) -> None:
    domid = store.reserve("a", None, mode=Mode.STANDALONE, owner=ME)
    store.assign(domid, DECISION, uid_busy=False)
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute("UPDATE vms SET decision = '{' WHERE domid = ?", (domid,))
        db.commit()


def _damaged_pages(store: StateStore) -> None:
    for n in range(60):
        store.reserve(f"vm{n}", None, mode=Mode.STANDALONE, owner=ME)
    store.close()
    with contextlib.closing(sqlite3.connect(store.path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    size = store.path.stat().st_size
    with store.path.open("r+b") as f:  # every page but the header's: the table's are garbage
        f.seek(4096)
        f.write(bytes(range(256)) * ((size - 4096) // 256))


@pytest.mark.parametrize(
    ("damage", "read"),
    [(_damaged_pages, read) for read in ("all", "leases", "ended", "find", "reserve")]
    + [(_damaged_json, read) for read in ("all", "ended", "find")],  # those decode a decision
)
def test_a_damaged_store_says_so_and_names_its_file(
    tmp_path: Path, damage: Callable[[StateStore], None], read: str
) -> None:
    store = StateStore(tmp_path / "s")
    damage(store)
    calls: dict[str, Callable[[], object]] = {
        "all": store.all, "leases": store.leases, "ended": store.ended,
        "find": lambda: store.find("a") or store.find("vm3"),
        "reserve": lambda: store.reserve("b", None, mode=Mode.STANDALONE, owner=ME),
    }  # fmt: skip
    with pytest.raises(EnvironmentFailure, match=f"state store {store.path} is damaged"):
        calls[read]()


def test_the_root_tier_may_run_more_than_one_vm(tmp_path: Path) -> None:
    """With restrict off, the last resort is root for each VM: no uid clash between them,
    also in a store whose index was made before (it covered the root tier)."""
    state = tmp_path / "s"
    made = StateStore(state)
    made.leases()  # creates it
    made.close()
    with contextlib.closing(sqlite3.connect(state / "state.db")) as db:
        db.execute("DROP INDEX one_vm_per_uid_but_shared_and_root")
        db.execute(
            "CREATE UNIQUE INDEX one_vm_per_uid ON vms (uid) "
            "WHERE uid IS NOT NULL AND tier IS NOT 'shared'"
        )
        db.commit()
    store = StateStore(state)
    root = Decision(Tier.ROOT, None, 0, 0, (0,), None, kill_by_uid=False)
    for name in ("a", "b"):
        store.assign(store.reserve(name, None, mode=Mode.STANDALONE, owner=ME), root, uid_busy=True)
    assert [(r.name, r.uid) for r in store.all()] == [("a", 0), ("b", 0)]
    second = store.reserve("c", None, mode=Mode.STANDALONE, owner=ME)
    store.assign(1, DECISION, uid_busy=False)
    with pytest.raises(PolicyRefusal, match="already held by domain 'a'"):
        store.assign(second, DECISION, uid_busy=False)


def test_a_state_directory_of_root_tells_another_user_to_run_as_root() -> None:
    """Not an unsafe directory (it is root's alone): the command needs root."""
    state = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp"))  # 0700, root's; /tmp lets all see it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, no exec
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            StateStore(state).all()
        except EnvironmentFailure as exc:
            os.write(write_end, exc.message.encode())
            code = 0
        finally:
            os._exit(code)
    try:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as reader:
            said = reader.read().decode()
        assert os.waitpid(pid, 0)[1] == 0
        assert said == f"state directory {state} is root's: run qemu-depriv as root"
        assert list(state.iterdir()) == []
    finally:
        state.rmdir()
