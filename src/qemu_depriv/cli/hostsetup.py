"""``provision`` and ``doctor``: setting up a host and checking it."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import emit_json
from qemu_depriv.errors import InvalidInput, PolicyRefusal

KINDS = ("range", "shared", "reaper", "user")


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register ``provision`` and ``doctor``."""
    provision = commands.add_parser(
        "provision", parents=[parent], help="create the device-model accounts (idempotent)"
    )
    provision.add_argument("kind", choices=KINDS, help="which account to create")
    provision.add_argument("name", nargs="?", help="the domain's name, for 'user'")
    provision.add_argument("--base", type=int, help="range: the base uid (a multiple of 65536)")
    provision.add_argument("--root", type=Path, default=Path("/"), help="an alternate root")
    provision.add_argument("--dry-run", action="store_true", help="print the commands only")
    provision.set_defaults(run=run_provision)

    doctor = commands.add_parser("doctor", parents=[parent], help="check that the host is ready")
    doctor.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64", help="the QEMU to check")
    doctor.add_argument("--root", type=Path, default=Path("/"), help="an alternate root")
    doctor.set_defaults(run=run_doctor)


def run_provision(args: argparse.Namespace, context: Context) -> int:
    """Plan, then apply unless ``--dry-run``; refuse to touch unsafe existing accounts."""
    from qemu_depriv.provision import (
        account_name,
        apply_plan,
        plan_range,
        plan_single,
        read_account_files,
    )

    if not args.root.is_dir():
        raise InvalidInput(f"--root {args.root}: not a directory")
    if args.name is not None and args.kind != "user":
        raise InvalidInput(f"provision {args.kind} takes no NAME (only 'provision user NAME')")
    if args.base is not None and args.kind != "range":
        raise InvalidInput("--base is for 'provision range' only")
    prefix = context.settings.prefix
    name = account_name(args.kind, prefix, args.name)
    files = read_account_files(args.root)
    if args.kind == "range":
        plan = plan_range(files, prefix, args.root, args.base)
    else:
        plan = plan_single(files, name, args.root)
    if plan.findings:
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


def run_doctor(args: argparse.Namespace, context: Context) -> int:
    """Run every check; exit 1 when something needs fixing."""
    from qemu_depriv.directory import system_lookup
    from qemu_depriv.doctor import (
        check_accounts,
        check_kernel,
        check_qemu,
        check_sources,
        check_state_dir,
    )
    from qemu_depriv.nsswitch import read_nsswitch
    from qemu_depriv.qemu.caps import CapsProbe

    settings = context.settings
    findings = [
        *check_qemu(CapsProbe(), args.qemu),
        *check_sources(
            read_nsswitch(), frozenset(settings.sources_without_accounts), settings.lookup_timeout
        ),
        *check_accounts(system_lookup(settings), settings.prefix, args.root),
        *check_kernel(),
        *check_state_dir(settings.state_dir),
    ]
    problems = [f for f in findings if not f.ok]
    if context.as_json:
        emit_json({"ready": not problems, "findings": [dataclasses.asdict(f) for f in findings]})
    else:
        for finding in findings:
            mark = "ok  " if finding.ok else "FIX "
            print(
                f"{mark} {finding.area}: {finding.message}"
                + (f" -> {finding.fix}" if finding.fix else "")
            )
        print("ready" if not problems else f"{len(problems)} thing(s) to fix")
    return 1 if problems else 0
