"""Standalone VMs on a bridge: taps the launcher opens and QEMU is handed (issue 17).

Everything runs in a network namespace the test makes (``ip netns add``), with one bridge and
no address outside it: the CLI through ``nsenter --net``, the frames read there by
``sniff.py``.  The guests are real QEMU with ``boot = "n"``: the iPXE ROM Debian ships with
QEMU sends DHCP requests from the NIC's MAC.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.host import netdev
from tests.system.vmhost import VmHost, in_netns, leftovers, private_netns, wait_for

SNIFF = Path(__file__).with_name("sniff.py")
MAC1 = "00:16:3e:4e:00:01"
MAC2 = "00:16:3e:4e:00:02"


def ip(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=False)


def links(netns: str) -> list[str]:
    done = ip(netns, "-j", "link", "show")
    assert done.returncode == 0, done.stderr
    return sorted(link["ifname"] for link in json.loads(done.stdout))


@pytest.fixture
def netns() -> Iterator[str]:
    """A network namespace with a bridge ``br0``, up, and nothing else but ``lo``."""
    with private_netns("br0") as name:
        yield name


@pytest.fixture
def nethost(tmp_path: Path, netns: str) -> Iterator[VmHost]:
    """A test host whose commands run in ``netns``; fails if a process of a VM's uid survives."""
    host = VmHost(tmp_path, prefix=in_netns(netns))
    try:
        yield host
    finally:
        left = host.teardown()
    assert not left, f"processes of a VM's uid survived the test: {left}"


def config(host: VmHost, name: str, vif: str, boot: str = "n") -> Path:
    path = host.root / f"{name}.cfg"
    path.write_text(
        f'name = "{name}"\ntype = "hvm"\nmemory = 64\nvcpus = 1\nboot = "{boot}"\n'
        f"vif = [ '{vif}' ]\n"
    )
    return path


def launch(host: VmHost, path: Path, *args: str) -> dict[str, Any]:
    code, vm, stderr = host.json("launch", str(path), *args)
    assert code == 0, stderr
    return vm


class Sniffer:
    """``sniff.py`` in the namespace, waiting for a DHCP request from one MAC on one device."""

    def __init__(self, netns: str, device: str, mac: str, seconds: float = 90) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, str(SNIFF), device, mac, str(seconds)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.process.stdout is not None
        assert json.loads(self.process.stdout.readline()) == {"listening": device}

    def seen(self) -> dict[str, str]:
        out, _ = self.process.communicate(timeout=120)
        assert self.process.returncode == 0, f"no DHCP request seen: {out!r}"
        return dict(json.loads(out.splitlines()[-1]))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def tun_descriptors(pid: int) -> dict[int, str]:
    """QEMU's /dev/net/tun descriptors and the interface each is attached to (fdinfo iff)."""
    found = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        # By device number: QEMU's /dev may be a mount this process cannot reach.
        if entry.stat().st_rdev == os.makedev(10, 200):
            info = Path(f"/proc/{pid}/fdinfo/{entry.name}").read_text()
            iff = [line.split(":", 1)[1] for line in info.splitlines() if line.startswith("iff:")]
            found[int(entry.name)] = iff[0].strip() if iff else ""
    return found


def test_a_vm_on_a_bridge_sends_dhcp_from_its_mac_through_the_tap_it_was_handed(
    nethost: VmHost, netns: str
) -> None:
    sniffer = Sniffer(netns, "br0", MAC1)
    try:
        vm = launch(nethost, config(nethost, "pxe", f"mac={MAC1},bridge=br0"), "--domid", "7")
        tap = "vif7.0-emu"
        assert [t["name"] for t in vm["taps"]] == [tap]
        assert (vm["taps"][0]["bridge"], vm["taps"][0]["mac"]) == ("br0", "fe" + MAC1[2:])
        assert tap in links(netns)
        master = json.loads(ip(netns, "-j", "link", "show", tap).stdout)[0]
        assert master["master"] == "br0"
        assert "UP" in master["flags"]
        assert master["address"] == "fe" + MAC1[2:]
        # /proc: QEMU holds exactly one tun descriptor, attached to its tap, at the number its
        # command line names: inherited from the launcher, not opened by QEMU itself.
        tuns = tun_descriptors(vm["pid"])
        assert list(tuns.values()) == [tap]
        cmdline = Path(f"/proc/{vm['pid']}/cmdline").read_bytes().split(b"\0")
        assert f"tap,id=net0,fd={next(iter(tuns))}".encode() in cmdline
        assert vm["verification"]["layers"]["taps"] == {"planned": [tap], "observed": [tap]}
        assert "net_namespace" not in vm["verification"]["layers"]  # the tap lives in ours
        assert "/dev/net/tun" not in vm["layers"]["fds"]
        assert sniffer.seen() == {"seen": "DHCPDISCOVER", "from": MAC1, "on": "br0"}
        (listed,) = nethost.vms()
        assert [t["name"] for t in listed["taps"]] == [tap]
        code, report, stderr = nethost.json("audit")
        assert code in (0, 1), stderr
        (ours,) = [p for p in report["processes"] if p["pid"] == vm["pid"]]
        assert ours["taps"] == [tap]
    finally:
        sniffer.close()
    assert nethost.run("stop", "pxe").returncode == 0
    assert links(netns) == ["br0", "lo"]


def test_two_vms_on_one_bridge_see_each_others_broadcasts(nethost: VmHost, netns: str) -> None:
    first = launch(nethost, config(nethost, "one", f"mac={MAC1},bridge=br0", boot="c"))
    tap = first["taps"][0]["name"]
    sniffer = Sniffer(netns, tap, MAC2)
    try:
        launch(nethost, config(nethost, "two", f"mac={MAC2},bridge=br0"))
        assert sniffer.seen() == {"seen": "DHCPDISCOVER", "from": MAC2, "on": tap}
    finally:
        sniffer.close()
    for name in ("one", "two"):
        assert nethost.run("stop", name).returncode == 0
    assert links(netns) == ["br0", "lo"]


def test_a_missing_bridge_is_refused_before_anything_starts(nethost: VmHost, netns: str) -> None:
    done = nethost.run("launch", str(config(nethost, "nobr", "bridge=xenbr0")))
    assert done.returncode == 4, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "bridge xenbr0" in line
    assert "ip link add xenbr0 type bridge" in line
    assert nethost.vms() == []
    assert links(netns) == ["br0", "lo"]
    assert leftovers() == []


def test_a_tap_name_in_use_is_refused(nethost: VmHost, netns: str) -> None:
    assert ip(netns, "link", "add", "vif9.0-emu", "type", "bridge").returncode == 0
    done = nethost.run("launch", str(config(nethost, "taken", "bridge=br0")), "--domid", "9")
    assert done.returncode == 4, done.stderr
    assert "tap vif9.0-emu already exists" in done.stderr
    assert nethost.vms() == []
    assert links(netns) == ["br0", "lo", "vif9.0-emu"]  # not ours: left alone


def _qemu_with_a_tap(name: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
            if name.encode() in words and tun_descriptors(int(entry.name)):
                return int(entry.name)
        except OSError:
            continue
    return None


def test_a_launcher_killed_mid_launch_leaves_no_tap_after_recover(
    nethost: VmHost, netns: str
) -> None:
    """SIGKILL the launcher the moment its QEMU holds the tap, before it is verified.

    The window (QEMU's start to QMP, the checks) is tens of milliseconds: a try that comes
    too late finds a running VM, which is stopped, and the test tries again.
    """
    path = config(nethost, "crash", f"mac={MAC1},bridge=br0", boot="c")
    for _ in range(5):
        launcher = subprocess.Popen(
            nethost.command("launch", str(path)), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        assert wait_for(lambda: _qemu_with_a_tap("crash") is not None, 30)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        (vm,) = nethost.vms()
        if vm["state"] == "stale":
            break
        assert nethost.run("stop", "crash").returncode == 0
    else:
        pytest.fail("the launcher finished before it could be killed, five times")
    assert [t["name"] for t in vm["taps"]] in ([], [f"vif{vm['domid']}.0-emu"])
    done = nethost.run("recover")
    assert done.returncode == 0, done.stderr
    assert nethost.vms() == []
    assert links(netns) == ["br0", "lo"]
    assert leftovers() == []


UDEV_STAND_IN = Path(__file__).with_name("udev_stand_in.py")


def race_udev(netns: str, run: Path, writes_record: bool) -> tuple[dict[str, Any], str]:
    (run / "control").touch()  # a udevd "runs" (the stand-in): only the namespace says no
    done = subprocess.run(
        [*in_netns(netns), sys.executable, str(UDEV_STAND_IN), str(run), str(int(writes_record))],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout), done.stderr


def test_a_tap_address_udev_changes_is_set_back_once_udev_has_processed_the_tap(
    netns: str, tmp_path: Path
) -> None:
    seen, log = race_udev(netns, tmp_path, writes_record=True)
    assert seen["before"] == "fe:16:3e:4e:00:07"  # the launch's own address, set at once
    assert seen["settled"] is True  # it waited for udev's record, which came after 0.2 s
    assert seen["after"] == "fe:16:3e:4e:00:07"  # and then put back what udev had changed
    assert "udev set its address to 02:75:64:65:76:00; setting fe:16:3e:4e:00:07 again" in log
    assert seen["sees"] is False  # udevd hears only the init namespace: a launch here skips all
    assert links(netns) == ["br0", "lo"]


def test_udev_that_never_processes_a_tap_is_reported_and_the_address_still_set_back(
    netns: str, tmp_path: Path
) -> None:
    seen, log = race_udev(netns, tmp_path, writes_record=False)
    assert (seen["settled"], seen["after"]) == (False, "fe:16:3e:4e:00:07")
    assert "udev had not processed tap(s) vif7.0-emu after 1.0 s" in log
    assert links(netns) == ["br0", "lo"]


def test_no_udevd_means_no_wait(tmp_path: Path) -> None:
    assert netdev.udev_sees_devices_here(tmp_path) is False  # no control socket: no udevd
    assert netdev.udev_done(5, tmp_path) is False
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "n5").write_text("I:1\n")
    assert netdev.udev_done(5, tmp_path) is True
