"""``qemu-depriv launch``: start a device model from its xl.cfg, verified, as its own user."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.cli.context import Commands, Context, seconds
from qemu_depriv.cli.output import describe_decision, emit_json, warn

if TYPE_CHECKING:
    from qemu_depriv.vms.paths import VmPaths
    from qemu_depriv.vms.store import VmRecord

MODES = ("standalone", "xen")


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    launch = commands.add_parser(
        "launch", parents=[parent], help="start a device model as its own unprivileged user"
    )
    launch.add_argument("domain_file", metavar="CONFIG", type=Path, help="the domain's xl.cfg file")
    launch.add_argument("--domid", help="the domid (default: the smallest free one)")
    launch.add_argument("--mode", choices=MODES, default="standalone", help="default: standalone")
    launch.add_argument("--qemu", help="the QEMU binary (default: from PATH)")
    launch.add_argument("--accel", choices=("tcg", "kvm"), default="tcg", help="default: tcg")
    launch.add_argument(
        "--no-restrict", dest="restrict", action="store_false", default=None,
        help="allow root as a last resort (overrides dm_restrict in the file)",
    )  # fmt: skip
    launch.add_argument(
        "--start-timeout", type=seconds, default=30.0, help="seconds for QEMU to answer QMP"
    )
    launch.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    launch.set_defaults(run=run)


def vm_json(record: VmRecord, paths: VmPaths) -> dict[str, Any]:
    """The JSON form of one VM, as ``launch --json`` and ``list --json`` print it."""
    return {
        "name": record.name,
        "domid": record.domid,
        "mode": record.mode.value,
        "pid": record.pid,
        "uid": record.uid,
        "gid": record.gid,
        "tier": record.tier,
        "runas": record.runas,
        "qmp": str(paths.qmp),
        "state": record.status().value,
        "decision": record.decision,
        "layers": record.layers.as_dict() if record.layers is not None else None,
        "verification": record.verification,
        "taps": [
            {k: tap.get(k) for k in ("name", "bridge", "mac", "ifindex", "created")}
            for tap in record.taps or []
        ],
    }


def run(args: argparse.Namespace, context: Context) -> int:
    """Launch (or plan) one device model."""
    from qemu_depriv.vms.launcher import LaunchRequest
    from qemu_depriv.vms.store import Mode
    from qemu_depriv.xl.config import load_domain
    from qemu_depriv.xl.domain import validate_domid

    request = LaunchRequest(
        config=load_domain(args.domain_file),
        domid=validate_domid(args.domid) if args.domid is not None else None,
        mode=Mode(args.mode),
        qemu=args.qemu,
        accel=args.accel,
        restrict=args.restrict,
        start_timeout=args.start_timeout,
    )
    launcher = context.launcher()
    needed, reason = launcher.device_model_need(request)
    if not needed:
        if context.as_json:
            emit_json(
                {"mode": request.mode.value, "domid": request.domid, "decision": None, "argv": None,
                 "reason": reason}
            )  # fmt: skip
        else:
            print(f"{request.config.name}: no device model: {reason}; nothing started")
        return 0
    if args.dry_run:
        plan = launcher.plan(request, request.domid or launcher.free_domid())
        for warning in (*plan.decision.warnings, *plan.warnings):
            warn(warning)
        if context.as_json:
            emit_json(
                {"mode": plan.mode.value, "domid": plan.domid, "decision": plan.decision.as_dict(),
                 "argv": plan.argv, "reason": reason, "warnings": list(plan.warnings),
                 "layers": plan.layers.as_dict(), "taps": [t.as_dict() for t in plan.taps]}
            )  # fmt: skip
        else:
            print(f"domid {plan.domid}, mode {plan.mode}: {reason}")
            print("\n".join(describe_decision(plan.decision)))
            for tap in plan.taps:
                print(f"tap {tap.name} on bridge {tap.bridge}: its descriptor as fd=@{tap.name}")
            print(shlex.join(plan.argv))
        return 0
    record = launcher.launch(request)
    if context.as_json:
        emit_json(vm_json(record, launcher.paths(record.domid)))
    else:
        group = record.layers.cgroup if record.layers is not None else None
        scope = f", in systemd scope {group.unit}" if group and group.unit else ""
        taps = ", ".join(f"{t['name']} on {t['bridge']}" for t in record.taps or [])
        print(
            f"{record.name}: domid {record.domid}, QEMU pid {record.pid}, running as uid "
            f"{record.uid} gid {record.gid} (tier {record.tier}){scope}"
            f"{f', taps {taps}' if taps else ''}, verified from /proc"
        )
    return 0
