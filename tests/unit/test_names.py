"""Validation of domids, domain names, user names and the prefix."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu_depriv.accounts.names import passwd_name_problem, validate_prefix
from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.domain import validate_domain_name, validate_domid


@pytest.mark.parametrize("good", ["1", "7", "32751", " 12 ", 300])
def test_domid_in_range_is_accepted(good: str | int) -> None:
    assert validate_domid(good) == int(str(good).strip())


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("0", "host"),
        ("32752", "reserves"),
        ("99999999999999999999", "reserves"),
        ("-1", "not a number"),
        ("7.0", "not a number"),
        ("0x7", "not a number"),
        ("", "not a number"),
        ("seven", "not a number"),
        ("٣", "not a number"),  # Arabic-Indic digit: str.isdigit() says yes, we say no
    ],
)
def test_bad_domids_are_invalid_input(bad: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_domid(bad)


@given(st.integers(min_value=1, max_value=32751))
def test_every_domid_in_range_round_trips(domid: int) -> None:
    assert validate_domid(str(domid)) == domid


@given(st.integers().filter(lambda n: not 1 <= n <= 32751))
def test_every_domid_out_of_range_is_refused(domid: int) -> None:
    with pytest.raises(InvalidInput):
        validate_domid(str(domid))


@pytest.mark.parametrize(
    "good",
    ["web", "Web.Server-2", "_x", "a" * 64, "7web", "w7", "web.example.org", "Win10",
     "example.hvm", "-web", ".web", "my vm", "wéb", "a" * 300],
)  # fmt: skip
def test_any_name_xl_takes_is_a_domain_name(good: str) -> None:
    assert validate_domain_name(good) == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("a" * 4001, "xenstore"),
        ("web\n", "control character"),
        ("web\x00", "control character"),
        ("\x1b[2Jweb", "control character"),
        ("1234", "all digits"),
    ],
)
def test_bad_domain_names_are_invalid_input(bad: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_domain_name(bad)


@given(st.text(min_size=1, max_size=80))
def test_domain_name_rule_matches_its_definition(name: str) -> None:
    ok = not name.isdigit() and not any(ord(c) < 32 or ord(c) == 127 for c in name)
    if ok:
        assert validate_domain_name(name) == name
    else:
        with pytest.raises(InvalidInput):
            validate_domain_name(name)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("xen-qemuuser-web", None),
        ("xen-qemuuser-web.example.org", None),
        ("xen-qemuuser-Win10", None),
        ("machine$", None),
        ("a" * 200, None),
        ("", "empty"),
        ("a:b", "':'"),
        ("a/b", "'/'"),
        ("a b", "whitespace"),
        ("a\u00a0b", "whitespace"),
        ("a\x7fb", "control"),
    ],
)
def test_a_passwd_name_is_refused_only_for_what_no_database_holds(
    name: str, problem: str | None
) -> None:
    found = passwd_name_problem(name)
    assert (found is None) if problem is None else (found is not None and problem in found)


@pytest.mark.parametrize("bad", ["", "Xen", "a" * 22, "xen$", "9x", "xen qemu"])
def test_bad_prefixes_are_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        validate_prefix(bad)


def test_longest_prefix_still_forms_valid_names() -> None:
    prefix = validate_prefix("a" * 21)
    assert passwd_name_problem(f"{prefix}-domid32751") is None
    assert len(f"{prefix}-domid32751") == 32
