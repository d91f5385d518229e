"""Everything read from /proc: one process's layers, its children, who runs as a uid, QEMUs.

The parsers are pure functions over the bytes of ``/proc/PID/status`` and ``/proc/PID/stat``,
unit-tested on captured samples; :func:`snapshot` and the scans are the thin I/O around them.

psutil is not used here: it reports three uids (no fsuid) and none of Groups, CapEff,
NoNewPrivs or Seccomp, which are exactly what verification needs.

Files and links are read with ``os`` calls on string paths, not :mod:`pathlib`: a snapshot
reads some 25 of them per process and the audit takes one of every QEMU on the host, and
building a ``Path`` for each costs several times the system call itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

#: The states (first letter of State, field 3 of stat) of a process that is gone but not reaped:
#: zombie, dead.  It runs nothing and holds nothing: it counts as gone.
GONE_STATES = ("Z", "X")


@dataclass(frozen=True)
class ProcStatus:
    """The fields of ``/proc/PID/status`` that say who a process is and what it may do.

    ``uids`` and ``gids`` are (real, effective, saved, filesystem).
    """

    name: str
    state: str
    uids: tuple[int, int, int, int]
    gids: tuple[int, int, int, int]
    groups: tuple[int, ...]
    cap_eff: int
    cap_prm: int
    no_new_privs: bool
    seccomp: int

    @property
    def zombie(self) -> bool:
        """A zombie runs nothing and holds nothing: it counts as gone."""
        return self.state.startswith(GONE_STATES)


#: The namespaces a snapshot records, as named in /proc/PID/ns.
NAMESPACES = ("mnt", "ipc", "net", "pid", "uts", "user")
#: Rows of /proc/PID/limits, by the names the layer plan uses.
LIMIT_ROWS = {
    "Max core file size": "core",
    "Max file size": "fsize",
    "Max open files": "nofile",
    "Max locked memory": "memlock",
    "Max file locks": "locks",
    "Max msgqueue size": "msgqueue",
    "Max processes": "nproc",
}
UNLIMITED = -1
#: The rows of LIMIT_ROWS by their first characters, so that a line is tried against one.
_ROW_PREFIX = min(map(len, LIMIT_ROWS))


def _rows_by_prefix() -> dict[str, tuple[str, ...]]:
    rows: dict[str, tuple[str, ...]] = {}
    for row in LIMIT_ROWS:
        rows[row[:_ROW_PREFIX]] = (*rows.get(row[:_ROW_PREFIX], ()), row)
    return rows


_ROWS_BY_PREFIX = _rows_by_prefix()


@dataclass(frozen=True)
class Snapshot:
    """What /proc shows of a running process: every layer, as read.

    ``namespaces`` maps a name of :data:`NAMESPACES` to its ``type:[inode]`` link; ``limits``
    maps a name of :data:`LIMIT_ROWS` to (soft, hard), :data:`UNLIMITED` for unlimited;
    ``cgroups`` maps each hierarchy's controllers (``memory``, ``pids``, ``""`` for v2) to the
    process's path in it; ``fds`` is the target of every open descriptor; ``taps`` the
    interface each ``/dev/net/tun`` descriptor is attached to (``""`` for one attached to
    none), by descriptor number.
    """

    pid: int
    status: ProcStatus
    root: str
    namespaces: dict[str, str] = field(default_factory=dict)
    limits: dict[str, tuple[int, int]] = field(default_factory=dict)
    cgroups: dict[str, str] = field(default_factory=dict)
    fds: tuple[str, ...] = ()
    taps: dict[int, str] = field(default_factory=dict)


#: The tun/tap driver's device: /dev/net/tun, character device 10:200.
TUN_DEVICE = os.makedev(10, 200)


def parse_tun_fdinfo(raw: bytes) -> str:
    """The interface a tun descriptor is attached to, from its fdinfo (``iff:`` NAME); "" none."""
    for line in raw.decode("ascii", "replace").splitlines():
        key, _, value = line.partition(":")
        if key == "iff":
            return value.strip()
    return ""


def parse_limits(raw: bytes) -> dict[str, tuple[int, int]]:
    """Parse ``/proc/PID/limits`` into (soft, hard) per known limit.

    Raises:
        ValueError: a known row is malformed.
    """
    limits = {}
    for line in raw.decode("utf-8", "replace").splitlines()[1:]:
        for row in _ROWS_BY_PREFIX.get(line[:_ROW_PREFIX], ()):
            if line.startswith(row):
                soft, hard = line[len(row) :].split()[:2]
                limits[LIMIT_ROWS[row]] = (_limit(soft), _limit(hard))
    return limits


def _limit(text: str) -> int:
    return UNLIMITED if text == "unlimited" else int(text)


def parse_cgroup(raw: bytes) -> dict[str, str]:
    """Parse ``/proc/PID/cgroup``: controllers (comma-joined; ``""`` for v2) to path.

    Raises:
        ValueError: a line is not ``ID:CONTROLLERS:PATH``.
    """
    cgroups = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3:
            raise ValueError(f"malformed /proc cgroup line: {line!r}")
        cgroups[parts[1]] = parts[2]
    return cgroups


def _quad(value: str) -> tuple[int, int, int, int]:
    a, b, c, d = (int(part) for part in value.split())
    return (a, b, c, d)


#: The lines of /proc/PID/status that :func:`parse_status` reads (of some 55).
_STATUS_FIELDS = frozenset(
    ("Name", "State", "Uid", "Gid", "Groups", "CapEff", "CapPrm", "NoNewPrivs", "Seccomp")
)


def parse_status(raw: bytes) -> ProcStatus:
    """Parse ``/proc/PID/status``.

    Raises:
        ValueError: a field that every Linux since 3.8 reports is missing or malformed.
    """
    fields: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
        if key in _STATUS_FIELDS:
            fields[key] = value.strip()
    try:
        return ProcStatus(
            name=fields["Name"],
            state=fields["State"],
            uids=_quad(fields["Uid"]),
            gids=_quad(fields["Gid"]),
            groups=tuple(int(g) for g in fields.get("Groups", "").split()),
            cap_eff=int(fields["CapEff"], 16),
            cap_prm=int(fields["CapPrm"], 16),
            no_new_privs=fields.get("NoNewPrivs", "0") == "1",
            seccomp=int(fields.get("Seccomp", "0")),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"malformed /proc status: {exc}") from exc


def parse_stat(raw: bytes) -> tuple[str, int]:
    """Return the state (field 3) and the start time (field 22) of ``/proc/PID/stat``.

    The start time is in clock ticks since boot: with the pid it names one process for the
    whole uptime, so a recorded (pid, start time) never designates a later process that reused
    the pid.

    Raises:
        ValueError: the line is malformed.
    """
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    try:
        after_name = raw[raw.rindex(b")") + 2 :].split()
        return after_name[0].decode("ascii"), int(after_name[19])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"malformed /proc stat line: {raw[:80]!r}") from exc


def parse_start_time(raw: bytes) -> int:
    """Return field 22 of ``/proc/PID/stat``: the start time (see :func:`parse_stat`).

    Raises:
        ValueError: the line is malformed.
    """
    return parse_stat(raw)[1]


def _read_if_there(path: str) -> bytes | None:
    """A whole /proc file, or None when its process is gone (also between open and read)."""
    try:
        return _read_all(path)
    except (FileNotFoundError, ProcessLookupError):
        return None


def _read_all(path: str, directory: int | None = None) -> bytes:
    """A whole /proc file, read to its end as ``Path.read_bytes`` reads it; raises as it does.

    ``path`` is relative to the open ``directory`` when one is given.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=directory)
    try:
        chunks = []
        while chunk := os.read(descriptor, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)


def read_status(pid: int, proc: Path = Path("/proc")) -> ProcStatus | None:
    """Return the status of ``pid``, or None when it no longer exists."""
    raw = _read_if_there(f"{proc}/{pid}/status")
    return None if raw is None else parse_status(raw)


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Return the start time of ``pid``, or None when it no longer exists."""
    raw = _read_if_there(f"{proc}/{pid}/stat")
    return None if raw is None else parse_start_time(raw)


def state_and_start(pid: int, proc: Path = Path("/proc")) -> tuple[str, int] | None:
    """Return the state and the start time of ``pid`` (one read), or None when it is gone."""
    raw = _read_if_there(f"{proc}/{pid}/stat")
    return None if raw is None else parse_stat(raw)


def _links(directory: int) -> dict[str, str]:
    """The target of every link in the open ``directory`` (closed meanwhile: left out)."""
    links = {}
    for name in os.listdir(directory):
        try:
            links[name] = os.readlink(name, dir_fd=directory)
        except FileNotFoundError:  # closed meanwhile
            continue
    return links


def _through_handle(pid: int, proc: Path, read: Callable[[int, int], _T]) -> _T | None:
    """``read(handle, pid)`` with a handle on ``/proc/PID``; None when the process is gone.

    Every file read through the handle belongs to the process it was opened on: should that
    process exit and its pid be reused meanwhile, the reads fail rather than mix in the new
    process.  The relative paths are also shorter walks than ``/proc/PID/...`` for each.
    """
    try:
        handle = os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return read(handle, pid)
    except (FileNotFoundError, ProcessLookupError):
        return None
    finally:
        os.close(handle)


def _snapshot_at(handle: int, pid: int) -> Snapshot:
    status = parse_status(_read_all("status", handle))
    namespaces = {n: os.readlink(f"ns/{n}", dir_fd=handle) for n in NAMESPACES}
    fd_dir = os.open("fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=handle)
    try:
        fds = _links(fd_dir)
        taps = _taps(handle, fd_dir, fds)
    finally:
        os.close(fd_dir)
    return Snapshot(
        pid=pid,
        status=status,
        root=os.readlink("root", dir_fd=handle),
        namespaces=namespaces,
        limits=parse_limits(_read_all("limits", handle)),
        cgroups=parse_cgroup(_read_all("cgroup", handle)),
        fds=tuple(fds[fd] for fd in sorted(fds, key=int)),
        taps=taps,
    )


def snapshot(pid: int, proc: Path = Path("/proc")) -> Snapshot | None:
    """Read every layer of ``pid``, all of one process; None when it exited meanwhile.

    Raises:
        ValueError: /proc returned something unparseable.
    """
    return _through_handle(pid, proc, _snapshot_at)


def _start_and_words(handle: int) -> tuple[int, tuple[str, ...]]:
    """The start time and the command line, through ``handle``."""
    return parse_start_time(_read_all("stat", handle)), _words(_read_all("cmdline", handle))


def _process_at(handle: int, pid: int) -> tuple[Snapshot, int, tuple[str, ...]]:
    return (_snapshot_at(handle, pid), *_start_and_words(handle))


def read_process(
    pid: int, proc: Path = Path("/proc")
) -> tuple[Snapshot, int, tuple[str, ...]] | None:
    """The snapshot, start time and command line of ``pid``, all of one process, or None.

    What the audit needs of each QEMU, whatever its pid: read through one handle, a process
    that exited meanwhile is left out, never mixed with another given its pid.

    Raises:
        ValueError: /proc returned something unparseable.
    """
    return _through_handle(pid, proc, _process_at)


def _identity_at(handle: int, _pid: int) -> tuple[ProcStatus, int, tuple[str, ...]]:
    return (parse_status(_read_all("status", handle)), *_start_and_words(handle))


def identity(
    pid: int, proc: Path = Path("/proc")
) -> tuple[ProcStatus, int, tuple[str, ...]] | None:
    """The status, start time and command line of ``pid``, all of one process, or None.

    Only files that any process may read: what recovery asks of every QEMU on the host, ours
    or not, before it knows which are its orphans.

    Raises:
        ValueError: /proc returned something unparseable.
    """
    return _through_handle(pid, proc, _identity_at)


def _taps(handle: int, fd_dir: int, fds: dict[str, str]) -> dict[int, str]:
    """The tun descriptors among ``fds``, and the interface each is attached to.

    Known by their device number: the path shown depends on the reader's mount namespace
    (``/net/tun`` for a /dev mount it cannot reach).
    """
    taps = {}
    for fd, target in fds.items():
        if not target.endswith("/net/tun"):
            continue
        try:
            if os.stat(fd, dir_fd=fd_dir).st_rdev == TUN_DEVICE:
                taps[int(fd)] = parse_tun_fdinfo(_read_all(f"fdinfo/{fd}", handle))
        except FileNotFoundError:  # closed meanwhile
            continue
    return taps


def own_namespaces(proc: Path = Path("/proc")) -> dict[str, str]:
    """The calling process's namespaces, to tell a device model's own ones from them."""
    return {
        n: os.readlink(f"{proc}/self/ns/{n}")  # noqa: PTH115 - no Path per file
        for n in NAMESPACES
    }


def live_pids_of_uid(uid: int, proc: Path = Path("/proc")) -> list[int]:
    """Return every live (non-zombie) process whose real, effective, saved or fs uid is ``uid``.

    Any of the four counts: a process that kept ``uid`` in its saved set could switch back.
    Every launch and every teardown asks this, so the scan reads only the two lines it needs
    of each process's status: its cost is one small read per process on the host.
    """
    found = []
    root = str(proc)
    for name in os.listdir(root):  # noqa: PTH208 - strings: no Path per process
        if not name.isdigit():
            continue
        raw = _read_if_there(f"{root}/{name}/status")
        if raw is None:
            continue
        uids = _live_uids(raw)
        if uids is not None and uid in uids:
            found.append(int(name))
    return found


def _live_uids(raw: bytes) -> tuple[int, ...] | None:
    """The four uids of a status file, or None for a zombie or a malformed file."""
    state = raw.find(b"\nState:")
    start = raw.find(b"\nUid:")
    end = raw.find(b"\n", start + 1)
    if state < 0 or start < 0 or end < 0:
        return None
    if (
        raw[state + 7 : raw.find(b"\n", state + 1)].strip()[:1].decode("ascii", "replace")
        in GONE_STATES
    ):
        return None
    try:
        return tuple(int(part) for part in raw[start + 5 : end].split())
    except ValueError:
        return None


#: The executables that are QEMU system emulators (and Xen's old device model).
_QEMU_EXE = re.compile(r"qemu-system-[\w.-]+|qemu-kvm|qemu-dm")


def qemu_pids(proc: Path = Path("/proc")) -> list[int]:
    """Every live process whose executable is a QEMU binary (zombies have none).

    Found by the executable, not by a name a process can choose for itself.
    """
    pids = []
    root = str(proc)
    for name in os.listdir(root):  # noqa: PTH208 - no Path per process
        if not name.isdigit():
            continue
        try:
            exe = os.readlink(f"{root}/{name}/exe")  # noqa: PTH115 - no Path per file
        except OSError:
            continue
        if _QEMU_EXE.fullmatch(exe.rpartition("/")[2].removesuffix(" (deleted)")):
            pids.append(int(name))
    return sorted(pids)


def children(pid: int, proc: Path = Path("/proc")) -> list[int] | None:
    """The children of ``pid``'s main thread; None when ``pid`` is gone."""
    try:
        text = (proc / str(pid) / "task" / str(pid) / "children").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return [int(p) for p in text.split()]


def cmdline(pid: int, proc: Path = Path("/proc")) -> tuple[str, ...] | None:
    """The command line of ``pid``, word by word; None when it is gone."""
    try:
        raw = _read_all(f"{proc}/{pid}/cmdline")
    except OSError:
        return None
    return _words(raw)


def _words(raw: bytes) -> tuple[str, ...]:
    return tuple(raw.decode("utf-8", "surrogateescape").split("\0")[:-1])
