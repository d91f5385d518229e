"""Layers that fail, layers switched off, and what the cgroup contains, on a real QEMU."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.errors import InvalidInput, LayerVerificationFailed
from qemu_depriv.host.procfs import live_pids_of_uid, parse_cgroup
from qemu_depriv.isolation.cgroups import CgroupHost, VmCgroup, controller_path
from qemu_depriv.isolation.jail import Jail, jail_for
from qemu_depriv.isolation.layers import LayerPlan
from qemu_depriv.settings import LayerSettings, Settings
from qemu_depriv.vms.launcher import LaunchRequest, system_launcher
from qemu_depriv.xl.domain import DomainConfig
from tests.system.vmhost import RANGE_BASE, VmHost, leftovers
from tests.unit.table_lookup import TableLookup, account


def group_left(name: str) -> list[Path]:
    """The VM group's directories that still exist, in every hierarchy this host uses (v1 or
    v2), found as the launcher finds them."""
    return [d for d in VmCgroup(CgroupHost.detect(), name).directories() if d.exists()]


# -- a broken plan, a refused layer -----------------------------------------------------------


def _without_net(plan: LayerPlan, cgroup: VmCgroup | None) -> Jail:
    """A jail that leaves out the network namespace the plan expects."""
    jail = jail_for(plan, cgroup)
    return replace(jail, namespaces=jail.namespaces & ~0x40000000)


def test_a_plan_the_process_does_not_meet_fails_the_launch_and_leaves_nothing() -> None:
    state = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp")) / "s"
    lookup = TableLookup([account("xen-qemuuser-range-base", RANGE_BASE)])
    launcher = system_launcher(Settings(state_dir=state), lookup=lookup, jail=_without_net)
    config = DomainConfig(name="broken", type="hvm", memory=64)
    with pytest.raises(LayerVerificationFailed, match="net_namespace: planned") as info:
        launcher.launch(LaunchRequest(config=config, domid=4))
    assert [c["layer"] for c in info.value.failed] == ["net_namespace"]
    assert launcher.store.all() == []
    assert leftovers() == []
    assert list((state / "vms").iterdir()) == []
    assert group_left("4-broken") == []


def test_a_failed_launch_whose_teardown_sees_a_survivor_keeps_the_lease() -> None:
    """A process that ignores SIGKILL cannot be made; so the teardown's survivor check is given
    a fake that reports one (the only fake here), and the failed launch must keep its lease:
    the uid goes to no other VM while something of it may live."""
    state = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp")) / "s"
    lookup = TableLookup([account("xen-qemuuser-range-base", RANGE_BASE)])
    launcher = system_launcher(Settings(state_dir=state), lookup=lookup, jail=_without_net)
    real = launcher.teardown

    def survivor(uid: int) -> list[int]:
        return [*real.live_pids(uid), 4194303]  # pid_max's last pid: no real process

    launcher = replace(launcher, teardown=replace(real, live_pids=survivor))
    config = DomainConfig(name="haunted", type="hvm", memory=64)
    with pytest.raises(LayerVerificationFailed):
        launcher.launch(LaunchRequest(config=config, domid=5))
    (kept,) = launcher.store.all()
    assert (kept.domid, kept.uid) == (5, RANGE_BASE + 5)
    assert leftovers() == []  # QEMU itself was killed all the same
    real.run(kept, timeout=0)  # the real check finds nothing left: the lease goes
    assert launcher.store.all() == []
    assert group_left("5-haunted") == []


def _config(host: VmHost, text: str) -> Path:
    path = host.root / "qemu-depriv.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_layer_the_kernel_refuses_fails_the_launch_and_leaves_nothing(vmhost: VmHost) -> None:
    settings = _config(vmhost, "[layers]\npids_max = 1\n")  # not even room for QEMU
    done = vmhost.run("--config", str(settings), "launch", str(vmhost.config("web")))
    assert done.returncode == 4
    assert len(done.stderr.strip().splitlines()) == 1
    assert vmhost.vms() == []
    assert leftovers() == []
    assert group_left("1-web") == []


def test_layers_switched_off_in_the_config_are_not_applied(vmhost: VmHost) -> None:
    settings = _config(vmhost, "[layers]\nnamespaces = false\ncgroup = false\n")
    code, vm, stderr = vmhost.json("--config", str(settings), "launch", str(vmhost.config("web")))
    assert code == 0, stderr
    assert Path(f"/proc/{vm['pid']}/ns/net").readlink() == Path("/proc/self/ns/net").readlink()
    cgroups = parse_cgroup(Path(f"/proc/{vm['pid']}/cgroup").read_bytes())
    assert not (controller_path(cgroups, "pids") or "").startswith("/qemu-depriv")
    assert "net_namespace" not in vm["verification"]["layers"]
    assert "cgroup" not in vm["verification"]["layers"]


# -- containment ------------------------------------------------------------------------------

INTRUDER = """
import os, sys
for procs in sys.argv[3:]:
    with open(procs, "w") as handle:
        handle.write(str(os.getpid()))
os.setgroups([])
os.setgid(int(sys.argv[2]))
os.setuid(int(sys.argv[1]))
print("joined", flush=True)
{work}
"""
HOG = """
block = bytearray(1 << 30)
for i in range(0, len(block), 4096):
    block[i] = 1
print('survived')
"""
FORKER = """
import time
made = 0
try:
    while made < 10000:
        if os.fork() == 0:
            os.close(1)
            os.close(2)
            time.sleep(60)
            os._exit(0)
        made += 1
    print('unlimited', made)
except OSError as exc:
    print('refused after', made, exc.errno)
"""


def _intrude(vm: dict[str, Any], work: str) -> subprocess.CompletedProcess[str]:
    group = f"qemu-depriv/{vm['domid']}-{vm['name']}"
    procs = [
        str(root / group / "cgroup.procs")
        for root in {r for _, r in CgroupHost.detect().placement().values()}
    ]
    script = INTRUDER.format(work=work)
    return subprocess.run(
        [sys.executable, "-c", script, str(vm["uid"]), str(vm["gid"]), *procs],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_a_memory_hog_in_the_vms_cgroup_is_oom_killed_and_the_vm_runs_on(vmhost: VmHost) -> None:
    settings = _config(vmhost, "[layers]\nmemory_overhead_mib = 192\n")
    code, vm, stderr = vmhost.json("--config", str(settings), "launch", str(vmhost.config("web")))
    assert code == 0, stderr
    done = _intrude(vm, HOG)
    assert "joined" in done.stdout
    assert done.returncode == -signal.SIGKILL, done.stdout + done.stderr
    assert "survived" not in done.stdout
    assert vmhost.vms()[0]["state"] == "running"


def test_a_fork_bomb_in_the_vms_cgroup_is_refused_at_pids_max(vmhost: VmHost) -> None:
    settings = _config(vmhost, "[layers]\npids_max = 64\n")
    code, vm, stderr = vmhost.json("--config", str(settings), "launch", str(vmhost.config("web")))
    assert code == 0, stderr
    done = _intrude(vm, FORKER)
    assert "refused after" in done.stdout, done.stdout + done.stderr
    made = int(done.stdout.split("refused after")[1].split()[0])
    assert 0 < made < 64
    assert vmhost.run("stop", "web").returncode == 0  # the cgroup kill takes the forks too
    assert live_pids_of_uid(vm["uid"]) == []


def test_a_chroot_found_written_to_is_quarantined_not_deleted(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    chroot = vmhost.state_dir / "chroot" / str(vm["domid"])
    (chroot / "dropped").write_text("evidence")
    code, out, stderr = vmhost.json("stop", "web")
    assert code == 0, stderr
    assert "not empty" in stderr
    assert out["warnings"]
    kept = list((vmhost.state_dir / "quarantine").iterdir())
    assert len(kept) == 1
    assert (kept[0] / "dropped").read_text() == "evidence"
    assert not chroot.exists()


def test_a_descriptor_limit_above_the_kernels_is_refused_before_qemu_starts() -> None:
    """Between fork and exec, setrlimit's refusal would only say that the pre-exec function
    raised: the limit is held against fs.nr_open first, and the launch leaves nothing."""
    state = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp")) / "s"
    lookup = TableLookup([account("xen-qemuuser-range-base", RANGE_BASE)])
    ceiling = int(Path("/proc/sys/fs/nr_open").read_text())
    settings = Settings(state_dir=state, layers=LayerSettings(nofile=ceiling + 1))
    launcher = system_launcher(settings, lookup=lookup)
    config = DomainConfig(name="files", type="hvm", memory=64)
    with pytest.raises(InvalidInput, match=rf"layers\.nofile = {ceiling + 1} is above"):
        launcher.launch(LaunchRequest(config=config, domid=6))
    assert launcher.store.all() == []
    assert leftovers() == []
    assert group_left("6-files") == []
