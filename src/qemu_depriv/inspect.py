"""Read one process's isolation layers from /proc.

The parsers are pure functions over the bytes of ``/proc/PID/status`` and ``/proc/PID/stat``,
unit-tested on captured samples; :func:`snapshot` is the thin I/O around them.

psutil is not used here: it reports three uids (no fsuid) and none of Groups, CapEff,
NoNewPrivs or Seccomp, which are exactly what verification needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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
        return self.state.startswith(("Z", "X"))


@dataclass(frozen=True)
class Snapshot:
    """What /proc shows of a running process: its status and its root directory."""

    pid: int
    status: ProcStatus
    root: str


def _quad(value: str) -> tuple[int, int, int, int]:
    a, b, c, d = (int(part) for part in value.split())
    return (a, b, c, d)


def parse_status(raw: bytes) -> ProcStatus:
    """Parse ``/proc/PID/status``.

    Raises:
        ValueError: a field that every Linux since 3.8 reports is missing or malformed.
    """
    fields: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").splitlines():
        key, _, value = line.partition(":")
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


def parse_start_time(raw: bytes) -> int:
    """Return field 22 of ``/proc/PID/stat``: the start time in clock ticks since boot.

    With the pid it names one process for the whole uptime, so a recorded (pid, start time)
    never designates a later process that reused the pid.

    Raises:
        ValueError: the line is malformed.
    """
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    try:
        after_name = raw[raw.rindex(b")") + 2 :].split()
        return int(after_name[19])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"malformed /proc stat line: {raw[:80]!r}") from exc


def read_status(pid: int, proc: Path = Path("/proc")) -> ProcStatus | None:
    """Return the status of ``pid``, or None when it no longer exists."""
    try:
        return parse_status((proc / str(pid) / "status").read_bytes())
    except (FileNotFoundError, ProcessLookupError):
        return None


def start_time(pid: int, proc: Path = Path("/proc")) -> int | None:
    """Return the start time of ``pid``, or None when it no longer exists."""
    try:
        return parse_start_time((proc / str(pid) / "stat").read_bytes())
    except (FileNotFoundError, ProcessLookupError):
        return None


def snapshot(pid: int, proc: Path = Path("/proc")) -> Snapshot | None:
    """Read the layers of ``pid``; None when it exited meanwhile.

    Raises:
        ValueError: /proc returned something unparseable.
    """
    status = read_status(pid, proc)
    if status is None:
        return None
    try:
        root = str((proc / str(pid) / "root").readlink())
    except (FileNotFoundError, ProcessLookupError):
        return None
    return Snapshot(pid=pid, status=status, root=root)
