"""A stand-in for udev (a fake: this machine runs no udevd) racing a launch's tap set-up.

Usage: python udev_stand_in.py RUN_DIR WRITES_RECORD

Run in a network namespace of the test's own.  It opens a tap the way a launch does, then acts
as udev does after a launch set the tap's address: sets an address of its own (as
``MACAddressPolicy=persistent`` would) and, if WRITES_RECORD is 1, then writes udev's record of
the device, ``RUN_DIR/data/n<ifindex>``.  The launch's step after udev runs against it, and
the result is printed as JSON.  The real udev is met in tests/hosts.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from pathlib import Path

from qemu_depriv.host import netdev
from qemu_depriv.qemu.taps import TapPlan
from qemu_depriv.vms.taps import open_taps, restore_after_udev

UDEVS = "02:75:64:65:76:00"


def main() -> None:
    run, writes_record = Path(sys.argv[1]), sys.argv[2] == "1"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(message)s")
    tap = TapPlan("vif7.0-emu", bridge="br0", mac="fe:16:3e:4e:00:07")
    opened = open_taps([tap])
    try:
        index = opened.records[0]["ifindex"]
        before = netdev.mac_of(tap.name)

        def udev() -> None:
            netdev.set_mac(tap.name, UDEVS)
            if writes_record:
                (run / "data").mkdir(parents=True, exist_ok=True)
                (run / "data" / f"n{index}").write_text("I:1\n")

        racer = threading.Timer(0.2, udev)
        racer.start()
        settled = restore_after_udev([tap], {index: tap.name}, timeout=1.0, run=run)
        racer.join()
        print(json.dumps({"before": before, "settled": settled, "after": netdev.mac_of(tap.name),
                          "sees": netdev.udev_sees_devices_here(run)}))  # fmt: skip
    finally:
        opened.close()


if __name__ == "__main__":
    main()
