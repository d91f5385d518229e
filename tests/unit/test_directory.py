"""Believing "not found" only from sources that can vouch for it (VerifiedLookup, pure).

The online checks here are plain functions standing in for SSSD's InfoPipe; tests/directory
holds the same rules against a real sssd and slapd.
"""

from __future__ import annotations

import errno

import pytest

from qemu_depriv.accounts.chain import ChainLookupError, Request, Tier, resolve
from qemu_depriv.accounts.nsswitch import parse_nsswitch
from qemu_depriv.accounts.verified import VerifiedLookup
from qemu_depriv.errors import AccountLookupError, PolicyRefusal
from tests.unit.table_lookup import TableLookup, account

P = "xen-qemuuser"


class Sssd:
    """An SSSD status: online or not, counting how often it was asked."""

    def __init__(self, *, online: bool) -> None:
        self.online = online
        self.asked = 0

    def __call__(self) -> None:
        self.asked += 1
        if not self.online:
            raise AccountLookupError("SSSD reports domain LDAP offline", key="sss", errno=113)


def verified(
    line: str, sssd: Sssd | None = None, *, exempt: frozenset[str] = frozenset(), **kw: object
) -> VerifiedLookup:
    lookup = TableLookup([account(f"{P}-shared", 6000)])
    checks = {"sss": sssd} if sssd is not None else {}
    return VerifiedLookup(lookup, parse_nsswitch(line), checks, exempt, **kw)  # type: ignore[arg-type]


def test_not_found_from_an_offline_sssd_aborts_instead_of_falling_to_shared() -> None:
    with pytest.raises(ChainLookupError, match="was not found, but SSSD reports") as info:
        resolve(Request(5, name="web"), verified("passwd: files sss\n", Sssd(online=False)))
    assert info.value.tried[-1].tier == Tier.NAME
    assert info.value.errno == errno.EHOSTUNREACH


def test_not_found_from_an_online_sssd_is_believed() -> None:
    sssd = Sssd(online=True)
    decision = resolve(Request(5, name="web"), verified("passwd: files sss\n", sssd))
    assert decision.tier == Tier.SHARED
    assert sssd.asked == 1  # once for the whole resolution, not once per name


def test_an_account_found_needs_no_word_from_sssd() -> None:
    sssd = Sssd(online=False)
    assert verified("passwd: files sss\n", sssd).user_by_name(f"{P}-shared") is not None
    assert sssd.asked == 0


def test_local_and_error_reporting_sources_need_no_online_check() -> None:
    decision = resolve(Request(5), verified("passwd: files systemd ldap\n"))
    assert decision.tier == Tier.SHARED


def test_a_source_that_cannot_say_whether_it_is_online_is_never_believed() -> None:
    with pytest.raises(AccountLookupError, match="sources_without_accounts"):
        verified("passwd: files winbind\n").user_by_name("nobody-here")


def test_sssd_without_its_infopipe_is_never_believed() -> None:
    with pytest.raises(AccountLookupError, match="'sss'"):
        verified("passwd: files sss\n").user_by_uid(131077)


def test_a_source_the_settings_exempt_is_believed() -> None:
    lookup = verified("passwd: files sss winbind\n", exempt=frozenset({"sss", "winbind"}))
    assert lookup.user_by_name("nobody-here") is None


def test_an_online_answer_is_trusted_for_a_second_only() -> None:
    now = [100.0]
    sssd = Sssd(online=True)
    lookup = verified("passwd: files sss\n", sssd, clock=lambda: now[0])
    lookup.user_by_name("a")
    lookup.user_by_name("b")
    now[0] += 1.5
    sssd.online = False
    with pytest.raises(AccountLookupError):
        lookup.user_by_name("c")
    assert sssd.asked == 2


def test_an_offline_sssd_turns_an_explicit_users_absence_into_an_error_not_a_refusal() -> None:
    with pytest.raises(AccountLookupError):
        resolve(Request(5, user="ldap-alice"), verified("passwd: files sss\n", Sssd(online=False)))
    # Online, the same absence is the usual refusal (exit 3).
    with pytest.raises(PolicyRefusal):
        resolve(Request(5, user="ldap-alice"), verified("passwd: files sss\n", Sssd(online=True)))
