"""What every subcommand receives besides its own arguments."""

from __future__ import annotations

from dataclasses import dataclass

from qemu_depriv.settings import Settings


@dataclass(frozen=True)
class Context:
    """The merged settings and the output mode."""

    settings: Settings
    as_json: bool
