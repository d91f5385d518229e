"""Invariants of the resolution chain over generated account tables (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import event, find, given, settings
from hypothesis import strategies as st

from qemu_depriv.accounts.chain import (
    TIER_ORDER,
    ChainLookupError,
    Decision,
    Request,
    Tier,
    resolve,
)
from qemu_depriv.accounts.names import passwd_name_problem
from qemu_depriv.accounts.nss import Account
from qemu_depriv.errors import AccountLookupError, PolicyRefusal
from tests.unit.table_lookup import TableLookup, account

P = "xen-qemuuser"
BASE = 131072


@dataclass(frozen=True)
class Case:
    request: Request
    accounts: tuple[Account, ...]
    memberships: dict[str, tuple[int, ...]]
    failing: frozenset[str]


def _names(domid: int, name: str | None) -> list[str]:
    names = [f"{P}-domid{domid}", f"{P}-range-base", f"{P}-base", f"{P}-shared", "alice", "bob"]
    names += [f"{P}-base{domid}"]
    if name:
        names.append(f"{P}-{name}")
    return names


@st.composite
def cases(draw: st.DrawFn) -> Case:
    domid = draw(st.sampled_from([1, 7, 300, 32751]))
    name = draw(st.sampled_from([None, "web", "Web.Server", "x" * 25, "my vm"]))
    user = draw(st.sampled_from([None, "alice"]))
    restrict = draw(st.booleans())
    candidates = _names(domid, name)
    chosen = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=len(candidates)))
    uids = st.sampled_from([0, 5000, 6000, BASE, 2 * BASE, BASE + domid, 2 * BASE + domid])
    accounts = tuple(account(n, draw(uids), draw(st.sampled_from([0, 100, 4242]))) for n in chosen)
    memberships = {n: draw(st.sampled_from([(), (27,), (0,)])) for n in chosen}
    keys = [*candidates, *(f"uid {a.uid + domid}" for a in accounts)]
    failing = frozenset(draw(st.lists(st.sampled_from(keys), max_size=2)))
    return Case(Request(domid, name, user, restrict, P), accounts, memberships, failing)


def _run(case: Case, *, failing: frozenset[str] = frozenset()) -> tuple[object, TableLookup]:
    lookup = TableLookup(list(case.accounts), dict(case.memberships), set(failing))
    try:
        result: object = resolve(case.request, lookup)
    except (PolicyRefusal, AccountLookupError) as exc:
        result = exc
    return result, lookup


def _outcome(result: object) -> str:
    if isinstance(result, Decision):
        return f"tier {result.tier.value}"
    return f"{type(result).__name__}"


@pytest.mark.parametrize("wanted", [*(f"tier {t.value}" for t in Tier), "ChainRefusal",
                                    "ChainLookupError"])  # fmt: skip
def test_the_generated_cases_reach_every_tier_and_both_errors(wanted: str) -> None:
    """The properties below hold only as far as the cases reach: each outcome must occur."""
    found = find(
        cases(),
        lambda case: _outcome(_run(case, failing=case.failing)[0]) == wanted,
        settings=settings(max_examples=2000, database=None),
    )
    assert _outcome(_run(found, failing=found.failing)[0]) == wanted


@settings(max_examples=400, deadline=None)
@given(cases())
def test_never_uid_zero_and_root_only_without_restrict(case: Case) -> None:
    result, _ = _run(case, failing=case.failing)
    event(_outcome(result))  # hypothesis's statistics show how often each outcome came up
    if isinstance(result, Decision):
        assert result.uid != 0 or result.tier == Tier.ROOT
        if result.tier == Tier.ROOT:
            assert not case.request.restrict
            assert result.runas is None
        if case.request.restrict:
            assert result.gid != 0
            assert 0 not in result.groups


@settings(max_examples=400, deadline=None)
@given(cases())
def test_each_name_and_uid_is_looked_up_at_most_once(case: Case) -> None:
    _, lookup = _run(case, failing=case.failing)
    assert all(count == 1 for count in lookup.queries.values()), lookup.queries


@settings(max_examples=400, deadline=None)
@given(cases())
def test_an_error_never_gives_a_weaker_tier(case: Case) -> None:
    clean, _ = _run(case)
    faulty, lookup = _run(case, failing=case.failing)
    event(_outcome(faulty))
    touched = case.failing & set(lookup.queries)
    if touched:
        assert isinstance(faulty, ChainLookupError)
        assert faulty.tried[-1].name in touched
    else:
        # The outage hit nothing the chain needed: the same answer as without it.
        assert type(faulty) is type(clean)
        if isinstance(clean, Decision):
            assert isinstance(faulty, Decision)
            assert (faulty.tier, faulty.uid, faulty.runas) == (clean.tier, clean.uid, clean.runas)


@settings(max_examples=400, deadline=None)
@given(cases())
def test_shared_or_root_only_when_nothing_stronger_exists(case: Case) -> None:
    result, _ = _run(case)
    event(_outcome(result))
    if not isinstance(result, Decision) or TIER_ORDER.index(result.tier) < TIER_ORDER.index(
        Tier.SHARED
    ):
        return
    present = {a.name for a in case.accounts}
    request = case.request
    assert request.user is None
    if request.name is not None and passwd_name_problem(f"{P}-{request.name}") is None:
        assert f"{P}-{request.name}" not in present
    assert f"{P}-domid{request.domid}" not in present
    assert f"{P}-range-base" not in present
    assert f"{P}-base" not in present
    if result.tier == Tier.ROOT:
        assert f"{P}-shared" not in present
