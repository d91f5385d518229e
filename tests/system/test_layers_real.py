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

from qemu_depriv.cgroups import CgroupHost, VmCgroup
from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.inspect import parse_cgroup
from qemu_depriv.jail import Jail, jail_for
from qemu_depriv.launcher import Launcher, LaunchRequest
from qemu_depriv.layers import LayerPlan, controller_path
from qemu_depriv.procs import live_pids_of_uid
from qemu_depriv.qemu.caps import CapsProbe
from qemu_depriv.settings import Settings
from qemu_depriv.state import StateStore
from tests.system.vmhost import RANGE_BASE, VmHost, leftovers
from tests.unit.table_lookup import TableLookup, account

CGROUP_V1 = Path("/sys/fs/cgroup")


# -- a broken plan, a refused layer -----------------------------------------------------------


def _without_net(plan: LayerPlan, cgroup: VmCgroup | None) -> Jail:
    """A jail that leaves out the network namespace the plan expects."""
    jail = jail_for(plan, cgroup)
    return replace(jail, namespaces=jail.namespaces & ~0x40000000)


def test_a_plan_the_process_does_not_meet_fails_the_launch_and_leaves_nothing() -> None:
    state = Path(tempfile.mkdtemp(prefix="qd", dir="/tmp")) / "s"
    lookup = TableLookup([account("xen-qemuuser-range-base", RANGE_BASE)])
    launcher = Launcher(
        settings=Settings(state_dir=state), lookup=lookup, store=StateStore(state),
        probe=CapsProbe(), jail_for=_without_net,
    )  # fmt: skip
    config = DomainConfig(name="broken", type="hvm", memory=64)
    with pytest.raises(EnvironmentFailure, match="net_namespace: planned"):
        launcher.launch(LaunchRequest(config=config, domid=4))
    assert launcher.store.all() == []
    assert leftovers() == []
    assert list((state / "vms").iterdir()) == []
    assert not (CGROUP_V1 / "pids/qemu-depriv/4-broken").exists()


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
    assert not (CGROUP_V1 / "pids/qemu-depriv/1-web").exists()


def test_layers_switched_off_in_the_config_are_not_applied(vmhost: VmHost) -> None:
    settings = _config(vmhost, "[layers]\nnamespaces = false\ncgroup = false\n")
    code, vm, stderr = vmhost.json("--config", str(settings), "launch", str(vmhost.config("web")))
    assert code == 0, stderr
    assert Path(f"/proc/{vm['pid']}/ns/net").readlink() == Path("/proc/self/ns/net").readlink()
    cgroups = parse_cgroup(Path(f"/proc/{vm['pid']}/cgroup").read_bytes())
    assert controller_path(cgroups, "pids") == "/"
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
