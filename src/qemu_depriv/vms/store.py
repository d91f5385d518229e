"""The state store: one SQLite database of VMs and their leases.

A row is a lease on a (domid, name, uid).  It is taken in two steps, each in its own
``BEGIN IMMEDIATE`` transaction so that concurrent launches serialise: :meth:`reserve` claims
the domid and name (before the uid is known, since resolution needs the domid), then
:meth:`assign` claims the uid.  A partial unique index backs the rule that two VMs of a
non-shared tier never hold one uid; :meth:`assign` also keeps shared and non-shared VMs apart.

A row is ``starting`` while a launcher sets the VM up, ``running`` once it is verified, and
``stopping`` while a teardown runs; each change is a compare-and-set (:meth:`claim`) in one
transaction, so that two processes never tear one VM down at once, and a stop never pulls a VM
from under the launcher that is still starting it.  Each row records the process acting on it
(pid and start time), so that a row left by a process that died can be told from one in hand.
Lock waits are bounded: a busy store is an :class:`~qemu_depriv.errors.EnvironmentFailure`
(exit 4), never a hang.

The directory and the database are root's alone (0700 and 0600).
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.host.processes import is_alive
from qemu_depriv.host.procfs import start_time
from qemu_depriv.isolation.layers import LayerPlan

if TYPE_CHECKING:  # list and stop read the store: resolution and configs only for a launch
    from qemu_depriv.accounts.chain import Decision
    from qemu_depriv.settings import Settings

SCHEMA = """
CREATE TABLE IF NOT EXISTS vms (
    domid INTEGER PRIMARY KEY CHECK (domid BETWEEN 1 AND 32751),
    name TEXT NOT NULL UNIQUE,
    mode TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('starting', 'running', 'stopping')),
    owner_pid INTEGER NOT NULL,
    owner_start INTEGER NOT NULL,
    uid INTEGER,
    gid INTEGER,
    tier TEXT,
    runas TEXT,
    kill_by_uid INTEGER NOT NULL DEFAULT 0,
    decision TEXT,
    pid INTEGER,
    start_time INTEGER,
    verification TEXT,
    layers TEXT,
    created REAL NOT NULL,
    supervised INTEGER NOT NULL DEFAULT 0,
    taps TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS one_vm_per_uid_but_shared_and_root ON vms (uid)
    WHERE uid IS NOT NULL AND tier NOT IN ('shared', 'root');
"""


class Mode(StrEnum):
    """How a device model runs: QEMU as the whole VM, or as a Xen domain's device model."""

    STANDALONE = "standalone"
    XEN = "xen"


class LeaseState(StrEnum):
    """Where a lease is in its life: each move is a compare-and-set (:meth:`StateStore.claim`)."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"


class VmStatus(StrEnum):
    """What ``list`` shows: the lease's state, checked against the processes it names."""

    RUNNING = "running"
    EXITED = "exited"  # the lease says running, QEMU is gone
    STARTING = "starting"
    STOPPING = "stopping"
    STALE = "stale"  # the launcher, stopper or supervisor acting on it died


@dataclass(frozen=True)
class VmRecord:
    """One row: a VM being started, running, or being stopped."""

    domid: int
    name: str
    mode: Mode
    state: LeaseState
    owner_pid: int
    owner_start: int
    uid: int | None
    gid: int | None
    tier: str | None
    runas: str | None
    kill_by_uid: bool
    decision: dict[str, Any] | None
    pid: int | None
    start_time: int | None
    verification: dict[str, Any] | None
    layers: LayerPlan | None
    created: float
    #: Run by a supervisor (``qemu-depriv run``), which stays the lease's owner while it runs.
    supervised: bool = False
    #: The taps the launcher opened for QEMU (:mod:`qemu_depriv.vms.taps`), as recorded.
    taps: list[dict[str, Any]] | None = None

    @property
    def process(self) -> tuple[int, int] | None:
        """The recorded QEMU (pid, start time), or None before it was spawned."""
        if self.pid is None or self.start_time is None:
            return None
        return self.pid, self.start_time

    @property
    def owner(self) -> tuple[int, int]:
        """The process acting on the lease: its launcher, stopper (pid, start time)."""
        return self.owner_pid, self.owner_start

    def status(self) -> VmStatus:
        """``running``, ``exited`` (QEMU gone), ``starting``, ``stopping``, or ``stale``."""
        return lease_status(self.state, self.process, self.owner, supervised=self.supervised)


@dataclass(frozen=True)
class Lease:
    """A VM's lease as the audit sees it: who holds the domid, and its QEMU."""

    domid: int
    name: str
    pid: int | None
    start_time: int | None
    uid: int | None


def lease_status(
    state: LeaseState,
    process: tuple[int, int] | None,
    owner: tuple[int, int],
    *,
    supervised: bool,
) -> VmStatus:
    """A lease's status from its state, its QEMU and its owner (see :meth:`VmRecord.status`)."""
    if state == LeaseState.RUNNING:
        if process is None or not is_alive(*process):
            return VmStatus.EXITED
        if supervised and not is_alive(*owner):
            return VmStatus.STALE  # its supervisor died: nobody would clean it up
        return VmStatus.RUNNING
    if not is_alive(*owner):
        return VmStatus.STALE
    return VmStatus(state.value)


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring a store written by an earlier version up to this schema."""
    columns = {row["name"] for row in connection.execute("PRAGMA table_info(vms)")}
    added = {
        "layers": "layers TEXT",  # before the layer model
        "supervised": "supervised INTEGER NOT NULL DEFAULT 0",  # before `run`
        "taps": "taps TEXT",  # before taps
    }
    for name, column in added.items():
        if name not in columns:
            try:
                connection.execute(f"ALTER TABLE vms ADD COLUMN {column}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
    # Before the root tier could run more than one VM, the index covered it.
    connection.execute("DROP INDEX IF EXISTS one_vm_per_uid")
    (sql,) = connection.execute("SELECT sql FROM sqlite_master WHERE name = 'vms'").fetchone()
    if "'stopping'" not in sql:  # before the stopping state: rebuild with the new CHECK
        names = ", ".join(
            sorted(columns | {"layers", "supervised", "taps"})
        )  # its own column names
        copy = f"INSERT INTO vms ({names}) SELECT {names} FROM vms_old;"  # noqa: S608 - not input
        connection.executescript(
            "BEGIN IMMEDIATE; ALTER TABLE vms RENAME TO vms_old; "
            "DROP INDEX IF EXISTS one_vm_per_uid_but_shared_and_root;"
            f"{SCHEMA} {copy} DROP TABLE vms_old; COMMIT;"
        )


#: SQLite's primary result codes for a file that is not, or no longer, a sound database.
_SQLITE_CORRUPT, _SQLITE_NOTADB = 11, 26


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite found the file damaged (not a refused constraint, a lock or an I/O error)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def private_directory(path: Path) -> None:
    """Create the state directory (0700), or check that the existing one is ours alone.

    An existing directory is never changed: ``--state-dir`` naming ``/tmp``, ``/srv`` or the
    working directory by mistake must not make it private to root.  It is refused instead.

    Raises:
        InvalidInput: it exists and is not a directory, or another user owns it or may enter it.
        EnvironmentFailure: it could not be created or looked at.
    """
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise EnvironmentFailure(
            f"state directory {path}: cannot create it: {exc.strerror}: check --state-dir"
        ) from exc
    else:
        return
    try:
        info = path.stat()
    except OSError as exc:
        raise EnvironmentFailure(f"state directory {path}: {exc.strerror}") from exc
    if not stat.S_ISDIR(info.st_mode):
        raise InvalidInput(f"state directory {path} is not a directory: check --state-dir")
    if info.st_uid == 0 and os.geteuid() != 0:
        raise EnvironmentFailure(f"state directory {path} is root's: run qemu-depriv as root")
    if info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise InvalidInput(
            f"state directory {path} is owned by uid {info.st_uid} with mode "
            f"{info.st_mode & 0o7777:o}, so others may reach the leases in it: name a directory "
            f"of its own with --state-dir (it is created 0700), or, if this one is only for "
            f"qemu-depriv, make it root's alone (chown root:root {path} && chmod 0700 {path})"
        )


def _record(row: sqlite3.Row) -> VmRecord:
    values = dict(row)
    values["kill_by_uid"] = bool(values["kill_by_uid"])
    values["supervised"] = bool(values["supervised"])
    values["mode"] = Mode(values["mode"])
    values["state"] = LeaseState(values["state"])
    for key in ("decision", "verification", "taps"):
        values[key] = json.loads(values[key]) if values[key] else None
    layers = values["layers"]
    values["layers"] = LayerPlan.from_dict(json.loads(layers)) if layers else None
    return VmRecord(**values)


class StateStore:
    """The database under ``state_dir``.

    Raises (every method):
        EnvironmentFailure: the directory or database cannot be used, or the lock wait ran
            past ``busy_timeout`` seconds.
    """

    def __init__(self, state_dir: Path, *, busy_timeout: float = 30.0) -> None:
        self.state_dir = state_dir
        self._busy_timeout = busy_timeout
        self._connection: sqlite3.Connection | None = None

    @classmethod
    def of(cls, settings: Settings) -> StateStore:
        """The store of ``settings``' state directory, waiting its lock timeout at most."""
        return cls(settings.state_dir, busy_timeout=settings.lock_timeout)

    @property
    def path(self) -> Path:
        """The database file."""
        return self.state_dir / "state.db"

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        private_directory(self.state_dir)
        try:
            fresh = not self.path.exists()
            connection = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None
            )
            if fresh:
                self.path.chmod(0o600)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode = WAL")
            # WAL with NORMAL survives any crash of a process; only a crash of the kernel may
            # lose the newest commits, and the default store is on /run, a tmpfs, anyway.
            connection.execute("PRAGMA synchronous = NORMAL")
            connection.executescript(SCHEMA)
            _migrate(connection)
        except sqlite3.DatabaseError as exc:
            if _corrupt(exc):
                raise self._damaged(exc) from exc
            raise EnvironmentFailure(f"state store {self.path}: {exc}") from exc
        except (OSError, sqlite3.Error) as exc:
            raise EnvironmentFailure(
                f"state store {self.path}: {exc}: check --state-dir (it must be root's)"
            ) from exc
        self._connection = connection
        return connection

    def close(self) -> None:
        """Close the connection; the store reopens on next use."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._using() as connection:
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise EnvironmentFailure(
                    f"state store {self.path} is busy ({exc}) after {self._busy_timeout} s: "
                    "another qemu-depriv holds it; try again"
                ) from exc
            try:
                yield connection
            except BaseException:
                with suppress(sqlite3.Error):  # a damaged store may refuse it too
                    connection.execute("ROLLBACK")
                raise
            try:
                connection.execute("COMMIT")
            except sqlite3.Error as exc:
                raise EnvironmentFailure(f"state store {self.path}: commit failed: {exc}") from exc

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's write lock: no lease is taken, changed or released meanwhile.

        For a check of the leases that must still hold when the caller acts on it (recover
        kills by uid only while no lease holds the uid).  Launches wait for it, up to the
        busy timeout.

        Raises:
            EnvironmentFailure: the store stayed busy past the busy timeout.
        """
        with self._transaction():
            yield

    def _damaged(self, exc: Exception) -> EnvironmentFailure:
        return EnvironmentFailure(
            f"state store {self.path} is damaged ({exc}): move it aside (mv {self.path} "
            f"{self.path}.damaged), then end the device models 'qemu-depriv audit' shows"
        )

    @contextmanager
    def _using(self) -> Iterator[sqlite3.Connection]:
        """The connection, for reads and transactions: a store SQLite finds corrupt says so."""
        connection = self._connect()
        try:
            yield connection
        except sqlite3.DatabaseError as exc:
            if _corrupt(exc):
                raise self._damaged(exc) from exc
            raise

    def _decoded(self, row: sqlite3.Row) -> VmRecord:
        """The record of ``row``; a row whose values do not decode is damage."""
        try:
            return _record(row)
        except (ValueError, KeyError) as exc:
            raise self._damaged(exc) from exc

    def reserve(
        self,
        name: str,
        domid: int | None,
        *,
        mode: Mode,
        owner: tuple[int, int],
        supervised: bool = False,
    ) -> int:
        """Claim a domid (the smallest free one when ``domid`` is None) and the name.

        Raises:
            PolicyRefusal: the name or the domid is taken, or no domid is free.
        """
        with self._transaction() as db:
            taken = {row["domid"]: row["name"] for row in db.execute("SELECT domid, name FROM vms")}
            holder = next((d for d, n in taken.items() if n == name), None)
            if holder is not None:
                raise PolicyRefusal(
                    f"domain {name!r} already has a device model (domid {holder}): "
                    f"stop it first with 'qemu-depriv stop {name}'"
                )
            if domid is None:
                domid = smallest_free_domid(taken)
                if domid is None:
                    raise PolicyRefusal("every domid from 1 to 32751 is in use")
            elif domid in taken:
                raise PolicyRefusal(
                    f"domid {domid} is in use by domain {taken[domid]!r}: pick another "
                    "--domid or leave it out to get the smallest free one"
                )
            db.execute(
                "INSERT INTO vms (domid, name, mode, state, owner_pid, owner_start, created, "
                "supervised) VALUES (?, ?, ?, 'starting', ?, ?, ?, ?)",
                (domid, name, mode.value, owner[0], owner[1], time.time(), int(supervised)),
            )
            return domid

    def assign(
        self,
        domid: int,
        decision: Decision,
        *,
        uid_busy: bool,
        layers: LayerPlan | None = None,
    ) -> None:
        """Record the decision on the lease, claiming its uid.

        ``uid_busy`` says whether processes of the uid are alive right now (the caller looks).

        Raises:
            PolicyRefusal: another VM holds the uid (a shared VM and a non-shared one never
                share it either), or processes of the uid are alive (tiers other than shared).
        """
        from qemu_depriv.accounts.chain import Tier  # noqa: PLC0415 - see the imports

        shared = decision.tier == Tier.SHARED
        with self._transaction() as db:
            holders = db.execute(
                "SELECT domid, name, tier FROM vms WHERE uid = ? AND domid != ?",
                (decision.uid, domid),
            ).fetchall()
            clash = [h for h in holders if not (shared and h["tier"] == Tier.SHARED.value)]
            if clash and decision.tier != Tier.ROOT:
                other = clash[0]
                raise PolicyRefusal(
                    f"uid {decision.uid} is already held by domain {other['name']!r} (domid "
                    f"{other['domid']}, tier {other['tier']}): two device models never share "
                    "a uid; give this domain its own account"
                )
            if uid_busy and not shared and decision.tier != Tier.ROOT:
                raise PolicyRefusal(
                    f"processes of uid {decision.uid} are still running although no VM holds "
                    "it: a previous device model left them; find them with "
                    f"'ps -u {decision.uid}' and end them, or run 'qemu-depriv stop' on its VM"
                )
            db.execute(
                "UPDATE vms SET uid = ?, gid = ?, tier = ?, runas = ?, kill_by_uid = ?, "
                "decision = ?, layers = ? WHERE domid = ?",
                (
                    decision.uid,
                    decision.gid,
                    decision.tier.value,
                    decision.runas,
                    int(decision.kill_by_uid),
                    json.dumps(decision.as_dict()),
                    json.dumps(layers.as_dict()) if layers is not None else None,
                    domid,
                ),
            )

    def set_process(self, domid: int, pid: int, start_time: int) -> None:
        """Record the QEMU process of a VM being started."""
        with self._transaction() as db:
            db.execute(
                "UPDATE vms SET pid = ?, start_time = ? WHERE domid = ?", (pid, start_time, domid)
            )

    def claim(
        self, record: VmRecord, *, state: LeaseState, owner: tuple[int, int]
    ) -> VmRecord | None:
        """Move ``record`` to ``state`` with ``owner`` acting, if nobody changed it meanwhile.

        Returns the updated record, or None when the row is gone or no longer as ``record``
        says (its state or acting process changed): someone else is acting on it.
        """
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE vms SET state = ?, owner_pid = ?, owner_start = ? "
                "WHERE domid = ? AND state = ? AND owner_pid = ? AND owner_start = ?",
                (state.value, owner[0], owner[1], record.domid, record.state.value,
                 record.owner_pid, record.owner_start),
            ).rowcount  # fmt: skip
        return self.get(record.domid) if changed else None

    def set_taps(self, domid: int, taps: list[dict[str, Any]]) -> None:
        """Record the taps opened for a VM being started (before QEMU is spawned)."""
        with self._transaction() as db:
            db.execute("UPDATE vms SET taps = ? WHERE domid = ?", (json.dumps(taps), domid))

    def set_running(self, domid: int, verification: dict[str, Any]) -> None:
        """Mark a VM verified and running."""
        with self._transaction() as db:
            db.execute(
                "UPDATE vms SET state = 'running', verification = ? WHERE domid = ?",
                (json.dumps(verification), domid),
            )

    def release(self, domid: int) -> None:
        """Drop the lease."""
        with self._transaction() as db:
            db.execute("DELETE FROM vms WHERE domid = ?", (domid,))

    def get(self, domid: int) -> VmRecord | None:
        """Return the VM with ``domid``, or None."""
        with self._using() as db:
            row = db.execute("SELECT * FROM vms WHERE domid = ?", (domid,)).fetchone()
        return self._decoded(row) if row else None

    def find(self, key: str) -> VmRecord | None:
        """Return the VM named ``key``, or whose domid ``key`` is, or None."""
        with self._using() as db:
            row = db.execute("SELECT * FROM vms WHERE name = ?", (key,)).fetchone()
            if row is None and key.isascii() and key.isdigit():
                row = db.execute("SELECT * FROM vms WHERE domid = ?", (int(key),)).fetchone()
        return self._decoded(row) if row else None

    def all(self) -> list[VmRecord]:
        """Every VM, by domid."""
        with self._using() as db:
            rows = db.execute("SELECT * FROM vms ORDER BY domid").fetchall()
        return [self._decoded(row) for row in rows]

    def leases(self) -> list[Lease]:
        """Every VM's name, domid, QEMU and uid, by domid: what the audit matches processes to.

        Without the decision, layers and verification, whose JSON made most of the cost of
        reading 200 records.
        """
        with self._using() as db:
            rows = db.execute("SELECT domid, name, pid, start_time, uid FROM vms ORDER BY domid")
            return [Lease(**dict(row)) for row in rows.fetchall()]

    def ended(self) -> list[VmRecord]:
        """The VMs whose QEMU exited, or whose launcher, stopper or supervisor died.

        Every launch and stop asks this first: it reads only the columns that say so, and
        the whole record (decision, layers, verification) of only the VMs it finds.
        """
        with self._using() as db:
            rows = db.execute(
                "SELECT domid, state, pid, start_time, owner_pid, owner_start, supervised "
                "FROM vms ORDER BY domid"
            ).fetchall()
        try:
            states = [LeaseState(row["state"]) for row in rows]
        except ValueError as exc:
            raise self._damaged(exc) from exc
        found = []
        for row, state in zip(rows, states, strict=True):
            pid, started = row["pid"], row["start_time"]
            status = lease_status(
                state,
                None if pid is None or started is None else (pid, started),
                (row["owner_pid"], row["owner_start"]),
                supervised=bool(row["supervised"]),
            )
            if status in (VmStatus.EXITED, VmStatus.STALE) and (record := self.get(row["domid"])):
                found.append(record)
        return found

    def exists(self) -> bool:
        """Whether the database has been created (a read-only caller need not create it)."""
        return self.path.exists()


def smallest_free_domid(taken: Iterable[int]) -> int | None:
    """The smallest domid from 1 to 32751 that is not in ``taken``, or None."""
    from qemu_depriv.xl.domain import DOMID_MAX, DOMID_MIN  # noqa: PLC0415 - see the imports

    used = set(taken)
    return next((d for d in range(DOMID_MIN, DOMID_MAX + 1) if d not in used), None)


def current_owner() -> tuple[int, int]:
    """This process's (pid, start time), recorded on the leases it takes."""
    pid = os.getpid()
    started = start_time(pid)
    assert started is not None  # noqa: S101 - our own process exists
    return pid, started
