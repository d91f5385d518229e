"""Reading a QEMU binary's deprivileging options from its ``-help`` and ``-version`` output.

Samples in tests/unit/samples/:

- ``qemu-7.2-help.txt`` and ``qemu-7.2-version.txt``: the real output of Debian 12's
  ``qemu-system-x86_64`` 7.2.
- ``qemu-9.0-style-help.txt``: the 7.2 help with ``-chroot`` and ``-async-teardown`` removed (as
  QEMU 9.0 removed them) and QEMU 9.0's ``-run-with`` block, which has ``chroot=`` but no
  ``user=``.
- ``qemu-9.1-style-help.txt``: the same with QEMU 9.1's ``-run-with`` block (``user=`` added,
  ``-runas`` still present but deprecated).
- ``qemu-10-style-help.txt``: ``-runas`` removed too, and the newer two-line ``-run-with``
  header with ``exit-with-parent=``.
- ``qemu-2.10-style-help.txt``: the 7.2 help whose ``-runas`` block lacks the line "user can be
  numeric uid:gid instead", as every QEMU before 2.11 does.

The ``-run-with`` blocks are copied verbatim from QEMU's qemu-options.hx.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_depriv.qemu.caps import QemuCaps, parse_caps

SAMPLES = Path(__file__).parent / "samples"
BINARY = "/usr/bin/qemu-system-x86_64"
ALL_SANDBOX_OPTIONS = ("elevateprivileges", "obsolete", "resourcecontrol", "spawn")
XEN_DOMID_RESTRICT_BLOCK = (
    "-xen-domid-restrict     restrict set of available xen operations\n"
    "                        to specified domain id. (Does not affect\n"
    "                        xenpv machine type).\n"
)
XEN_DOMID_LINE = "-xen-domid id   specify xen guest domain id\n"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text(encoding="utf-8")


def caps_of(help_name: str, version_text: str = "QEMU emulator version 0.0.0\n") -> QemuCaps:
    return parse_caps(BINARY, sample(help_name), version_text)


def without(text: str, block: str) -> str:
    """Return ``text`` with ``block`` removed, insisting that it was there exactly once."""
    assert text.count(block) == 1, f"the sample no longer holds {block!r}"
    return text.replace(block, "")


# -- QEMU 7.2, real output ------------------------------------------------------------------


def test_qemu_7_2_has_runas_with_the_numeric_form_and_chroot() -> None:
    caps = caps_of("qemu-7.2-help.txt")
    assert caps.runas
    assert caps.runas_numeric
    assert caps.chroot
    assert not caps.run_with_user
    assert not caps.run_with_chroot
    assert caps.runas_method == "runas"


def test_qemu_7_2_has_sandbox_with_its_four_sub_options() -> None:
    caps = caps_of("qemu-7.2-help.txt")
    assert caps.sandbox
    assert caps.sandbox_options == ALL_SANDBOX_OPTIONS


def test_qemu_7_2_has_xen_domid_and_xen_domid_restrict() -> None:
    caps = caps_of("qemu-7.2-help.txt")
    assert caps.xen
    assert caps.xen_domid_restrict


def test_version_is_the_first_line_of_the_version_output() -> None:
    caps = caps_of("qemu-7.2-help.txt", sample("qemu-7.2-version.txt"))
    assert caps.version == "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"
    assert caps.binary == BINARY


@pytest.mark.parametrize("version_text", ["", "\n", "  \n\n"])
def test_empty_version_output_reads_as_unknown(version_text: str) -> None:
    assert caps_of("qemu-7.2-help.txt", version_text).version == "unknown"


# -- newer and older QEMU ---------------------------------------------------------------------


def test_qemu_9_0_has_run_with_chroot_but_no_run_with_user() -> None:
    caps = caps_of("qemu-9.0-style-help.txt")
    assert caps.run_with_chroot
    assert not caps.run_with_user
    assert not caps.chroot
    assert caps.runas
    assert caps.runas_numeric
    assert caps.runas_method == "runas"


def test_qemu_9_1_prefers_run_with_user_over_the_deprecated_runas() -> None:
    caps = caps_of("qemu-9.1-style-help.txt")
    assert caps.run_with_user
    assert caps.run_with_chroot
    assert caps.runas
    assert not caps.chroot
    assert caps.runas_method == "run-with"


def test_qemu_10_without_runas_still_drops_privileges_with_run_with() -> None:
    caps = caps_of("qemu-10-style-help.txt")
    assert not caps.runas
    assert not caps.runas_numeric
    assert caps.run_with_user
    assert caps.run_with_chroot
    assert caps.runas_method == "run-with"


def test_qemu_10_two_line_run_with_header_keeps_sandbox_and_xen_options() -> None:
    caps = caps_of("qemu-10-style-help.txt")
    assert caps.sandbox_options == ALL_SANDBOX_OPTIONS
    assert caps.xen_domid_restrict


def test_runas_without_the_uid_gid_line_is_not_numeric() -> None:
    caps = caps_of("qemu-2.10-style-help.txt")
    assert caps.runas
    assert not caps.runas_numeric
    assert caps.runas_method == "runas"


def test_no_run_as_option_at_all_gives_no_runas_method() -> None:
    help_text = sample("qemu-10-style-help.txt")
    run_with = help_text[help_text.index("-run-with") : help_text.index("-msg")]
    caps = parse_caps(BINARY, without(help_text, run_with), "")
    assert not caps.run_with_user
    assert not caps.run_with_chroot
    assert caps.runas_method is None


# -- prefix traps -----------------------------------------------------------------------------


def test_xen_domid_alone_does_not_count_as_xen_domid_restrict() -> None:
    help_text = without(sample("qemu-7.2-help.txt"), XEN_DOMID_RESTRICT_BLOCK)
    caps = parse_caps(BINARY, help_text, "")
    assert caps.xen
    assert not caps.xen_domid_restrict


def test_xen_domid_restrict_alone_does_not_count_as_xen_domid() -> None:
    help_text = without(sample("qemu-7.2-help.txt"), XEN_DOMID_LINE)
    caps = parse_caps(BINARY, help_text, "")
    assert caps.xen_domid_restrict
    assert not caps.xen


def test_an_option_named_only_inside_another_options_text_is_not_detected() -> None:
    # Help texts cross-reference options ("useful in combination with -runas"): an option
    # counts only where a line starts with it.
    help_text = "-machine pc\n-foo            see also -runas and -chroot and -sandbox\n"
    caps = parse_caps(BINARY, help_text, "")
    assert not caps.runas
    assert not caps.chroot
    assert not caps.sandbox


def test_numeric_form_is_read_from_the_runas_block_only() -> None:
    # "uid:gid" in -run-with's text must not make a -runas without it numeric.
    help_text = sample("qemu-2.10-style-help.txt") + (
        "-run-with [async-teardown=on|off][,chroot=dir]\n"
        "                user=uid:gid is mentioned here, not under -runas\n"
    )
    caps = parse_caps(BINARY, help_text, "")
    assert caps.runas
    assert not caps.runas_numeric


def test_sandbox_lists_only_the_sub_options_its_help_names() -> None:
    help_text = (
        "-machine pc\n"
        "-sandbox on[,obsolete=allow|deny][,spawn=allow|deny]\n"
        "                Enable seccomp mode 2 system call filter (default 'off').\n"
        "-runas user     change to user id user just before starting the VM\n"
        "                user can be numeric uid:gid instead\n"
    )
    caps = parse_caps(BINARY, help_text, "")
    assert caps.sandbox
    assert caps.sandbox_options == ("obsolete", "spawn")
