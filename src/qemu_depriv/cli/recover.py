"""``qemu-depriv recover``: after a crash of qemu-depriv itself, leave nothing unaccounted for."""

from __future__ import annotations

import argparse

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import emit_json, warn


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    recover = commands.add_parser(
        "recover", parents=[parent], help="after a crash: tear down what is not running as leased"
    )
    recover.set_defaults(run=run)


def run(_args: argparse.Namespace, context: Context) -> int:
    """Reconcile the store with the host; exit 0 when done."""
    from qemu_depriv.vms.recovery import RecoveryReport, recover

    teardown = context.teardown()
    report = recover(teardown) if teardown.store.exists() else RecoveryReport()
    for warning in report.warnings:
        warn(warning)
    if context.as_json:
        emit_json(report.as_dict())
    else:
        print(
            f"torn down: {', '.join(report.torn_down) or 'none'}; orphan QEMUs killed: "
            f"{len(report.orphans_killed)}; directories removed: {len(report.directories_removed)}"
        )
    return 0
