"""SSSD's own word on whether its directories are online, asked over D-Bus (InfoPipe).

Offline, SSSD answers "not found" (0 and NULL through NSS) for every account it has not
cached, exactly as for a name that exists nowhere, and it stays offline for a minute or more
after its server is back (``offline_timeout``).  No NSS-level signal separates the two, so a
"not found" from ``sss`` is believed only when SSSD says every one of its domains is online.

SSSD's InfoPipe responder (``services = nss, ifp`` in sssd.conf, package ``sssd-dbus``) answers
on the system bus as ``org.freedesktop.sssd.infopipe``: ``ListDomains`` gives one object per
domain, each with a ``name`` property, and each answers
``org.freedesktop.sssd.infopipe.Domains.Domain.IsOnline``.  An offline domain, no InfoPipe, no
bus, or no answer within the deadline all mean "cannot be believed".

The D-Bus client is jeepney: pure Python, synchronous, no GLib or C extension, well kept, and
small enough to import at every launch (a call takes a millisecond or two).
``sssctl domain-status -o`` would be no fallback: it asks the same InfoPipe, and costs a
process start per domain.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from qemu_depriv.accounts.nss import bounded_call
from qemu_depriv.errors import AccountLookupError

log = logging.getLogger(__name__)

BUS_NAME = "org.freedesktop.sssd.infopipe"
IFP_PATH = "/org/freedesktop/sssd/infopipe"
DOMAINS_INTERFACE = "org.freedesktop.sssd.infopipe.Domains"
DOMAIN_INTERFACE = "org.freedesktop.sssd.infopipe.Domains.Domain"
PROPERTIES = "org.freedesktop.DBus.Properties"
FIX = (
    "enable SSSD's InfoPipe ('services = nss, ifp' in /etc/sssd/sssd.conf, package sssd-dbus, "
    "a running system bus), or, if sss never holds device-model accounts, list it in "
    "sources_without_accounts in the qemu-depriv settings"
)


@dataclass(frozen=True)
class DomainStatus:
    """One SSSD domain and whether it is online."""

    name: str
    online: bool


def domain_statuses(timeout: float) -> list[DomainStatus]:
    """Ask InfoPipe for every domain's online status.

    Raises:
        AccountLookupError: no bus, no InfoPipe, an error reply, or no answer in ``timeout``.
    """
    return bounded_call(_ask, timeout, what="SSSD's InfoPipe", database="passwd")


def require_online(timeout: float) -> None:
    """Return only when SSSD says every one of its domains is online.

    Raises:
        AccountLookupError: a domain is offline, or SSSD's status cannot be read.
    """
    statuses = domain_statuses(timeout)
    offline = [s.name for s in statuses if not s.online]
    if not statuses or offline:
        raise AccountLookupError(
            "SSSD (sss on the passwd line of /etc/nsswitch.conf) reports "
            + (f"domain(s) {', '.join(offline)} offline" if offline else "no domain")
            + ": while offline it answers 'not found' for accounts it has not cached, which "
            "cannot be believed; wait until 'sssctl domain-status DOMAIN -o' says Online, or "
            "fix its directory server",
            key="sss online status",
            errno=errno.EHOSTUNREACH,
        )


def _ask() -> list[DomainStatus]:
    """The D-Bus conversation itself (run under the caller's deadline)."""
    from jeepney import DBusAddress, new_method_call  # noqa: PLC0415 - only hosts with sss
    from jeepney.io.blocking import open_dbus_connection  # noqa: PLC0415
    from jeepney.wrappers import DBusErrorResponse, unwrap_msg  # noqa: PLC0415

    try:
        with open_dbus_connection(bus="SYSTEM") as bus:
            root = DBusAddress(IFP_PATH, bus_name=BUS_NAME, interface=BUS_NAME)
            (paths,) = unwrap_msg(bus.send_and_get_reply(new_method_call(root, "ListDomains")))
            statuses = []
            for path in paths:
                domain = DBusAddress(path, bus_name=BUS_NAME, interface=DOMAIN_INTERFACE)
                (online,) = unwrap_msg(bus.send_and_get_reply(new_method_call(domain, "IsOnline")))
                properties = DBusAddress(path, bus_name=BUS_NAME, interface=PROPERTIES)
                get = new_method_call(properties, "Get", "ss", (DOMAINS_INTERFACE, "name"))
                ((_, name),) = unwrap_msg(bus.send_and_get_reply(get))
                statuses.append(DomainStatus(str(name), bool(online)))
    except DBusErrorResponse as exc:
        raise _unreadable(f"InfoPipe answered {exc.name}") from exc
    except (OSError, RuntimeError, ValueError) as exc:
        raise _unreadable(f"the system bus cannot be reached ({exc})") from exc
    log.debug("SSSD domains: %s", statuses)
    return statuses


def _unreadable(why: str) -> AccountLookupError:
    return AccountLookupError(
        f"SSSD (sss on the passwd line of /etc/nsswitch.conf) cannot say whether it is "
        f"online: {why}; its 'not found' cannot be believed while that is unknown: {FIX}",
        key="sss online status",
        errno=errno.EHOSTUNREACH,
    )
