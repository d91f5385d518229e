"""``qemu-depriv doctor``: is this host ready to run deprivileged device models, and what to fix."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import emit_json


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    doctor = commands.add_parser("doctor", parents=[parent], help="check that the host is ready")
    doctor.add_argument("--qemu", default="/usr/bin/qemu-system-x86_64", help="the QEMU to check")
    doctor.add_argument("--root", type=Path, default=Path("/"), help="an alternate root")
    doctor.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Run every check; exit 1 when something needs fixing."""
    from qemu_depriv.accounts.nsswitch import read_nsswitch
    from qemu_depriv.accounts.provision import check_root
    from qemu_depriv.checks.doctor import (
        check_accounts,
        check_cgroups,
        check_kernel,
        check_qemu,
        check_sources,
        check_state_dir,
    )
    from qemu_depriv.isolation.cgroups import CgroupHost
    from qemu_depriv.qemu.caps import CapsProbe

    check_root(args.root)
    settings = context.settings
    findings = [
        *check_qemu(CapsProbe(), args.qemu),
        *check_sources(
            read_nsswitch(), frozenset(settings.sources_without_accounts), settings.lookup_timeout
        ),
        *check_accounts(context.lookup(), settings.prefix, args.root),
        *check_kernel(),
        *(
            check_cgroups(CgroupHost.detect(), settings.layers.cgroup_manager)
            if settings.layers.cgroup
            else ()
        ),
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
