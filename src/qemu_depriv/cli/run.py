"""``qemu-depriv run``: an existing QEMU command line, deprivileged and supervised.

``qemu-depriv-dm`` (:func:`qemu_depriv.cli.main.dm_main`) is ``run --xen`` for libxl.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qemu_depriv.cli.context import Commands, Context, seconds


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    run_parser = commands.add_parser(
        "run",
        parents=[parent],
        help="run an existing QEMU command line deprivileged, and supervise it",
        usage="%(prog)s [--name NAME] [--domid N] [--json-status FILE] -- QEMU [ARGS...]",
    )
    run_parser.add_argument("--name", help="the VM's name (default: its -name)")
    run_parser.add_argument(
        "--domid", help="the domid (default: -xen-domid, else the smallest free)"
    )
    run_parser.add_argument(
        "--json-status", type=Path, metavar="FILE", help="write the VM's state here, as JSON"
    )
    run_parser.add_argument(
        "--start-timeout", type=seconds, default=60.0, help="seconds for QEMU to answer QMP"
    )
    run_parser.add_argument(
        "--xen", action="store_true",
        help="the arguments are libxl's (QEMU is the settings' xen_qemu; what qemu-depriv-dm does)",
    )  # fmt: skip
    run_parser.add_argument("qemu", nargs=argparse.REMAINDER, help="QEMU and its options")
    run_parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Start, verify, supervise; exit 0 on a stop signal, QEMU's status when it exits."""
    from qemu_depriv.vms.supervisor import RunRequest, Supervisor
    from qemu_depriv.xl.domain import validate_domid

    argv = list(args.qemu)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if args.xen:
        argv = [context.settings.xen_qemu, *argv]
    request = RunRequest(
        argv=tuple(argv),
        name=args.name,
        domid=validate_domid(args.domid) if args.domid is not None else None,
        xen=args.xen,
        status_file=args.json_status,
        start_timeout=args.start_timeout,
    )
    supervisor = Supervisor(context.launcher(), echo=sys.stderr, handover=context.command_line)
    return supervisor.run(request)
