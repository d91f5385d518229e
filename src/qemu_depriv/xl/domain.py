"""A domain: its domid, its name, and the validated value its config file describes (pure).

Each check raises :class:`~qemu_depriv.errors.InvalidInput` with a message that names the bad
value and says what would be accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from qemu_depriv.accounts.names import CONTROL, validate_user_name
from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.disks import Disk
from qemu_depriv.xl.nics import Vif
from qemu_depriv.xl.syntax import DIFFERENCES

#: Domid 0 is the host (dom0); Xen reserves 32752 (DOMID_FIRST_RESERVED) and above.
DOMID_MIN = 1
DOMID_MAX = 32751

#: xenstore holds at most 4096 bytes in one value, the domain's name among them: libxl
#: cannot create a domain with a longer name, and sets no limit of its own.
DOMAIN_NAME_MAX = 4000


def validate_domid(value: int | str) -> int:
    """Return the domid as an int, or raise InvalidInput when it is not 1-32751."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise InvalidInput(
            f"domid {value!r} is not a number: give a whole number from {DOMID_MIN} to {DOMID_MAX}"
        )
    domid = int(text)
    if not DOMID_MIN <= domid <= DOMID_MAX:
        why = "0 is the host (dom0)" if domid == 0 else "Xen reserves 32752 and above"
        raise InvalidInput(f"domid {domid} is out of range ({why}): use {DOMID_MIN}-{DOMID_MAX}")
    return domid


def validate_domain_name(name: str) -> str:
    """Return the domain name, or raise InvalidInput.

    Any name xl accepts is accepted (dots, upper case, spaces ...), with two deliberate
    exceptions: control characters (they would forge lines in logs and listings) and names of
    digits only (``stop 12`` means domid 12, as in xl).  Its only limit is xenstore's.
    """
    if not name:
        raise InvalidInput("domain name is empty: give the domain a name")
    if len(name.encode("utf-8", "surrogateescape")) > DOMAIN_NAME_MAX:
        raise InvalidInput(
            f"domain name {name[:20]!r}... is {len(name)} characters long: xenstore holds at "
            f"most {DOMAIN_NAME_MAX}"
        )
    if CONTROL.search(name):
        raise InvalidInput(f"domain name {name!r} holds a control character: rename the domain")
    if name.isdigit():
        raise InvalidInput(
            f"domain name {name!r} is all digits and would be taken for a domid: add a letter to it"
        )
    return name


DOMAIN_TYPES = ("hvm", "pv", "pvh")
#: How a device model runs: QEMU as the whole VM, or as a Xen domain's device model.
MODES = ("standalone", "xen")
MEMORY_MIN_MIB = 1
MEMORY_MAX_MIB = 16 * 1024 * 1024
VCPUS_MAX = 512
ACCELERATORS = ("tcg", "kvm")
VGA_KINDS = ("stdvga", "cirrus", "none", "qxl")
#: libxl's minimum (and default) video memory per kind, in MiB.
VIDEORAM_MIN = {"stdvga": 16, "cirrus": 8, "qxl": 128, "none": 0}
DM_VERSIONS = ("qemu-xen", "qemu-xen-traditional")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z")
_LISTEN = re.compile(r"[A-Za-z0-9_.:\[\]-]+\Z")


@dataclass(frozen=True)
class DomainConfig:
    """One domain, as its config file describes it (validated on construction).

    Sizes are in MiB, as in xl.cfg.  ``device_model_user`` is the explicit tier and
    ``dm_restrict`` the restrict setting when the file gives one.  ``accel`` asks a standalone
    VM for KVM.  Devices come parsed (:mod:`qemu_depriv.xl.disks`, :mod:`qemu_depriv.xl.nics`);
    ``vfbs``, ``p9s``, ``channels`` and ``usbctrls`` are kept as written: they only decide
    whether a PV or PVH domain needs a device model.
    """

    name: str
    type: str = "hvm"
    #: MiB; libxl's default (its max_memkb), as for a config that sets neither key.
    memory: int = 32
    maxmem: int | None = None
    vcpus: int = 1
    maxvcpus: int | None = None
    device_model_user: str | None = None
    dm_restrict: bool | None = None
    device_model_version: str | None = None
    device_model_override: str | None = None
    device_model_args: tuple[str, ...] = ()
    device_model_args_hvm: tuple[str, ...] = ()
    vnc: bool | None = None
    vnclisten: str | None = None
    vncdisplay: int | None = None
    vncunused: bool | None = None
    sdl: bool = False
    serial: tuple[str, ...] = ()
    boot: str | None = None
    vga: str | None = None
    videoram: int | None = None
    uuid: str | None = None
    disks: tuple[Disk, ...] = ()
    vifs: tuple[Vif, ...] = ()
    vfbs: tuple[str, ...] = ()
    p9s: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    usbctrls: tuple[str, ...] = ()
    accel: str | None = None
    source: str = "<config>"
    #: Where each key was set (``FILE:LINE:COL``), for the messages; not part of the value.
    positions: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def vga_kind(self) -> str:
        """The emulated graphics card: libxl's default is cirrus."""
        return self.vga or "cirrus"

    @property
    def video_memory(self) -> int:
        """Video memory in MiB: the configured amount, else the kind's default."""
        return self.videoram if self.videoram is not None else VIDEORAM_MIN.get(self.vga_kind, 0)

    @property
    def max_vcpus(self) -> int:
        """The most vcpus the domain can have: maxvcpus, else vcpus."""
        return self.maxvcpus if self.maxvcpus is not None else self.vcpus

    @property
    def max_memory(self) -> int:
        """The most memory the domain can have, in MiB: maxmem, else memory."""
        return self.maxmem if self.maxmem is not None else self.memory

    def __post_init__(self) -> None:
        for key, check in (("name", lambda: validate_domain_name(self.name)),
                           ("device_model_user", self._check_user)):  # fmt: skip
            try:
                check()
            except InvalidInput as exc:
                raise InvalidInput(f"{self._where(key)}: {exc.message}") from exc
        for broken, key, message in self._problems():
            if broken:
                raise InvalidInput(f"{self._where(key)}: {message}")

    def _check_user(self) -> None:
        if self.device_model_user is not None:
            validate_user_name(self.device_model_user, what="device_model_user")

    def _where(self, key: str) -> str:
        return self.positions.get(key, self.source)

    def _problems(self) -> list[tuple[bool, str, str]]:
        """Every check, evaluated together: none may fail on a value another check refuses."""
        video_min = VIDEORAM_MIN.get(self.vga_kind, 0)
        memory_range = f"use {MEMORY_MIN_MIB} to {MEMORY_MAX_MIB} (16 TiB)"
        return [
            (self.type not in DOMAIN_TYPES,
             "type",
             f"type {self.type!r} is unknown: use one of {', '.join(DOMAIN_TYPES)}"),
            (not MEMORY_MIN_MIB <= self.memory <= MEMORY_MAX_MIB,
             "memory",
             f"memory {self.memory} MiB is out of range: {memory_range}"),
            (self.maxmem is not None and not self.memory <= self.maxmem <= MEMORY_MAX_MIB,
             "maxmem",
             f"maxmem {self.maxmem} MiB must be at least memory ({self.memory}) and at most "
             f"{MEMORY_MAX_MIB}"),
            (not 1 <= self.vcpus <= VCPUS_MAX,
             "vcpus",
             f"vcpus {self.vcpus} is out of range: use 1 to {VCPUS_MAX}"),
            (self.maxvcpus is not None and not self.vcpus <= self.maxvcpus <= VCPUS_MAX,
             "maxvcpus",
             f"maxvcpus {self.maxvcpus} must be at least vcpus ({self.vcpus}) and at most "
             f"{VCPUS_MAX}"),
            (self.accel is not None and self.accel not in ACCELERATORS,
             "accel",
             f"accel {self.accel!r} is unknown: use one of {', '.join(ACCELERATORS)}"),
            (self.vga is not None and self.vga not in VGA_KINDS,
             "vga",
             f"vga {self.vga!r} is unknown: use one of {', '.join(VGA_KINDS)}"),
            (self.videoram is not None and self.videoram < video_min,
             "videoram",
             f"videoram {self.videoram} MiB is below the {video_min} MiB "
             f"that vga {self.vga_kind} needs"),
            (self.type == "hvm" and self.video_memory >= self.max_memory,
             "videoram",
             f"videoram {self.video_memory} MiB leaves no guest memory out of "
             f"{self.max_memory} MiB: raise memory"),
            (self.device_model_version is not None
             and self.device_model_version not in DM_VERSIONS,
             "device_model_version",
             f"device_model_version {self.device_model_version!r} is unknown: use qemu-xen"),
            (self.uuid is not None and not _UUID.match(self.uuid),
             "uuid",
             f"uuid {self.uuid!r} is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"),
            (self.boot is not None and not re.fullmatch(r"[a-p]{1,16}", self.boot),
             "boot",
             f"boot {self.boot!r} is not a boot order such as 'cd' (letters a-p)"),
            (self.vnclisten is not None and "," in self.vnclisten,
             "vnclisten",
             f"vnclisten {self.vnclisten!r} adds VNC options after a comma, "
             f"{DIFFERENCES['vnc-options']}: give the address (and display) alone"),
            (self.vnclisten is not None and not _LISTEN.match(self.vnclisten),
             "vnclisten",
             f"vnclisten {self.vnclisten!r} is not an address"),
            (self.vncdisplay is not None and not 0 <= self.vncdisplay <= 65535 - 5900,
             "vncdisplay",
             f"vncdisplay {self.vncdisplay} is out of range"),
            (self.vncdisplay is not None and ":" in (self.vnclisten or ""),
             "vncdisplay",
             "vncdisplay and a vnclisten with a ':' display both set: give one"),
            (len({d.vdev for d in self.disks}) != len(self.disks),
             "disk",
             "two disks share a vdev: give each its own"),
            (len({v.devid for v in self.vifs}) != len(self.vifs),
             "vif",
             "two vifs share a devid (devid= or a vif's place in the list): give each its own"),
        ]  # fmt: skip
