"""What every subcommand receives besides its own arguments."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from qemu_depriv.settings import Settings

if TYPE_CHECKING:
    from qemu_depriv.launcher import Launcher

#: The object ``add_subparsers`` returns, which each subcommand module registers with.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True)
class Context:
    """The merged settings and the output mode."""

    settings: Settings
    as_json: bool

    def launcher(self) -> Launcher:
        """A launcher wired to the real system: libc NSS, the state store, the probe."""
        from qemu_depriv.directory import system_lookup
        from qemu_depriv.launcher import Launcher, kvm_works
        from qemu_depriv.qemu.caps import CapsProbe
        from qemu_depriv.state import StateStore

        state_dir = self.settings.state_dir
        return Launcher(
            settings=self.settings,
            lookup=system_lookup(self.settings),
            store=StateStore(state_dir, busy_timeout=self.settings.lock_timeout),
            probe=CapsProbe(cache_file=state_dir / "caps.json"),
            kvm_works=kvm_works,
        )
