"""A VM's NICs as taps the launcher opens: names, addresses, command lines, the fd layer (pure)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.host.procfs import parse_tun_fdinfo
from qemu_depriv.isolation.layers import VmShape, check_layers, plan_layers
from qemu_depriv.qemu.cmdline import CommandLine, parse_command_line, refusals
from qemu_depriv.qemu.devices import nic_args
from qemu_depriv.qemu.taps import (
    IFNAME_MAX,
    TapPlan,
    command_line_taps,
    host_side_mac,
    opens_own_taps,
    standalone_taps,
    tap_name,
    with_fds,
)
from qemu_depriv.settings import LayerSettings
from qemu_depriv.xl.config import domain_config
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.syntax import parse_xlcfg
from tests.unit.test_cmdline import TABLE
from tests.unit.test_layers import (
    CGROUP_LIMITS,
    CGROUP_PATHS,
    HOST_NS,
    PATHS,
    RANGE,
    jailed_snapshot,
)


def config(vifs: str, name: str = "web") -> DomainConfig:
    text = f'name = "{name}"\ntype = "hvm"\nmemory = 64\nvif = [ {vifs} ]\n'
    return domain_config(parse_xlcfg(text), "web.cfg")


@pytest.mark.parametrize(
    ("domid", "devid", "vifname", "name"),
    [
        (7, 0, None, "vif7.0-emu"),  # Xen's own name
        (32751, 9, None, "vif32751.9-emu"),  # 14 bytes: still Xen's
        (32751, 10, None, "vif32751.10-emu"),  # 15 bytes: the most Linux takes
        (32751, 100, None, "vif32751.100-e"),  # 16 with -emu: shortened
        (5, 0, "web0", "web0-emu"),
        (5, 0, "a-long-vifname", "vq" + "0" * 13),  # placeholder: checked below
    ],
)
def test_taps_are_named_as_xen_names_the_emulated_nic_within_15_bytes(
    domid: int, devid: int, vifname: str | None, name: str
) -> None:
    got = tap_name(domid, devid, vifname)
    assert len(got.encode()) <= IFNAME_MAX
    if name.startswith("vq"):
        assert got.startswith("vq")
        assert len(got) == 15
        assert got == tap_name(domid, devid, vifname)
        assert got != tap_name(domid, devid, "a-long-vifnamf")
    else:
        assert got == name


def test_the_tap_gets_the_guests_mac_with_fe_first_so_the_bridge_never_takes_it() -> None:
    assert host_side_mac("00:16:3e:01:02:03") == "fe:16:3e:01:02:03"
    assert host_side_mac("fe:16:3e:01:02:03") == "fa:16:3e:01:02:03"  # never the guest's own


def test_two_vifs_that_would_share_a_tap_are_refused() -> None:
    with pytest.raises(InvalidInput, match="two vifs would both be tap web0-emu"):
        standalone_taps(config("'vifname=web0', 'vifname=web0'"), 1)


def test_each_emulated_vif_becomes_a_tap_a_netdev_by_fd_and_a_device_of_its_model() -> None:
    taps, args, warnings = standalone_taps(
        config("'mac=00:16:3e:00:00:01,bridge=br0,model=e1000,mtu=9000', 'type=vif', ''"), 4
    )
    assert [t.name for t in taps] == ["vif4.0-emu", "vif4.2-emu"]
    assert taps[0] == TapPlan("vif4.0-emu", "br0", "fe:16:3e:00:00:01", 9000)
    assert (taps[1].bridge, taps[1].mtu) == ("xenbr0", None)  # libxl's default bridge
    assert args[:4] == [
        "-netdev", "tap,id=net0,fd=@vif4.0-emu",
        "-device", "e1000,id=nic0,netdev=net0,mac=00:16:3e:00:00:01",
    ]  # fmt: skip
    assert args[5].startswith("tap,id=net2,fd=@vif4.2-emu")
    assert args[7].startswith("rtl8139,id=nic2,netdev=net2,mac=00:16:3e:")  # libxl's default
    assert warnings == [
        "vif 1 is type=vif (a PV NIC, which needs Xen): the VM gets no NIC for it standalone"
    ]


def test_a_vif_mtu_that_is_no_mtu_is_refused() -> None:
    with pytest.raises(InvalidInput, match="mtu 'big'"):
        config("'mtu=big'")


def test_descriptors_replace_the_placeholders_and_nothing_else() -> None:
    taps = [TapPlan("vif1.0-emu"), TapPlan("vif1.1-emu")]
    argv = ["-netdev", "tap,id=net0,fd=@vif1.0-emu", "-netdev", "tap,id=net1,fd=@vif1.1-emu",
            "-drive", "file=/a,,fd=@vif1.0-emu,if=ide"]  # fmt: skip
    assert with_fds(argv, taps, [7, 9]) == [
        "-netdev", "tap,id=net0,fd=7", "-netdev", "tap,id=net1,fd=9",
        "-drive", "file=/a,,fd=@vif1.0-emu,if=ide",  # a file name, not an option
    ]  # fmt: skip


def cmdline(*words: str) -> CommandLine:
    return parse_command_line(("qemu", *words), TABLE)


def test_run_hands_over_a_tap_named_by_ifname_and_drops_what_qemu_refuses_beside_fd() -> None:
    line, taps = command_line_taps(
        cmdline(
            "-netdev", "type=tap,id=net0,ifname=vif7.0-emu,br=xenbr0,script=no,downscript=no",
            "-nic", "tap,ifname=t1,model=virtio-net-pci,vnet_hdr=off,mac=52:54:00:00:00:01",
            "-netdev", "tap,id=n2,fd=3", "-netdev", "tap,id=n3,ifname=mq,queues=4,script=no",
            "-netdev", "tap,id=n4,ifname=q1,queues=1,vnet_hdr=no",
        )
    )  # fmt: skip
    assert taps == [
        TapPlan("vif7.0-emu", exclusive=False),
        TapPlan("t1", vnet_hdr=False, exclusive=False),
        TapPlan("q1", vnet_hdr=False, exclusive=False),
    ]
    assert line.argv()[1:] == [
        "-netdev", "type=tap,id=net0,fd=@vif7.0-emu",
        "-nic", "type=tap,model=virtio-net-pci,mac=52:54:00:00:00:01,fd=@t1",
        "-netdev", "tap,id=n2,fd=3",  # the user's own descriptor
        "-netdev", "tap,id=n3,ifname=mq,queues=4,script=no",  # multiqueue: QEMU opens it
        "-netdev", "type=tap,id=n4,fd=@q1",  # queues=1 is refused beside fd=
    ]  # fmt: skip
    assert opens_own_taps(line)
    assert not opens_own_taps(command_line_taps(cmdline("-netdev", "tap,id=a,ifname=t"))[0])
    # A tap its author passes by descriptor is one qemu-depriv did not open either.
    assert opens_own_taps(command_line_taps(cmdline("-netdev", "tap,id=a,fd=3"))[0])


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (("-netdev", "tap,id=a,ifname=bad,,name"), "is not 1 to 15"),
        (("-netdev", "tap,id=a,ifname=sixteen-bytes-xx"), "is not 1 to 15"),
        (("-netdev", "tap,id=a,ifname=t", "-netdev", "tap,id=b,ifname=t"), "named by two"),
        (("-netdev", "tap,id=a,fd=@t"), "fd=@ is how qemu-depriv marks"),
    ],
)
def test_tap_names_that_cannot_be_handed_over_are_refused(
    words: tuple[str, ...], message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        command_line_taps(cmdline(*words))


def test_a_tap_qemu_would_open_with_its_default_script_is_refused() -> None:
    (found,) = refusals(cmdline("-netdev", "tap,id=a"))
    assert "/etc/qemu-ifup" in found
    assert refusals(cmdline("-netdev", "tap,id=a,script=no,downscript=no")) == []
    assert refusals(cmdline("-netdev", "tap,id=a,ifname=t")) == []  # handed over: no script
    assert refusals(cmdline("-netdev", "tap,id=a,fd=3")) == []  # a descriptor: no script
    # Named, but multiqueue: QEMU opens it, and would run the default script.
    (multiqueue,) = refusals(cmdline("-netdev", "tap,id=a,ifname=t,queues=2"))
    assert "/etc/qemu-ifup" in multiqueue


def test_fdinfo_names_the_interface_a_tun_descriptor_is_attached_to() -> None:
    assert parse_tun_fdinfo(b"pos:\t0\nflags:\t02100002\nmnt_id:\t24\niff:\tvif1.0-emu\n") == (
        "vif1.0-emu"
    )
    assert parse_tun_fdinfo(b"pos:\t0\nflags:\t02\n") == ""


def tap_checks(
    taps: tuple[str, ...] | None, held: dict[int, str], fds: tuple[str, ...]
) -> dict[str, bool]:
    shape = VmShape("web", 64, network=taps is not None, taps=taps)
    plan = plan_layers(
        LayerSettings(), shape, RANGE, mode="standalone", domid=1, log=PATHS.log,
        chroot=PATHS.chroot,
    )  # fmt: skip
    snap = jailed_snapshot(fds=(*jailed_snapshot().fds, *fds), taps=held)
    checks = check_layers(
        plan, snap, host_namespaces=HOST_NS, cgroup_paths=CGROUP_PATHS,
        cgroup_limits=CGROUP_LIMITS,
    )  # fmt: skip
    return {c.layer: c.ok for c in checks if c.layer in ("fds", "taps")}


def test_the_fd_layer_allows_tun_only_as_the_taps_handed_over() -> None:
    tun = ("/dev/net/tun",)
    assert tap_checks(("vif1.0-emu",), {9: "vif1.0-emu"}, tun) == {"fds": True, "taps": True}
    # QEMU opened a tun of its own, or holds a tap not planned, or lacks the planned one:
    assert tap_checks(("vif1.0-emu",), {9: "vif1.0-emu", 10: ""}, tun * 2)["taps"] is False
    assert tap_checks(("vif1.0-emu",), {9: "other"}, tun)["taps"] is False
    assert tap_checks(("vif1.0-emu",), {}, ())["taps"] is False
    # A VM without NICs may hold no tun at all; a Xen device model opens its own.
    assert tap_checks((), {9: ""}, tun) == {"fds": True, "taps": False}
    assert tap_checks(None, {9: "vif1.0-emu"}, tun) == {"fds": True}


def test_the_plan_round_trips_through_the_store_form() -> None:
    tap = TapPlan("vif1.0-emu", "br0", "fe:16:3e:00:00:01", 1500, vnet_hdr=False)
    assert TapPlan.from_dict({**tap.as_dict(), "ifindex": 4, "created": True}) == tap
    assert replace(tap, mtu=None).as_dict()["mtu"] is None


def test_a_vifs_devid_names_its_nic_netdev_and_tap_as_libxl_does() -> None:
    """``devid=`` overrides the place in the list; libxl's hotplug expects vifDOMID.DEVID-emu."""
    web = config("'devid=3,bridge=br0,mac=00:16:3e:0:0:3', 'bridge=br0'")
    assert [vif.devid for vif in web.vifs] == [3, 1]
    assert nic_args(web, 5)[:4] == [
        "-device", "rtl8139,id=nic3,netdev=net3,mac=00:16:3e:00:00:03",
        "-netdev", "type=tap,id=net3,ifname=vif5.3-emu,br=br0,script=no,downscript=no",
    ]  # fmt: skip
    taps, args, _ = standalone_taps(web, 5)
    assert [t.name for t in taps] == ["vif5.3-emu", "vif5.1-emu"]
    assert args[:2] == ["-netdev", "tap,id=net3,fd=@vif5.3-emu"]


@pytest.mark.parametrize(
    ("vifs", "words"),
    [
        ("'devid=1', ''", "two vifs share a devid"),
        ("'devid=x'", "devid 'x' is not a number"),
        ("'devid=-1'", "devid '-1' is not a number"),
        ("'mac=00:16:3e:100:0:0'", "is not six hex pairs"),
    ],
)
def test_a_bad_devid_or_mac_is_refused(vifs: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        config(vifs)


def test_the_backends_own_vif_settings_and_flags_are_accepted_as_xl_accepts_them() -> None:
    web = config("'bridge=br0,trusted', 'untrusted,accel=x,forwarddev=eth0,script=vif-route'")
    assert [(vif.devid, vif.bridge) for vif in web.vifs] == [(0, "br0"), (1, "xenbr0")]


@pytest.mark.parametrize(
    ("keys", "memory", "maxmem"),
    [("", 32, None), ("maxmem = 2048\n", 2048, 2048), ("memory = 512\n", 512, None),
     ("memory = 512\nmaxmem = 1024\n", 512, 1024)],
)  # fmt: skip
def test_memory_defaults_as_xl_and_libxl_set_it(keys: str, memory: int, maxmem: int | None) -> None:
    """xl: memory sets the target and the maximum, maxmem the maximum; libxl: 32 MiB, and the
    target is the maximum when only that is set."""
    read = domain_config(parse_xlcfg(f'name = "web"\ntype = "hvm"\n{keys}'), "web.cfg")
    assert (read.memory, read.maxmem) == (memory, maxmem)
