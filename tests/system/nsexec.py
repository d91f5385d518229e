"""Run a command with scratch account files as /etc/passwd, /etc/group, /etc/nsswitch.conf.

Usage: python nsexec.py SCRATCH_DIR -- COMMAND [ARG...]

It uses the product's own mechanism (qemu_depriv.accounts.scratch): a private mount namespace
and bind mounts, so the host's files are never written."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qemu_depriv.accounts.scratch import ScratchAccounts, enter_scratch_accounts


def main() -> None:
    root, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit(__doc__)
    enter_scratch_accounts(ScratchAccounts(Path(root)))
    os.execvp(command[0], command)  # noqa: S606 - the test's own argv, no shell


if __name__ == "__main__":
    main()
