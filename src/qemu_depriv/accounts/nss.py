"""Account lookups with three outcomes: found, not found, error; each within a deadline.

Python's :mod:`pwd` cannot be used here: ``pwd.getpwnam`` raises the same ``KeyError`` whether
the account does not exist or the LDAP server behind NSS is unreachable, and a resolver that
reads an outage as "no such user" falls through to a weaker tier (or to root).  So this module
calls libc's reentrant functions itself through :mod:`ctypes` and keeps their return codes.

Outcomes of :meth:`LibcLookup.user_by_name`, :meth:`LibcLookup.user_by_uid` and
:meth:`LibcLookup.group_by_gid`:

- an :class:`Account` (or :class:`Group`) when found;
- ``None`` only when libc returns 0 with a NULL result;
- :class:`~qemu_depriv.errors.AccountLookupError` for any non-zero return but ERANGE, for a
  buffer that would have to grow past the cap, and for a call that gives no answer within the
  deadline.

The rule for non-zero returns is glibc's: it returns 0 for both SUCCESS and NOTFOUND, and the
backend's errno for anything else, so a non-zero return is always a backend failing.
libnss-ldapd reports an unreachable nslcd or LDAP server as ENOENT, which getpwnam(3)'s portable
list calls "not found"; reading it so would undo the whole point of this module.  The same rule
is applied on every C library (musl also returns 0 and NULL for "not found"); only glibc is
tested.

A lookup that hangs (a directory server that accepts connections and never answers) is an
error too: each call runs in a short-lived thread and is abandoned after ``timeout`` seconds.
The thread ends with the call, so the process is single-threaded again between lookups (which
``unshare(2)`` needs).  :meth:`LibcLookup.users_by_uid` looks up many uids at once (the audit's
every device model): each distinct uid once, all on one thread that ends with the batch, each
lookup still abandoned after its own ``timeout`` (the rest then go on in a fresh thread), since
starting a thread costs more than a lookup from the files.  Written here rather than with
:mod:`concurrent.futures`: an executor's worker stuck in a hung C call cannot be abandoned (its
shutdown, and the interpreter's exit, wait for it).

The buffer starts at ``sysconf(_SC_GETPW_R_SIZE_MAX)`` (1024 bytes when that says -1) and
doubles on ERANGE.  libc is loaded as ``CDLL(None)``, the running process's own symbol table,
so an NSS shim that is preloaded (``LD_PRELOAD=libnss_wrapper.so``) is honoured.

``getgrouplist(3)`` cannot tell a failing group backend from an empty answer: glibc skips a
group service that is unavailable.  Supplementary groups are therefore best effort; the launcher
verifies the groups of the running process against the plan instead of trusting this list.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from qemu_depriv.accounts.nsswitch import NSSWITCH, read_nsswitch
from qemu_depriv.errors import AccountLookupError

log = logging.getLogger(__name__)

#: Past this size a growing lookup buffer is an error, not a bigger allocation.
DEFAULT_BUFFER_CAP = 1 << 20
#: The kernel's NGROUPS_MAX: no account can be in more groups than this.
NGROUPS_MAX = 65536
#: (uid_t)-1 means "no change" to setresuid(2), so it is never an account's uid.
UID_LIMIT = 2**32 - 1
#: Seconds a lookup may take before it counts as failed (``lookup_timeout`` in the settings).
DEFAULT_TIMEOUT = 10.0

_T = TypeVar("_T")


@dataclass(frozen=True)
class Account:
    """One passwd entry."""

    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


@dataclass(frozen=True)
class Group:
    """One group entry (its members are not needed here)."""

    name: str
    gid: int


#: What looking up a uid gave: its account, None for "not found", or the error of a failed one.
UserOutcome = Account | AccountLookupError | None


class AccountLookup(Protocol):
    """What the resolution chain needs to know about accounts.

    ``user_by_name``, ``user_by_uid`` and ``group_by_gid`` return ``None`` for "not found"
    and raise :class:`~qemu_depriv.errors.AccountLookupError` for a failed lookup.
    """

    def user_by_name(self, name: str) -> Account | None:
        """Return the account called ``name``, or None."""
        ...

    def user_by_uid(self, uid: int) -> Account | None:
        """Return the account that owns ``uid``, or None."""
        ...

    def group_by_gid(self, gid: int) -> Group | None:
        """Return the group with id ``gid``, or None."""
        ...

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """Return the gids ``initgroups(name, gid)`` would give, ``gid`` included."""
        ...


def users_by_uid(lookup: AccountLookup, uids: Iterable[int]) -> dict[int, UserOutcome]:
    """Look up the owner of each distinct uid of ``uids`` once, through any lookup.

    The answers of one moment (an audit's), not a cache: accounts change between calls.
    :class:`LibcLookup` does them all on one thread (:meth:`LibcLookup.users_by_uid`); any
    other lookup is asked uid by uid.

    Raises:
        ValueError: a uid is not a valid uid_t.
    """
    if isinstance(lookup, LibcLookup):
        return lookup.users_by_uid(uids)
    found: dict[int, UserOutcome] = {}
    for uid in dict.fromkeys(uids):
        try:
            found[uid] = lookup.user_by_uid(uid)
        except AccountLookupError as exc:
            found[uid] = exc
    return found


class _Passwd(ctypes.Structure):
    _fields_ = (
        ("pw_name", ctypes.c_char_p),
        ("pw_passwd", ctypes.c_char_p),
        ("pw_uid", ctypes.c_uint32),
        ("pw_gid", ctypes.c_uint32),
        ("pw_gecos", ctypes.c_char_p),
        ("pw_dir", ctypes.c_char_p),
        ("pw_shell", ctypes.c_char_p),
    )


class _Group(ctypes.Structure):
    _fields_ = (
        ("gr_name", ctypes.c_char_p),
        ("gr_passwd", ctypes.c_char_p),
        ("gr_gid", ctypes.c_uint32),
        ("gr_mem", ctypes.POINTER(ctypes.c_char_p)),
    )


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "surrogateescape")


def initial_buffer_size() -> int:
    """Return ``sysconf(_SC_GETPW_R_SIZE_MAX)``, or 1024 when it gives no answer."""
    try:
        size = os.sysconf("SC_GETPW_R_SIZE_MAX")
    except (ValueError, OSError):
        size = -1
    return size if size > 0 else 1024


def _bind(function: Any, *argtypes: object) -> Any:
    """Declare a libc function's argument types and its int return."""
    function.argtypes = argtypes
    function.restype = ctypes.c_int
    return function


class LibcLookup:
    """Account lookups through the libc of the running process (and so through NSS).

    Args:
        libc: the library to call; by default ``CDLL(None)``, which honours preloaded shims.
        initial_size: the first buffer size; by default :func:`initial_buffer_size`.
        cap: the largest buffer to try before giving up with an error.
        timeout: seconds each lookup may take (None: wait for ever).
        nsswitch: the file whose lines the error messages point to.
    """

    def __init__(
        self,
        libc: ctypes.CDLL | None = None,
        *,
        initial_size: int | None = None,
        cap: int = DEFAULT_BUFFER_CAP,
        timeout: float | None = DEFAULT_TIMEOUT,
        nsswitch: Path = NSSWITCH,
    ) -> None:
        lib = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
        out_pw = out_gr = ctypes.POINTER(ctypes.c_void_p)
        entry_pw, entry_gr = ctypes.POINTER(_Passwd), ctypes.POINTER(_Group)
        buffer, size = ctypes.c_char_p, ctypes.c_size_t
        self._getpwnam_r = _bind(lib.getpwnam_r, ctypes.c_char_p, entry_pw, buffer, size, out_pw)
        self._getpwuid_r = _bind(lib.getpwuid_r, ctypes.c_uint32, entry_pw, buffer, size, out_pw)
        self._getgrgid_r = _bind(lib.getgrgid_r, ctypes.c_uint32, entry_gr, buffer, size, out_gr)
        self._getgrouplist = _bind(
            lib.getgrouplist,
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_int),
        )
        self._initial = initial_size if initial_size is not None else initial_buffer_size()
        self._cap = cap
        self._timeout = timeout
        self._nsswitch = nsswitch

    def user_by_name(self, name: str) -> Account | None:
        """Look up ``name``.

        Raises:
            AccountLookupError: the backend failed or hung, or the entry needs more than the
                cap.
        """
        key = name.encode("utf-8", "surrogateescape")
        return self._passwd(f"user {name!r}", lambda *a: self._getpwnam_r(key, *a))

    def user_by_uid(self, uid: int) -> Account | None:
        """Look up the owner of ``uid``.

        Raises:
            AccountLookupError: the backend failed or hung, or the entry needs more than the
                cap.
            ValueError: ``uid`` is not a valid uid_t.
        """
        if not 0 <= uid < UID_LIMIT:
            raise ValueError(f"uid {uid} is outside 0..{UID_LIMIT - 1}")
        return self._passwd(f"uid {uid}", lambda *a: self._getpwuid_r(uid, *a))

    def users_by_uid(self, uids: Iterable[int]) -> dict[int, UserOutcome]:
        """Look up the owner of each distinct uid of ``uids`` once; all on one thread.

        Each outcome is what :meth:`user_by_uid` returns or raises for that uid: an account,
        None for "not found", or the :class:`~qemu_depriv.errors.AccountLookupError` of a failed
        or hung lookup, each lookup bounded by ``timeout`` on its own.

        Raises:
            ValueError: a uid is not a valid uid_t (before anything is looked up).
        """
        wanted = list(dict.fromkeys(uids))
        for uid in wanted:
            if not 0 <= uid < UID_LIMIT:
                raise ValueError(f"uid {uid} is outside 0..{UID_LIMIT - 1}")

        def lookup(uid: int) -> Callable[[], Account | None]:
            return self._passwd_lookup(f"uid {uid}", lambda *a: self._getpwuid_r(uid, *a))

        found: dict[int, UserOutcome] = {}
        if self._timeout is None:
            for uid in wanted:
                try:
                    found[uid] = lookup(uid)()
                except AccountLookupError as exc:
                    found[uid] = exc
            return found
        calls = [(f"looking up uid {uid}", lookup(uid)) for uid in wanted]
        outcomes = bounded_calls(calls, self._timeout, database="passwd", nsswitch=self._nsswitch)
        for uid, outcome in zip(wanted, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, AccountLookupError):
                raise outcome  # not a lookup's outcome: a fault, raised as user_by_uid would
            found[uid] = outcome
        return found

    def group_by_gid(self, gid: int) -> Group | None:
        """Look up the group with id ``gid``.

        Raises:
            AccountLookupError: the backend failed or hung, or the entry needs more than the
                cap.
            ValueError: ``gid`` is not a valid gid_t.
        """
        if not 0 <= gid < UID_LIMIT:
            raise ValueError(f"gid {gid} is outside 0..{UID_LIMIT - 1}")

        def call() -> Group | None:
            entry = _Group()
            held = self._retrying(
                f"gid {gid}", "group", entry, lambda *a: self._getgrgid_r(gid, *a)
            )
            return None if held is None else Group(_text(entry.gr_name), int(entry.gr_gid))

        return self._bounded(f"gid {gid}", "group", call)

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """Return the account's group list, ``gid`` first, as ``getgrouplist(3)`` gives it.

        Raises:
            AccountLookupError: libc keeps asking for more room than NGROUPS_MAX, or hung.
        """
        key = name.encode("utf-8", "surrogateescape")

        def call() -> tuple[int, ...]:
            size = 32
            while True:
                groups = (ctypes.c_uint32 * size)()
                count = ctypes.c_int(size)
                if self._getgrouplist(key, gid, groups, ctypes.byref(count)) >= 0:
                    return tuple(groups[: count.value])
                size = max(count.value, size * 2)
                if size > NGROUPS_MAX:
                    raise AccountLookupError(
                        f"groups of user {name!r}: getgrouplist wants room for {size} groups, "
                        f"more than the kernel allows ({NGROUPS_MAX}); check the group database",
                        key=f"groups of {name!r}",
                        errno=errno.ERANGE,
                    )

        return self._bounded(f"the groups of user {name!r}", "group", call)

    def _passwd(self, key: str, call: _Call) -> Account | None:
        return self._bounded(key, "passwd", self._passwd_lookup(key, call))

    def _passwd_lookup(self, key: str, call: _Call) -> Callable[[], Account | None]:
        """The unbounded lookup of one passwd entry, for a thread to run."""

        def lookup() -> Account | None:
            entry = _Passwd()
            held = self._retrying(key, "passwd", entry, call)
            return None if held is None else _account(entry)

        return lookup

    def _bounded(self, key: str, database: str, call: Callable[[], _T]) -> _T:
        if self._timeout is None:
            return call()
        return bounded_call(
            call, self._timeout, what=f"looking up {key}", database=database,
            nsswitch=self._nsswitch,
        )  # fmt: skip

    def _retrying(
        self, key: str, database: str, entry: ctypes.Structure, call: _Call
    ) -> ctypes.Array[ctypes.c_char] | None:
        """Call with a growing buffer; return it when found, None when not found.

        ``entry``'s strings point into the buffer, so the caller holds it while reading them.
        """
        size = self._initial
        while True:
            result = ctypes.c_void_p()
            buffer = ctypes.create_string_buffer(size)
            code = call(ctypes.byref(entry), buffer, size, ctypes.byref(result))
            if code == 0:
                return buffer if result.value else None
            if code != errno.ERANGE:
                name = errno.errorcode.get(code, "?")
                raise AccountLookupError(
                    f"looking up {key} failed: {os.strerror(code)} (errno {code}, {name}); "
                    f"an NSS source is failing: {read_nsswitch(self._nsswitch).hint(database)}; "
                    "fix it and try again (a failed lookup is never taken for 'no such user')",
                    key=key,
                    errno=code,
                )
            if size >= self._cap:
                raise AccountLookupError(
                    f"looking up {key} failed: the entry does not fit in {self._cap} bytes; "
                    "check the account database for an oversized entry",
                    key=key,
                    errno=code,
                )
            log.debug("looking up %s: ERANGE with a %d-byte buffer, retrying", key, size)
            size = min(size * 2, self._cap)


def bounded_call(
    call: Callable[[], _T],
    timeout: float,
    *,
    what: str,
    database: str,
    nsswitch: Path = NSSWITCH,
) -> _T:
    """Run ``call`` in a short-lived thread; a call still running after ``timeout`` is an error.

    The thread is abandoned, not stopped (a blocked C call cannot be): the command fails, and
    the thread ends with the process.

    Raises:
        AccountLookupError: no answer within ``timeout`` seconds; naming ``what`` and the
            sources of ``database``.
        Whatever ``call`` raises.
    """
    (outcome,) = bounded_calls([(what, call)], timeout, database=database, nsswitch=nsswitch)
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _hung(what: str, timeout: float, database: str, nsswitch: Path) -> AccountLookupError:
    return AccountLookupError(
        f"{what} gave no answer within {timeout:g} s (lookup_timeout): an NSS source "
        f"hangs; {read_nsswitch(nsswitch).hint(database)}",
        key=what,
        errno=errno.ETIMEDOUT,
    )


def _outcome(call: Callable[[], _T]) -> _T | BaseException:
    try:
        return call()
    except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
        return exc


def bounded_calls(
    calls: Sequence[tuple[str, Callable[[], _T]]],
    timeout: float,
    *,
    database: str,
    nsswitch: Path = NSSWITCH,
) -> list[_T | BaseException]:
    """Run ``calls`` (each ``(what, call)``) in order on one short-lived thread; each is bounded.

    Each call has ``timeout`` seconds of its own, as under :func:`bounded_call`: one still
    running after that is abandoned with its thread, its outcome the
    :class:`~qemu_depriv.errors.AccountLookupError` that :func:`bounded_call` raises, and the
    calls after it go on in a fresh thread.  The caller sleeps until the batch ends or the
    running call's time is up: a batch costs one thread start and one wake-up, not one each.
    A batch that ends has its thread joined, so the process is single-threaded again.

    Returns:
        One outcome per call, in order: what it returned, or the exception it raised.
    """
    outcomes: list[_T | BaseException] = []
    while len(outcomes) < len(calls):
        batch = _Batch(calls[len(outcomes) :])
        thread = threading.Thread(target=batch.run, name=calls[len(outcomes)][0], daemon=True)
        thread.start()
        done, hung = batch.wait(timeout)
        outcomes += done
        if hung:
            outcomes.append(_hung(calls[len(outcomes)][0], timeout, database, nsswitch))
        else:
            thread.join()
    return outcomes


class _Batch(Generic[_T]):
    """Calls run in order by one thread: their outcomes, and when the running one started."""

    def __init__(self, calls: Sequence[tuple[str, Callable[[], _T]]]) -> None:
        self._calls = calls
        self._lock = threading.Lock()
        self._ended = threading.Event()
        self._outcomes: list[_T | BaseException] = []
        #: When the call at index len(_outcomes) started: set with each outcome, under _lock.
        self._started = time.monotonic()
        self._abandoned = False

    def run(self) -> None:
        """The thread's body: every call, until the end or until the caller gives up on one."""
        for _, call in self._calls:
            outcome = _outcome(call)
            with self._lock:
                if self._abandoned:  # a late answer: the caller has moved on without it
                    return
                self._outcomes.append(outcome)
                self._started = time.monotonic()
        self._ended.set()

    def wait(self, timeout: float) -> tuple[list[_T | BaseException], bool]:
        """The outcomes so far, and whether the call after them hung (its thread is dropped)."""
        while True:
            with self._lock:
                if len(self._outcomes) == len(self._calls):
                    return self._outcomes, False
                left = self._started + timeout - time.monotonic()
                if left <= 0:
                    self._abandoned = True
                    return self._outcomes, True
            self._ended.wait(left)


class _Call(Protocol):
    def __call__(
        self, entry: object, buffer: ctypes.Array[ctypes.c_char], size: int, result: object, /
    ) -> int: ...


def _account(entry: _Passwd) -> Account:
    return Account(
        name=_text(entry.pw_name),
        uid=int(entry.pw_uid),
        gid=int(entry.pw_gid),
        gecos=_text(entry.pw_gecos),
        home=_text(entry.pw_dir),
        shell=_text(entry.pw_shell),
    )
