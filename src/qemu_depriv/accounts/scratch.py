"""Temporary account files, seen as the system's own through a private mount namespace.

The demo and the system tests resolve and launch against real NSS (glibc's ``files`` backend,
or any module named in a scratch ``nsswitch.conf``) without ever writing the host's
``/etc/passwd`` or ``/etc/group``: the process enters a new mount namespace, makes it private,
and bind-mounts its own files over those paths.  The host's files and every other process
are unaffected, and the mounts vanish with the last process of the namespace.

nscd, when it runs, would answer from the host's files and bypass the bind mounts, so its
socket directory is hidden as well.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.host import syscalls

BASE_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh",
    "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
)
BASE_GROUP = ("root:x:0:", "nogroup:x:65534:")
FILES_ONLY = "passwd: files\ngroup: files\nshadow: files\ngshadow: files\n"
_NSCD_DIRS = ("/run/nscd", "/var/run/nscd")


@dataclass(frozen=True)
class ScratchAccounts:
    """A directory holding ``passwd``, ``group`` and ``nsswitch.conf``."""

    root: Path

    @property
    def passwd(self) -> Path:
        """The file that stands for /etc/passwd."""
        return self.root / "passwd"

    @property
    def group(self) -> Path:
        """The file that stands for /etc/group."""
        return self.root / "group"

    @property
    def nsswitch(self) -> Path:
        """The file that stands for /etc/nsswitch.conf."""
        return self.root / "nsswitch.conf"


def write_scratch_accounts(
    root: Path,
    passwd: Iterable[str] = (),
    group: Iterable[str] = (),
    nsswitch: str = FILES_ONLY,
) -> ScratchAccounts:
    """Write account files under ``root`` (the base entries first), and return them."""
    root.mkdir(parents=True, exist_ok=True)
    scratch = ScratchAccounts(root)
    scratch.passwd.write_text("\n".join((*BASE_PASSWD, *passwd)) + "\n", encoding="utf-8")
    scratch.group.write_text("\n".join((*BASE_GROUP, *group)) + "\n", encoding="utf-8")
    scratch.nsswitch.write_text(nsswitch, encoding="utf-8")
    for path in (scratch.passwd, scratch.group, scratch.nsswitch):
        path.chmod(0o644)
    return scratch


def enter_scratch_accounts(scratch: ScratchAccounts) -> None:
    """Make ``scratch`` this process's /etc/passwd, /etc/group and /etc/nsswitch.conf.

    Call it single-threaded (unshare(2) refuses a threaded process); children inherit it.

    Raises:
        OSError: not root, or the kernel refused the namespace or a mount.
    """
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.make_mounts_private()
    syscalls.bind(str(scratch.passwd), "/etc/passwd")
    syscalls.bind(str(scratch.group), "/etc/group")
    syscalls.bind(str(scratch.nsswitch), "/etc/nsswitch.conf")
    hidden = set()
    for directory in _NSCD_DIRS:
        path = Path(directory)
        if path.is_dir() and path.resolve() not in hidden:
            hidden.add(path.resolve())
            syscalls.mount("tmpfs", str(path), "tmpfs", 0)
