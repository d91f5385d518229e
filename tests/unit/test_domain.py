"""Validation of domids, domain names, user names and the prefix."""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qemu_depriv.domain import (
    is_valid_user_name,
    validate_domain_name,
    validate_domid,
    validate_prefix,
)
from qemu_depriv.errors import InvalidInput

NAME_CHARS = string.ascii_letters + string.digits + "_.-"


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


@pytest.mark.parametrize("good", ["web", "Web.Server-2", "_x", "a" * 64, "7web", "w7"])
def test_good_domain_names(good: str) -> None:
    assert validate_domain_name(good) == good


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "empty"),
        ("a" * 65, "65 characters"),
        ("-web", "starts with"),
        (".web", "starts with"),
        ("web server", "outside"),
        ("web/../x", "outside"),
        ("wéb", "outside"),
        ("web\n", "outside"),
        ("1234", "all digits"),
    ],
)
def test_bad_domain_names_are_invalid_input(bad: str, why: str) -> None:
    with pytest.raises(InvalidInput, match=why):
        validate_domain_name(bad)


@given(st.text(alphabet=NAME_CHARS, min_size=1, max_size=64))
def test_domain_name_rule_matches_its_definition(name: str) -> None:
    ok = name[0] not in "-." and not name.isdigit()
    if ok:
        assert validate_domain_name(name) == name
    else:
        with pytest.raises(InvalidInput):
            validate_domain_name(name)


@given(st.text(max_size=80))
def test_domain_name_validator_accepts_only_its_alphabet(name: str) -> None:
    try:
        validate_domain_name(name)
    except InvalidInput:
        return
    assert set(name) <= set(NAME_CHARS)
    assert 1 <= len(name) <= 64


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("xen-qemuuser-web", True),
        ("_svc", True),
        ("machine$", True),
        ("Web", False),
        ("1abc", False),
        ("-abc", False),
        ("a.b", False),
        ("a" * 32, True),
        ("a" * 33, False),
    ],
)
def test_user_names_follow_shadow(name: str, *, valid: bool) -> None:
    assert is_valid_user_name(name) is valid


@pytest.mark.parametrize("bad", ["", "Xen", "a" * 22, "xen$", "9x", "xen qemu"])
def test_bad_prefixes_are_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput, match="prefix"):
        validate_prefix(bad)


def test_longest_prefix_still_forms_valid_names() -> None:
    prefix = validate_prefix("a" * 21)
    assert is_valid_user_name(f"{prefix}-domid32751")
