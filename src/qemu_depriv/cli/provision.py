"""``qemu-depriv provision``: create the device-model accounts, idempotently."""

from __future__ import annotations

import argparse
from pathlib import Path

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import emit_json
from qemu_depriv.errors import InvalidInput, PolicyRefusal

KINDS = ("range", "shared", "reaper", "user")


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    provision = commands.add_parser(
        "provision", parents=[parent], help="create the device-model accounts (idempotent)"
    )
    provision.add_argument("kind", choices=KINDS, help="which account to create")
    provision.add_argument("name", nargs="?", help="the domain's name, for 'user'")
    provision.add_argument("--base", type=int, help="range: the base uid (a multiple of 65536)")
    provision.add_argument("--root", type=Path, default=Path("/"), help="an alternate root")
    provision.add_argument("--dry-run", action="store_true", help="print the commands only")
    provision.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Plan, then apply unless ``--dry-run``; refuse to touch unsafe existing accounts."""
    from qemu_depriv.accounts.provision import (
        account_name,
        apply_plan,
        plan_range,
        plan_single,
        read_account_files,
    )

    _check_arguments(args)
    prefix = context.settings.prefix
    name = account_name(args.kind, prefix, args.name)
    files = read_account_files(args.root)
    if args.kind == "range":
        plan = plan_range(files, prefix, args.root, args.base)
    else:
        plan = plan_single(files, name, args.root)
    if plan.findings:
        if not context.as_json:  # with --json, the error object is the one document
            for finding in plan.findings:
                print(f"{name}: {finding}")
        raise PolicyRefusal(
            f"{name} exists but is unsafe ({'; '.join(plan.findings)}); left unchanged"
        )
    if not args.dry_run:
        apply_plan(plan)
    if context.as_json:
        emit_json(
            {"account": name, "present": bool(plan.present), "commands": plan.shell(),
             "applied": bool(plan.commands) and not args.dry_run}
        )  # fmt: skip
    elif plan.present:
        print(f"{name}: already in place; nothing to do")
    else:
        for line in plan.shell():
            print(line if args.dry_run else f"ran: {line}")
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse what no kind takes, before anything is read."""
    from qemu_depriv.accounts.provision import check_root

    check_root(args.root)
    if args.name is not None and args.kind != "user":
        raise InvalidInput(f"provision {args.kind} takes no NAME (only 'provision user NAME')")
    if args.base is not None and args.kind != "range":
        raise InvalidInput("--base is for 'provision range' only")
    if args.name is not None:
        from qemu_depriv.xl.domain import validate_domain_name

        validate_domain_name(args.name)
