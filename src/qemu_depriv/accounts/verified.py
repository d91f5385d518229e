"""Account lookups whose "not found" is believed only from sources that can vouch for it.

The resolution chain moves a domain to a weaker tier on every "not found", and the range tier
runs a domain as a bare uid when no account owns it.  Both are only safe when "not found" is
the truth and not an outage in disguise.  :mod:`qemu_depriv.accounts.nss` already makes every
failing source an error; this module covers the sources that *hide* their outages
(:mod:`qemu_depriv.accounts.nsswitch` says which): before a "not found" is handed to the chain,
each such source on the ``passwd`` line must say that it is online (SSSD over InfoPipe), or the
settings must say that it never holds device-model accounts (``sources_without_accounts``).
Otherwise the lookup is an error: exit 4, with the fix.

The check runs at most once per second of lookups: a resolution takes milliseconds, so one
answer covers all of its "not found"s, and a long-lived caller still asks again later.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial

from qemu_depriv.accounts.nss import Account, AccountLookup, Group, LibcLookup
from qemu_depriv.accounts.nsswitch import NsSwitch, SourceKind, read_nsswitch, source_kind
from qemu_depriv.accounts.sssd import require_online
from qemu_depriv.errors import AccountLookupError

#: Raises AccountLookupError unless its source is online right now.
OnlineCheck = Callable[[], None]
#: How long one "online" answer is trusted.
FRESH_FOR = 1.0


@dataclass
class VerifiedLookup:
    """An :class:`~qemu_depriv.accounts.nss.AccountLookup` that vouches for each "not found".

    Args:
        lookup: the lookups themselves (libc's, in production).
        nsswitch: where the passwd sources are named.
        checks: for each source that can say whether it is online, the check.
        exempt: sources the administrator says never hold device-model accounts.
        clock: monotonic seconds, for how long an "online" answer is trusted.
    """

    lookup: AccountLookup
    nsswitch: NsSwitch
    checks: Mapping[str, OnlineCheck]
    exempt: frozenset[str] = frozenset()
    clock: Callable[[], float] = time.monotonic
    _vouched_at: float | None = field(default=None, init=False)

    def user_by_name(self, name: str) -> Account | None:
        """As :meth:`LibcLookup.user_by_name`; a "not found" only when it can be believed."""
        account = self.lookup.user_by_name(name)
        if account is None:
            self._vouch(f"user {name!r}")
        return account

    def user_by_uid(self, uid: int) -> Account | None:
        """As :meth:`LibcLookup.user_by_uid`; a "not found" only when it can be believed."""
        account = self.lookup.user_by_uid(uid)
        if account is None:
            self._vouch(f"uid {uid}")
        return account

    def group_by_gid(self, gid: int) -> Group | None:
        """As :meth:`LibcLookup.group_by_gid` (a missing group changes no decision)."""
        return self.lookup.group_by_gid(gid)

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        """As :meth:`LibcLookup.groups_of`."""
        return self.lookup.groups_of(name, gid)

    def _vouch(self, key: str) -> None:
        """Return only when every passwd source's "not found" can be believed now.

        Raises:
            AccountLookupError: a source hides outages and cannot say that it is online.
        """
        now = self.clock()
        if self._vouched_at is not None and now - self._vouched_at < FRESH_FOR:
            return
        for source in self.nsswitch.sources("passwd"):
            kind = source_kind(source)
            if source in self.exempt or kind in (SourceKind.LOCAL, SourceKind.REPORTS_ERRORS):
                continue
            check = self.checks.get(source)
            if check is None:
                raise AccountLookupError(
                    f"{key} was not found, but the source {source!r} on the "
                    f"'{self.nsswitch.line('passwd')}' line of {self.nsswitch.path} cannot say "
                    "whether its directory is reachable, so 'not found' cannot be believed: if "
                    f"{source} never holds device-model accounts, list it in "
                    "sources_without_accounts in the qemu-depriv settings",
                    key=key,
                    errno=errno.EHOSTUNREACH,
                )
            try:
                check()
            except AccountLookupError as exc:
                raise AccountLookupError(
                    f"{key} was not found, but {exc.message}", key=key, errno=exc.errno
                ) from exc
        self._vouched_at = self.clock()


def online_checks(timeout: float) -> dict[str, OnlineCheck]:
    """The sources that can say whether they are online, and how they are asked."""
    return {"sss": partial(require_online, timeout)}


def system_lookup(timeout: float, exempt: Iterable[str] = ()) -> VerifiedLookup:
    """Lookups through this host's NSS, each within ``timeout`` seconds.

    ``exempt`` are the sources the settings say hold no device-model account
    (``sources_without_accounts``).
    """
    return VerifiedLookup(
        LibcLookup(timeout=timeout), read_nsswitch(), online_checks(timeout), frozenset(exempt)
    )
