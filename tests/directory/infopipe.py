"""Ask SSSD's InfoPipe, with jeepney, whether each domain is online: ``python infopipe.py``.

Run inside a lab's namespace, where the system bus is the lab's private one at the default
address (``unix:path=/var/run/dbus/system_bus_socket``, unless ``DBUS_SYSTEM_BUS_ADDRESS``
says otherwise).  The calls are the ones the product will make:

1. ``org.freedesktop.sssd.infopipe.ListDomains()`` on ``/org/freedesktop/sssd/infopipe``
   (reply signature ``ao``: one object path per domain, the name escaped: ``lab.test`` is
   ``.../Domains/lab_2etest``);
2. for each, ``org.freedesktop.DBus.Properties.Get("org.freedesktop.sssd.infopipe.Domains",
   "name")`` (``v`` holding ``s``) for the domain's real name;
3. ``org.freedesktop.sssd.infopipe.Domains.Domain.IsOnline()`` (reply ``b``).

It prints one JSON object, ``{"domains": [{"path", "name", "online", "signature", "seconds"}],
"connect_seconds", "list_seconds"}`` (the times of connecting with authentication, of
ListDomains and of each IsOnline), or ``{"error": NAME, "message": TEXT}`` when the bus or the
service fails: a D-Bus error name such as ``org.freedesktop.DBus.Error.ServiceUnknown``, or the
Python exception's class when there is no bus at all.  A fact-finder, not the product's code.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from jeepney import DBusAddress, DBusErrorResponse, HeaderFields, Properties, new_method_call
from jeepney.io.blocking import open_dbus_connection

BUS_NAME = "org.freedesktop.sssd.infopipe"
ROOT_PATH = "/org/freedesktop/sssd/infopipe"
ROOT_INTERFACE = "org.freedesktop.sssd.infopipe"
DOMAINS_INTERFACE = "org.freedesktop.sssd.infopipe.Domains"
DOMAIN_INTERFACE = "org.freedesktop.sssd.infopipe.Domains.Domain"
TIMEOUT = 5.0


def domain_status() -> dict[str, Any]:
    """ListDomains, then each domain's name and IsOnline.

    Raises:
        DBusErrorResponse: the bus or InfoPipe answered with an error.
        OSError: no bus to connect to.
    """
    start = time.monotonic()
    with open_dbus_connection(bus="SYSTEM") as connection:
        connected = time.monotonic() - start
        root = DBusAddress(ROOT_PATH, bus_name=BUS_NAME, interface=ROOT_INTERFACE)
        start = time.monotonic()
        reply = connection.send_and_get_reply(new_method_call(root, "ListDomains"), timeout=TIMEOUT)
        paths: list[str] = _body(reply)[0]
        listed = time.monotonic() - start
        domains = []
        for path in paths:
            properties = Properties(
                DBusAddress(path, bus_name=BUS_NAME, interface=DOMAINS_INTERFACE)
            )
            name_reply = connection.send_and_get_reply(properties.get("name"), timeout=TIMEOUT)
            _signature, name = _body(name_reply)[0]
            domain = DBusAddress(path, bus_name=BUS_NAME, interface=DOMAIN_INTERFACE)
            start = time.monotonic()
            online_reply = connection.send_and_get_reply(
                new_method_call(domain, "IsOnline"), timeout=TIMEOUT
            )
            seconds = time.monotonic() - start
            domains.append(
                {
                    "path": path,
                    "name": name,
                    "online": bool(_body(online_reply)[0]),
                    "signature": online_reply.header.fields.get(HeaderFields.signature, ""),
                    "seconds": round(seconds, 4),
                }
            )
        return {
            "domains": domains,
            "connect_seconds": round(connected, 4),
            "list_seconds": round(listed, 4),
        }


def _body(reply: Any) -> Any:
    """The reply's body, or the D-Bus error it carries raised as DBusErrorResponse."""
    if reply.header.message_type.name == "error":
        raise DBusErrorResponse(reply)
    return reply.body


def main() -> int:
    """Print the domains' status, or the error, as JSON; exit 0 either way."""
    try:
        print(json.dumps(domain_status()))
    except DBusErrorResponse as exc:
        print(json.dumps({"error": exc.name, "message": " ".join(map(str, exc.data))}))
    except OSError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
