"""What ``/etc/nsswitch.conf`` says about where accounts come from, and which answers to trust.

A lookup's "not found" is only as good as the sources that gave it.  glibc reports a source
that *fails* as a non-zero return (:mod:`qemu_depriv.accounts.nss` makes that an error), but some
sources answer "not found" while their directory is unreachable: SSSD, offline, answers it for
every account it has not cached, exactly as for a name that exists nowhere.  Each source on a
database's line is therefore one of:

``local``
    answers from this host (``files``, ``systemd``, ...): it cannot be cut off.
``reports-errors``
    a network source whose outage reaches the caller as an error: ``ldap`` (libnss-ldapd,
    whose nslcd answers UNAVAIL with ENOENT when it or the LDAP server is down).
``online-check``
    a source that hides its outages, but can say whether it is online: ``sss`` (InfoPipe's
    ``IsOnline``, see :mod:`qemu_depriv.accounts.sssd`).
``unknown``
    anything else (``nis``, ``winbind``, ...): whether it is online cannot be told, so its
    "not found" is never believed unless the settings say it holds no device-model accounts.

Parsing is pure (:func:`parse_nsswitch`); :func:`read_nsswitch` is the I/O.  The syntax is
glibc's: ``database: source [STATUS=action] source ...``, ``#`` comments; a database without a
line uses ``files``.  ``compat`` reads ``files`` and the sources of ``passwd_compat:`` (or
``group_compat:``), which glibc consults for ``+``/``-`` entries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

NSSWITCH = Path("/etc/nsswitch.conf")


class SourceKind(StrEnum):
    """Whether a source's "not found" can be believed, and how."""

    LOCAL = "local"
    REPORTS_ERRORS = "reports-errors"
    ONLINE_CHECK = "online-check"
    UNKNOWN = "unknown"


#: Sources that answer from this host.
LOCAL_SOURCES = frozenset(
    {"files", "compat", "db", "extrausers", "systemd", "mymachines", "altfiles", "cache"}
)
#: Network sources whose outages reach the caller as errors (checked against the real one).
ERROR_REPORTING_SOURCES = frozenset({"ldap"})
#: Sources that hide outages behind "not found" but can report whether they are online.
ONLINE_CHECK_SOURCES = frozenset({"sss"})
#: What an administrator should look at when a source fails, by source.
SOURCE_HINTS = {
    "ldap": "is nslcd running, and its LDAP server reachable?",
    "sss": "is sssd running, and its directory reachable ('sssctl domain-status DOMAIN')?",
    "systemd": "is systemd-userdbd answering?",
    "nis": "is ypbind running?",
    "winbind": "is winbindd running, and its domain controller reachable?",
}


def source_kind(source: str) -> SourceKind:
    """How far ``source``'s "not found" can be trusted."""
    if source in LOCAL_SOURCES:
        return SourceKind.LOCAL
    if source in ERROR_REPORTING_SOURCES:
        return SourceKind.REPORTS_ERRORS
    if source in ONLINE_CHECK_SOURCES:
        return SourceKind.ONLINE_CHECK
    return SourceKind.UNKNOWN


@dataclass(frozen=True)
class NsSwitch:
    """The sources of each database, as glibc reads them from ``path``."""

    lines: dict[str, tuple[str, ...]] = field(default_factory=dict)
    path: Path = NSSWITCH

    def sources(self, database: str) -> tuple[str, ...]:
        """The sources ``database`` consults, in order (``compat`` expanded)."""
        listed = self.lines.get(database, ("files",))
        expanded: list[str] = []
        for source in listed:
            if source == "compat":
                expanded += ["files", *self.lines.get(f"{database}_compat", ())]
            else:
                expanded.append(source)
        return tuple(dict.fromkeys(expanded))

    def line(self, database: str) -> str:
        """The line as an administrator would look for it, e.g. ``passwd: files ldap``."""
        return f"{database}: {' '.join(self.lines.get(database, ('files',)))}"

    def network_sources(self, database: str) -> tuple[str, ...]:
        """The sources of ``database`` that do not answer from this host."""
        return tuple(s for s in self.sources(database) if source_kind(s) != SourceKind.LOCAL)

    def hint(self, database: str) -> str:
        """What to check when ``database``'s lookups fail or hang: its network sources."""
        remote = self.network_sources(database)
        if not remote:
            return f"check the '{self.line(database)}' line of {self.path}"
        hints = "; ".join(f"{s}: {SOURCE_HINTS.get(s, 'is it reachable?')}" for s in remote)
        return f"check the sources on the '{self.line(database)}' line of {self.path} ({hints})"


_ACTION = re.compile(r"\[[^]]*\]")


def parse_nsswitch(text: str, path: Path = NSSWITCH) -> NsSwitch:
    """Read the text of an nsswitch.conf: each database's sources, actions dropped (pure)."""
    lines: dict[str, tuple[str, ...]] = {}
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        database, colon, rest = line.partition(":")
        if not colon or not database.strip():
            continue
        sources = _ACTION.sub(" ", rest).split()
        lines[database.strip().lower()] = tuple(sources)
    return NsSwitch(lines, path)


def read_nsswitch(path: Path = NSSWITCH) -> NsSwitch:
    """Read ``path``; a missing or unreadable file is what glibc then uses: ``files``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    return parse_nsswitch(text, path)
