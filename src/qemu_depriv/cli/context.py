"""What every subcommand receives besides its own arguments."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from qemu_depriv.settings import Settings

if TYPE_CHECKING:  # each command imports its machinery when it runs: start-up is in every launch
    from qemu_depriv.accounts.verified import VerifiedLookup
    from qemu_depriv.vms.launcher import Launcher
    from qemu_depriv.vms.store import StateStore
    from qemu_depriv.vms.teardown import Teardown

#: The object ``add_subparsers`` returns, which each subcommand module registers with.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
#: The longest wait an option may ask for, as for the settings' timeouts.
MAX_SECONDS = 3600.0


def seconds(text: str) -> float:
    """An option's number of seconds to wait: more than 0, at most an hour (argparse type).

    ``nan``, ``inf`` and negative values would reach the waits and the sockets' timeouts only
    once the command has begun (a stop would have claimed its VM).
    """
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= MAX_SECONDS:  # also false for nan
        raise argparse.ArgumentTypeError(
            f"{text} seconds: give more than 0 and at most {MAX_SECONDS:.0f}"
        )
    return value


@dataclass(frozen=True)
class Context:
    """The merged settings and the output mode.

    ``command_line`` starts this process again as it was started (interpreter included),
    when the process is the command's own, not a caller's that ran :func:`main` in it.
    """

    settings: Settings
    as_json: bool
    command_line: tuple[str, ...] | None = None

    def launcher(self) -> Launcher:
        """A launcher (and its teardown) wired to this host, as every command builds it."""
        from qemu_depriv.vms.launcher import system_launcher

        return system_launcher(self.settings)

    def teardown(self) -> Teardown:
        """A teardown wired to this host, as the launcher's: for commands that launch nothing."""
        from qemu_depriv.vms.teardown import system_teardown

        return system_teardown(self.settings)

    def store(self) -> StateStore:
        """The state store, as the launcher opens it: for commands that only read it."""
        from qemu_depriv.vms.store import StateStore

        return StateStore.of(self.settings)

    def lookup(self) -> VerifiedLookup:
        """Account lookups through this host's NSS, with the settings' deadline."""
        from qemu_depriv.accounts.verified import system_lookup

        return system_lookup(self.settings.lookup_timeout, self.settings.sources_without_accounts)
