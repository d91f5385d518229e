"""The admin guide's table of deliberate differences from xl, one test per row.

Each test shows what libxlutil does with the file or diskspec (through the dumpers) and that we
refuse it instead, saying why with the row's phrase.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.config import domain_config
from qemu_depriv.xl.disks import DISK_DIFFERENCES, parse_disk
from qemu_depriv.xl.syntax import DIFFERENCES, MAX_CONFIG_BYTES, parse_xlcfg_bytes, read_xlcfg
from tests.xl.conftest import DiskLibxlutil, Libxlutil

NAME = b'name = "web"\n'
EINVAL, ERANGE = 22, 34


def refusal(data: bytes) -> str:
    with pytest.raises(InvalidInput) as caught:
        domain_config(parse_xlcfg_bytes(data, "t.cfg"), "t.cfg")
    return caught.value.message


def test_row_octal_escape_xl_drops_it_silently_we_refuse(libxlutil: Libxlutil) -> None:
    data = NAME + b'extra = "console=hvc0 \\101 quiet"\n'
    assert libxlutil.read(data).settings["extra"].value == b"console=hvc0  quiet"
    message = refusal(data)
    assert message.startswith("t.cfg:2:9: escape \\1 in a string: ")
    assert DIFFERENCES["octal-escape"] in message


def test_row_nul_in_string_xl_aborts_we_refuse(libxlutil: Libxlutil) -> None:
    data = NAME + b'extra = "a\x00b"\n'
    xl = libxlutil.read(data)
    assert xl.verdict == "aborted"
    assert "Assertion" in xl.stderr
    message = refusal(data)
    assert message.startswith("t.cfg:2:9: NUL byte in a string: ")
    assert DIFFERENCES["nul-in-string"] in message


@pytest.mark.parametrize(
    ("text", "key", "where"),
    [
        (b"disk = '/srv/web.img,raw,xvda,w'\n", "disk", "list"),
        (b"serial = [ 'pty' ]\nvnclisten = [ '127.0.0.1' ]\n", "vnclisten", "string"),
        (b"type = [ 'hvm' ]\n", "type", "string"),
    ],
)
def test_row_wrong_kind_xl_ignores_the_setting_we_refuse(
    libxlutil: Libxlutil, text: bytes, key: str, where: str
) -> None:
    xl = libxlutil.read(NAME + text).settings[key]
    assert getattr(xl, where) == EINVAL  # xl_parse.c only reads the key when this returns 0
    message = refusal(NAME + text)
    assert f": {key} must be " in message
    assert DIFFERENCES["wrong-kind"] in message


@pytest.mark.parametrize(
    ("text", "errno"),
    [
        (b"memory = 09\n", EINVAL),
        (b"memory = 12ab\n", EINVAL),
        (b"vcpus = 'two'\n", EINVAL),
        (b"memory = 99999999999999999999\n", ERANGE),
        (b"memory = 512\nmemory += 512\n", EINVAL),
        (b"vnc = [ 1 ]\n", EINVAL),
    ],
)
def test_row_not_a_number_xl_ignores_it_and_uses_its_default_we_refuse(
    libxlutil: Libxlutil, text: bytes, errno: int
) -> None:
    xl = libxlutil.read(NAME + text)
    key = text.split(b" ", 1)[0].decode()
    assert xl.verdict == "accepted"
    assert xl.settings[key].long[0] == errno
    message = refusal(NAME + text)
    assert f": {key} must be a number: " in message
    assert DIFFERENCES["not-a-number"] in message


def test_row_nested_item_xl_stops_reading_the_list_there_we_refuse(libxlutil: Libxlutil) -> None:
    text = b"disk = [ '/a.img,raw,xvda,w', [ '/b.img,raw,xvdb,w' ], '/c.img,raw,xvdc,w' ]\n"
    xl = libxlutil.read(NAME + text).settings["disk"]
    assert xl.items == (b"/a.img,raw,xvda,w", None, b"/c.img,raw,xvdc,w")  # xl stops at None
    message = refusal(NAME + text)
    assert ": disk item 2 is a list: " in message
    assert DIFFERENCES["nested-item"] in message


def test_row_too_large_xl_reads_it_we_refuse_it_unread(
    libxlutil: Libxlutil, tmp_path: Path
) -> None:
    data = NAME + b"# padding\n" * (MAX_CONFIG_BYTES // 10)
    assert libxlutil.read(data).verdict == "accepted"
    path = tmp_path / "big.cfg"
    path.write_bytes(data)
    with pytest.raises(InvalidInput, match=DIFFERENCES["too-large"]):
        read_xlcfg(path)


def disk_refusal(spec: str) -> str:
    with pytest.raises(InvalidInput) as caught:
        parse_disk(spec, "t.cfg")
    return caught.value.message


@pytest.mark.parametrize(
    "spec", ["/srv/a.img,raw,nvme0n1,w", "/srv/a.img,raw,d0p1,w", "/srv/a.img,raw,xvda01,w"]
)
def test_row_disk_vdev_xl_reads_any_vdev_we_refuse_names_outside_xvd_hd_sd_and_numbers(
    disk_libxlutil: DiskLibxlutil, spec: str
) -> None:
    (xl,) = disk_libxlutil.read([spec])
    assert xl.accepted
    assert xl.fields["vdev"] == spec.split(",")[2]
    assert DISK_DIFFERENCES["disk-vdev"] in disk_refusal(spec)


@pytest.mark.parametrize(
    "spec",
    [
        ",raw,xvda,w",  # no target, not a CD-ROM: libxl cannot stat ""
        ",hdc:disk",  # format empty, not a CD-ROM
        "vdev=xvda,format=empty,target=/srv/a.img",
        "/srv/a.qcow2,qcow2,xvda,w,backendtype=phy",  # phy takes raw images only
        "vdev=xvda,backendtype=tap,target=/srv/a.img",  # no blktap in Xen 4.17
        "vdev=xvda,format=qcow2,script=block-drbd,target=r0",  # qdisk takes no script
    ],
)
def test_row_disk_libxl_refuses_xlu_disk_parse_accepts_we_refuse_when_reading(
    disk_libxlutil: DiskLibxlutil, spec: str
) -> None:
    (xl,) = disk_libxlutil.read([spec])
    assert xl.accepted
    assert DISK_DIFFERENCES["disk-libxl-refuses"] in disk_refusal(spec)


@pytest.mark.parametrize(
    ("spec", "field", "value"),
    [
        ("/srv/a.img,raw,xvda,w,colo", "colo", 1),
        ("vdev=xvda,specification=virtio,target=/srv/a.img", "specification", "virtio"),
    ],
)
def test_row_disk_unsupported_xl_reads_colo_and_virtio_disks_we_refuse(
    disk_libxlutil: DiskLibxlutil, spec: str, field: str, value: object
) -> None:
    (xl,) = disk_libxlutil.read([spec])
    assert xl.accepted
    assert xl.fields[field] == value
    assert DISK_DIFFERENCES["disk-unsupported"] in disk_refusal(spec)
