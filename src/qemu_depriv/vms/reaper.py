"""Kill every process of a VM's uid, race-free (Xen's reaper, in Python).

A forked child calls ``setresuid(reaper_uid, vm_uid, 0)`` and ``kill(-1, SIGKILL)`` until
nothing of the uid is left.  ``kill(-1)`` reaches every process whose real or saved uid is the
caller's real or effective uid; with no capability left (the effective uid is not 0) that is
exactly the processes of ``vm_uid`` (and of ``reaper_uid``, which owns none).  Because the real
uid is the reaper's and the saved uid is 0, no process of the VM can signal the child back, and
a process forked between two calls is caught by the next one.  Scanning /proc and killing pid by
pid would race with processes that fork or exit meanwhile.

Zombies answer ``kill`` but run nothing; PID 1 reaps them on its own schedule, so the loop
ends when no *live* process of the uid is left.

Two reapers at once would kill each other: both have the reaper's real uid, which each one's
``kill(-1)`` reaches.  So reapers take a host-wide lock (every qemu-depriv on the host, whatever
its state directory), and a reaper killed anyway is run again.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host.procfs import live_pids_of_uid

log = logging.getLogger(__name__)

#: Rounds of kill(-1) before giving up; each round kills everything alive at that moment.
MAX_ROUNDS = 1000
#: Times a reaper killed by another one (on another host's state directory) is run again.
RETRIES = 5
#: Host-wide: reapers of every state directory must not run at once.
REAPER_LOCK = Path("/run/lock/qemu-depriv-reaper.lock")
_FAILED_SETUID = 2
_NOT_EMPTY = 3


def _reap_in_child(vm_uid: int, reaper_uid: int) -> int:
    os.setresuid(reaper_uid, vm_uid, 0)
    me = os.getpid()  # its effective uid is vm_uid: the reaper is no process to wait for
    for _ in range(MAX_ROUNDS):
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            return 0
        if not [pid for pid in live_pids_of_uid(vm_uid) if pid != me]:
            return 0
    return _NOT_EMPTY


def kill_uid(vm_uid: int, choose_reaper: Callable[[int], int], *, lock: Path = REAPER_LOCK) -> None:
    """Kill every process of ``vm_uid``.

    ``choose_reaper`` picks the reaper's uid once the host-wide lock is held, so that the
    reapers of other teardowns (which own the reaper uid while they run) are finished and do
    not make it look busy.

    Raises:
        EnvironmentFailure: either uid is 0, the two are equal, the child could not switch
            uids, the lock could not be had, or processes survived every round.
    """
    with _host_lock(lock):
        reaper_uid = choose_reaper(vm_uid)
        if 0 in (vm_uid, reaper_uid) or vm_uid == reaper_uid:
            raise EnvironmentFailure(
                f"refusing to kill by uid with vm uid {vm_uid} and reaper uid {reaper_uid}"
            )
        for _ in range(RETRIES):
            code = _reap(vm_uid, reaper_uid)
            if code != -signal.SIGKILL:
                break
            log.warning("the reaper for uid %d was killed; running it again", vm_uid)
    if code == _FAILED_SETUID:
        raise EnvironmentFailure(f"the reaper for uid {vm_uid} could not switch to it")
    if code != 0:
        raise EnvironmentFailure(
            f"processes of uid {vm_uid} survived {MAX_ROUNDS} rounds of SIGKILL "
            f"(reaper exit {code}): see 'ps -u {vm_uid}'"
        )
    log.debug("killed every process of uid %d (reaper uid %d)", vm_uid, reaper_uid)


def _reap(vm_uid: int, reaper_uid: int) -> int:
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, no return into the caller's code
        code = _FAILED_SETUID
        try:
            code = _reap_in_child(vm_uid, reaper_uid)
        except BaseException:  # noqa: BLE001 - anything in the child ends it with a code
            code = _FAILED_SETUID
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@contextlib.contextmanager
def _host_lock(path: Path, timeout: float = 30.0) -> Iterator[None]:
    """An exclusive flock on ``path``, waited for at most ``timeout`` seconds."""
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise EnvironmentFailure(f"the reaper lock {path}: {exc.strerror}") from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EnvironmentFailure(
                        f"the reaper lock {path} stayed taken for {timeout} s: another "
                        "qemu-depriv is stuck killing processes; try again"
                    ) from None
                time.sleep(0.01)
        yield
    finally:
        os.close(descriptor)
