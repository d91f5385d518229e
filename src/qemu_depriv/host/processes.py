"""Processes we recorded: whether one is still the same, signalling it safely, waiting.

A recorded process is a (pid, start time) pair: the start time, field 22 of /proc/PID/stat, names
one process for the whole uptime, so a pid that was reused is never mistaken for it, waited on,
or signalled.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from qemu_depriv.host.procfs import GONE_STATES, start_time, state_and_start

#: The longest pause between two polls of :func:`wait_until`.
_POLL = 0.01


def has_exited(pid: int, started: int) -> bool:
    """Whether the recorded process is gone (a zombie counts as gone)."""
    return not is_alive(pid, started)


def is_alive(pid: int, started: int, proc: Path = Path("/proc")) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and is not a zombie."""
    found = state_and_start(pid, proc)
    return found is not None and found[1] == started and found[0] not in GONE_STATES


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; return whether it held.

    The first polls come 1 ms apart, then 10 ms: most waits here end within milliseconds.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, _POLL)
    return True


def signal_pid(pid: int, started: int, signum: int) -> bool:
    """Send ``signum`` to ``pid`` if it is still the process that started at ``started``.

    A pidfd pins the process first, so the start time checked is that of the process signalled
    (no pid reuse between check and kill).  Returns whether a signal was sent.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if start_time(pid) != started:
            return False
        signal.pidfd_send_signal(pidfd, signum)
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        raise
    else:
        return True
    finally:
        os.close(pidfd)
