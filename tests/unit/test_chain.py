"""The resolution chain, on plain account tables (DESIGN.md, "User resolution")."""

from __future__ import annotations

import pytest

from qemu_depriv.accounts.chain import (
    ChainLookupError,
    ChainRefusal,
    Outcome,
    Request,
    Tier,
    resolve,
)
from qemu_depriv.errors import PolicyRefusal
from tests.unit.table_lookup import TableLookup, account

P = "xen-qemuuser"
BASE = 131072


def table(*accounts: tuple[str, int] | tuple[str, int, int]) -> TableLookup:
    return TableLookup([account(*a) for a in accounts])


def test_explicit_user_wins_over_every_other_tier() -> None:
    lookup = table(("alice", 5000), (f"{P}-web", 6000), (f"{P}-range-base", BASE))
    decision = resolve(Request(7, name="web", user="alice"), lookup)
    assert (decision.tier, decision.runas, decision.uid) == (Tier.EXPLICIT, "alice", 5000)
    assert [a.name for a in decision.tried] == ["alice"]


def test_missing_explicit_user_is_refused_not_skipped() -> None:
    lookup = table((f"{P}-shared", 6000))
    with pytest.raises(ChainRefusal, match="device_model_user 'ghost' does not exist") as info:
        resolve(Request(7, user="ghost"), lookup)
    assert [(a.name, a.outcome) for a in info.value.tried] == [("ghost", Outcome.NOT_FOUND)]


def test_name_tier_uses_the_account_named_after_the_domain() -> None:
    decision = resolve(Request(7, name="web"), table((f"{P}-web", 6000), (f"{P}-domid7", 6007)))
    assert (decision.tier, decision.runas) == (Tier.NAME, f"{P}-web")
    assert decision.kill_by_uid


@pytest.mark.parametrize("name", ["web.example.org", "Win10", "example.hvm", "a" * 40])
def test_name_tier_looks_up_every_name_a_directory_can_hold(name: str) -> None:
    accounts = table((f"{P}-{name}", 6000), (f"{P}-domid7", 6007))
    decision = resolve(Request(7, name=name), accounts)
    assert (decision.tier, decision.user) == (Tier.NAME, f"{P}-{name}")
    assert decision.warnings == ()


@pytest.mark.parametrize(
    ("name", "why"),
    [("my vm", "whitespace"), ("a:b", "':'"), ("a/b", "'/'"), ("tab\there", "whitespace")],
)
def test_name_no_passwd_entry_can_hold_skips_the_tier_with_a_warning(name: str, why: str) -> None:
    decision = resolve(Request(7, name=name), table((f"{P}-domid7", 6007)))
    assert decision.tier == Tier.DOMID
    assert decision.tried[0].outcome == Outcome.SKIPPED
    assert any("cannot be an account name" in w and why in w for w in decision.warnings)


def test_domid_tier() -> None:
    decision = resolve(Request(7, name="web"), table((f"{P}-domid7", 6007)))
    assert (decision.tier, decision.uid, decision.user) == (Tier.DOMID, 6007, f"{P}-domid7")


def test_range_gives_numeric_uid_and_group_when_nobody_owns_the_uid() -> None:
    decision = resolve(Request(7), table((f"{P}-range-base", BASE, 4242)))
    assert decision.tier == Tier.RANGE
    assert decision.runas == f"{BASE + 7}:4242"
    assert (decision.uid, decision.gid, decision.groups, decision.user) == (
        BASE + 7,
        4242,
        (4242,),
        None,
    )
    assert decision.kill_by_uid


def test_range_falls_back_to_the_seeds_base_account() -> None:
    decision = resolve(Request(7), table((f"{P}-base", BASE)))
    assert decision.runas == f"{BASE + 7}:{BASE}"
    assert [a.name for a in decision.tried][-2:] == [f"{P}-base", f"uid {BASE + 7}"]


def test_range_base_wins_over_the_seeds_base_when_both_exist() -> None:
    decision = resolve(Request(7), table((f"{P}-range-base", BASE), (f"{P}-base", 2 * BASE)))
    assert decision.uid == BASE + 7


@pytest.mark.parametrize("owner", [f"{P}-base7", f"{P}-domid7"])
def test_range_uid_owned_by_a_seed_layout_account_is_used_by_name(owner: str) -> None:
    # The domid tier would take PREFIX-domid7 by name, so the backend here finds it by uid only.
    lookup = TableLookup(
        [account(f"{P}-base", BASE), account(owner, BASE + 7, 999)], unnamed={owner}
    )
    decision = resolve(Request(7), lookup)
    assert (decision.tier, decision.runas, decision.uid, decision.gid) == (
        Tier.RANGE,
        owner,
        BASE + 7,
        999,
    )


def test_range_uid_owned_by_anyone_else_is_a_clash_never_a_fall_through() -> None:
    lookup = table((f"{P}-range-base", BASE), ("bob", BASE + 7), (f"{P}-shared", 6000))
    with pytest.raises(PolicyRefusal, match="belongs to 'bob'"):
        resolve(Request(7), lookup)
    assert f"{P}-shared" not in lookup.queries


def test_range_base_with_uid_zero_is_refused() -> None:
    with pytest.raises(PolicyRefusal, match="uid 0"):
        resolve(Request(7), table((f"{P}-range-base", 0, 100)))


def test_range_uid_past_the_last_valid_uid_is_refused() -> None:
    with pytest.raises(PolicyRefusal, match="past the last valid uid"):
        resolve(Request(7), table((f"{P}-range-base", 2**32 - 5, 100)))


def test_shared_tier_warns_and_never_kills_by_uid() -> None:
    decision = resolve(Request(7, name="web"), table((f"{P}-shared", 6000)))
    assert decision.tier == Tier.SHARED
    assert not decision.kill_by_uid
    assert any("attack each other" in w for w in decision.warnings)


def test_root_only_without_restrict_and_with_a_warning() -> None:
    decision = resolve(Request(7, restrict=False), table())
    assert (decision.tier, decision.runas, decision.uid) == (Tier.ROOT, None, 0)
    assert any("root" in w for w in decision.warnings)


def test_nothing_found_under_restrict_is_refused_with_the_command_that_fixes_it() -> None:
    with pytest.raises(ChainRefusal) as info:
        resolve(Request(7, name="web"), table())
    message = info.value.message
    assert "useradd --system" in message
    assert f"{P}-range-base" in message
    assert [a.name for a in info.value.tried] == [
        f"{P}-web",
        f"{P}-domid7",
        f"{P}-range-base",
        f"{P}-base",
        f"{P}-shared",
    ]


@pytest.mark.parametrize("tier_name", ["alice", f"{P}-web", f"{P}-domid7", f"{P}-shared"])
def test_an_account_with_uid_zero_is_refused_in_every_tier(tier_name: str) -> None:
    user = "alice" if tier_name == "alice" else None
    with pytest.raises(PolicyRefusal, match="uid 0"):
        resolve(Request(7, name="web", user=user, restrict=False), table((tier_name, 0, 500)))


def test_primary_gid_zero_is_refused_under_restrict() -> None:
    with pytest.raises(PolicyRefusal, match="primary gid 0"):
        resolve(Request(7), table((f"{P}-domid7", 6007, 0)))


def test_supplementary_gid_zero_is_refused_under_restrict() -> None:
    lookup = table((f"{P}-domid7", 6007))
    lookup.memberships[f"{P}-domid7"] = (27, 0)
    with pytest.raises(PolicyRefusal, match="member of group 0"):
        resolve(Request(7), lookup)


def test_gid_zero_is_a_warning_without_restrict() -> None:
    decision = resolve(Request(7, restrict=False), table((f"{P}-domid7", 6007, 0)))
    assert decision.gid == 0
    assert any("group root" in w for w in decision.warnings)


def test_range_group_zero_is_refused_under_restrict() -> None:
    with pytest.raises(PolicyRefusal, match="primary gid 0"):
        resolve(Request(7), table((f"{P}-range-base", BASE, 0)))


@pytest.mark.parametrize(
    "failing",
    [f"{P}-web", f"{P}-domid7", f"{P}-range-base", f"{P}-base", f"uid {BASE + 7}", f"{P}-shared"],
)
def test_lookup_error_never_falls_back_to_a_weaker_tier(failing: str) -> None:
    accounts = [(f"{P}-shared", 6000)]
    if failing == f"uid {BASE + 7}":
        accounts.append((f"{P}-range-base", BASE))
    lookup = table(*accounts)
    lookup.failing.add(failing)
    with pytest.raises(ChainLookupError) as info:
        resolve(Request(7, name="web", restrict=False), lookup)
    assert info.value.tried[-1].name == failing
    assert info.value.tried[-1].outcome == Outcome.ERROR


def test_the_prefix_names_every_account() -> None:
    decision = resolve(Request(7, prefix="xen-qemudepriv"), table(("xen-qemudepriv-shared", 6000)))
    assert decision.user == "xen-qemudepriv-shared"


def test_json_form_has_the_documented_fields() -> None:
    decision = resolve(Request(7), table((f"{P}-range-base", BASE)))
    data = decision.as_dict()
    assert set(data) >= {"tier", "runas", "uid", "gid", "user", "kill_by_uid", "warnings", "tried"}
    assert data["tried"][0] == {"tier": "domid", "name": f"{P}-domid7", "outcome": "not-found"}
