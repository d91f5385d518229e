"""Xen's own example domain configs, and xl.cfg devices on a real QEMU.

The examples come from Debian's xen-utils-common package, which ``make test`` downloads and
unpacks (never installs) into .venv/xen-examples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.system.vmhost import RANGE_BASE, VmHost, in_netns, leftovers, private_netns

EXAMPLES = Path(__file__).parents[2] / ".venv" / "xen-examples" / "etc" / "xen"


def example(name: str) -> str:
    path = EXAMPLES / name
    if not path.exists():
        pytest.fail(f"{path} is missing: 'make test' fetches Xen's examples (make deps)")
    return str(path)


def test_the_hvm_example_gives_a_xen_device_model_argv(vmhost: VmHost) -> None:
    code, plan, stderr = vmhost.json(
        "launch", example("xlexample.hvm"), "--mode", "xen", "--domid", "5", "--dry-run"
    )
    assert code == 0, stderr
    argv = plan["argv"]
    assert argv[argv.index("-xen-domid") + 1] == "5"
    assert argv[argv.index("-machine") + 1] == "xenfv,suppress-vmdesc=on"
    assert argv[argv.index("-m") + 1] == "120"  # 128 MiB less cirrus's 8 MiB of video memory
    assert argv[argv.index("-smp") + 1] == "2,maxcpus=2"
    assert "file=/dev/vg/guest-volume,if=ide,index=0,media=disk,format=raw,cache=writeback" in argv
    assert any(a.startswith("rtl8139,id=nic0,netdev=net0,mac=00:16:3e:") for a in argv)
    assert "type=tap,id=net0,ifname=vif5.0-emu,br=xenbr0,script=no,downscript=no" in argv
    assert argv[argv.index("-vnc") : argv.index("-vnc") + 2] == ["-vnc", "127.0.0.1:0,to=99"]
    assert "sdl" in argv
    assert argv[argv.index("-runas") + 1] == f"{RANGE_BASE + 5}:{RANGE_BASE}"


@pytest.mark.parametrize("name", ["xlexample.pvlinux", "xlexample.pvhlinux"])
def test_the_pv_and_pvh_examples_need_no_device_model(vmhost: VmHost, name: str) -> None:
    code, plan, stderr = vmhost.json("launch", example(name), "--mode", "xen", "--dry-run")
    assert code == 0, stderr
    assert plan["argv"] is None
    assert "needs no device model" in plan["reason"]
    done = vmhost.run("launch", example(name), "--mode", "xen")
    assert done.returncode == 0
    assert "no device model" in done.stdout
    assert vmhost.vms() == []


def test_a_pv_example_cannot_run_standalone(vmhost: VmHost) -> None:
    done = vmhost.run("launch", example("xlexample.pvlinux"), "--dry-run")
    assert done.returncode == 2
    assert "cannot run standalone" in done.stderr


def dry_run_in(netns: str, root: Path, config: str) -> tuple[int, dict[str, Any], str]:
    host = VmHost(root, prefix=in_netns(netns))
    try:
        return host.json("launch", config, "--dry-run")
    finally:
        host.teardown()


def test_the_hvm_example_gets_its_nic_on_xenbr0_standalone(tmp_path: Path) -> None:
    """Its ``vif = [ '' ]`` is an rtl8139 on a tap in xenbr0: refused where there is no xenbr0."""
    with private_netns() as bare, private_netns("xenbr0") as bridged:
        code, _, stderr = dry_run_in(bare, tmp_path / "bare", example("xlexample.hvm"))
        assert code == 4
        assert "ip link add xenbr0 type bridge" in stderr
        code, plan, stderr = dry_run_in(bridged, tmp_path / "bridged", example("xlexample.hvm"))
        assert code == 0, stderr
    assert [t["name"] for t in plan["taps"]] == ["vif1.0-emu"]
    argv = plan["argv"]
    assert argv[argv.index("-netdev") + 1] == "tap,id=net0,fd=@vif1.0-emu"
    assert argv[argv.index("-device", argv.index("-netdev")) + 1].startswith("rtl8139,id=nic0,")


def test_xen_mode_on_a_host_without_xen_fails_cleanly(vmhost: VmHost) -> None:
    config = vmhost.config("web", type="hvm")
    done = vmhost.run("launch", str(config), "--mode", "xen", "--start-timeout", "20")
    assert done.returncode == 4
    assert "xen" in done.stderr.lower()  # QEMU's own complaint is quoted
    assert len(done.stderr.strip().splitlines()) == 1
    assert leftovers() == []
    assert vmhost.vms() == []


def test_a_config_with_disk_serial_vga_and_vnc_runs_on_real_qemu(vmhost: VmHost) -> None:
    image = vmhost.root / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(16 << 20)
    path = vmhost.root / "devices.cfg"
    path.write_text(
        'name = "devices"\ntype = "hvm"\nmemory = 64\nvcpus = 1\nmaxvcpus = 2\n'
        f"disk = [ '{image},raw,hda,w', ',,hdc,cdrom' ]\n"
        'serial = "pty"\nboot = "cd"\nstdvga = 1\n'
        'vnc = 1\nvnclisten = "127.0.0.1"\nvncdisplay = 57\nvncunused = 0\n'
    )
    code, vm, stderr = vmhost.json("launch", str(path))
    assert code == 0, stderr
    cmdline = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")
    assert f"file={image},if=ide,index=0,media=disk,format=raw,cache=writeback".encode() in cmdline
    assert b"127.0.0.1:57" in cmdline
    fds = [str(fd.readlink()) for fd in Path(f"/proc/{vm['pid']}/fd").iterdir()]
    assert str(image) in fds  # QEMU opened the disk before it dropped to the VM's uid
    assert vmhost.run("stop", "devices").returncode == 0
