"""Disk and network device specs of xl.cfg (pure).

They are read as xl-disk-configuration(5) and xl-network-configuration(5) describe them and as
libxlu and libxl read them.

A diskspec is comma-separated: positional ``target, format, vdev, access`` (or the legacy
three-part ``target, vdev, access``), ``key=value`` settings (``target=`` takes the rest of
the string, commas included), and flags (``cdrom``, ``discard`` ...).  A vifspec is
comma-separated ``key=value`` settings.

Values that end up inside QEMU options are checked here: a bridge, model or vdev name with a
comma in it would smuggle extra options into QEMU's command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qemu_depriv.errors import InvalidInput

DISK_FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty")
ACCESS = {"r": True, "ro": True, "w": False, "rw": False}
BACKENDS = ("phy", "qdisk", "tap", "standalone")
DISK_FLAGS = frozenset({"direct-io-safe", "discard", "no-discard", "trusted", "untrusted"})
#: Legacy target prefixes (xl-disk-configuration(5), "Deprecated parameters").
_TARGET_PREFIXES = {
    "phy:": ("phy", None),
    "file:": (None, "raw"),
    "raw:": (None, "raw"),
    "qcow:": ("qdisk", "qcow"),
    "qcow2:": ("qdisk", "qcow2"),
    "vhd:": ("qdisk", "vhd"),
    "tap:aio:": ("tap", "raw"),
    "tap2:aio:": ("tap", "raw"),
    "aio:": ("tap", "raw"),
    "tap:qcow2:": ("qdisk", "qcow2"),
    "tap:vhd:": ("qdisk", "vhd"),
}
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}\Z")
_VIF_KEYS = frozenset(
    {"mac", "bridge", "model", "type", "ip", "script", "vifname", "backend", "rate",
     "gatewaydev", "netdev", "devid", "mtu", "trusted", "untrusted"}
)  # fmt: skip


@dataclass(frozen=True)
class Disk:
    """One diskspec."""

    target: str
    format: str
    vdev: str
    readonly: bool
    cdrom: bool
    backendtype: str | None
    script: str | None


@dataclass(frozen=True)
class Vif:
    """One vifspec (devid is its position in the list)."""

    devid: int
    mac: str | None
    bridge: str
    model: str
    type: str
    vifname: str | None


def _bad(source: str, what: str, spec: str, why: str) -> InvalidInput:
    return InvalidInput(f"{source}: {what} {spec!r}: {why}")


_DISK_KEYS = frozenset(
    {"format", "vdev", "access", "devtype", "backendtype", "backend", "script", "specification"}
)


def _split_disk(spec: str, source: str) -> tuple[dict[str, str], set[str], list[str]]:
    """Split a diskspec into its settings, flags and positional parameters."""
    settings: dict[str, str] = {}
    flags: set[str] = set()
    positional: list[str] = []
    rest = spec
    while rest:
        if rest.startswith("target="):
            settings["target"] = rest[len("target=") :]
            break
        item, _, rest = rest.partition(",")
        key, equals, value = item.strip().partition("=")
        if equals:
            if key not in _DISK_KEYS:
                raise _bad(source, "disk", spec, f"unknown setting {key!r}")
            settings[key] = value
        elif key in DISK_FLAGS or key == "cdrom":
            flags.add(key)
        else:
            positional.append(key)
    if len(positional) == 3 and positional[1] and positional[1] not in DISK_FORMATS:
        positional.insert(1, "")  # the legacy form: target, vdev, access
    names = ("target", "format", "vdev", "access")
    if len(positional) > len(names):
        raise _bad(source, "disk", spec, "more than four positional parameters")
    for name, value in zip(names, positional, strict=False):
        if value:
            settings.setdefault(name, value)
    vdev = settings.get("vdev", "")
    if vdev.endswith(":cdrom"):  # the legacy "hdc:cdrom"
        settings["vdev"] = vdev[: -len(":cdrom")]
        flags.add("cdrom")
    return settings, flags, positional


def parse_disk(spec: str, source: str = "<config>") -> Disk:
    """Parse one diskspec.

    Raises:
        InvalidInput: no vdev, an unknown format, access or key, or unsafe characters.
    """
    settings, flags, _ = _split_disk(spec, source)
    target = settings.get("target", "")
    backendtype = settings.get("backendtype")
    fmt = settings.get("format")
    for prefix, (backend, prefixed_format) in _TARGET_PREFIXES.items():
        if target.startswith(prefix):
            target = target[len(prefix) :]
            backendtype = backendtype or backend
            fmt = fmt or prefixed_format
            break
    cdrom = "cdrom" in flags or settings.get("devtype") == "cdrom"
    fmt = fmt or ("empty" if cdrom and not target else "raw")
    access = settings.get("access", "rw")
    vdev = settings.get("vdev", "")
    problem = (
        f"unknown format {fmt!r}: use one of {', '.join(DISK_FORMATS)}"
        if fmt not in DISK_FORMATS
        else f"unknown access {access!r}: use r, ro, w or rw"
        if access not in ACCESS
        else f"unknown backendtype {backendtype!r}"
        if backendtype is not None and backendtype not in BACKENDS
        else "no vdev: name the guest's device, such as xvda or hdc"
        if not vdev
        else f"vdev {vdev!r} is not a disk name such as xvda, hda or sdb"
        if not _SAFE_NAME.match(vdev) or disk_number(vdev) is None
        else "no target: give the file or device that backs the disk"
        if not target and not cdrom
        else None
    )
    if problem:
        raise _bad(source, "disk", spec, problem)
    return Disk(
        target=target,
        format=fmt,
        vdev=vdev,
        readonly=ACCESS[access] or cdrom,
        cdrom=cdrom,
        backendtype=backendtype,
        script=settings.get("script"),
    )


def _letters(text: str) -> int:
    """Map xvda to 0, xvdz to 25, xvdaa to 26 (libxl's bijective base 26)."""
    number = 0
    for char in text:
        number = number * 26 + (ord(char) - ord("a") + 1)
    return number - 1


def _xvd(disk: int, partition: int) -> int | None:
    if disk < 16 and partition < 16:
        return (202 << 8) | (disk << 4) | partition
    if disk < (1 << 20) and partition < 256:
        return (1 << 28) | (disk << 8) | partition
    return None


def _hd(disk: int, partition: int) -> int | None:
    if disk > 3 or partition > 63:
        return None
    return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | partition


def _sd(disk: int, partition: int) -> int | None:
    return None if disk > 15 or partition > 15 else (8 << 8) | (disk << 4) | partition


_FAMILIES = {"xvd": _xvd, "hd": _hd, "sd": _sd}


def disk_number(vdev: str) -> tuple[int, int, int] | None:
    """Return (devnum, disk index, partition) for a vdev, as libxl__device_disk_dev_number does.

    None when the name is not one libxl knows (xvd*, hd*, sd*, or a plain number).
    """
    if vdev.isdigit():
        return int(vdev), 0, 0
    match = re.fullmatch(r"(xvd|hd|sd)([a-z]+)([0-9]*)", vdev)
    if match is None:
        return None
    family, letters, part_text = match.groups()
    disk, partition = _letters(letters), int(part_text or 0)
    devnum = _FAMILIES[family](disk, partition)
    return None if devnum is None else (devnum, disk, partition)


def parse_vif(spec: str, devid: int, source: str = "<config>") -> Vif:
    """Parse one vifspec.

    Raises:
        InvalidInput: an unknown key, a malformed MAC, or unsafe characters in a name.
    """
    settings: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        key, equals, value = item.partition("=")
        if not equals or key not in _VIF_KEYS:
            raise _bad(source, "vif", spec, f"unknown setting {item!r}")
        settings[key] = value
    mac = settings.get("mac")
    if mac is not None and not _MAC.match(mac):
        raise _bad(
            source, "vif", spec, f"mac {mac!r} is not six hex pairs such as 00:16:3e:01:02:03"
        )
    for key in ("bridge", "model", "vifname"):
        if key in settings and not _SAFE_NAME.match(settings[key]):
            raise _bad(
                source,
                "vif",
                spec,
                f"{key} {settings[key]!r} has characters outside A-Z a-z 0-9 _ . -",
            )
    vif_type = settings.get("type", "ioemu")
    if vif_type not in ("ioemu", "vif"):
        raise _bad(source, "vif", spec, f"type {vif_type!r} is unknown: use ioemu or vif")
    return Vif(
        devid=devid,
        mac=mac.lower() if mac else None,
        bridge=settings.get("bridge", "xenbr0"),
        model=settings.get("model", "rtl8139"),
        type=vif_type,
        vifname=settings.get("vifname"),
    )


def derived_mac(domain: str, devid: int) -> str:
    """A stable MAC in Xen's 00:16:3e prefix for a vif that names none.

    libxl picks random bytes at every start; a stable address derived from the domain name
    and devid keeps the guest's NIC the same across restarts.
    """
    import hashlib  # noqa: PLC0415 - only Xen NICs without a mac need it

    digest = hashlib.sha256(f"{domain}/{devid}".encode()).digest()
    return f"00:16:3e:{digest[0] & 0x7F:02x}:{digest[1]:02x}:{digest[2]:02x}"
