"""Starting and ending the lab's daemons, always by pid.

Other developers run QEMU tests on the same machine at the same time, so nothing here ever
looks a process up by name: a daemon is the :class:`subprocess.Popen` that started it, or a pid
found in one lab's own mount namespace.

A daemon gets ``PR_SET_PDEATHSIG(SIGKILL)``: if pytest itself is killed, before any finalizer
can run, the kernel kills the daemons it started instead of leaving them to the machine.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec; the setting survives exec.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An explicit environment for lab commands: PATH and a C locale, nothing inherited."""
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LC_ALL": "C.UTF-8",
        **(extra or {}),
    }


def spawn(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a daemon in the foreground of its own session, its output appended to ``log``.

    Raises:
        OSError: the program could not be started.
    """
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=base_env(env),
            start_new_session=True,
            # Unsafe only with threads, and the tests start none: one prctl call in the child.
            preexec_fn=_die_with_parent,  # noqa: PLW1509
        )


def is_gone(pid: int) -> bool:
    """True when ``pid`` has exited; a zombie runs nothing and holds nothing, so it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}


def state(pid: int) -> str:
    """The one-letter state of ``pid`` from /proc (``T`` when stopped), ``"-"`` when gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return "-"
    return stat.rpartition(")")[2].split()[0]


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait up to ``timeout`` seconds for every pid to exit; return those still running."""
    deadline = time.monotonic() + timeout
    left = [pid for pid in pids if not is_gone(pid)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if not is_gone(pid)]
    return left


def signal_pid(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``; a process that already exited is not an error."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def end(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """SIGTERM (and SIGCONT, should it be stopped), then SIGKILL after ``grace`` s; reap it."""
    if process.poll() is None:
        signal_pid(process.pid, signal.SIGTERM)
        signal_pid(process.pid, signal.SIGCONT)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_pid(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL at once and reap: the cleanup path, which must not wait on a sick daemon."""
    if process.poll() is None:
        signal_pid(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def mount_namespace_of(pid: int) -> str | None:
    """``mnt:[INODE]`` of ``pid``'s mount namespace, or None when it is gone."""
    try:
        return str(Path(f"/proc/{pid}/ns/mnt").readlink())
    except OSError:
        return None


def pids_in_mount_namespace(namespace: str) -> set[int]:
    """Every live process whose mount namespace is ``namespace`` (as :func:`mount_namespace_of`)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if mount_namespace_of(pid) == namespace and not is_gone(pid):
                found.add(pid)
    return found
