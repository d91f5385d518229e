"""Cache entries that appear whole or not at all, shared by images and wheels.

An entry is a directory ``ROOT/NAME`` made by a build function in ``ROOT/.building-NAME-PID`` and
renamed into place when the function returns; a lock file per name makes a second session wait
for the first one's build instead of doing it again. Leftovers of a build that died (the machine
rebooted, pytest was killed) are removed by the next build of the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.hosts.commands import run_captured

log = logging.getLogger(__name__)


class StillMounted(OSError):
    """A directory to remove still has something mounted in it; it was left alone."""


def entry(root: Path, name: str, build: Callable[[Path], None]) -> tuple[Path, float | None]:
    """``ROOT/NAME``, built by ``build(directory)`` first if it does not exist yet.

    Returns the entry and the seconds the build took (None when it was already there). Whatever
    ``build`` raises propagates, and its half-made directory is removed.
    """
    final = root / name
    if final.is_dir():
        return final, None
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{name}.lock"):
        if final.is_dir():
            return final, None
        for stale in root.glob(f".building-{name}-*"):
            remove_tree(stale)
        building = root / f".building-{name}-{os.getpid()}"
        building.mkdir()
        started = time.monotonic()
        try:
            build(building)
            building.rename(final)
        finally:
            if building.exists():
                remove_tree(building)
    return final, time.monotonic() - started


def prune(root: Path, prefix: str, keep: Path, count: int) -> None:
    """Keep ``keep`` and the ``count - 1`` most recently used other entries named ``PREFIX*``.

    A QEMU still running from a removed image keeps its open files, so pruning is safe.
    """
    others = [path for path in root.glob(f"{prefix}*") if path.is_dir() and path != keep]
    others.sort(key=last_used, reverse=True)
    for old in others[max(count - 1, 0) :]:
        log.info("removing the old cache entry %s", old)
        remove_tree(old)


def touch(path: Path) -> None:
    """Record that the entry ``path`` was used now (pruning keeps the recently used)."""
    with contextlib.suppress(OSError):
        (path / "last-used").touch()


def last_used(path: Path) -> float:
    """When the entry was last used, or made."""
    try:
        return (path / "last-used").stat().st_mtime
    except OSError:
        return path.stat().st_mtime


def remove_tree(path: Path) -> None:
    """Remove a directory, but never through a mount a crashed mmdebstrap left in its chroot.

    A chroot may still have the machine's ``/proc``, ``/sys`` or ``/dev`` mounted in it, and
    deleting through those would delete the machine's own files. Such mounts are detached first;
    if one remains, ``StillMounted`` is raised and nothing is deleted.
    """
    for mount_point in sorted(mounts_under(path), key=len, reverse=True):
        run_captured(["umount", "--lazy", mount_point], timeout=60)
    left = mounts_under(path)
    if left:
        raise StillMounted(f"not removing {path}: still mounted there: {', '.join(left)}")
    shutil.rmtree(path)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, from ``/proc/self/mountinfo``."""
    resolved = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mount_point = line.split()[4]
        for escaped, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
            mount_point = mount_point.replace(escaped, char)
        if mount_point == resolved or mount_point.startswith(resolved + "/"):
            found.append(mount_point)
    return found


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
