"""``qemu-depriv stop``: tear a device model down; exit 0 only when nothing of it is left."""

from __future__ import annotations

import argparse

from qemu_depriv.cli.context import Commands, Context, seconds
from qemu_depriv.cli.output import emit_json, warn


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    stop = commands.add_parser("stop", parents=[parent], help="tear a device model down")
    stop.add_argument("vm", help="the VM's name or domid")
    stop.add_argument("--timeout", type=seconds, default=10.0, help="seconds to wait for quit")
    stop.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Stop one VM; exit 0 only when nothing of it is left."""
    record, warnings = context.teardown().stop(args.vm, timeout=args.timeout)
    for warning in warnings:
        warn(warning)
    if context.as_json:
        emit_json(
            {"name": record.name, "domid": record.domid, "uid": record.uid, "state": "stopped",
             "warnings": warnings}
        )  # fmt: skip
    else:
        print(f"{record.name}: stopped; no process of uid {record.uid} is left")
    return 0
