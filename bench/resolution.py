"""Benchmark 1: the resolution chain against the bare libc lookups it makes.

Two account sets, each in its own private mount namespace over glibc's ``files`` backend:

``large``
    the seed's layout: ``xen-qemuuser-base`` at uid 393216 and ``xen-qemuuser-base1`` to
    ``-base65535`` at the next 65,535 uids, each with its own group (as ``useradd`` makes
    them), then the few accounts the other tiers need, appended after them (a hit on those
    reads the whole file, as a miss does).  In this layout every uid of the block has an
    account, so the range tier runs as the seed's named ``xen-qemuuser-baseN``.
``small``
    a handful of accounts: the range base (so the range tier runs as the numeric
    ``uid:gid``), the tier accounts and the reaper.

For each tier the chain, ``resolve(Request(...), LibcLookup())``, alternates with its floor:
the same ``LibcLookup`` calls done directly, which is each name of ``decision.tried`` looked up
once (``user_by_uid`` for ``uid N``) plus ``groups_of`` when the decision names an account.
The median of the per-pair ratios is the chain's own overhead (target: at most 1.10); the
ratio of the two medians is reported beside it.  Each tier is
also checked to look no name up twice, from ``decision.tried`` and from a counting lookup.

Usage: python -m bench.resolution {large,small} OUT.json
"""

from __future__ import annotations

import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    EXPLICIT_UID,
    NAME_UID,
    PREFIX,
    RANGE_BASE,
    REAPER_UID,
    SHARED_UID,
    enter_accounts,
    group_line,
    host_info,
    log,
    paired_ratio,
    passwd_line,
    ratio,
    state_root,
    summarize,
    write_json,
)
from bench.profiling import profile_call
from qemu_depriv.accounts.chain import Decision, Outcome, Request, resolve
from qemu_depriv.accounts.nss import Account, Group, LibcLookup

TARGET = 1.10
SEED_COUNT = 65536
REPETITIONS = {"large": 60, "small": 3000}
#: Resolutions per profile: about a second of work each.
PROFILE_COUNT = {"large": 60, "small": 20000}
WARMUP = {"large": 2, "small": 200}
LAYOUT = {
    "large": "the seed's layout: xen-qemuuser-base at uid 393216 and xen-qemuuser-base1..65535 "
    "at the next uids, each with its own group, then the accounts of the other tiers appended "
    "(reusing uids of the block); the range tier runs as the seed's named xen-qemuuser-base7",
    "small": "xen-qemuuser-range-base at 393216, the tier accounts and the reaper; the range "
    "tier runs as the numeric 393223:393216",
}
SHARED_PREFIX = "xen-qemushr"
NONE_PREFIX = "xen-qemunone"


@dataclass(frozen=True)
class Tier:
    """A request that resolves in one tier, and the tier it must give."""

    label: str
    request: Request
    expect: str


TIERS = (
    Tier("explicit", Request(3, name="bench-db", user="bench-alice"), "explicit"),
    Tier("name", Request(2, name="bench-web"), "name"),
    Tier("domid", Request(9, name="Bench.Mail"), "domid"),
    Tier("range", Request(7, name="bench-build"), "range"),
    Tier("shared", Request(4, name="bench-misc", prefix=SHARED_PREFIX), "shared"),
    Tier("root", Request(6, name="bench-lab", prefix=NONE_PREFIX, restrict=False), "root"),
)


def tier_accounts() -> tuple[list[str], list[str]]:
    """The accounts of the explicit, name, domid and shared tiers, and the reaper."""
    accounts = [
        ("bench-alice", EXPLICIT_UID),
        (f"{PREFIX}-bench-web", NAME_UID),
        (f"{PREFIX}-domid9", RANGE_BASE + 9),
        (f"{SHARED_PREFIX}-shared", SHARED_UID),
        (f"{PREFIX}-reaper", REAPER_UID),
    ]
    return (
        [passwd_line(name, uid) for name, uid in accounts],
        [group_line(name, uid) for name, uid in accounts],
    )


def account_files(kind: str) -> tuple[list[str], list[str]]:
    """The passwd and group lines of the ``large`` or ``small`` set."""
    extra_passwd, extra_group = tier_accounts()
    if kind == "small":
        base = f"{PREFIX}-range-base"
        return (
            [passwd_line(base, RANGE_BASE), *extra_passwd],
            [group_line(base, RANGE_BASE), *extra_group],
        )
    names = [f"{PREFIX}-base"] + [f"{PREFIX}-base{n}" for n in range(1, SEED_COUNT)]
    passwd = [passwd_line(name, RANGE_BASE + n) for n, name in enumerate(names)]
    group = [group_line(name, RANGE_BASE + n) for n, name in enumerate(names)]
    # The tier accounts reuse uids of the block (duplicate uids are legal in passwd); being
    # listed after the seed's, a lookup by uid still finds the seed's account first.
    return passwd + extra_passwd, group + extra_group


class CountingLookup:
    """A LibcLookup that counts every call by key."""

    def __init__(self, inner: LibcLookup) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def user_by_name(self, name: str) -> Account | None:
        self.calls[f"user {name}"] += 1
        return self.inner.user_by_name(name)

    def user_by_uid(self, uid: int) -> Account | None:
        self.calls[f"uid {uid}"] += 1
        return self.inner.user_by_uid(uid)

    def group_by_gid(self, gid: int) -> Group | None:
        self.calls[f"gid {gid}"] += 1
        return self.inner.group_by_gid(gid)

    def groups_of(self, name: str, gid: int) -> tuple[int, ...]:
        self.calls[f"groups {name}"] += 1
        return self.inner.groups_of(name, gid)


def floor_calls(decision: Decision, lookup: LibcLookup) -> Callable[[], None]:
    """The bare lookups the chain needed for ``decision``: each tried name once, the groups."""
    calls: list[Callable[[], object]] = []
    for attempt in decision.tried:
        if attempt.outcome == Outcome.SKIPPED:
            continue
        if attempt.name.startswith("uid "):
            calls.append(partial(lookup.user_by_uid, int(attempt.name.removeprefix("uid "))))
        else:
            calls.append(partial(lookup.user_by_name, attempt.name))
    if decision.user is not None:
        calls.append(partial(lookup.group_by_gid, decision.gid))
        calls.append(partial(lookup.groups_of, decision.user, decision.gid))

    def run() -> None:
        for call in calls:
            call()

    return run


def check_no_repeats(tier: Tier, decision: Decision, lookup: LibcLookup) -> dict[str, Any]:
    """Each name at most once in ``decision.tried`` and in the calls actually made."""
    tried = Counter(a.name for a in decision.tried)
    counting = CountingLookup(lookup)
    resolve(tier.request, counting)
    tried_repeats = {k: v for k, v in tried.items() if v > 1}
    call_repeats = {k: v for k, v in counting.calls.items() if v > 1}
    assert not tried_repeats, f"{tier.label}: names tried twice: {tried_repeats}"
    assert not call_repeats, f"{tier.label}: lookups made twice: {call_repeats}"
    return {
        "tried": [a.as_dict() for a in decision.tried],
        "tried_counts": dict(tried),
        "calls": dict(counting.calls),
        "repeated": {**tried_repeats, **call_repeats},
    }


def measure_tier(tier: Tier, lookup: LibcLookup, kind: str) -> dict[str, Any]:
    """Alternate the chain and its floor; return both series and their ratio."""
    decision = resolve(tier.request, lookup)
    assert decision.tier.value == tier.expect, (tier.label, decision.tier.value)
    floor = floor_calls(decision, lookup)

    def chain() -> None:
        resolve(tier.request, lookup)

    for _ in range(WARMUP[kind]):
        chain()
        floor()
    series: dict[str, list[float]] = {"resolve": [], "floor": []}
    clock = time.perf_counter
    for rep in range(REPETITIONS[kind]):
        order = (("resolve", chain), ("floor", floor))
        for label, call in order if rep % 2 == 0 else order[::-1]:
            start = clock()
            call()
            series[label].append(clock() - start)
    result: dict[str, Any] = {
        "tier": decision.tier.value,
        "runas": decision.runas,
        "user": decision.user,
        "lookups": check_no_repeats(tier, decision, lookup),
        "resolve": summarize(series["resolve"]),
        "floor": summarize(series["floor"]),
        "ratio": ratio(series["resolve"], series["floor"]),
        "paired_ratio": paired_ratio(series["resolve"], series["floor"]),
        "samples": series,
    }
    log(
        f"{kind} {tier.label}: resolve {result['resolve']['median'] * 1e6:.1f} us, floor "
        f"{result['floor']['median'] * 1e6:.1f} us, median ratio {result['paired_ratio']:.3f}"
    )
    return result


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    root = state_root(f"res{kind[0]}")
    passwd, group = account_files(kind)
    enter_accounts(root, passwd, group)
    passwd_size = (root / "accounts" / "passwd").stat().st_size
    lookup = LibcLookup()
    tiers = {tier.label: measure_tier(tier, lookup, kind) for tier in TIERS}
    missed = [
        label
        for label, t in tiers.items()
        if t["paired_ratio"] is None or t["paired_ratio"] > TARGET
    ]
    profiles = {}
    for label in missed:
        tier = next(t for t in TIERS if t.label == label)
        count = PROFILE_COUNT[kind]

        def loop(request: Request = tier.request, count: int = count) -> None:
            for _ in range(count):
                resolve(request, lookup)

        profiles[label] = profile_call(loop, interval=0.0001)
    write_json(
        out,
        {
            "benchmark": "resolution",
            "accounts": kind,
            "passwd_lines": len(passwd) + 2,
            "group_lines": len(group) + 2,
            "passwd_bytes": passwd_size,
            "layout": LAYOUT[kind],
            "repetitions": REPETITIONS[kind],
            "target_ratio": TARGET,
            "tiers": tiers,
            "missed": missed,
            "profiles": profiles,
            "host": host_info(),
            "state_dir": str(root),
        },
    )
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
