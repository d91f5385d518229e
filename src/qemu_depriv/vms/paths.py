"""Where one VM's files live under the state directory, and how a command line names them.

``vms/DOMID/`` is the run directory (QMP socket, QEMU's log; owned by the VM's uid) and
``chroot/DOMID/`` the empty root QEMU is confined to.  A QEMU whose command line names a run
directory of a state directory is that state directory's, which is how audit and recovery
find ours among all the QEMUs of a host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class VmPaths:
    """Where one VM's files live: its run directory, QMP socket, QEMU log and chroot."""

    run_dir: Path
    chroot: Path

    @property
    def qmp(self) -> Path:
        """The QMP socket QEMU listens on."""
        return self.run_dir / "qmp.sock"

    @property
    def log(self) -> Path:
        """QEMU's stderr."""
        return self.run_dir / "qemu.log"


def vm_paths(state_dir: Path, domid: int) -> VmPaths:
    """Where VM ``domid``'s files live under the state directory."""
    return VmPaths(run_dir=state_dir / "vms" / str(domid), chroot=state_dir / "chroot" / str(domid))


def claimed_domid(state_dir: Path, words: Iterable[str]) -> str | None:
    """The domid whose run directory of ``state_dir`` a command line names, or None.

    Returned as written (a string): a forged command line may name anything there.  The
    directory must start a path: the word itself, or a value after ``:``, ``=`` or ``,``
    (``unix:DIR/vms/3/qmp.sock``, ``path=...``); ``/other/DIR/vms/3`` is not in ``DIR``.
    """
    claim = re.compile(rf"(?:\A|[:=,]){re.escape(f'{state_dir}/vms/')}([^/,]*)")
    for word in words:
        if found := claim.search(word):
            return found.group(1)
    return None
