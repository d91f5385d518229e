"""Hold a private mount namespace open for a lab: ``python holder.py SPEC.json``.

SPEC names a scratch accounts directory (``qemu_depriv.accounts.scratch``: its passwd, group and
nsswitch.conf become /etc's) and a list of ``[source, target]`` bind mounts, applied in order
after the scratch files.  The holder prints ``ready`` once every mount is in place, then waits
for its stdin to close: the lab enters the namespace through ``/proc/HOLDER/ns/mnt`` meanwhile.
The product's own functions make the namespace, so the lab sees what the product would.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qemu_depriv.accounts.scratch import ScratchAccounts, enter_scratch_accounts
from qemu_depriv.host import syscalls


def main(spec_path: str) -> None:
    """Enter the namespace, make the mounts, say ready, and wait for EOF on stdin."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    enter_scratch_accounts(ScratchAccounts(Path(spec["scratch"])))
    for source, target in spec["binds"]:
        syscalls.bind(source, target)
    print("ready", flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main(sys.argv[1])
