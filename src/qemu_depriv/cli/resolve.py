"""``qemu-depriv resolve``: print which account a domain's device model would run as."""

from __future__ import annotations

import argparse

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import describe_decision, emit_json, warn


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    parser = commands.add_parser(
        "resolve", parents=[parent], help="print the account a domain's device model runs as"
    )
    parser.add_argument("--domid", required=True, help="the domain's id, 1-32751")
    parser.add_argument("--name", help="the domain's name (for the name tier)")
    parser.add_argument("--user", help="an explicit account (the domain's device_model_user)")
    parser.add_argument(
        "--no-restrict",
        dest="restrict",
        action="store_false",
        default=None,
        help="allow root and gid 0 as a last resort (off by default)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Resolve and print; errors propagate to the caller."""
    from qemu_depriv.accounts.chain import Request, resolve
    from qemu_depriv.accounts.names import validate_user_name
    from qemu_depriv.xl.domain import validate_domain_name, validate_domid

    request = Request(
        domid=validate_domid(args.domid),
        name=validate_domain_name(args.name) if args.name is not None else None,
        user=validate_user_name(args.user, what="--user") if args.user is not None else None,
        restrict=context.settings.restrict if args.restrict is None else args.restrict,
        prefix=context.settings.prefix,
    )
    decision = resolve(request, context.lookup())
    for warning in decision.warnings:
        warn(warning)
    if context.as_json:
        emit_json({**decision.as_dict(), "layers": context.settings.layers.as_dict()})
    else:
        print("\n".join(describe_decision(decision)))
    return 0
