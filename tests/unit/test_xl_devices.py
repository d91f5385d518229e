"""Disk and vif specs as xl-disk-configuration(5) and xl-network-configuration(5) give them.

Every expected diskspec reading here was read from Xen 4.17's libxlutil (xlu_disk_parse) by
tests/xl's xldisk_dump; tests/xl holds parse_disk against the library itself.
"""

from __future__ import annotations

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.qemu.devices import disk_args, disk_backend, disk_format
from qemu_depriv.xl.config import domain_config
from qemu_depriv.xl.disks import Disk, disk_number, libxl_backend, parse_disk
from qemu_depriv.xl.nics import derived_mac, parse_vif
from qemu_depriv.xl.syntax import parse_xlcfg


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
        (
            "format=raw, vdev=hda, access=rw, target=/dev/vg_vms/win10",
            ("/dev/vg_vms/win10", "raw", "hda", False, False),
        ),
        ("file:/img,ioemu:hda,w", ("/img", "raw", "hda", False, False)),
        (",hdc:cdrom,r", ("", "empty", "hdc", True, True)),
        ("tap:qcow2:/srv/a.qcow2,xvda,w", ("/srv/a.qcow2", "qcow2", "xvda", False, False)),
        ("/srv/a.img,raw,xvda,w,", ("/srv/a.img", "raw", "xvda", False, False)),
        ("/srv/a.img,raw,xvda,", ("/srv/a.img", "raw", "xvda", False, False)),  # empty is rw
        ("vdev=,vdev=xvdb,target=/a", ("/a", "raw", "xvdb", False, False)),  # "" is overwritten
        ("/srv/a.img,raw,xvda=", ("/srv/a.img", "raw", "xvda", False, False)),  # a stray last =
    ],
)
def test_diskspecs_are_read_positionally_or_by_key(
    spec: str, expected: tuple[str, str, str, bool, bool]
) -> None:
    disk = parse_disk(spec)
    assert (disk.target, disk.format, disk.vdev, disk.readonly, disk.cdrom) == expected


def test_prefixes_set_a_format_or_a_script_never_a_backend() -> None:
    assert parse_disk("phy:/dev/vg/web,xvda,w").backendtype is None
    assert parse_disk("tap:aio:/srv/a.img,xvda,w").backendtype is None
    assert parse_disk("vhd:/srv/a.vhd,xvda,w").format == "vhd"
    drbd = parse_disk("drbd:r0,xvda,w")
    assert (drbd.target, drbd.script, drbd.format) == ("r0", "block-drbd", "raw")


def test_blanks_are_skipped_before_a_parameter_not_after_it() -> None:
    assert parse_disk("  /srv/a.img, raw,\txvda").target == "/srv/a.img"
    with pytest.raises(InvalidInput, match="unknown value for access: near 'w '"):
        parse_disk("/srv/a.img,raw,xvda,w ")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("/srv/a.img", "no vdev specified"),
        ("/srv/a.img,raw,xvda,rw,extra", "too many positional parameters"),
        ("/srv/a.img,raw,xvda,maybe", "unknown value for access"),
        ("/srv/a.img,xvda,w", "unknown value for format: near 'xvda'"),  # no prefix: a format
        ("format=vmdk,vdev=xvda,target=/a", "unknown value for format"),
        ("qed:/srv/a.qed,xvda", "unknown deprecated disk prefix: near 'qed:'"),
        ("colour=red,vdev=xvda,target=/a", "unknown parameter: near 'colour=r'"),
        ("trusted,/srv/a.img,raw,xvda", "unknown value for format: near '/srv/a.img'"),
        ("vdev=xvda,vdev=xvdb,target=/a", "vdev respecified"),
        ("drbd:r0,xvda,w,script=x", "script respecified"),
        ("/srv/a.img,raw,xvda:floppy", "unknown deprecated type"),
        ("/srv/a.img,raw,xvda,=x", "bad disk syntax: near '=x'"),
        ("/srv/a.img,raw,xvda=\n", "unknown parameter"),
        ("/srv/a.img,raw,xvda;ls", "is not a disk name"),
        ("/srv/a.img,raw,nvme0n1", "is not a disk name"),
        ("/srv/a.img,raw,xvda01", "is not a disk name"),
        (",raw,xvda,rw", "no target"),
        ("/srv/a.qcow2,qcow2,xvda,backendtype=phy", "no backend fits"),
        ("vdev=xvda,backendtype=tap,target=/a", "no backend fits"),
        ("/srv/a.img,raw,xvda,colo", "COLO"),
        ("vdev=xvda,specification=virtio,target=/a", "virtio"),
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
        ("xvda01", None),
        ("0768", None),
        ("2147483648", None),
        ("\u0661", None),
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
    assert disk_backend(disk("raw", script="block-drbd")) == "phy"
    assert disk_backend(disk("qcow2")) == "qdisk"
    assert disk_backend(disk("raw", backendtype="qdisk")) == "qdisk"
    assert disk_format(disk("vhd")) == "vpc"
    assert disk_format(disk("raw", backendtype="qdisk")) == "raw"


def test_an_empty_cdrom_is_on_qdisk_as_libxl_4_17_puts_it() -> None:
    assert disk_backend(parse_disk(",hdc:cdrom,r")) == "qdisk"


@pytest.mark.parametrize(
    "made",
    [disk("qcow2", script="block-drbd"), disk("qcow2", "phy"), disk("raw", "tap"),
     disk("raw", "standalone"), disk("raw", "qdisk", "block-iscsi")],
)  # fmt: skip
def test_a_disk_libxl_finds_no_backend_for_is_invalid_input(made: Disk) -> None:
    assert libxl_backend(made) is None
    with pytest.raises(InvalidInput, match="libxl finds no backend"):
        disk_backend(made)


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


@pytest.mark.parametrize(
    ("spec", "option"),
    [
        ("vdev=hda,target=/srv/a,format=qcow2,b.img", "file=/srv/a,,format=qcow2,,b.img,if=ide"),
        ("vdev=hdc,devtype=cdrom,target=/srv/x,y.iso", "id=ide-5632,file=/srv/x,,y.iso,format="),
        ("vdev=sda,target=/srv/a,,b", "file=/srv/a,,,,b,id=scsi0-hd0"),
    ],
)
def test_a_comma_in_a_target_cannot_add_options_to_qemus_drive(spec: str, option: str) -> None:
    config = domain_config(parse_xlcfg(f'name = "w"\ntype = "hvm"\ndisk = [ "{spec}" ]\n'), "t")
    args, _ = disk_args(config)
    assert any(option in arg for arg in args), args
