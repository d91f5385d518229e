"""``qemu-depriv list``: the VMs in the state store, with what their processes say."""

from __future__ import annotations

import argparse

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.launch import vm_json
from qemu_depriv.cli.output import emit_json


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    listing = commands.add_parser("list", parents=[parent], help="the VMs in the state store")
    listing.set_defaults(run=run)


def run(_args: argparse.Namespace, context: Context) -> int:
    """List the VMs with their liveness."""
    from qemu_depriv.vms.paths import vm_paths

    store, state_dir = context.store(), context.settings.state_dir
    records = store.all() if store.exists() else []
    if context.as_json:
        emit_json({"vms": [vm_json(r, vm_paths(state_dir, r.domid)) for r in records]})
        return 0
    print(f"{'DOMID':>5}  {'NAME':<20} {'STATE':<9} {'PID':>7} {'UID':>10}  TIER")
    for record in records:
        print(
            f"{record.domid:>5}  {record.name:<20} {record.status():<9} "
            f"{record.pid or '-':>7} {record.uid if record.uid is not None else '-':>10}  "
            f"{record.tier or '-'}"
        )
    return 0
