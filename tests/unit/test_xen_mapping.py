"""xl.cfg keys mapped as xl reads them, and whether a domain needs a device model at all.

Sources: tools/xl/xl_parse.c (parse_config_data: type and builder, stdvga and vga, serial) and
libxl__need_xenpv_qemu in tools/libs/light/libxl_dm.c, in Xen 4.17.
"""

from __future__ import annotations

import pytest

from qemu_depriv.errors import InvalidInput, PolicyRefusal
from qemu_depriv.qemu.argv import guard_extra_args
from qemu_depriv.qemu.xen import device_model_need
from qemu_depriv.xl.config import domain_config
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.syntax import parse_xlcfg


def config(text: str) -> DomainConfig:
    return domain_config(parse_xlcfg('name = "web"\n' + text, "w.cfg"), "w.cfg")


def test_a_domain_without_type_or_builder_is_pv_as_on_x86() -> None:
    assert config("").type == "pv"
    assert config('builder = "hvm"').type == "hvm"
    assert config('builder = "generic"').type == "pv"
    assert config('type = "pvh"').type == "pvh"


def test_type_and_builder_that_disagree_are_refused() -> None:
    with pytest.raises(InvalidInput, match="disagree"):
        config('type = "pv"\nbuilder = "hvm"')


def test_numbers_in_quotes_are_read_as_xl_reads_them() -> None:
    assert config('memory = "0x200"\nvcpus = "2"').memory == 512
    with pytest.raises(InvalidInput, match="memory must be a number"):
        config('memory = "lots"')


def test_stdvga_and_vga_choose_the_card() -> None:
    assert config('type = "hvm"').vga_kind == "cirrus"
    assert config('type = "hvm"\nstdvga = 1').vga_kind == "stdvga"
    assert config('type = "hvm"\nstdvga = 1\nvga = "none"').vga_kind == "none"
    assert config('type = "hvm"\nstdvga = 1').video_memory == 16


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('type = "hvm"\nstdvga = 1\nvideoram = 8', "below the 16 MiB"),
        ('type = "hvm"\nmemory = 8', "leaves no guest memory"),
        ("memory = 512\nmaxmem = 256", "maxmem 256"),
        ("vcpus = 4\nmaxvcpus = 2", "maxvcpus 2"),
        ('uuid = "not-a-uuid"', "uuid"),
        ('boot = "c d"', "boot"),
        ('vnclisten = "0.0.0.0,password=on"', "vnclisten"),
        ('vga = "matrox"', "vga 'matrox'"),
        ('device_model_version = "qemu-xen-9"', "device_model_version"),
        ("disk = [ '/a,raw,xvda', '/b,raw,xvda' ]", "share a vdev"),
        ("serial = [ [ 'pty' ] ]", "serial item 1 is a list"),
    ],
)
def test_bad_values_are_invalid_input(text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        config(text)


@pytest.mark.parametrize(
    ("text", "needed", "words"),
    [
        ('type = "hvm"', True, "HVM"),
        ("disk = [ '/dev/vg/pv,raw,xvda,w' ]", False, "needs no device model"),
        ("type = \"pvh\"\ndisk = [ '/srv/pvh.img,raw,xvda,w' ]", False, "needs no device model"),
        ("disk = [ '/srv/pv.qcow2,qcow2,xvda,w' ]", True, "disk xvda on the qdisk backend"),
        ("disk = [ 'backendtype=qdisk,vdev=xvda,target=/srv/pv.img' ]", True, "qdisk"),
        ("vfb = [ 'vnc=1' ]", True, "framebuffer"),
        ("vnc = 1", True, "framebuffer"),
        ('type = "pvh"\nvnc = 1', False, "needs no device model"),
        ("p9 = [ 'tag=share,path=/srv/share' ]", True, "9pfs"),
        ("channel = [ 'name=org.qemu.guest_agent.0,connection=pty' ]", True, "channels"),
        ("usbctrl = [ 'type=qusb,version=2' ]", True, "USB"),
    ],
)
def test_pv_and_pvh_need_a_device_model_only_for_qemu_backends(
    text: str, *, needed: bool, words: str
) -> None:
    need, reason = device_model_need(config(text))
    assert need is needed
    assert words in reason


@pytest.mark.parametrize("arg", ["-runas", "-run-with", "-chroot", "-sandbox", "-daemonize"])
def test_device_model_args_cannot_undo_the_isolation_under_restrict(arg: str) -> None:
    domain = config(f'type = "hvm"\ndevice_model_args = [ "{arg}", "off" ]')
    with pytest.raises(PolicyRefusal, match=arg):
        guard_extra_args(domain, restrict=True)
    guard_extra_args(domain, restrict=False)
