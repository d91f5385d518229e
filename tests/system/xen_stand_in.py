#!/usr/bin/env python3
"""A named stand-in for a Xen-enabled QEMU, for tests on a machine without a Xen hypervisor.

The wrapper under test (qemu-depriv-dm) runs it as the real QEMU (settings' ``xen_qemu``).  It
removes only what needs a running Xen — ``-xen-domid N``, ``-xen-domid-restrict``,
``-xen-attach`` and the ``xenfv``/``xenpv`` machines — and execs the real QEMU with everything
else, in the same process, so the supervisor verifies the real QEMU's pid.  ``-help`` and
``-version`` go straight through, so the capability probe reads the real binary.
"""

import os
import sys

REAL = "/usr/bin/qemu-system-x86_64"
DROP_WITH_VALUE = {"-xen-domid"}
DROP = {"-xen-domid-restrict", "-xen-attach"}


def main() -> None:
    args = sys.argv[1:]
    kept: list[str] = []
    index = 0
    while index < len(args):
        word = args[index]
        if word in DROP_WITH_VALUE:
            index += 2
            continue
        if word in DROP:
            index += 1
            continue
        if word == "-machine" and args[index + 1].split(",")[0] in ("xenfv", "xenpv"):
            kept += ["-machine", "pc"]
            index += 2
            continue
        kept.append(word)
        index += 1
    os.execv(REAL, [REAL, *kept])  # noqa: S606 - the wrapper's own argv, no shell


if __name__ == "__main__":
    main()
