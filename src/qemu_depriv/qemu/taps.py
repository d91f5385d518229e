"""A VM's NICs as taps that the launcher opens and QEMU is handed (pure).

Standalone, each ``vif`` that Xen would emulate (``type=ioemu``, the default) becomes a NIC: a
tap named as Xen names the emulated one, ``vifDOMID.DEVID-emu`` (``VIFNAME-emu`` when the vif
sets ``vifname``), on the vif's bridge (``xenbr0`` by default), given to QEMU as ``-netdev
tap,id=netN,fd=FD`` with ``-device MODEL,id=nicN,netdev=netN,mac=MAC`` (``rtl8139`` unless the
vif sets ``model``, as libxl).  Linux limits interface names to 15 bytes, and libxl does not
shorten them (its ``vif1234.10-emu`` fails); here a longer name is shortened: ``-emu`` becomes
``-e``, and if that is still too long the name is ``vq`` and the first 13 hex digits of the
SHA-256 of the full name (stable, and distinct in practice).

The guest's NIC gets the vif's MAC (or the stable one derived from the domain name and devid);
the tap itself gets the same address with its first byte ``fe``, as libvirt does: a bridge
takes the lowest address of its ports as its own, and a bridge whose address is the guest's
would take the guest's frames for its own.  The tap carries the virtio-net header
(``IFF_VNET_HDR``), as the taps QEMU opens itself do.

Under ``run``, a ``-netdev``/``-nic``/``-net`` tap that names its tap (``ifname=``) is opened
the same way and passed as ``fd=``: created when missing, attached to when an administrator
made it persistent, and no bridge is touched.  ``ifname``, ``script``, ``downscript``,
``vnet_hdr``, ``queues=1`` (which QEMU refuses beside ``fd=``) and ``br`` (which means nothing
without a helper) are taken out; a multiqueue tap, or one with descriptors of its own, is left
to QEMU.

Until the descriptors exist, the command line holds ``fd=@NAME`` for each tap
(:func:`with_fds` puts the numbers in): ``launch --dry-run`` shows that form.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from qemu_depriv.errors import InvalidInput
from qemu_depriv.qemu.cmdline import (
    IMPLIED_KEYS,
    CommandLine,
    Option,
    handed_over_tap,
    join_opts,
    opts,
    split_opts,
)
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.nics import derived_mac

#: Linux's IFNAMSIZ less its NUL.
IFNAME_MAX = 15
#: What the kernel takes as an interface name, and what a QEMU option value can carry as is.
_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}\Z")
#: Keys QEMU refuses beside ``fd=``, or that mean nothing with it: the launcher owns them.
_HANDED_OVER_KEYS = ("ifname", "script", "downscript", "vnet_hdr", "br", "queues")
#: How QEMU spells off for a boolean option.
_OFF = ("off", "no", "false", "n")


def tap_name(domid: int, devid: int, vifname: str | None = None) -> str:
    """The tap of vif ``devid``: Xen's ``vifDOMID.DEVID-emu``, shortened to fit 15 bytes."""
    base = vifname or f"vif{domid}.{devid}"
    for name in (f"{base}-emu", f"{base}-e"):
        if len(name.encode()) <= IFNAME_MAX:
            return name
    import hashlib  # noqa: PLC0415 - only a name too long to fit needs it

    return "vq" + hashlib.sha256(f"{base}-emu".encode()).hexdigest()[:13]


def host_side_mac(mac: str) -> str:
    """The tap's own address: the guest's, its first byte ``fe`` (``fa`` if the guest's is)."""
    return ("fa" if mac[:2].lower() == "fe" else "fe") + mac[2:]


def placeholder(name: str) -> str:
    """What stands for tap ``name``'s descriptor until it is open."""
    return f"@{name}"


@dataclass(frozen=True)
class TapPlan:
    """One tap the launcher opens for QEMU.

    ``bridge`` is the bridge it joins (None: leave it where it is); ``mac`` and ``mtu`` its
    own address and MTU (None: the kernel's, or the bridge's MTU); ``exclusive`` whether the
    name must be free (standalone) rather than possibly an administrator's persistent tap.
    """

    name: str
    bridge: str | None = None
    mac: str | None = None
    mtu: int | None = None
    vnet_hdr: bool = True
    exclusive: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TapPlan:
        """Read :meth:`as_dict`'s form back."""
        fields = ("name", "bridge", "mac", "mtu", "vnet_hdr", "exclusive")
        return cls(**{k: data[k] for k in fields if k in data})


def standalone_taps(config: DomainConfig, domid: int) -> tuple[list[TapPlan], list[str], list[str]]:
    """A tap per emulated vif of ``config`` at ``domid``: the taps, QEMU's options, warnings."""
    taps: list[TapPlan] = []
    args: list[str] = []
    warnings: list[str] = []
    _refuse_placeholders((*config.device_model_args, *config.device_model_args_hvm))
    for vif in config.vifs:
        if vif.type != "ioemu":
            warnings.append(
                f"vif {vif.devid} is type=vif (a PV NIC, which needs Xen): the VM gets no NIC "
                "for it standalone"
            )
            continue
        mac = vif.mac or derived_mac(config.name, vif.devid)
        tap = TapPlan(
            name=tap_name(domid, vif.devid, vif.vifname),
            bridge=vif.bridge,
            mac=host_side_mac(mac),
            mtu=vif.mtu,
        )
        if any(t.name == tap.name for t in taps):
            raise InvalidInput(
                f"{config.source}: two vifs would both be tap {tap.name}: give each its own "
                "vifname="
            )
        taps.append(tap)
        args += [
            "-netdev", f"tap,id=net{vif.devid},fd={placeholder(tap.name)}",
            "-device", f"{vif.model},id=nic{vif.devid},netdev=net{vif.devid},mac={mac}",
        ]  # fmt: skip
    return taps, args, warnings


def _refuse_placeholders(words: Sequence[str]) -> None:
    for word in words:
        if "fd=@" in word:
            raise InvalidInput(
                f"QEMU option value {word!r}: fd=@ is how qemu-depriv marks the taps it opens; "
                "give a descriptor number, or name the tap with ifname="
            )


def _handed_over(option: Option) -> TapPlan | None:
    """The tap ``option`` names for the launcher to open, or None when QEMU keeps it."""
    if option.name not in ("netdev", "nic", "net"):
        return None
    settings = opts(option)
    if not handed_over_tap(settings):
        return None
    name = settings["ifname"]
    if not _IFNAME.match(name):
        raise InvalidInput(
            f"QEMU option -{option.name} {option.value}: tap name {name!r} is not 1 to 15 of "
            "A-Z a-z 0-9 _ . -: rename the tap"
        )
    return TapPlan(name=name, vnet_hdr=settings.get("vnet_hdr", "on") not in _OFF, exclusive=False)


def command_line_taps(cmdline: CommandLine) -> tuple[CommandLine, list[TapPlan]]:
    """``cmdline`` with each tap it names by ``ifname=`` as ``fd=@NAME``, and those taps.

    Raises:
        InvalidInput: a tap name that is no interface name, or one tap named twice.
    """
    _refuse_placeholders([o.value or "" for o in cmdline.options])
    taps: list[TapPlan] = []
    items: list[Option | str] = []
    for item in cmdline.items:
        tap = _handed_over(item) if isinstance(item, Option) else None
        if tap is None or not isinstance(item, Option):
            items.append(item)
            continue
        if any(t.name == tap.name for t in taps):
            raise InvalidInput(f"tap {tap.name} is named by two QEMU options: give each its own")
        taps.append(tap)
        pairs = [
            (k, v)
            for k, v in split_opts(item.value or "", IMPLIED_KEYS[item.name])
            if k not in _HANDED_OVER_KEYS
        ]
        pairs.append(("fd", placeholder(tap.name)))
        items.append(replace(item, value=join_opts(pairs)))
    return replace(cmdline, items=tuple(items)), taps


def with_fds(argv: Sequence[str], taps: Sequence[TapPlan], fds: Sequence[int]) -> list[str]:
    """``argv`` with each tap's ``fd=@NAME`` replaced by its descriptor's number.

    The placeholder is always the last item of a ``-netdev``, ``-nic`` or ``-net`` value
    (:func:`standalone_taps` and :func:`command_line_taps` put it there); nothing else of the
    command line is touched.
    """
    numbers = {f",fd={placeholder(t.name)}": f",fd={fd}" for t, fd in zip(taps, fds, strict=True)}
    filled = list(argv)
    for index in range(1, len(filled)):
        if filled[index - 1].lstrip("-") not in ("netdev", "nic", "net"):
            continue
        for mark, number in numbers.items():
            if filled[index].endswith(mark):
                filled[index] = filled[index][: -len(mark)] + number
    return filled


def opens_own_taps(cmdline: CommandLine) -> bool:
    """Whether QEMU holds a tap that qemu-depriv did not open (after :func:`command_line_taps`).

    One it opens itself, or one the command line's author passes by descriptor.
    """
    for option in cmdline.options:
        if option.name in ("netdev", "nic", "net"):
            settings = opts(option)
            if settings.get("type") == "tap" and not settings.get("fd", "").startswith("@"):
                return True
    return False
