"""parse_disk against libxlutil's xlu_disk_parse: the corpus's and Xen's diskspecs, a list in
the styles of real configs and of xl-disk-configuration(5), and generated specs.

Each spec goes through xldisk_dump (xlu_disk_parse, as xl reads one item of ``disk``) and
through parse_disk; ``tests.xl.disks.compare_disk`` fails on any disagreement that the admin
guide's table of deliberate differences does not explain, naming the spec, the field and both
values.  The session's terminal summary says how many specs were compared.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.syntax import parse_xlcfg_bytes
from tests.xl.conftest import DiskLibxlutil
from tests.xl.disk_strategies import diskspecs
from tests.xl.test_differential import OURS, examples

#: Specs in the styles found in real configs and in xl-disk-configuration(5), and corners of
#: the lexer.  Whether xl accepts each one is the library's to say, not this list's.
SPECS = (
    # the documented forms
    "/dev/vg/guest-volume,,hda",
    "/dev/vg/guest-volume,raw,hda,rw",
    "format=raw, vdev=hda, access=rw, target=/dev/vg/guest-volume",
    "raw:/dev/vg/guest-volume,hda,w",
    "/root/image.iso,,hdc,cdrom",
    "/root/image.iso,,hdc,devtype=cdrom",
    "format=raw, vdev=hdc, access=ro, devtype=cdrom, target=/root/image.iso",
    "raw:/root/image.iso,hdc:cdrom,ro",
    ",,hdc:cdrom,r",
    ",hdc:cdrom,r",
    ",raw,hdc,cdrom",
    "vdev=hdc,devtype=cdrom",
    "vdev=hdc,cdrom",
    "/dev/vg/web,raw,xvda,w,discard",
    "/dev/vg/web,raw,xvda,w,no-discard,direct-io-safe",
    # deprecated prefixes
    "phy:/dev/vg/web,xvda,w",
    "phy:/dev/mmcblk0p3,xvda,w",
    "file:/var/lib/xen/images/web.img,xvda,w",
    "file:/var/xen/legacy-nt.img,ioemu:hda,w",
    "tap:aio:/var/lib/xen/images/xm-pv.img,xvda,w",
    "tap2:aio:/srv/a.img,xvda,w",
    "aio:/srv/a.img,xvda,w",
    "tapdisk:aio:/srv/a.img,xvda,w",
    "tap:tapdisk:aio:/srv/a.img,xvda,w",
    "tap:qcow2:/srv/a.qcow2,xvda,w",
    "tap:vhd:/srv/a.vhd,xvda,w",
    "tap:qcow:/srv/a.qcow,xvda,w",
    "qcow2:/srv/a.qcow2,xvda,w",
    "qcow:/srv/a.qcow,xvda,w",
    "vhd:/srv/a.vhd,xvda,w",
    "raw:/srv/a.img,xvda,w",
    "ioemu:/srv/a.img,hda,w",
    "iscsi:iqn.2001-05.com.example:disk0,xvda,w",
    "nbd:nbd.example.org:10809,xvda,w",
    "enbd:host:2000,xvda,w",
    "drbd:r0,xvda,w",
    "drbd:r0,xvda,w,script=block-other",
    "qed:/srv/a.qed,xvda,w",
    "vmdk:/srv/a.vmdk,xvda,w",
    "phy:/dev/vg/web,raw,xvda,w",
    "phy:/dev/vg/web,xvda:cdrom,r",
    "phy:/dev/vg/web,xvda",
    # positional forms, two to five parts
    "/srv/a.img,xvda",
    "/srv/a.img,xvda,w",
    "/srv/a.img,raw,xvda",
    "/srv/a.qcow2,qcow2,xvdb",
    "/srv/a.img,raw,xvda,rw,extra",
    "/srv/a.img,raw,xvda,maybe",
    "/srv/a.img,vmdk,xvda",
    "/srv/a.img,,xvda,",
    "/srv/a.img,raw,xvda,,",
    ",raw,xvda,rw",
    ",,xvda",
    ",hdc:disk",
    ",hdc:floppy",
    "/srv/a.img",
    "",
    # keys
    "vdev=xvdc,access=ro,target=/srv/with,comma.img",
    "vdev=xvdc,target=/srv/with,comma:and:colons.img,",
    "target=/srv/a.img,vdev=xvda",
    "format=vhd,vdev=sda,target=/srv/b.vhd",
    "format=qcow2,vdev=xvda,access=rw,target=/var/lib/xen/images/uefi-vm.qcow2",
    "vdev=xvda,format=qed,target=/srv/a.qed",
    "vdev=xvda,format=empty,target=/srv/a.img",
    "format=raw,vdev=xvda,backendtype=phy,target=/dev/vg/web",
    "format=qcow2,vdev=xvda,backendtype=phy,target=/srv/a.qcow2",
    "format=raw,vdev=xvda,backendtype=qdisk,target=/srv/a.img",
    "format=raw,vdev=xvda,backendtype=tap,target=/srv/a.img",
    "format=raw,vdev=xvda,backendtype=standalone,target=/srv/a.img",
    "format=raw,vdev=xvda,backendtype=vbd,target=/srv/a.img",
    "format=raw,vdev=xvda,backend=driverdom,target=/dev/sdb",
    "vdev=xvda,script=block-iscsi,target=iqn.2001-05.com.example:disk0",
    "vdev=xvda,format=qcow2,script=block-drbd,target=r0",
    "vdev=xvda,backendtype=qdisk,script=block-drbd,target=r0",
    "vdev=xvda,devtype=disk,target=/srv/a.img",
    "vdev=xvda,devtype=floppy,target=/srv/a.img",
    "vdev=xvda,specification=xen,target=/srv/a.img",
    "vdev=xvda,specification=virtio,backendtype=standalone,target=/srv/a.img",
    "vdev=xvda,colo,colo-host=10.0.0.2,colo-port=9000,colo-export=e,active-disk=/a,"
    "hidden-disk=/h,target=/srv/a.img",
    "vdev=xvda,no-colo,target=/srv/a.img",
    "vdev=xvda,colo-port=0,target=/srv/a.img",
    "vdev=xvda,trusted,target=/srv/a.img",
    "/srv/a.img,raw,xvda,w,untrusted",
    "/srv/a.img,raw,xvda,w,grant_usage=1",
    "vdev=xvda,colour=red,target=/srv/a.img",
    "vdev=xvda,cache=none,target=/srv/a.img",
    "vdev=xvda,transport=mmio,target=/srv/a.img",
    "Format=raw,vdev=xvda,target=/a",
    "vdev=xvda,discard=1,target=/a",
    # respecified
    "vdev=xvda,vdev=xvdb,target=/a",
    "vdev=,vdev=xvdb,target=/a",
    "format=raw,format=qcow2,vdev=xvda,target=/a",
    "format=raw,format=raw,vdev=xvda,target=/a",
    "/a,raw,xvda,target=/b",
    ",raw,xvda,target=/b",
    "qcow2:/a,raw,xvda",
    "drbd:r0,xvda,w,iscsi:x",
    "drbd:r0,xvda,w,script=",
    "backendtype=phy,backendtype=qdisk,vdev=xvda,target=/a",
    # blanks and odd characters
    "  /srv/a.img, raw, xvda, w",
    "/srv/a.img ,raw ,xvda ,w",
    "/srv/a.img,raw,xvda,w ",
    "/srv/my disk.img,raw,xvda,w",
    "/srv/a.img,\traw,\txvda",
    "/srv/a.img,raw,\nxvda,w",
    "phy:\n/dev/vg/web,xvda,w",
    "/srv/\u00e9t\u00e9.img,raw,xvda,w",
    "/srv/a.img,raw,xvda;ls,w",
    "/srv/a.img,raw,nvme0n1,w",
    "/srv/a.img,raw,xvda1,w",
    "/srv/a.img,raw,xvda01,w",
    "/srv/a.img,raw,d0p1,w",
    "/srv/a.img,raw,51712,w",
    "/srv/a.img,raw,0768,w",
    "/srv/a.img,raw,hde,w",
    "/srv/a.img,raw,sdq,w",
    "=/srv/a.img,raw,xvda",
    "/srv/a=b.img,raw,xvda",
)


def _disk_specs(data: bytes) -> list[str]:
    """The string items of a config's ``disk``, as our reader (equal to xl's) reads it."""
    try:
        settings_ = parse_xlcfg_bytes(data)
    except InvalidInput:
        return []
    disk = settings_.get("disk")
    value = disk.value if disk is not None else ()
    items = value if isinstance(value, tuple) else (value,)
    return [item for item in items if isinstance(item, str)]


def test_the_hand_written_list_holds_at_least_60_specs() -> None:
    assert len(set(SPECS)) == len(SPECS) >= 60


def test_the_corpus_diskspecs_read_as_xlu_disk_parse_reads_them(
    disk_libxlutil: DiskLibxlutil,
) -> None:
    specs = [spec for path in sorted(OURS.glob("*.cfg")) for spec in _disk_specs(path.read_bytes())]
    assert len(specs) >= 30
    disk_libxlutil.compare("corpus", specs)


def test_xens_example_diskspecs_read_as_xlu_disk_parse_reads_them(
    disk_libxlutil: DiskLibxlutil,
) -> None:
    specs = [spec for path in examples() for spec in _disk_specs(path.read_bytes())]
    assert specs
    disk_libxlutil.compare("xen-examples", specs)


def test_the_hand_written_diskspecs_read_as_xlu_disk_parse_reads_them(
    disk_libxlutil: DiskLibxlutil,
) -> None:
    disk_libxlutil.compare("hand-written", list(SPECS))


@settings(
    max_examples=1500,
    deadline=None,
    database=None,  # nothing written under the working tree
    suppress_health_check=[HealthCheck.too_slow],
)
@given(diskspecs())
def test_generated_diskspecs_read_as_xlu_disk_parse_reads_them(
    disk_libxlutil: DiskLibxlutil, spec: str
) -> None:
    disk_libxlutil.compare("generated", [spec])
