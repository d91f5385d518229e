"""Tap devices and bridges, through the kernel's own interfaces: /dev/net/tun and ioctls.

A tap made with ``TUNSETIFF`` and never made persistent lives exactly as long as a descriptor
to it is open: once the last holder (QEMU) exits, the kernel removes it, so a crash leaves no
tap behind.  ``IFF_TUN_EXCL`` makes the kernel refuse a name already taken instead of
attaching to that device.

Every call acts in the calling process's network namespace, through a socket made there; not
through /sys/class/net, which shows the namespace of whoever mounted sysfs (under ``nsenter
--net`` the host's).  Written by hand on purpose: the handful of ioctls needed (look up,
create, address, MTU, bridge port, up) are stable kernel ABI and cost microseconds, where ``ip``
costs an exec each and pyroute2 is a large dependency for a few calls.  Changing a device
needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import socket
import struct
from pathlib import Path

TUN = "/dev/net/tun"
IFNAMSIZ = 16
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_PERSIST = 0x0800
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFF_TUN_EXCL = 0x8000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCGIFMTU = 0x8921
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
SIOCGIFHWADDR = 0x8927
SIOCBRADDIF = 0x89A2
SIOCGIFINDEX = 0x8933
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x3
#: sizeof(struct ethtool_drvinfo): cmd, five 32-byte strings, 12 reserved, five u32 counts.
DRVINFO_SIZE = 4 + 5 * 32 + 12 + 5 * 4
IFF_UP = 0x1
ARPHRD_ETHER = 1
#: udev's run directory: ``control`` is its socket, ``data/n<ifindex>`` its record of a
#: network device, written once it has processed the device's arrival.
UDEV_RUN = Path("/run/udev")


class NetdevError(OSError):
    """An ioctl or open on a network device failed; ``errno`` says why."""


def _ifreq(name: str, data: bytes = b"") -> bytes:
    return struct.pack(f"{IFNAMSIZ}s", name.encode()) + data.ljust(24, b"\0")


def _ioctl(fd: int, request: int, name: str, data: bytes = b"") -> bytes:
    try:
        return fcntl.ioctl(fd, request, _ifreq(name, data))
    except OSError as exc:
        raise NetdevError(exc.errno, f"{name}: {exc.strerror}") from exc


def _query(request: int, name: str, data: bytes = b"") -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return _ioctl(sock.fileno(), request, name, data)


def ifindex(name: str) -> int | None:
    """The index of the device ``name`` in this network namespace, None when there is none."""
    if not 0 < len(name.encode()) < IFNAMSIZ:
        return None
    try:
        reply = _query(SIOCGIFINDEX, name)
    except NetdevError as exc:
        if exc.errno == errno.ENODEV:
            return None
        raise
    return int(struct.unpack_from("i", reply, IFNAMSIZ)[0])


def exists(name: str) -> bool:
    """Whether a network device named ``name`` exists in this network namespace."""
    return ifindex(name) is not None


def driver(name: str) -> str:
    """The device's driver as ethtool names it (``bridge``, ``tun``, ``dummy``, ...)."""
    info = array.array("B", struct.pack("I", ETHTOOL_GDRVINFO).ljust(DRVINFO_SIZE, b"\0"))
    address, _ = info.buffer_info()
    _query(SIOCETHTOOL, name, struct.pack("P", address))
    return bytes(info[4:36]).split(b"\0", 1)[0].decode("ascii", "replace")


def is_bridge(name: str) -> bool:
    """Whether ``name`` is a Linux bridge."""
    try:
        return driver(name) == "bridge"
    except NetdevError:
        return False


def mtu_of(name: str) -> int | None:
    """The device's MTU, None when it does not exist."""
    try:
        return int(struct.unpack_from("i", _query(SIOCGIFMTU, name), IFNAMSIZ)[0])
    except NetdevError:
        return None


def open_tap(name: str, *, exclusive: bool = True, vnet_hdr: bool = False) -> int:
    """Create (or, not ``exclusive``, attach to) the tap ``name``; return its descriptor.

    The descriptor is close-on-exec; the caller passes it on explicitly.

    Raises:
        NetdevError: EBUSY when the name is taken (or the tap is held by another process),
            EPERM without CAP_NET_ADMIN, ENOENT without /dev/net/tun.
    """
    try:
        fd = os.open(TUN, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise NetdevError(exc.errno, f"{TUN}: {exc.strerror}") from exc
    flags = IFF_TAP | IFF_NO_PI | (IFF_TUN_EXCL if exclusive else 0)
    flags |= IFF_VNET_HDR if vnet_hdr else 0
    try:
        _ioctl(fd, TUNSETIFF, name, struct.pack("H", flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def is_persistent(fd: int) -> bool:
    """Whether the tap open at ``fd`` is persistent (an administrator's: ``ip tuntap add``)."""
    flags = struct.unpack_from("H", fcntl.ioctl(fd, TUNGETIFF, _ifreq("")), IFNAMSIZ)[0]
    return bool(flags & IFF_PERSIST)


def mac_of(name: str) -> str | None:
    """The device's hardware address (``aa:bb:cc:dd:ee:ff``), None when it does not exist."""
    try:
        reply = _query(SIOCGIFHWADDR, name)
    except NetdevError:
        return None
    return reply[IFNAMSIZ + 2 : IFNAMSIZ + 8].hex(":")


def set_mac(name: str, mac: str) -> None:
    """Give the device the hardware address ``mac``.

    Raises:
        NetdevError: the kernel refused (its message names the device).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _set_mac(sock.fileno(), name, mac)


def _set_mac(fd: int, name: str, mac: str) -> None:
    address = bytes.fromhex(mac.replace(":", ""))
    _ioctl(fd, SIOCSIFHWADDR, name, struct.pack("H6s", ARPHRD_ETHER, address))


def udev_sees_devices_here(run: Path = UDEV_RUN) -> bool:
    """Whether a udev daemon runs and sees the devices of this network namespace.

    udevd runs in the init process's network namespace and hears only its devices' events;
    in another namespace, or with no udevd (``control`` absent: a container), nothing of
    udev's will touch a device made here.
    """
    if not (run / "control").exists():
        return False
    try:
        return Path("/proc/self/ns/net").stat().st_ino == Path("/proc/1/ns/net").stat().st_ino
    except OSError:
        return False


def udev_done(index: int, run: Path = UDEV_RUN) -> bool:
    """Whether udev has processed the arrival of the device with interface index ``index``.

    udev writes ``data/n<index>`` after it has run its rules and applied the device's
    ``.link`` configuration (a persistent MAC address among them); an index is not reused
    while the kernel has others left to hand out.
    """
    return (run / "data" / f"n{index}").exists()


def configure(name: str, *, mac: str | None, bridge: str | None, mtu: int | None) -> None:
    """Give the device its address and MTU, make it a port of ``bridge``, and bring it up.

    Raises:
        NetdevError: the kernel refused one of the steps (its message names the device).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fd = sock.fileno()
        if mac is not None:
            _set_mac(fd, name, mac)
        if mtu is not None:
            _ioctl(fd, SIOCSIFMTU, name, struct.pack("i", mtu))
        if bridge is not None:
            index = ifindex(name)
            if index is None:
                raise NetdevError(errno.ENODEV, f"{name}: gone")
            _ioctl(fd, SIOCBRADDIF, bridge, struct.pack("i", index))
        flags = struct.unpack_from("H", _ioctl(fd, SIOCGIFFLAGS, name), IFNAMSIZ)[0]
        _ioctl(fd, SIOCSIFFLAGS, name, struct.pack("H", flags | IFF_UP))


def remove_tap(name: str) -> None:
    """Remove the tap ``name`` if nobody holds it: attach, clear persistence, close.

    A non-persistent tap disappears with its last descriptor anyway; this is for one that
    outlived its holder.  Missing is fine.

    Raises:
        NetdevError: EBUSY when a process still holds it.
    """
    if not exists(name):
        return
    fd = open_tap(name, exclusive=False)
    try:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, TUNSETPERSIST, 0)
    finally:
        os.close(fd)
