"""One raw NSS lookup through glibc, printed as JSON: what the product's lookups will see.

Run as a script inside a lab's namespace::

    python probe.py getpwnam NAME
    python probe.py getpwuid UID

It prints one JSON object: ``rc`` (the function's return value, an errno number or 0), ``null``
(whether ``*result`` is NULL), ``errno`` (the thread's errno after the call, which glibc leaves
as the backend set it), their symbolic names, the entry when one was found, and ``seconds``
spent in the call alone.  It calls the reentrant functions through ctypes, exactly as
``qemu_depriv.accounts.nss`` does (``CDLL(None)``), and imports nothing from the project, so
that the facts it shows are glibc's and the NSS modules', not ours.

:func:`parse` turns that output back into a :class:`ProbeResult` for the tests.
"""

from __future__ import annotations

import ctypes
import errno
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

#: Large enough that no lab entry needs ERANGE retries: the probe shows one call, as it is.
BUFFER_SIZE = 65536


class _Passwd(ctypes.Structure):
    _fields_ = (
        ("pw_name", ctypes.c_char_p),
        ("pw_passwd", ctypes.c_char_p),
        ("pw_uid", ctypes.c_uint),
        ("pw_gid", ctypes.c_uint),
        ("pw_gecos", ctypes.c_char_p),
        ("pw_dir", ctypes.c_char_p),
        ("pw_shell", ctypes.c_char_p),
    )


@dataclass(frozen=True)
class ProbeResult:
    """What one ``getpwnam_r``/``getpwuid_r`` call returned."""

    call: str
    key: str
    rc: int
    null: bool
    errno: int
    seconds: float
    name: str | None = None
    uid: int | None = None
    gid: int | None = None

    @property
    def rc_name(self) -> str:
        """The return code as an errno symbol (``"0"`` for success or "not found")."""
        return errno.errorcode.get(self.rc, str(self.rc)) if self.rc else "0"

    @property
    def found(self) -> bool:
        """glibc's "found": a return of 0 and a result."""
        return self.rc == 0 and not self.null

    @property
    def not_found(self) -> bool:
        """glibc's "not found": a return of 0 and a NULL result."""
        return self.rc == 0 and self.null

    def __str__(self) -> str:
        entry = f" -> {self.name}:{self.uid}:{self.gid}" if self.found else ""
        errno_name = errno.errorcode.get(self.errno, str(self.errno)) if self.errno else "0"
        return (
            f"{self.call}({self.key}) = {self.rc_name}, result "
            f"{'NULL' if self.null else 'set'}, errno {errno_name}, "
            f"{self.seconds:.3f} s{entry}"
        )


def parse(output: str) -> ProbeResult:
    """Read the probe's JSON line.

    Raises:
        ValueError: the output is not the probe's (the probe failed to run).
    """
    try:
        data: dict[str, Any] = json.loads(output)
    except json.JSONDecodeError as exc:
        raise ValueError(f"the probe printed no JSON: {output!r}") from exc
    return ProbeResult(
        call=str(data["call"]),
        key=str(data["key"]),
        rc=int(data["rc"]),
        null=bool(data["null"]),
        errno=int(data["errno"]),
        seconds=float(data["seconds"]),
        name=data.get("name"),
        uid=data.get("uid"),
        gid=data.get("gid"),
    )


def lookup(call: str, key: str) -> dict[str, Any]:
    """Make the call once; return what the probe prints."""
    libc = ctypes.CDLL(None, use_errno=True)
    entry = _Passwd()
    result = ctypes.POINTER(_Passwd)()
    buffer = ctypes.create_string_buffer(BUFFER_SIZE)
    function = libc.getpwnam_r if call == "getpwnam" else libc.getpwuid_r
    argument: bytes | int = key.encode() if call == "getpwnam" else int(key)
    ctypes.set_errno(0)
    start = time.monotonic()
    rc = function(argument, ctypes.byref(entry), buffer, BUFFER_SIZE, ctypes.byref(result))
    seconds = time.monotonic() - start
    err = ctypes.get_errno()
    out: dict[str, Any] = {
        "call": call,
        "key": key,
        "rc": rc,
        "null": not result,
        "errno": err,
        "seconds": round(seconds, 4),
    }
    if result:
        out.update(
            name=result.contents.pw_name.decode(),
            uid=result.contents.pw_uid,
            gid=result.contents.pw_gid,
        )
    return out


def main(argv: list[str]) -> int:
    """``probe.py getpwnam NAME`` or ``probe.py getpwuid UID``; exit 2 on other arguments."""
    if len(argv) != 2 or argv[0] not in {"getpwnam", "getpwuid"}:
        print(__doc__, file=sys.stderr)
        return 2
    print(json.dumps(lookup(argv[0], argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
