"""The resolution chain: which account a domain's device model runs as.

Pure logic over an :class:`~qemu_depriv.accounts.nss.AccountLookup`; no I/O of its own.  The order,
stopping at the first hit (DESIGN.md, "User resolution"):

1. ``explicit``: the domain's ``device_model_user`` (or an argv's ``-runas``, which may be the
   numeric ``UID:GID`` libxl's range tier gives); missing is a refusal.
2. ``name``: ``PREFIX-DOMNAME`` for every domain name, as the seed looks it up; skipped, with
   a warning, only when no passwd database could hold it (``:``, ``/``, whitespace, control).
3. ``domid``: ``PREFIX-domidN``.
4. ``range``: ``PREFIX-range-base``, then the seed's ``PREFIX-base``, at uid B and gid G.
   Candidate uid B+N: unowned, run as ``B+N:G``; owned by ``PREFIX-baseN`` or ``PREFIX-domidN``,
   run as that name; owned by anything else, refuse.
5. ``shared``: ``PREFIX-shared``, with a warning.
6. ``root``: only without restrict, with a warning.

Invariants the tests hold it to: a chosen uid of 0 is refused; under restrict so is a primary
or supplementary gid of 0; a lookup error aborts the whole resolution (it never falls through
to a weaker tier); each name and uid is looked up at most once.

Every tier but ``shared`` and ``root`` sets ``kill_by_uid``: the launcher gives a uid to one
live VM at a time, so killing every process of that uid on teardown hits only that VM.  (Xen
kills by uid only in the range tier because it does not enforce that exclusivity.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from qemu_depriv.accounts.names import DEFAULT_PREFIX, passwd_name_problem
from qemu_depriv.accounts.nss import UID_LIMIT, Account, AccountLookup
from qemu_depriv.errors import AccountLookupError, PolicyRefusal, QemuDeprivError

#: Where the fix messages suggest putting a new range: the first aligned block above 65535.
SUGGESTED_RANGE_BASE = 131072


class Tier(StrEnum):
    """Which rule chose the user, strongest first."""

    EXPLICIT = "explicit"
    NAME = "name"
    DOMID = "domid"
    RANGE = "range"
    SHARED = "shared"
    ROOT = "root"


TIER_ORDER: tuple[Tier, ...] = tuple(Tier)


class Outcome(StrEnum):
    """What one lookup of the chain gave."""

    FOUND = "found"
    NOT_FOUND = "not-found"
    ERROR = "error"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Attempt:
    """One name (or ``uid N``) the chain looked up, and what came of it."""

    tier: Tier
    name: str
    outcome: Outcome

    def as_dict(self) -> dict[str, str]:
        """Return the JSON form, ``{tier, name, outcome}``."""
        return {"tier": self.tier.value, "name": self.name, "outcome": self.outcome.value}


@dataclass(frozen=True)
class Request:
    """What to resolve: a domain, optionally its name and explicit user, and the policy."""

    domid: int
    name: str | None = None
    user: str | None = None
    restrict: bool = True
    prefix: str = DEFAULT_PREFIX


@dataclass(frozen=True)
class Decision:
    """The account a device model runs as, and how it was chosen.

    ``runas`` is the argument for QEMU's ``-runas`` (a name, or ``uid:gid`` in the range
    tier), or None for root.  ``groups`` is the group list the process will hold.
    """

    tier: Tier
    runas: str | None
    uid: int
    gid: int
    groups: tuple[int, ...]
    user: str | None
    kill_by_uid: bool
    warnings: tuple[str, ...] = ()
    tried: tuple[Attempt, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form that ``resolve --json`` prints."""
        return {
            "tier": self.tier.value,
            "runas": self.runas,
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "user": self.user,
            "kill_by_uid": self.kill_by_uid,
            "warnings": list(self.warnings),
            "tried": [attempt.as_dict() for attempt in self.tried],
        }


class ResolutionFailed(QemuDeprivError):
    """An error of the chain, with every name it tried up to it (``--json``'s ``tried``)."""

    tried: tuple[Attempt, ...] = ()

    def details(self) -> dict[str, Any]:
        """The trace, for ``--json``."""
        return {"tried": [attempt.as_dict() for attempt in self.tried]}


class ChainRefusal(ResolutionFailed, PolicyRefusal):
    """No acceptable account (exit 3), and the names tried."""

    def __init__(self, message: str, *, tried: Sequence[Attempt]) -> None:
        super().__init__(message)
        self.tried = tuple(tried)


class ChainLookupError(ResolutionFailed, AccountLookupError):
    """A lookup of the chain failed (exit 4): resolution stopped there, nothing fell through."""

    def __init__(self, message: str, *, key: str, errno: int, tried: Sequence[Attempt]) -> None:
        super().__init__(message, key=key, errno=errno)
        self.tried = tuple(tried)


#: An explicit account given as numbers, as libxl's range tier gives it: ``UID:GID``.
_NUMERIC = re.compile(r"(\d+):(\d+)\Z")


def range_account_commands(prefix: str, base: int = SUGGESTED_RANGE_BASE) -> str:
    """Return the shell commands that create a range-base account at ``base``."""
    name = f"{prefix}-range-base"
    return (
        f"groupadd --system --gid {base} {name} && useradd --system --no-create-home "
        f"--home-dir /nonexistent --shell /usr/sbin/nologin --uid {base} --gid {base} {name}"
    )


def resolve(request: Request, lookup: AccountLookup) -> Decision:
    """Choose the account for ``request``'s device model.

    Raises:
        ChainRefusal: no acceptable account (an explicit user that does not exist, uid 0,
            gid 0 under restrict, a range clash, nothing at all under restrict).
        ChainLookupError: a lookup failed; ``tried`` holds the chain up to the failure.
    """
    return _Resolution(request, lookup).run()


@dataclass
class _Resolution:
    request: Request
    lookup: AccountLookup
    tried: list[Attempt] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    _users: dict[str, Account | None] = field(default_factory=dict)
    _owners: dict[int, Account | None] = field(default_factory=dict)

    def run(self) -> Decision:
        request, prefix = self.request, self.request.prefix
        if request.user is not None:
            return self._explicit(request.user)

        if request.name is not None:
            candidate = f"{prefix}-{request.name}"
            problem = passwd_name_problem(candidate)
            if problem is None:
                if (account := self._user(Tier.NAME, candidate)) is not None:
                    return self._accept(Tier.NAME, account)
            else:
                self.tried.append(Attempt(Tier.NAME, candidate, Outcome.SKIPPED))
                self.warnings.append(
                    f"name tier skipped: {candidate!r} cannot be an account name ({problem})"
                )

        if (account := self._user(Tier.DOMID, f"{prefix}-domid{request.domid}")) is not None:
            return self._accept(Tier.DOMID, account)

        if (decision := self._range()) is not None:
            return decision

        if (account := self._user(Tier.SHARED, f"{prefix}-shared")) is not None:
            self.warnings.append(
                f"shared tier: every domain without its own account runs as {account.name!r}, "
                "so their device models can attack each other and none is killed by uid"
            )
            return self._accept(Tier.SHARED, account, kill_by_uid=False)

        if not request.restrict:
            self.warnings.append(
                "root tier: no device-model account exists and restrict is off, so QEMU runs "
                "as root; one guest-triggered QEMU bug then owns the host"
            )
            return self._decision(
                Tier.ROOT, runas=None, uid=0, gid=0, groups=(), user=None, kill_by_uid=False
            )

        names = ", ".join(a.name for a in self.tried)
        raise self._refusal(
            f"no device-model account for domid {request.domid} and restrict is on (tried "
            f"{names}): create the range account with 'qemu-depriv provision range', which "
            f"picks a free block of ids, or by hand: '{range_account_commands(prefix)}' "
            f"(ids {SUGGESTED_RANGE_BASE}-{SUGGESTED_RANGE_BASE + 65535} must be free)"
        )

    def _range(self) -> Decision | None:
        prefix, domid = self.request.prefix, self.request.domid
        for base_name in (f"{prefix}-range-base", f"{prefix}-base"):
            base = self._user(Tier.RANGE, base_name)
            if base is None:
                continue
            if base.uid == 0:
                raise self._refusal(
                    f"range base account {base_name!r} has uid 0: give it a non-zero uid "
                    "that starts a free block of 65536 ids"
                )
            self._check_gid(base_name, base.gid)
            uid = base.uid + domid
            if uid >= UID_LIMIT:
                raise self._refusal(
                    f"range base account {base_name!r} has uid {base.uid}, so domid {domid} "
                    f"would need uid {uid}, past the last valid uid {UID_LIMIT - 1}: move the "
                    "range base below 4294901760"
                )
            owner = self._owner(uid)
            if owner is None:
                return self._decision(
                    Tier.RANGE,
                    runas=f"{uid}:{base.gid}",
                    uid=uid,
                    gid=base.gid,
                    groups=(base.gid,),
                    user=None,
                )
            if owner.name in (f"{prefix}-base{domid}", f"{prefix}-domid{domid}"):
                return self._accept(Tier.RANGE, owner)
            raise self._refusal(
                f"uid {uid} ({base_name!r} uid {base.uid} + domid {domid}) belongs to "
                f"{owner.name!r}, which is not a device-model account: move the range base "
                f"to a block of 65536 free ids, or move {owner.name!r} out of it"
            )
        return None

    def _user(self, tier: Tier, name: str) -> Account | None:
        if name not in self._users:
            try:
                self._users[name] = self.lookup.user_by_name(name)
            except AccountLookupError as exc:
                raise self._aborted(tier, name, exc) from exc
        account = self._users[name]
        outcome = Outcome.NOT_FOUND if account is None else Outcome.FOUND
        self.tried.append(Attempt(tier, name, outcome))
        return account

    def _explicit(self, user: str) -> Decision:
        if (numeric := _NUMERIC.match(user)) is not None:
            return self._explicit_numeric(int(numeric[1]), int(numeric[2]))
        account = self._user(Tier.EXPLICIT, user)
        if account is None:
            raise self._refusal(
                f"device_model_user {user!r} does not exist: create it with "
                f"'useradd --system --no-create-home --shell /usr/sbin/nologin "
                f"{user}' or name an existing account"
            )
        return self._accept(Tier.EXPLICIT, account)

    def _explicit_numeric(self, uid: int, gid: int) -> Decision:
        """A numeric ``UID:GID`` named explicitly (libxl's range tier gives one to ``-runas``).

        Refused like the range tier's own: uid 0, gid 0 under restrict, and a uid that some
        account other than a device-model one owns.
        """
        prefix = self.request.prefix
        if uid == 0 or uid >= UID_LIMIT:
            raise self._refusal(
                f"-runas {uid}:{gid}: uid {uid} is not one a device model may run as: name "
                "an unprivileged uid"
            )
        self._check_gid(f"{uid}:{gid}", gid)
        owner = self._owner(uid, Tier.EXPLICIT)
        if owner is not None and not owner.name.startswith(f"{prefix}-"):
            raise self._refusal(
                f"-runas {uid}:{gid}: uid {uid} belongs to {owner.name!r}, which is not a "
                "device-model account: the range overlaps it; move the range base"
            )
        return self._decision(
            Tier.EXPLICIT, runas=f"{uid}:{gid}", uid=uid, gid=gid, groups=(gid,), user=None
        )

    def _owner(self, uid: int, tier: Tier = Tier.RANGE) -> Account | None:
        key = f"uid {uid}"
        if uid not in self._owners:
            try:
                self._owners[uid] = self.lookup.user_by_uid(uid)
            except AccountLookupError as exc:
                raise self._aborted(tier, key, exc) from exc
        owner = self._owners[uid]
        outcome = Outcome.NOT_FOUND if owner is None else Outcome.FOUND
        self.tried.append(Attempt(tier, key, outcome))
        return owner

    def _accept(self, tier: Tier, account: Account, *, kill_by_uid: bool = True) -> Decision:
        if account.uid == 0:
            raise self._refusal(
                f"account {account.name!r} ({tier.value} tier) has uid 0: a device model "
                "never runs as uid 0; give the account its own non-zero uid"
            )
        self._check_gid(account.name, account.gid)
        # getgrouplist(3) skips a group source that fails; looking up the primary group
        # through the same sources does not, so an outage is not mistaken for fewer groups.
        try:
            self.lookup.group_by_gid(account.gid)
        except AccountLookupError as exc:
            raise self._aborted(tier, f"gid {account.gid}", exc) from exc
        try:
            groups = self.lookup.groups_of(account.name, account.gid)
        except AccountLookupError as exc:
            raise self._aborted(tier, f"groups of {account.name}", exc) from exc
        if 0 in groups:
            self._gid_zero(f"account {account.name!r} is a member of group 0 (root)")
        return self._decision(
            tier,
            runas=account.name,
            uid=account.uid,
            gid=account.gid,
            groups=groups,
            user=account.name,
            kill_by_uid=kill_by_uid,
        )

    def _check_gid(self, name: str, gid: int) -> None:
        if gid == 0:
            self._gid_zero(f"account {name!r} has primary gid 0 (root)")

    def _gid_zero(self, what: str) -> None:
        if self.request.restrict:
            raise self._refusal(
                f"{what}, which restrict forbids: give it a group of its own "
                "('usermod --gid GROUP', or remove it from group 0 with 'gpasswd -d')"
            )
        self.warnings.append(f"{what}: the device model can read files of group root")

    def _decision(
        self,
        tier: Tier,
        *,
        runas: str | None,
        uid: int,
        gid: int,
        groups: tuple[int, ...],
        user: str | None,
        kill_by_uid: bool = True,
    ) -> Decision:
        return Decision(
            tier=tier,
            runas=runas,
            uid=uid,
            gid=gid,
            groups=groups,
            user=user,
            kill_by_uid=kill_by_uid,
            warnings=tuple(self.warnings),
            tried=tuple(self.tried),
        )

    def _refusal(self, message: str) -> ChainRefusal:
        return ChainRefusal(message, tried=self.tried)

    def _aborted(self, tier: Tier, name: str, exc: AccountLookupError) -> ChainLookupError:
        self.tried.append(Attempt(tier, name, Outcome.ERROR))
        return ChainLookupError(
            f"{exc.message}; resolution stopped at the {tier.value} tier",
            key=exc.key,
            errno=exc.errno,
            tried=self.tried,
        )
