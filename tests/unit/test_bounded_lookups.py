"""Lookups bounded by a deadline, many on one thread: bounded_calls and users_by_uid.

The calls given to :func:`bounded_calls` are plain functions; a hung one waits on an Event
that the test sets when it is done, since real NSS hangs only with a directory server made to
hang (tests/directory, and tests/system/test_audit.py with a module that never answers).
:meth:`LibcLookup.users_by_uid` is held against this host's real libc and NSS;
:class:`TableLookup` stands in for a failing NSS where the audit's own reading is tested.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qemu_depriv.accounts.nss import LibcLookup, bounded_calls, users_by_uid
from qemu_depriv.checks.audit import _Limits, observe
from qemu_depriv.errors import AccountLookupError
from qemu_depriv.host.procfs import snapshot
from tests.unit.table_lookup import TableLookup, account

#: A uid that no host gives an account (within uid_t, below (uid_t)-1).
NOBODYS = 4_000_000_000
NOLOGIN = account("x", 1).shell


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """What every hung call waits for: set at the end, so that no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def hangs(release: threading.Event) -> Callable[[], str]:
    def call() -> str:
        release.wait()
        return "late"

    return call


def value(result: str) -> Callable[[], str]:
    return lambda: result


def fails() -> str:
    raise AccountLookupError("looking up uid 7 failed: EIO", key="uid 7", errno=errno.EIO)


def test_every_outcome_comes_back_in_order_answers_and_errors_alike() -> None:
    calls = [("a", value("first")), ("b", fails), ("c", value("third"))]
    first, failed, third = bounded_calls(calls, 5.0, database="passwd")
    assert (first, third) == ("first", "third")
    assert isinstance(failed, AccountLookupError)
    assert failed.errno == errno.EIO


def test_a_hung_call_times_out_alone_and_the_calls_after_it_are_still_made(
    release: threading.Event,
) -> None:
    calls = [("a", value("first")), ("looking up uid 9", hangs(release)), ("c", value("third"))]
    started = time.monotonic()
    first, hung, third = bounded_calls(calls, 0.3, database="passwd")
    took = time.monotonic() - started
    assert 0.3 <= took < 2.0
    assert (first, third) == ("first", "third")
    assert isinstance(hung, AccountLookupError)
    assert hung.errno == errno.ETIMEDOUT
    assert str(hung).startswith("looking up uid 9 gave no answer within 0.3 s (lookup_timeout)")


def test_each_hung_call_gets_its_own_full_timeout(release: threading.Event) -> None:
    calls = [("a", hangs(release)), ("b", hangs(release)), ("c", value("third"))]
    started = time.monotonic()
    outcomes = bounded_calls(calls, 0.3, database="passwd")
    assert time.monotonic() - started >= 0.6
    assert [type(o) for o in outcomes] == [AccountLookupError, AccountLookupError, str]


def test_the_timeout_is_each_calls_not_the_whole_batchs() -> None:
    def slow() -> str:
        time.sleep(0.15)
        return "slow"

    outcomes = bounded_calls([("a", slow), ("b", slow), ("c", slow)], 0.3, database="passwd")
    assert outcomes == ["slow", "slow", "slow"]  # 0.45 s in all, each well within 0.3 s


def test_an_abandoned_calls_late_answer_changes_nothing(release: threading.Event) -> None:
    outcomes = bounded_calls([("a", hangs(release))], 0.2, database="passwd")
    release.set()
    time.sleep(0.1)
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], AccountLookupError)


def test_a_batch_that_ends_leaves_no_thread_behind() -> None:
    before = threading.active_count()
    bounded_calls([("a", value("x")), ("b", fails)], 5.0, database="passwd")
    assert threading.active_count() == before  # joined: unshare(2) may follow


@pytest.mark.parametrize("timeout", [5.0, None])
def test_users_by_uid_asks_libc_as_user_by_uid_does(timeout: float | None) -> None:
    lookup = LibcLookup(timeout=timeout)
    found = lookup.users_by_uid([0, NOBODYS, 0])
    assert list(found) == [0, NOBODYS]
    assert found[0] == lookup.user_by_uid(0)
    assert found[0] is not None
    assert found[0].name == "root"
    assert found[NOBODYS] is None


def test_users_by_uid_refuses_an_invalid_uid_before_looking_anything_up() -> None:
    with pytest.raises(ValueError, match="outside"):
        LibcLookup().users_by_uid([0, 2**32 - 1])


def test_any_lookup_is_asked_once_per_uid_and_its_errors_are_outcomes() -> None:
    table = TableLookup([account("qemu-a", 5000)], failing={"uid 5001"})
    found = users_by_uid(table, [5000, 5001, 5000, 5002, 5001])
    assert found[5000] == account("qemu-a", 5000)
    assert isinstance(found[5001], AccountLookupError)  # never taken for "no such user"
    assert found[5002] is None
    assert table.queries == {"uid 5000": 1, "uid 5001": 1, "uid 5002": 1}


def test_the_audit_asks_once_per_uid_of_its_processes_and_survives_a_failing_lookup() -> None:
    me, uid = os.getpid(), os.geteuid()
    table = TableLookup([account("qemu-me", uid)])
    first, again = observe([me, me], table, lambda _controller: None)
    assert (first.user, first.shell) == (again.user, again.shell) == ("qemu-me", NOLOGIN)
    assert table.queries == {f"uid {uid}": 1}
    failing = TableLookup([account("qemu-me", uid)], failing={f"uid {uid}"})
    (seen,) = observe([me], failing, lambda _controller: None)
    assert (seen.user, seen.shell) == (None, None)
    assert seen.snap.pid == me


def test_a_cgroups_limit_is_read_once_per_audit(tmp_path: Path) -> None:
    snap = snapshot(os.getpid())
    assert snap is not None
    group = tmp_path / controller_dir(snap.cgroups)
    group.mkdir(parents=True, exist_ok=True)
    (group / "memory.max").write_text("max\n")
    limits = _Limits(lambda _controller: tmp_path)
    assert not limits.limited(snap, "memory")
    (group / "memory.max").write_text("1073741824\n")
    assert not limits.limited(snap, "memory")  # this audit's answer
    assert _Limits(lambda _controller: tmp_path).limited(snap, "memory")  # the next audit's


def controller_dir(cgroups: dict[str, str]) -> str:
    path = cgroups.get("memory") or cgroups.get("")
    assert path is not None
    return path.lstrip("/")
