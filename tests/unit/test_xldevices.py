"""Disk and vif specs as xl-disk-configuration(5) and xl-network-configuration(5) give them."""

from __future__ import annotations

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.qemu.devices import disk_backend, disk_format
from qemu_depriv.xldevices import Disk, derived_mac, disk_number, parse_disk, parse_vif


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("/dev/vg/guest-volume,raw,xvda,rw", ("/dev/vg/guest-volume", "raw", "xvda", False, False)),
        ("phy:/dev/vg/web,xvda,w", ("/dev/vg/web", "raw", "xvda", False, False)),
        ("/srv/a.qcow2,qcow2,xvdb", ("/srv/a.qcow2", "qcow2", "xvdb", False, False)),
        ("file:/srv/a.iso,hdc:cdrom,r", ("/srv/a.iso", "raw", "hdc", True, True)),
        (",,hdc,cdrom", ("", "empty", "hdc", True, True)),
        (
            "vdev=xvdc,access=ro,target=/srv/with,comma.img",
            ("/srv/with,comma.img", "raw", "xvdc", True, False),
        ),
        ("format=vhd,vdev=sda,target=/srv/b.vhd", ("/srv/b.vhd", "vhd", "sda", False, False)),
    ],
)
def test_diskspecs_are_read_positionally_or_by_key(
    spec: str, expected: tuple[str, str, str, bool, bool]
) -> None:
    disk = parse_disk(spec)
    assert (disk.target, disk.format, disk.vdev, disk.readonly, disk.cdrom) == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("/srv/a.img", "no vdev"),
        ("/srv/a.img,raw,xvda,rw,extra", "more than four"),
        ("/srv/a.img,raw,xvda,maybe", "unknown access"),
        ("/srv/a.img,vmdk,xvda", "unknown access 'xvda'"),  # the legacy target,vdev,access
        ("format=vmdk,vdev=xvda,target=/a", "unknown format"),
        ("/srv/a.img,raw,xvda;ls", "is not a disk name"),
        ("/srv/a.img,raw,nvme0n1", "is not a disk name"),
        ("colour=red,vdev=xvda,target=/a", "unknown setting 'colour'"),
        (",raw,xvda,rw", "no target"),
    ],
)
def test_bad_diskspecs_are_invalid_input(spec: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        parse_disk(spec, "d.cfg")


@pytest.mark.parametrize(
    ("vdev", "number"),
    [
        ("xvda", (51712, 0, 0)),
        ("xvdc", (51744, 2, 0)),
        ("xvda1", (51713, 0, 1)),
        ("xvdq", ((1 << 28) | (16 << 8), 16, 0)),
        ("xvdaa", ((1 << 28) | (26 << 8), 26, 0)),
        ("hda", (768, 0, 0)),
        ("hdb", (832, 1, 0)),
        ("hdc", (5632, 2, 0)),
        ("sda", (2048, 0, 0)),
        ("hde", None),
        ("vda", None),
    ],
)
def test_device_numbers_are_libxls(vdev: str, number: tuple[int, int, int] | None) -> None:
    assert disk_number(vdev) == number


def disk(fmt: str = "raw", backendtype: str | None = None, script: str | None = None) -> Disk:
    return Disk(
        "/x", fmt, "xvda", readonly=False, cdrom=False, backendtype=backendtype, script=script
    )


def test_raw_disks_use_phy_and_images_use_qdisk_unless_told() -> None:
    assert disk_backend(disk("raw")) == "phy"
    assert disk_backend(disk("qcow2")) == "qdisk"
    assert disk_backend(disk("qcow2", script="block-drbd")) == "phy"
    assert disk_backend(disk("raw", backendtype="qdisk")) == "qdisk"
    assert disk_format(disk("vhd")) == "vpc"
    assert disk_format(disk("raw", backendtype="qdisk")) == "raw"


def test_vifspecs_default_as_libxl_does() -> None:
    vif = parse_vif("", 0)
    assert (vif.bridge, vif.model, vif.type, vif.mac) == ("xenbr0", "rtl8139", "ioemu", None)
    vif = parse_vif("mac=00:16:3E:AA:bb:CC, bridge=br0, model=e1000, type=vif", 3)
    assert (vif.devid, vif.mac, vif.bridge, vif.model, vif.type) == (
        3, "00:16:3e:aa:bb:cc", "br0", "e1000", "vif",
    )  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("mac=00:16:3e:aa:bb", "mac"),
        ("model=e1000,romfile=/etc/shadow", "unknown setting"),
        ("bridge=br0,,model=e1000;x", "model 'e1000;x'"),
        ("type=tap", "type 'tap'"),
        ("bridge", "unknown setting 'bridge'"),
    ],
)
def test_bad_vifspecs_are_invalid_input(spec: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        parse_vif(spec, 0, "v.cfg")


def test_a_derived_mac_is_stable_local_to_xen_and_differs_per_nic() -> None:
    mac = derived_mac("web", 0)
    assert mac == derived_mac("web", 0)
    assert mac.startswith("00:16:3e:")
    assert int(mac.split(":")[3], 16) < 0x80
    assert len({derived_mac("web", n) for n in range(8)} | {derived_mac("db", 0)}) == 9
