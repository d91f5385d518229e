"""Which processes exist: by uid, and whether a recorded process is still the same one."""

from __future__ import annotations

from pathlib import Path

from qemu_depriv.inspect import read_status, start_time


def live_pids_of_uid(uid: int, proc: Path = Path("/proc")) -> list[int]:
    """Return every live (non-zombie) process whose real, effective, saved or fs uid is ``uid``.

    Any of the four counts: a process that kept ``uid`` in its saved set could switch back.
    """
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = read_status(int(entry.name), proc)
        except ValueError:
            continue
        if status is not None and not status.zombie and uid in status.uids:
            found.append(int(entry.name))
    return found


def has_exited(pid: int, started: int) -> bool:
    """Whether the recorded process is gone (a zombie counts as gone)."""
    return not is_alive(pid, started)


def is_alive(pid: int, started: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and is not a zombie."""
    if start_time(pid, proc) != started:
        return False
    status = read_status(pid, proc)
    return status is not None and not status.zombie
