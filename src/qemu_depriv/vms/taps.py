"""A VM's taps on the host: checked before anything starts, opened for QEMU, gone after it.

The launcher (root) does what QEMU, deprivileged and under seccomp, must not: it creates each
tap, gives it its address and MTU, makes it a port of its bridge, brings it up, and hands QEMU
the open descriptor (libvirt's way).  The taps it creates are not persistent: the kernel
removes each one when its last descriptor closes, so when QEMU exits, or a launch fails
before QEMU runs, or the launcher is killed, the taps go with them.  Teardown checks that, and
removes one that outlived its VM: only a tap this VM's launch created, recognised by its
interface index (a tap made since under the same name is someone else's).

udev hears of each new tap and, on a systemd host, applies ``99-default.link``'s
``MACAddressPolicy=persistent``: a device whose address the kernel chose at random gets one
derived from its name.  udev reads that "chosen at random" before or after the launcher sets
the tap's address, so it may overwrite the address a moment later (a race Docker and others
met with their bridges and veths).  The launcher therefore waits, where udev sees the tap, until
udev has processed it, then puts back any address udev changed: udev does not touch a device
again once it has processed its arrival.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host import netdev
from qemu_depriv.host.processes import wait_until

if TYPE_CHECKING:  # a teardown removes taps by their records: no planning imported
    from qemu_depriv.qemu.taps import TapPlan

log = logging.getLogger(__name__)

#: How long a launch waits for udev to process its new taps (milliseconds, normally).
UDEV_TIMEOUT = 5.0


def bridge_fix(bridge: str) -> str:
    """The commands that make ``bridge``."""
    return f"ip link add {bridge} type bridge && ip link set {bridge} up"


def check_taps(taps: Sequence[TapPlan]) -> None:
    """Refuse, before anything starts, what opening the taps would trip on.

    Raises:
        EnvironmentFailure: a bridge is missing or is no bridge, or a tap's name is taken.
    """
    for tap in taps:
        if tap.bridge is not None and not netdev.exists(tap.bridge):
            raise EnvironmentFailure(
                f"bridge {tap.bridge} (for tap {tap.name}) does not exist: create it with "
                f"'{bridge_fix(tap.bridge)}', or name another in the vif's bridge="
            )
        if tap.bridge is not None and not netdev.is_bridge(tap.bridge):
            raise EnvironmentFailure(
                f"{tap.bridge} (for tap {tap.name}) is not a bridge: name a bridge in the vif's "
                f"bridge=, or make one with '{bridge_fix('NAME')}'"
            )
        if tap.exclusive and netdev.exists(tap.name):
            raise EnvironmentFailure(
                f"tap {tap.name} already exists: another VM or a leftover holds the name; see "
                f"'ip link show {tap.name}', and 'ip link delete {tap.name}' if it is stale"
            )


@dataclass
class OpenTaps:
    """Taps this process holds open: descriptors in plan order, and what the store keeps."""

    fds: list[int] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def close(self) -> None:
        """Close this process's descriptors (QEMU keeps its own copies)."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.fds.clear()


def open_taps(taps: Sequence[TapPlan]) -> OpenTaps:
    """Create, configure and open every tap; on failure none of this call's is left.

    Raises:
        EnvironmentFailure: the kernel refused a tap or its bridge, named with the fix.
    """
    opened = OpenTaps()
    try:
        for tap in taps:
            existed = netdev.exists(tap.name)
            fd = _open(tap)
            opened.fds.append(fd)
            # Made here only if it was not there and is not persistent (one an administrator
            # made between the look and the open is theirs): only such a tap is ever removed.
            created = not existed and not netdev.is_persistent(fd)
            opened.records.append(
                {**tap.as_dict(), "ifindex": netdev.ifindex(tap.name), "created": created}
            )
            if tap.bridge is not None or tap.mac is not None or tap.mtu is not None:
                _configure(tap)
        _after_udev(taps, opened.records)
    except BaseException:
        opened.close()
        raise
    return opened


def _after_udev(taps: Sequence[TapPlan], records: Sequence[dict[str, Any]]) -> None:
    created = {r["ifindex"]: r["name"] for r in records if r["created"] and r["ifindex"]}
    if created and netdev.udev_sees_devices_here():
        restore_after_udev(taps, created)


def restore_after_udev(
    taps: Sequence[TapPlan],
    created: Mapping[int, str],
    *,
    timeout: float = UDEV_TIMEOUT,
    run: Path = netdev.UDEV_RUN,
) -> bool:
    """Give back each tap address udev changed, once it has processed the taps ``created``.

    ``created`` names each new tap by its interface index.  Waits at most ``timeout`` for
    udev's records of them and returns whether they all came.

    Raises:
        EnvironmentFailure: the kernel refused an address back.
    """
    settled = wait_until(lambda: all(netdev.udev_done(i, run) for i in created), timeout)
    for tap in taps:
        if tap.mac is None or (now := netdev.mac_of(tap.name)) == tap.mac:
            continue
        log.info("tap %s: udev set its address to %s; setting %s again", tap.name, now, tap.mac)
        try:
            netdev.set_mac(tap.name, tap.mac)
        except netdev.NetdevError as exc:
            raise EnvironmentFailure(
                f"cannot set tap {tap.name}'s address back to {tap.mac} after udev changed it "
                f"to {now}: {os.strerror(exc.errno or 0)}"
            ) from exc
    if not settled:
        pending = [name for index, name in created.items() if not netdev.udev_done(index, run)]
        log.warning(
            "udev had not processed tap(s) %s after %s s: it may still change their addresses "
            "(see 'udevadm monitor', and MACAddressPolicy= in systemd.link(5))",
            ", ".join(pending), timeout,
        )  # fmt: skip
    return settled


def _open(tap: TapPlan) -> int:
    try:
        return netdev.open_tap(tap.name, exclusive=tap.exclusive, vnet_hdr=tap.vnet_hdr)
    except netdev.NetdevError as exc:
        if exc.errno == errno.EBUSY:
            raise EnvironmentFailure(
                f"tap {tap.name} is in use by another process or VM: see 'ip link show "
                f"{tap.name}'; give this VM another tap or stop the other"
            ) from exc
        if exc.errno == errno.EINVAL:
            raise EnvironmentFailure(
                f"{tap.name} exists and is not a single-queue tap: name another tap"
            ) from exc
        raise EnvironmentFailure(
            f"cannot create tap {tap.name}: {os.strerror(exc.errno or 0)} (the launcher needs "
            "root and /dev/net/tun: 'modprobe tun')"
        ) from exc


def _configure(tap: TapPlan) -> None:
    mtu = tap.mtu if tap.mtu is not None else netdev.mtu_of(tap.bridge) if tap.bridge else None
    try:
        netdev.configure(tap.name, mac=tap.mac, bridge=tap.bridge, mtu=mtu)
    except netdev.NetdevError as exc:
        reason = os.strerror(exc.errno or 0)
        if tap.bridge is None:
            raise EnvironmentFailure(f"cannot set up tap {tap.name}: {reason}") from exc
        raise EnvironmentFailure(
            f"cannot set up tap {tap.name} (MAC {tap.mac}, MTU {mtu}) on bridge {tap.bridge}: "
            f"{reason}; check the bridge with 'ip -d link show {tap.bridge}'"
        ) from exc


def remove_leftover_taps(records: Sequence[dict[str, Any]], timeout: float = 2.0) -> list[str]:
    """Make sure the taps a VM's launch created are gone; return the names still there.

    The kernel removes a tap with its last descriptor, a moment after QEMU's exit; one still
    there after ``timeout`` with the index recorded at launch is removed here.  A tap the VM
    did not create (an administrator's persistent one) or with another index is left alone.
    """
    ours = [r for r in records if r.get("created") and r.get("ifindex") is not None]

    def still_there() -> list[dict[str, Any]]:
        return [r for r in ours if netdev.ifindex(r["name"]) == r["ifindex"]]

    wait_until(lambda: not still_there(), timeout)
    for record in still_there():
        with contextlib.suppress(netdev.NetdevError):
            netdev.remove_tap(record["name"])
    return [r["name"] for r in still_there()]
