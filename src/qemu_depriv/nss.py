"""Account lookups with three outcomes: found, not found, error.

Python's :mod:`pwd` cannot be used here: ``pwd.getpwnam`` raises the same ``KeyError`` whether
the account does not exist or the LDAP server behind NSS is unreachable, and a resolver that
reads an outage as "no such user" falls through to a weaker tier (or to root).  So this module
calls libc's reentrant functions itself through :mod:`ctypes` and keeps their return codes.

Outcomes of :meth:`LibcLookup.user_by_name` and :meth:`LibcLookup.user_by_uid`:

- an :class:`Account` when found;
- ``None`` when libc returns 0 with a NULL result, or ENOENT, ESRCH, EBADF or EPERM, the codes
  that getpwnam(3) lists for "the name was not found";
- :class:`~qemu_depriv.errors.AccountLookupError` for any other code, including a buffer
  that would have to grow past the cap.

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
from dataclasses import dataclass
from typing import Protocol

from qemu_depriv.errors import AccountLookupError

log = logging.getLogger(__name__)

#: Return codes that mean "no such account" (getpwnam(3), ERRORS).
NOT_FOUND_CODES = frozenset({errno.ENOENT, errno.ESRCH, errno.EBADF, errno.EPERM})
#: Past this size a growing lookup buffer is an error, not a bigger allocation.
DEFAULT_BUFFER_CAP = 1 << 20
#: The kernel's NGROUPS_MAX: no account can be in more groups than this.
NGROUPS_MAX = 65536
#: (uid_t)-1 means "no change" to setresuid(2), so it is never an account's uid.
UID_LIMIT = 2**32 - 1


@dataclass(frozen=True)
class Account:
    """One passwd entry."""

    name: str
    uid: int
    gid: int
    gecos: str
    home: str
    shell: str


class AccountLookup(Protocol):
    """What the resolution chain needs to know about accounts.

    ``user_by_name`` and ``user_by_uid`` return ``None`` for "not found" and raise
    :class:`~qemu_depriv.errors.AccountLookupError` for a failed lookup.
    """

    def user_by_name(self, name: str) -> Account | None:
        """Return the account called ``name``, or None."""
        ...

    def user_by_uid(self, uid: int) -> Account | None:
        """Return the account that owns ``uid``, or None."""
        ...

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """Return the gids ``initgroups(name, gid)`` would give, ``gid`` included."""
        ...


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


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", "surrogateescape")


def initial_buffer_size() -> int:
    """Return ``sysconf(_SC_GETPW_R_SIZE_MAX)``, or 1024 when it gives no answer."""
    try:
        size = os.sysconf("SC_GETPW_R_SIZE_MAX")
    except (ValueError, OSError):
        size = -1
    return size if size > 0 else 1024


class LibcLookup:
    """Account lookups through the libc of the running process (and so through NSS).

    Args:
        libc: the library to call; by default ``CDLL(None)``, which honours preloaded shims.
        initial_size: the first buffer size; by default :func:`initial_buffer_size`.
        cap: the largest buffer to try before giving up with an error.
    """

    def __init__(
        self,
        libc: ctypes.CDLL | None = None,
        *,
        initial_size: int | None = None,
        cap: int = DEFAULT_BUFFER_CAP,
    ) -> None:
        lib = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
        pointer = ctypes.POINTER(ctypes.POINTER(_Passwd))
        self._getpwnam_r = lib.getpwnam_r
        self._getpwnam_r.argtypes = (
            ctypes.c_char_p,
            ctypes.POINTER(_Passwd),
            ctypes.c_char_p,
            ctypes.c_size_t,
            pointer,
        )
        self._getpwnam_r.restype = ctypes.c_int
        self._getpwuid_r = lib.getpwuid_r
        self._getpwuid_r.argtypes = (
            ctypes.c_uint32,
            ctypes.POINTER(_Passwd),
            ctypes.c_char_p,
            ctypes.c_size_t,
            pointer,
        )
        self._getpwuid_r.restype = ctypes.c_int
        self._getgrouplist = lib.getgrouplist
        self._getgrouplist.argtypes = (
            ctypes.c_char_p,
            ctypes.c_uint32,
            ctypes.POINTER(ctypes.c_uint32),
            ctypes.POINTER(ctypes.c_int),
        )
        self._getgrouplist.restype = ctypes.c_int
        self._initial = initial_size if initial_size is not None else initial_buffer_size()
        self._cap = cap

    def user_by_name(self, name: str) -> Account | None:
        """Look up ``name``.

        Raises:
            AccountLookupError: the backend failed, or the entry needs more than the cap.
        """
        key = name.encode("utf-8", "surrogateescape")
        return self._lookup(f"user {name!r}", lambda *a: self._getpwnam_r(key, *a))

    def user_by_uid(self, uid: int) -> Account | None:
        """Look up the owner of ``uid``.

        Raises:
            AccountLookupError: the backend failed, or the entry needs more than the cap.
            ValueError: ``uid`` is not a valid uid_t.
        """
        if not 0 <= uid < UID_LIMIT:
            raise ValueError(f"uid {uid} is outside 0..{UID_LIMIT - 1}")
        return self._lookup(f"uid {uid}", lambda *a: self._getpwuid_r(uid, *a))

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """Return the account's group list, ``gid`` first, as ``getgrouplist(3)`` gives it.

        Raises:
            AccountLookupError: libc keeps asking for more room than NGROUPS_MAX.
        """
        key = name.encode("utf-8", "surrogateescape")
        size = 32
        while True:
            groups = (ctypes.c_uint32 * size)()
            count = ctypes.c_int(size)
            if self._getgrouplist(key, gid, groups, ctypes.byref(count)) >= 0:
                return tuple(groups[: count.value])
            size = max(count.value, size * 2)
            if size > NGROUPS_MAX:
                raise AccountLookupError(
                    f"groups of user {name!r}: getgrouplist wants room for {size} groups, more "
                    f"than the kernel allows ({NGROUPS_MAX}); check the group database",
                    key=f"groups of {name!r}",
                    errno=errno.ERANGE,
                )

    def _lookup(self, key: str, call: _Call) -> Account | None:
        size = self._initial
        while True:
            entry = _Passwd()
            result = ctypes.POINTER(_Passwd)()
            buffer = ctypes.create_string_buffer(size)
            code = call(ctypes.byref(entry), buffer, size, ctypes.byref(result))
            if code == 0:
                return _account(result.contents) if result else None
            if code in NOT_FOUND_CODES:
                return None
            if code != errno.ERANGE:
                raise AccountLookupError(
                    f"looking up {key} failed: {os.strerror(code)} (errno {code}); an NSS backend "
                    "in /etc/nsswitch.conf is failing: fix it and try again (this is never "
                    "taken for 'no such user')",
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
