"""A fake of NSS for the pure resolution chain: an in-memory account table.

It stands in for NSS only in unit tests of the pure logic; tests/system resolves through real
glibc NSS.  Keys listed in ``failing`` raise AccountLookupError, as a broken backend would, and
every query is counted so that tests can hold the chain to "each name looked up once".
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass, field

from qemu_depriv.accounts.nss import Account, Group
from qemu_depriv.errors import AccountLookupError


def account(
    name: str, uid: int, gid: int | None = None, shell: str = "/usr/sbin/nologin"
) -> Account:
    return Account(name, uid, uid if gid is None else gid, "", "/nonexistent", shell)


@dataclass
class TableLookup:
    accounts: list[Account] = field(default_factory=list)
    #: name -> extra gids (supplementary groups)
    memberships: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: keys that fail: a user name, "uid N", or "gid N"
    failing: set[str] = field(default_factory=set)
    #: names that a by-name query does not find although the account exists (an inconsistent
    #: backend: found by uid, not by name)
    unnamed: set[str] = field(default_factory=set)
    queries: Counter[str] = field(default_factory=Counter)

    def _fail_if_asked(self, key: str) -> None:
        self.queries[key] += 1
        if key in self.failing:
            raise AccountLookupError(
                f"looking up {key} failed: fake outage", key=key, errno=errno.EIO
            )

    def user_by_name(self, name: str) -> Account | None:
        self._fail_if_asked(name)
        if name in self.unnamed:
            return None
        return next((a for a in self.accounts if a.name == name), None)

    def user_by_uid(self, uid: int) -> Account | None:
        self._fail_if_asked(f"uid {uid}")
        return next((a for a in self.accounts if a.uid == uid), None)

    def group_by_gid(self, gid: int) -> Group | None:
        self._fail_if_asked(f"gid {gid}")
        return Group(f"group{gid}", gid)

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        return (gid, *self.memberships.get(name, ()))
