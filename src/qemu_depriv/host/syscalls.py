"""Linux system calls that Python 3.11's :mod:`os` module lacks, through ctypes.

``os.unshare`` and ``os.setns`` arrived in Python 3.12 and there is no ``os.mount`` at all;
these wrappers raise :class:`OSError` with the real errno, as :mod:`os` functions do.
"""

from __future__ import annotations

import ctypes
import os

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWNET = 0x40000000

MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = (ctypes.c_int,)
_libc.mount.argtypes = (
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_void_p,
)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces (unshare(2)).

    Raises:
        OSError: the kernel refused (EPERM without CAP_SYS_ADMIN, EINVAL in a threaded process).
    """
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None, flags: int) -> None:
    """Mount ``source`` on ``target`` (mount(2), without a data argument).

    Raises:
        OSError: the kernel refused.
    """
    _check(
        _libc.mount(
            source.encode() if source else None,
            target.encode(),
            fstype.encode() if fstype else None,
            flags,
            None,
        ),
        f"mount {source or '-'} on {target}",
    )


def make_mounts_private() -> None:
    """Stop mounts made from now on from propagating back to the host's namespace.

    Raises:
        OSError: the kernel refused.
    """
    mount(None, "/", None, MS_REC | MS_PRIVATE)


def bind(source: str, target: str) -> None:
    """Bind-mount ``source`` over ``target``.

    Raises:
        OSError: the kernel refused.
    """
    mount(source, target, None, MS_BIND)


PR_SET_NO_NEW_PRIVS = 38
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)


def set_no_new_privs() -> None:
    """Forbid this process and its children to gain privileges through execve (prctl(2)).

    Raises:
        OSError: the kernel refused.
    """
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
