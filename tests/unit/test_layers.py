"""The layer plan and its verification, on plain values and captured /proc samples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host.procfs import (
    UNLIMITED,
    ProcStatus,
    Snapshot,
    parse_cgroup,
    parse_limits,
    parse_status,
)
from qemu_depriv.isolation.cgroups import controller_path, group_name
from qemu_depriv.isolation.layers import (
    XEN_FSIZE,
    LayerPlan,
    VmShape,
    check_layers,
    needs_network,
    plan_layers,
    verification,
)
from qemu_depriv.settings import LayerSettings
from qemu_depriv.vms.paths import vm_paths
from qemu_depriv.xl.disks import parse_disk
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.nics import parse_vif

SAMPLES = Path(__file__).parent / "samples"
UID, GID = 131073, 131072
PATHS = vm_paths(Path("/tmp/qdt/s"), 1)
RANGE = Decision(Tier.RANGE, f"{UID}:{GID}", UID, GID, (GID,), None, kill_by_uid=True)
ROOT = Decision(Tier.ROOT, None, 0, 0, (), None, kill_by_uid=False)
CONFIG = DomainConfig(name="web", type="hvm", memory=64)
HOST_NS = {
    n: f"{n}:[4026531{i}]" for i, n in enumerate(("mnt", "ipc", "net", "pid", "uts", "user"))
}
CGROUP_PATHS = dict.fromkeys(("memory", "pids", "cpu", "freezer"), "/qemu-depriv/1-web")
CGROUP_LIMITS = {"memory": (64 + 256) << 20, "pids": 256, "cpu": 100}


def plan(settings: LayerSettings | None = None, **kwargs: Any) -> LayerPlan:
    mode = kwargs.get("mode", "standalone")
    return plan_layers(
        settings or LayerSettings(), VmShape.of(kwargs.pop("config", CONFIG), mode),
        kwargs.pop("decision", RANGE),
        mode=kwargs.pop("mode", "standalone"), domid=1, log=PATHS.log, chroot=PATHS.chroot,
    )  # fmt: skip


def jailed_snapshot(**changes: Any) -> Snapshot:
    """The QEMU that passed every check, captured in tests/unit/samples/qemu-jailed-*.txt."""
    values: dict[str, Any] = {
        "pid": 20172,
        "status": parse_status((SAMPLES / "qemu-jailed-status.txt").read_bytes()),
        "root": str(PATHS.chroot),
        "namespaces": {n: f"{n}:[4026532{i}]" for i, n in enumerate(HOST_NS)},
        "limits": parse_limits((SAMPLES / "qemu-jailed-limits.txt").read_bytes()),
        "cgroups": parse_cgroup((SAMPLES / "qemu-jailed-cgroup.txt").read_bytes()),
        "fds": ("/dev/null", "/dev/null", str(PATHS.log), "socket:[61494]", "anon_inode:[eventfd]"),
    }
    values.update(changes)
    return Snapshot(**values)


def failed(snap: Snapshot, layer_plan: LayerPlan | None = None) -> list[str]:
    checks = check_layers(
        layer_plan or plan(), snap, host_namespaces=HOST_NS,
        cgroup_paths=CGROUP_PATHS, cgroup_limits=CGROUP_LIMITS,
    )  # fmt: skip
    return [c.layer for c in checks if not c.ok]


# -- parsing ----------------------------------------------------------------------------------


def test_limits_are_read_as_soft_and_hard_with_unlimited() -> None:
    limits = parse_limits((SAMPLES / "qemu-jailed-limits.txt").read_bytes())
    assert limits["core"] == (0, 0)
    assert limits["nofile"] == (4096, 4096)
    assert limits["fsize"] == (UNLIMITED, UNLIMITED)


def test_cgroup_lines_map_controllers_to_paths_and_v2_to_the_empty_key() -> None:
    cgroups = parse_cgroup(b"4:memory:/a\n1:cpu,cpuacct:/b\n0::/c\n")
    assert cgroups == {"memory": "/a", "cpu,cpuacct": "/b", "": "/c"}
    assert controller_path(cgroups, "cpu") == "/b"
    assert controller_path(cgroups, "pids") == "/c"  # not on v1: the unified line
    with pytest.raises(ValueError, match="malformed"):
        parse_cgroup(b"garbage\n")


# -- planning ---------------------------------------------------------------------------------


def test_every_layer_is_planned_by_default() -> None:
    layers = plan()
    assert (layers.uid, layers.gid, layers.groups, layers.no_caps) == (UID, GID, (GID,), True)
    assert layers.no_new_privs
    assert layers.seccomp
    assert layers.chroot == str(PATHS.chroot)
    assert layers.namespaces == ("mnt", "ipc", "pid", "net")
    assert layers.rlimits["core"] == (0, 0)
    assert layers.cgroup is not None
    assert layers.cgroup.memory_bytes == (64 + 256) << 20
    assert layers.fds is not None
    assert str(PATHS.log) in layers.fds


def test_a_xen_device_model_may_write_256_kib_and_a_standalone_vm_any_size() -> None:
    assert plan(mode="xen").rlimits["fsize"] == (XEN_FSIZE, XEN_FSIZE)
    assert plan(mode="standalone").rlimits["fsize"] == (UNLIMITED, UNLIMITED)


@pytest.mark.parametrize(
    ("config", "mode", "network"),
    [
        (CONFIG, "standalone", False),
        (replace(CONFIG, vnc=True), "standalone", True),
        (replace(CONFIG, serial=("tcp:127.0.0.1:4555,server,nowait",)), "standalone", True),
        (CONFIG, "xen", True),  # VNC is on by default for a Xen HVM guest
        (replace(CONFIG, vnc=False), "xen", False),
        (replace(CONFIG, vnc=False, vifs=(parse_vif("", 0),)), "xen", True),
        (replace(CONFIG, vnc=False, vifs=(parse_vif("type=vif", 0),)), "xen", False),
    ],
)
def test_a_network_namespace_only_when_the_vm_has_no_network(
    config: DomainConfig, mode: str, *, network: bool
) -> None:
    assert needs_network(config, mode) is network
    assert ("net" in plan(config=config, mode=mode).namespaces) is not network


def test_disk_targets_join_the_fd_allowlist() -> None:
    config = replace(CONFIG, disks=(parse_disk("/srv/web.img,raw,hda,w"),))
    assert "/srv/web.img" in (plan(config=config).fds or ())


def test_layers_switched_off_are_not_planned() -> None:
    off = LayerSettings(
        chroot=False, seccomp=False, no_new_privs=False, namespaces=False, rlimits=False,
        cgroup=False, fds=False,
    )  # fmt: skip
    layers = plan(off)
    assert (layers.chroot, layers.namespaces, layers.rlimits, layers.cgroup, layers.fds) == (
        None, (), {}, None, None,
    )  # fmt: skip
    assert not (layers.seccomp)
    assert not (layers.no_new_privs)


def test_the_root_tier_plans_no_capability_check() -> None:
    assert not plan(decision=ROOT).no_caps


# -- verification -----------------------------------------------------------------------------


def test_the_captured_jailed_qemu_passes_every_check() -> None:
    assert failed(jailed_snapshot()) == []
    record = verification(
        check_layers(plan(), jailed_snapshot(), host_namespaces=HOST_NS,
                     cgroup_paths=CGROUP_PATHS, cgroup_limits=CGROUP_LIMITS),
        20172,
    )  # fmt: skip
    assert record["ok"]
    assert set(record["layers"]) >= {"uid", "caps", "seccomp", "net_namespace", "cgroup", "fds"}


def _status(**changes: Any) -> ProcStatus:
    return replace(parse_status((SAMPLES / "qemu-jailed-status.txt").read_bytes()), **changes)


@pytest.mark.parametrize(
    ("changes", "layer"),
    [
        ({"status": _status(uids=(UID, UID, 0, UID))}, "uid"),
        ({"status": _status(gids=(GID, 0, GID, GID))}, "gid"),
        ({"status": _status(groups=(GID, 0))}, "groups"),
        ({"status": _status(cap_prm=1 << 21)}, "caps"),
        ({"status": _status(no_new_privs=False)}, "no_new_privs"),
        ({"status": _status(seccomp=0)}, "seccomp"),
        ({"root": "/"}, "chroot"),
        ({"namespaces": {**HOST_NS, "ipc": "ipc:[4026539999]", "mnt": "mnt:[4026539998]",
                         "pid": "pid:[4026539997]"}}, "net_namespace"),
        ({"limits": {**parse_limits((SAMPLES / "qemu-jailed-limits.txt").read_bytes()),
                     "core": (UNLIMITED, UNLIMITED)}}, "rlimits"),
        ({"cgroups": {"memory": "/", "pids": "/qemu-depriv/1-web", "cpu": "/qemu-depriv/1-web",
                      "freezer": "/qemu-depriv/1-web"}}, "cgroup"),
        ({"fds": ("/dev/null", "/run/qemu-depriv/state.db")}, "fds"),
    ],
)  # fmt: skip
def test_each_missing_layer_is_caught_and_named(changes: dict[str, Any], layer: str) -> None:
    snap = jailed_snapshot(**changes)
    assert failed(snap) == [layer]
    checks = check_layers(plan(), snap, host_namespaces=HOST_NS,
                          cgroup_paths=CGROUP_PATHS, cgroup_limits=CGROUP_LIMITS)  # fmt: skip
    with pytest.raises(EnvironmentFailure, match=f"{layer}: planned"):
        verification(checks, snap.pid)


def test_cgroup_limits_that_differ_from_the_plan_fail() -> None:
    checks = check_layers(
        plan(), jailed_snapshot(), host_namespaces=HOST_NS, cgroup_paths=CGROUP_PATHS,
        cgroup_limits={**CGROUP_LIMITS, "pids": 100000},
    )  # fmt: skip
    assert [c.layer for c in checks if not c.ok] == ["cgroup"]


def test_a_layer_switched_off_is_not_checked() -> None:
    snap = jailed_snapshot(status=_status(seccomp=0, no_new_privs=False), root="/")
    off = LayerSettings(seccomp=False, no_new_privs=False, chroot=False)
    assert failed(snap, plan(off)) == []


def test_a_root_tier_qemu_may_hold_capabilities() -> None:
    root_status = _status(
        uids=(0, 0, 0, 0), gids=(0, 0, 0, 0), groups=(), cap_eff=0x1FF, cap_prm=0x1FF
    )
    assert failed(jailed_snapshot(status=root_status), plan(decision=ROOT)) == []


@pytest.mark.parametrize(
    ("name", "group"),
    [
        ("web", "7-web"),
        ("web.example.org", "7-web.example.org"),
        ("a/b", "7-a-b"),
        ("my vm", "7-my\\x20vm"),
        ("web-1", "7-web\\x2d1"),
        (".hidden", "7-\\x2ehidden"),
        ("wéb", "7-w\\xc3\\xa9b"),
    ],
)
def test_a_vms_group_name_is_systemd_escaped_so_no_domain_name_escapes_it(
    name: str, group: str
) -> None:
    assert group_name(7, name) == group


def test_a_long_domain_name_gives_a_bounded_group_name_that_stays_distinct() -> None:
    one, two = group_name(7, "x" * 300 + "a"), group_name(7, "x" * 300 + "b")
    assert len(one) <= 200
    assert one != two
    assert "/" not in one
