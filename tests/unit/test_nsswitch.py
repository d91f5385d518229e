"""Reading nsswitch.conf: which sources each database consults, and how far to trust them."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_depriv.accounts.nsswitch import SourceKind, parse_nsswitch, read_nsswitch, source_kind

DEBIAN_SSSD = """\
# /etc/nsswitch.conf
passwd:         files systemd sss
group:          files systemd sss   # with a comment
shadow:         files sss
hosts:          files dns
"""


def test_sources_are_read_in_order_with_comments_dropped() -> None:
    nsswitch = parse_nsswitch(DEBIAN_SSSD)
    assert nsswitch.sources("passwd") == ("files", "systemd", "sss")
    assert nsswitch.sources("group") == ("files", "systemd", "sss")
    assert nsswitch.network_sources("passwd") == ("sss",)


def test_actions_in_brackets_are_not_sources() -> None:
    nsswitch = parse_nsswitch("passwd: files [NOTFOUND=return] ldap [UNAVAIL=continue]\n")
    assert nsswitch.sources("passwd") == ("files", "ldap")
    assert nsswitch.line("passwd") == "passwd: files ldap"


def test_a_database_without_a_line_uses_files_as_glibc_does() -> None:
    nsswitch = parse_nsswitch("hosts: files dns\n")
    assert nsswitch.sources("passwd") == ("files",)
    assert nsswitch.network_sources("passwd") == ()


def test_compat_consults_the_compat_line_too() -> None:
    nsswitch = parse_nsswitch("passwd: compat\npasswd_compat: ldap\n")
    assert nsswitch.sources("passwd") == ("files", "ldap")


def test_a_missing_file_reads_as_files_only(tmp_path: Path) -> None:
    assert read_nsswitch(tmp_path / "absent").sources("passwd") == ("files",)


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("files", SourceKind.LOCAL),
        ("systemd", SourceKind.LOCAL),
        ("extrausers", SourceKind.LOCAL),
        ("ldap", SourceKind.REPORTS_ERRORS),
        ("sss", SourceKind.ONLINE_CHECK),
        ("winbind", SourceKind.UNKNOWN),
        ("nis", SourceKind.UNKNOWN),
    ],
)
def test_each_source_is_trusted_only_as_far_as_it_can_be(source: str, kind: SourceKind) -> None:
    assert source_kind(source) == kind


def test_the_hint_names_the_line_and_what_to_check_for_each_network_source() -> None:
    hint = parse_nsswitch("passwd: files ldap sss\n", Path("/etc/nsswitch.conf")).hint("passwd")
    assert "'passwd: files ldap sss' line of /etc/nsswitch.conf" in hint
    assert "nslcd" in hint
    assert "sssctl domain-status" in hint
