"""Network device specs of xl.cfg (pure): a vifspec is comma-separated ``key=value`` settings.

Values that end up inside QEMU options are checked here: a bridge, model or name with a comma
in it would smuggle extra options into QEMU's command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qemu_depriv.xl.disks import SAFE_NAME, bad_spec
from qemu_depriv.xl.syntax import DIFFERENCES

#: Six groups of one or two hex digits, as xl reads a ``mac=`` (``00:16:3e:1:2:3`` too).
_MAC = re.compile(r"([0-9A-Fa-f]{1,2}:){5}[0-9A-Fa-f]{1,2}\Z")
#: The ``key=value`` settings of xl's vifspec.  Those that concern only the backend (the
#: hotplug script's, or COLO's ``forwarddev``; ``accel``, which xl ignores) are read and left.
_VIF_KEYS = frozenset(
    {"mac", "bridge", "model", "type", "ip", "script", "vifname", "backend", "rate",
     "gatewaydev", "netdev", "devid", "mtu", "accel", "forwarddev"}
)  # fmt: skip
#: Settings without a value: whether the backend trusts the frontend (xl-network-configuration).
_VIF_FLAGS = frozenset({"trusted", "untrusted"})
#: The largest devid: libxl's devid is a C int.
DEVID_MAX = 2**31 - 1


@dataclass(frozen=True)
class Vif:
    """One vifspec (devid is its ``devid=``, else its position in the list, as xl sets it)."""

    devid: int
    mac: str | None
    bridge: str
    model: str
    type: str
    vifname: str | None
    #: The MTU xl gives the vif's backend (``mtu=``), None: the bridge's.
    mtu: int | None = None


def parse_vif(spec: str, devid: int, source: str = "<config>") -> Vif:
    """Parse one vifspec, the ``devid``-th of its list unless it says ``devid=``.

    Raises:
        InvalidInput: an unknown key, a malformed MAC or devid, or unsafe characters in a name.
    """
    settings: dict[str, str] = {}
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item in _VIF_FLAGS:
            continue
        key, equals, value = item.partition("=")
        if not equals or key not in _VIF_KEYS:
            raise bad_spec(
                source, "vif", spec, f"unknown setting {item!r}: {DIFFERENCES['vif-setting']}"
            )
        settings[key] = value
    mac = settings.get("mac")
    if mac is not None:
        if not _MAC.match(mac):
            raise bad_spec(
                source, "vif", spec, f"mac {mac!r} is not six hex pairs such as 00:16:3e:01:02:03"
            )
        mac = ":".join(f"{int(part, 16):02x}" for part in mac.split(":"))
    if "devid" in settings:
        text = settings["devid"]
        if not (text.isascii() and text.isdigit() and int(text) <= DEVID_MAX):
            raise bad_spec(source, "vif", spec, f"devid {text!r} is not a number from 0")
        devid = int(text)
    for key in ("bridge", "model", "vifname"):
        if key in settings and not SAFE_NAME.match(settings[key]):
            raise bad_spec(
                source,
                "vif",
                spec,
                f"{key} {settings[key]!r} has characters outside A-Z a-z 0-9 _ . -, "
                f"{DIFFERENCES['unsafe-name']}",
            )
    vif_type = settings.get("type", "ioemu")
    if vif_type not in ("ioemu", "vif"):
        raise bad_spec(source, "vif", spec, f"type {vif_type!r} is unknown: use ioemu or vif")
    mtu = settings.get("mtu")
    if mtu is not None and not (mtu.isdigit() and 68 <= int(mtu) <= 65535):
        raise bad_spec(source, "vif", spec, f"mtu {mtu!r} is not a number from 68 to 65535")
    return Vif(
        devid=devid,
        mac=mac,
        bridge=settings.get("bridge", "xenbr0"),
        model=settings.get("model", "rtl8139"),
        type=vif_type,
        vifname=settings.get("vifname"),
        mtu=int(mtu) if mtu is not None else None,
    )


def derived_mac(domain: str, devid: int) -> str:
    """A stable MAC in Xen's 00:16:3e prefix for a vif that names none.

    libxl picks random bytes at every start; a stable address derived from the domain name
    and devid keeps the guest's NIC the same across restarts.
    """
    import hashlib  # noqa: PLC0415 - only a NIC without a mac= needs it

    digest = hashlib.sha256(f"{domain}/{devid}".encode()).digest()
    return f"00:16:3e:{digest[0] & 0x7F:02x}:{digest[1]:02x}:{digest[2]:02x}"
