"""Wait for a DHCP request from one MAC on one interface; print what was seen.

Usage: python sniff.py IFACE MAC SECONDS

Run in the test's network namespace (by tests/system/test_network.py).  A raw AF_PACKET
socket sees every frame the interface carries, in both directions: on a bridge, what its
ports send; on a tap, also what the bridge forwards to the VM behind it.  Exits 0 on an IPv4
UDP frame from MAC to port 67 (DHCPDISCOVER or DHCPREQUEST), 1 when none came in time.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
DHCP_TYPES = {1: "DHCPDISCOVER", 3: "DHCPREQUEST"}


def dhcp_request(frame: bytes, mac: bytes) -> str | None:
    """The DHCP message type of ``frame`` when it is a request from ``mac``, else None."""
    if len(frame) < 14 + 20 + 8 + 240 or frame[6:12] != mac or frame[12:14] != b"\x08\x00":
        return None
    header = (frame[14] & 0x0F) * 4
    if frame[14 + 9] != 17:  # UDP
        return None
    udp = 14 + header
    if struct.unpack("!H", frame[udp + 2 : udp + 4])[0] != 67:
        return None
    options = frame[udp + 8 + 240 :]
    index = 0
    while index + 1 < len(options) and options[index] != 255:
        code, length = options[index], options[index + 1]
        if code == 53 and length == 1:
            return DHCP_TYPES.get(options[index + 2], f"DHCP type {options[index + 2]}")
        index += 2 + length
    return "BOOTP request"


def main() -> int:
    iface, mac_text, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    mac = bytes.fromhex(mac_text.replace(":", ""))
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    print(json.dumps({"listening": iface}), flush=True)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            frame = sock.recv(65535)
        except TimeoutError:
            break
        kind = dhcp_request(frame, mac)
        if kind is not None:
            print(json.dumps({"seen": kind, "from": mac_text, "on": iface}), flush=True)
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
