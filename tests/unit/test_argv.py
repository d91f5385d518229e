"""QEMU command lines for a standalone VM and a Xen device model.

The Xen command lines follow libxl as Xen 4.17 builds them; the sources, all in Xen's tree:
``libxl__build_device_model_args_new`` in tools/libs/light/libxl_dm.c (the options and their
order, VNC, VGA, -m, disks, NICs), ``libxl__domain_build_info_setdefault`` in
tools/libs/light/libxl_create.c (cirrus and 8 MiB of video memory, boot "cda", VNC on),
``libxl__device_disk_set_backend`` in tools/libs/light/libxl_device.c (phy or qdisk), and
``libxl__device_disk_dev_number`` (xvda and hda are IDE index 0; hdc is device 5632).
Deliberate differences are listed in qemu_depriv/qemu/xen.py.  The xl.cfg inputs sit beside
their golden files (golden/NAME.cfg).

The full command lines are golden files in tests/unit/golden/NAME.argv, one argument per line.
After an intended change, regenerate them with ``make golden``, which sets
``QEMU_DEPRIV_REGEN_GOLDEN=1`` so that each golden test writes its file instead of comparing,
and review the diff before committing it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.qemu.argv import runas_args, sandbox_args, standalone_argv
from qemu_depriv.qemu.caps import QemuCaps, parse_caps
from qemu_depriv.qemu.xen import xen_argv, xen_pv_argv
from qemu_depriv.vms.paths import VmPaths
from qemu_depriv.xl.config import load_domain
from qemu_depriv.xl.domain import DomainConfig

GOLDEN = Path(__file__).parent / "golden"
SAMPLES = Path(__file__).parent / "samples"
REGENERATE = os.environ.get("QEMU_DEPRIV_REGEN_GOLDEN") == "1"

ALL_SANDBOX_OPTIONS = ("elevateprivileges", "obsolete", "resourcecontrol", "spawn")

#: What QEMU 7.2 reports (tests/unit/samples/qemu-7.2-help.txt): -runas uid:gid and -chroot.
CAPS_7_2 = QemuCaps(
    binary="/usr/bin/qemu-system-x86_64",
    version="QEMU emulator version 7.2.22",
    runas=True,
    runas_numeric=True,
    run_with_user=False,
    run_with_chroot=False,
    chroot=True,
    sandbox=True,
    sandbox_options=ALL_SANDBOX_OPTIONS,
    xen=True,
    xen_domid_restrict=True,
)
#: What QEMU 9.1 reports: -run-with user= and chroot=, the deprecated -runas, no -chroot.
CAPS_9_1 = replace(
    CAPS_7_2,
    version="QEMU emulator version 9.1.0",
    run_with_user=True,
    run_with_chroot=True,
    chroot=False,
)
#: A QEMU that can neither drop privileges nor chroot.
CAPS_NONE = replace(
    CAPS_7_2,
    version="QEMU emulator version 0.15.0",
    runas=False,
    runas_numeric=False,
    chroot=False,
    sandbox=False,
    sandbox_options=(),
    xen=False,
    xen_domid_restrict=False,
)

RANGE = Decision(
    tier=Tier.RANGE,
    runas="131079:131072",
    uid=131079,
    gid=131072,
    groups=(131072,),
    user=None,
    kill_by_uid=True,
)
NAMED = Decision(
    tier=Tier.NAME,
    runas="xen-qemuuser-web",
    uid=6000,
    gid=6000,
    groups=(6000,),
    user="xen-qemuuser-web",
    kill_by_uid=True,
)
ROOT = Decision(tier=Tier.ROOT, runas=None, uid=0, gid=0, groups=(), user=None, kill_by_uid=False)

PATHS = VmPaths(run_dir=Path("/run/qemu-depriv/vms/7"), chroot=Path("/run/qemu-depriv/chroot/7"))
CONFIG = DomainConfig(name="web", memory=64, vcpus=2)


@dataclass(frozen=True)
class Case:
    """One golden command line: the file it lives in and how to build it."""

    name: str
    build: Callable[[], list[str]]


def standalone(caps: QemuCaps, decision: Decision, accel: str = "tcg") -> Callable[[], list[str]]:
    return lambda: standalone_argv(
        caps, CONFIG, decision, qmp=PATHS.qmp, chroot=PATHS.chroot, accel=accel
    )


def xen(caps: QemuCaps, decision: Decision, *, restrict: bool) -> Callable[[], list[str]]:
    xen_caps = replace(caps, binary="/usr/bin/qemu-system-i386")
    return lambda: xen_argv(
        xen_caps, CONFIG, decision, qmp=PATHS.qmp, chroot=PATHS.chroot, domid=7, restrict=restrict
    )


def from_cfg(name: str, caps: QemuCaps, *, mode: str) -> Callable[[], list[str]]:
    def build() -> list[str]:
        config = load_domain(GOLDEN / f"{name}.cfg")
        if mode == "standalone":
            return standalone_argv(caps, config, RANGE, qmp=PATHS.qmp, chroot=PATHS.chroot)
        builder = xen_argv if config.type == "hvm" else xen_pv_argv
        xen_caps = replace(caps, binary="/usr/bin/qemu-system-i386")
        return builder(
            xen_caps, config, RANGE, qmp=PATHS.qmp, chroot=PATHS.chroot, domid=7, restrict=True
        )

    return build


CASES = [
    Case("standalone-7.2-range", standalone(CAPS_7_2, RANGE)),
    Case("standalone-7.2-named", standalone(CAPS_7_2, NAMED)),
    Case("standalone-7.2-root", standalone(CAPS_7_2, ROOT)),
    Case("standalone-7.2-named-kvm", standalone(CAPS_7_2, NAMED, accel="kvm")),
    Case("standalone-9.1-range", standalone(CAPS_9_1, RANGE)),
    Case("standalone-9.1-named", standalone(CAPS_9_1, NAMED)),
    Case("standalone-9.1-root", standalone(CAPS_9_1, ROOT)),
    Case("xen-7.2-range-restrict", xen(CAPS_7_2, RANGE, restrict=True)),
    Case("xen-7.2-named-norestrict", xen(CAPS_7_2, NAMED, restrict=False)),
    Case("xen-7.2-root-norestrict", xen(CAPS_7_2, ROOT, restrict=False)),
    Case("xen-9.1-range-restrict", xen(CAPS_9_1, RANGE, restrict=True)),
    Case("xen-9.1-named-restrict", xen(CAPS_9_1, NAMED, restrict=True)),
    Case("xen-9.1-root-norestrict", xen(CAPS_9_1, ROOT, restrict=False)),
    Case("xen-hvm-full", from_cfg("hvm-full", CAPS_7_2, mode="xen")),
    Case("standalone-hvm-full", from_cfg("hvm-full", CAPS_7_2, mode="standalone")),
    Case("xen-pv-vfb", from_cfg("pv-vfb", CAPS_7_2, mode="xen")),
]


# -- golden command lines ---------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_command_line_matches_its_golden_file(case: Case) -> None:
    argv = case.build()
    assert all("\n" not in arg for arg in argv), "one argument per line needs no newlines"
    text = "".join(f"{arg}\n" for arg in argv)
    golden = GOLDEN / f"{case.name}.argv"
    if REGENERATE:
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    if not golden.exists():
        pytest.fail(f"{golden} is missing: run 'make golden' and review the new file")
    assert text == golden.read_text(encoding="utf-8")


def test_every_golden_file_belongs_to_a_case() -> None:
    on_disk = {path.stem for path in GOLDEN.glob("*.argv")}
    assert on_disk == {case.name for case in CASES}


def test_hand_built_7_2_caps_match_what_the_real_7_2_help_says() -> None:
    parsed = parse_caps(
        CAPS_7_2.binary,
        (SAMPLES / "qemu-7.2-help.txt").read_text(encoding="utf-8"),
        CAPS_7_2.version,
    )
    assert replace(parsed, options={}) == CAPS_7_2


def test_hand_built_9_1_caps_match_what_a_9_1_help_says() -> None:
    parsed = parse_caps(
        CAPS_9_1.binary,
        (SAMPLES / "qemu-9.1-style-help.txt").read_text(encoding="utf-8"),
        CAPS_9_1.version,
    )
    assert replace(parsed, options={}) == CAPS_9_1


# -- what every command line holds ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_command_line_starts_paused_with_qmp_in_the_run_directory(case: Case) -> None:
    argv = case.build()
    assert "-S" in argv
    socket = "/run/qemu-depriv/vms/7/qmp.sock"
    if "-qmp" in argv:  # standalone
        assert argv[argv.index("-qmp") + 1] == f"unix:{socket},server=on,wait=off"
    else:  # xen: libxl's control chardev and monitor
        chardev = argv[argv.index("-chardev") + 1]
        assert chardev == f"socket,id=libxl-cmd,path={socket},server=on,wait=off"
        assert argv[argv.index("-mon") + 1] == "chardev=libxl-cmd,mode=control"


# -- refusals ---------------------------------------------------------------------------------


def test_numeric_runas_refused_when_qemu_lacks_uid_gid_form() -> None:
    old = replace(CAPS_7_2, runas_numeric=False)
    with pytest.raises(EnvironmentFailure, match="numeric 131079:131072") as info:
        standalone_argv(old, CONFIG, RANGE, qmp=PATHS.qmp, chroot=PATHS.chroot)
    assert info.value.exit_code == 4


def test_named_runas_still_works_when_qemu_lacks_uid_gid_form() -> None:
    old = replace(CAPS_7_2, runas_numeric=False)
    assert runas_args(old, NAMED, PATHS.chroot)[-2:] == ["-runas", "xen-qemuuser-web"]


def test_numeric_user_goes_through_run_with_even_without_runas_uid_gid_form() -> None:
    caps = replace(CAPS_9_1, runas=False, runas_numeric=False)
    assert runas_args(caps, RANGE, PATHS.chroot) == [
        "-run-with",
        "chroot=/run/qemu-depriv/chroot/7,user=131079:131072",
    ]


@pytest.mark.parametrize("decision", [RANGE, NAMED], ids=["range", "named"])
def test_qemu_that_cannot_drop_privileges_is_refused(decision: Decision) -> None:
    caps = replace(CAPS_NONE, chroot=True)
    with pytest.raises(EnvironmentFailure, match="neither -run-with user= nor -runas") as info:
        standalone_argv(caps, CONFIG, decision, qmp=PATHS.qmp, chroot=PATHS.chroot)
    assert info.value.exit_code == 4


@pytest.mark.parametrize("decision", [RANGE, NAMED, ROOT], ids=["range", "named", "root"])
def test_qemu_that_cannot_chroot_is_refused(decision: Decision) -> None:
    with pytest.raises(EnvironmentFailure, match="neither -run-with chroot= nor -chroot") as info:
        standalone_argv(CAPS_NONE, CONFIG, decision, qmp=PATHS.qmp, chroot=PATHS.chroot)
    assert info.value.exit_code == 4


def test_root_decision_needs_no_run_as_option() -> None:
    argv = standalone_argv(
        replace(CAPS_NONE, chroot=True), CONFIG, ROOT, qmp=PATHS.qmp, chroot=PATHS.chroot
    )
    assert "-runas" not in argv
    assert "-run-with" not in argv
    assert argv[argv.index("-chroot") + 1] == str(PATHS.chroot)


def test_restrict_refused_when_qemu_lacks_xen_domid_restrict() -> None:
    caps = replace(CAPS_7_2, xen_domid_restrict=False)
    with pytest.raises(EnvironmentFailure, match="no -xen-domid-restrict") as info:
        xen_argv(caps, CONFIG, RANGE, qmp=PATHS.qmp, chroot=PATHS.chroot, domid=7, restrict=True)
    assert info.value.exit_code == 4


def test_without_restrict_a_qemu_lacking_xen_domid_restrict_is_accepted() -> None:
    caps = replace(CAPS_7_2, xen_domid_restrict=False)
    argv = xen_argv(
        caps, CONFIG, RANGE, qmp=PATHS.qmp, chroot=PATHS.chroot, domid=7, restrict=False
    )
    assert "-xen-domid-restrict" not in argv
    assert argv[argv.index("-xen-domid") + 1] == "7"


# -- sandbox ----------------------------------------------------------------------------------


def test_sandbox_omits_sub_options_the_binary_does_not_list() -> None:
    caps = replace(CAPS_7_2, sandbox_options=("elevateprivileges", "spawn"))
    assert sandbox_args(caps, RANGE) == ["-sandbox", "on,elevateprivileges=allow,spawn=deny"]


def test_sandbox_without_sub_options_is_just_on() -> None:
    caps = replace(CAPS_7_2, sandbox_options=())
    assert sandbox_args(caps, RANGE) == ["-sandbox", "on"]


def test_no_sandbox_option_when_the_binary_has_none() -> None:
    assert sandbox_args(replace(CAPS_7_2, sandbox=False), RANGE) == []


@pytest.mark.parametrize(
    ("decision", "elevate"),
    [(RANGE, "allow"), (NAMED, "allow"), (ROOT, "deny")],
    ids=["range", "named", "root"],
)
def test_sandbox_allows_privilege_changes_only_when_qemu_drops_privileges(
    decision: Decision, elevate: str
) -> None:
    assert sandbox_args(CAPS_7_2, decision) == [
        "-sandbox",
        f"on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny",
    ]


# -- paths ------------------------------------------------------------------------------------


def test_vm_paths_put_socket_and_log_in_the_run_directory() -> None:
    assert PATHS.qmp == Path("/run/qemu-depriv/vms/7/qmp.sock")
    assert PATHS.log == Path("/run/qemu-depriv/vms/7/qemu.log")


# -- QEMU 9.0: -run-with chroot= without user= ------------------------------------------


def test_qemu_9_0_chroots_with_run_with_when_it_drops_privileges_with_runas() -> None:
    # QEMU 9.0 removed -chroot and has -run-with chroot= but not yet user=: the VM must still
    # be chrooted.
    caps = replace(CAPS_9_1, run_with_user=False, chroot=False)
    args = runas_args(caps, NAMED, PATHS.chroot)
    assert "chroot=/run/qemu-depriv/chroot/7" in args
    assert args[-2:] == ["-runas", "xen-qemuuser-web"]
