"""Every isolation layer of one real QEMU, read from /proc by the test itself.

One VM serves every test here; the module is alone in this file so that its VM is torn down
before any test elsewhere checks that no process of a VM's uid is left.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.host.procfs import parse_cgroup, parse_limits, parse_status
from qemu_depriv.isolation.cgroups import CgroupHost, controller_path
from tests.system.vmhost import RANGE_BASE, VmHost


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VmHost, dict[str, Any]]]:
    """One VM launched with every layer, shared by the per-layer tests."""
    host = VmHost(tmp_path_factory.mktemp("layers"))
    try:
        yield host, host.launch("web", "--domid", "3")
    finally:
        assert host.teardown() == []


def proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def test_uid_gid_groups(running: tuple[VmHost, dict[str, Any]]) -> None:
    _, vm = running
    status = parse_status(proc(vm["pid"], "status"))
    assert status.uids == (RANGE_BASE + 3,) * 4
    assert status.gids == (RANGE_BASE,) * 4
    assert status.groups == (RANGE_BASE,)


def test_no_capabilities_no_new_privs_and_a_seccomp_filter(
    running: tuple[VmHost, dict[str, Any]],
) -> None:
    _, vm = running
    status = parse_status(proc(vm["pid"], "status"))
    assert (status.cap_eff, status.cap_prm) == (0, 0)
    assert status.no_new_privs
    assert status.seccomp == 2


def test_chroot_is_the_vms_empty_directory(running: tuple[VmHost, dict[str, Any]]) -> None:
    host, vm = running
    chroot = host.state_dir / "chroot" / "3"
    assert Path(f"/proc/{vm['pid']}/root").readlink() == chroot
    assert list(chroot.iterdir()) == []
    assert chroot.stat().st_mode & 0o777 == 0


@pytest.mark.parametrize("namespace", ["mnt", "ipc", "net", "pid"])
def test_namespaces_of_its_own(running: tuple[VmHost, dict[str, Any]], namespace: str) -> None:
    _, vm = running
    own = Path(f"/proc/{vm['pid']}/ns/{namespace}").readlink()
    assert own != Path(f"/proc/self/ns/{namespace}").readlink()


def test_qemu_is_pid_1_of_its_pid_namespace(running: tuple[VmHost, dict[str, Any]]) -> None:
    _, vm = running
    nspid = next(
        line
        for line in proc(vm["pid"], "status").decode().splitlines()
        if line.startswith("NSpid:")
    )
    assert nspid.split()[-1] == "1"


def test_rlimits(running: tuple[VmHost, dict[str, Any]]) -> None:
    _, vm = running
    limits = parse_limits(proc(vm["pid"], "limits"))
    for name in ("core", "msgqueue", "locks", "memlock"):
        assert limits[name] == (0, 0), name
    assert limits["nofile"] == (4096, 4096)
    assert limits["nproc"][0] > 0  # never 0: it counts threads


def test_cgroup_membership_and_limits(running: tuple[VmHost, dict[str, Any]]) -> None:
    _, vm = running
    cgroups = parse_cgroup(proc(vm["pid"], "cgroup"))
    group = "/qemu-depriv/3-web"
    host = CgroupHost.detect()
    for controller, (version, root) in host.placement().items():
        assert controller_path(cgroups, controller) == group, controller
        assert vm["pid"] in {
            int(p) for p in (root / group.lstrip("/") / "cgroup.procs").read_text().split()
        }
        del version
    memory_version, memory_root = host.placement()["memory"]
    limit_file = "memory.max" if memory_version == "v2" else "memory.limit_in_bytes"
    assert int((memory_root / "qemu-depriv/3-web" / limit_file).read_text()) == (64 + 256) << 20


#: Character devices a device model may hold: null, random, urandom, ptmx, kvm, tun.
ALLOWED_DEVICES = {(1, 3), (1, 8), (1, 9), (5, 2), (10, 232), (10, 200)}


def test_only_allowed_descriptors(running: tuple[VmHost, dict[str, Any]]) -> None:
    """Checked by what each descriptor is (device numbers, inodes), not by its path: paths
    of files opened in another mount namespace do not resolve from here."""
    host, vm = running
    log = (host.state_dir / "vms/3/qemu.log").stat()
    stray = []
    for fd in Path(f"/proc/{vm['pid']}/fd").iterdir():
        target, info = str(fd.readlink()), fd.stat()
        if target.startswith(("socket:[", "pipe:[", "anon_inode:")):
            continue
        if stat.S_ISCHR(info.st_mode):
            if (os.major(info.st_rdev), os.minor(info.st_rdev)) in ALLOWED_DEVICES:
                continue
            if os.major(info.st_rdev) >= 136:  # /dev/pts/N
                continue
        elif (info.st_dev, info.st_ino) == (log.st_dev, log.st_ino):
            continue
        stray.append(target)
    assert stray == []


def test_the_launch_and_list_json_carry_plan_and_verification(
    running: tuple[VmHost, dict[str, Any]],
) -> None:
    host, vm = running
    assert vm["layers"]["namespaces"] == ["mnt", "ipc", "pid", "net"]
    listed = host.vms()[0]
    assert listed["verification"]["ok"]
    assert set(listed["verification"]["layers"]) >= {
        "uid",
        "seccomp",
        "pid_namespace",
        "cgroup",
        "fds",
    }
    code, decision, _ = host.json("resolve", "--domid", "9")
    assert code == 0
    assert decision["layers"]["cgroup"] is True
