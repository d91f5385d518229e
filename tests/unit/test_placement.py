"""Who makes a VM's group (systemd or cgroupfs), its unit's name, and the doctor's word on it.

Unit names are held to the real ``systemd-escape``; the hosts are ``CgroupHost`` values as
``detect`` reads them (the host tier runs the systemd case for real).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_depriv.checks.doctor import check_cgroups
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.isolation.cgroups import (
    GROUP_NAME_MAX,
    CgroupHost,
    CgroupPlan,
    VmCgroup,
    group_name,
    unit_escape,
    unit_name,
)
from qemu_depriv.isolation.scopes import SLICE, VmScope, slice_path, vm_group

V2 = Path("/sys/fs/cgroup")
PURE_V2 = CgroupHost(V2, frozenset({"cpu", "memory", "pids", "io"}), {}, systemd=True)
HYBRID = CgroupHost(
    Path("/sys/fs/cgroup/unified"),
    frozenset(),
    {"memory": Path("/sys/fs/cgroup/memory"), "pids": Path("/sys/fs/cgroup/pids"),
     "cpu": Path("/sys/fs/cgroup/cpu"), "freezer": Path("/sys/fs/cgroup/freezer")},
    systemd=True,
)  # fmt: skip
NO_SYSTEMD = CgroupHost(V2, PURE_V2.unified_controllers, {})


def systemd_escape(text: str) -> str:
    tool = shutil.which("systemd-escape")
    assert tool, "systemd-escape (systemd) is missing: make deps installs systemd"
    return subprocess.run(
        [tool, "--", text], capture_output=True, text=True, check=True
    ).stdout.rstrip("\n")


@settings(max_examples=150, deadline=None)
@given(
    st.text(
        st.characters(exclude_categories=["Cs"], exclude_characters="\x00"),
        min_size=1,
        max_size=40,
    )
)
def test_unit_names_escape_as_systemd_escape_does(name: str) -> None:
    escaped = systemd_escape(name)
    assert unit_escape(name) == escaped
    group = group_name(7, name)
    assert group == f"7-{escaped}" or (len(group) == GROUP_NAME_MAX and len(escaped) > 190)
    assert unit_name(group) == f"qemu-depriv-{group}.scope"
    assert len(unit_name(group)) < 256  # systemd's UNIT_NAME_MAX


def test_the_slice_nests_as_systemd_nests_dashed_slices() -> None:
    assert slice_path(SLICE) == "qemu.slice/qemu-depriv.slice"
    assert slice_path("machine.slice") == "machine.slice"
    assert slice_path("a-b-c.slice") == "a.slice/a-b.slice/a-b-c.slice"


@pytest.mark.parametrize(
    ("host", "setting", "chosen"),
    [
        (PURE_V2, "auto", "systemd"),
        (PURE_V2, "systemd", "systemd"),
        (PURE_V2, "cgroupfs", "cgroupfs"),
        (HYBRID, "auto", "cgroupfs"),
        (NO_SYSTEMD, "auto", "cgroupfs"),
        (NO_SYSTEMD, "cgroupfs", "cgroupfs"),
    ],
)
def test_systemd_places_vms_only_where_it_runs_the_host_on_cgroup_v2(
    host: CgroupHost, setting: str, chosen: str
) -> None:
    assert host.manager(setting) == chosen


@pytest.mark.parametrize(
    ("host", "words"),
    [(NO_SYSTEMD, "systemd is not PID 1"), (HYBRID, "lacks cpu, memory, pids")],
)
def test_asking_for_systemd_where_it_cannot_place_vms_is_an_environment_failure(
    host: CgroupHost, words: str
) -> None:
    with pytest.raises(EnvironmentFailure, match=words):
        host.manager("systemd")


def test_detect_reads_whether_systemd_is_pid_1(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n")
    runtime = tmp_path / "run-systemd-system"
    assert not CgroupHost.detect(mountinfo, runtime).systemd
    runtime.mkdir()
    assert CgroupHost.detect(mountinfo, runtime).systemd


def test_a_scope_is_the_unit_in_the_slice_on_the_unified_hierarchy_only() -> None:
    plan = CgroupPlan("7-web", 1 << 30, 256, 100, unit="qemu-depriv-7-web.scope")
    scope = vm_group(HYBRID, plan)
    assert isinstance(scope, VmScope)
    here = "/qemu.slice/qemu-depriv.slice/qemu-depriv-7-web.scope"
    assert scope.directories() == [Path(f"/sys/fs/cgroup/unified{here}")]
    assert scope.paths_by_controller() == dict.fromkeys(("memory", "pids", "cpu"), here)
    assert scope.procs_files() == []
    plain = vm_group(PURE_V2, CgroupPlan("7-web", 1 << 30, 256, 100))
    assert type(plain) is VmCgroup
    assert plain.directories() == [V2 / "qemu-depriv/7-web"]
    assert plain.command_prefix() == []


def test_plans_in_the_store_from_before_scopes_read_back_as_cgroupfs() -> None:
    old = {"name": "7-web", "memory_bytes": 1, "pids_max": 2, "cpu_weight": 3}
    assert CgroupPlan.from_dict(old).unit is None
    plan = CgroupPlan("7-web", 1, 2, 3, unit="qemu-depriv-7-web.scope")
    assert CgroupPlan.from_dict(plan.as_dict()) == plan


def test_doctor_names_the_placement_and_flags_systemd_on_a_legacy_hierarchy() -> None:
    plain = list(check_cgroups(NO_SYSTEMD))
    assert all(f.ok for f in plain), plain
    assert "cgroupfs (systemd is not PID 1)" in plain[-1].message
    legacy = list(check_cgroups(HYBRID))
    assert not legacy[-1].ok
    assert "systemd.unified_cgroup_hierarchy=1" in legacy[-1].fix
    chosen = list(check_cgroups(HYBRID, "cgroupfs"))
    assert chosen[-1].ok
    assert "set by [layers] cgroup_manager" in chosen[-1].message
    forced = list(check_cgroups(NO_SYSTEMD, "systemd"))
    assert not forced[-1].ok
    assert "systemd is not PID 1" in forced[-1].message
