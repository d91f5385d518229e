"""``launch``, ``stop`` and ``list``: the device models' life cycle."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import describe_decision, emit_json, warn
from qemu_depriv.domain import MODES, validate_domid

if TYPE_CHECKING:
    from qemu_depriv.launcher import Launcher
    from qemu_depriv.state import VmRecord


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register ``launch``, ``stop`` and ``list``."""
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
        "--start-timeout", type=float, default=30.0, help="seconds for QEMU to answer QMP"
    )
    launch.add_argument("--dry-run", action="store_true", help="print the plan, start nothing")
    launch.set_defaults(run=run_launch)

    stop = commands.add_parser("stop", parents=[parent], help="tear a device model down")
    stop.add_argument("vm", help="the VM's name or domid")
    stop.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for quit")
    stop.set_defaults(run=run_stop)

    listing = commands.add_parser("list", parents=[parent], help="the VMs in the state store")
    listing.set_defaults(run=run_list)

    recover = commands.add_parser(
        "recover", parents=[parent], help="after a crash: tear down what is not running as leased"
    )
    recover.set_defaults(run=run_recover)


def vm_json(record: VmRecord, launcher: Launcher) -> dict[str, Any]:
    """The JSON form of one VM, as ``launch --json`` and ``list --json`` print it."""
    return {
        "name": record.name,
        "domid": record.domid,
        "mode": record.mode,
        "pid": record.pid,
        "uid": record.uid,
        "gid": record.gid,
        "tier": record.tier,
        "runas": record.runas,
        "qmp": str(launcher.paths(record.domid).qmp),
        "state": launcher.status(record),
        "decision": record.decision,
        "layers": record.layers,
        "verification": record.verification,
    }


def run_launch(args: argparse.Namespace, context: Context) -> int:
    """Launch (or plan) one device model."""
    from qemu_depriv.launcher import LaunchRequest
    from qemu_depriv.xlcfg import load_domain

    request = LaunchRequest(
        config=load_domain(args.domain_file),
        domid=validate_domid(args.domid) if args.domid is not None else None,
        mode=args.mode,
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
                {"mode": request.mode, "domid": request.domid, "decision": None, "argv": None,
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
                {"mode": plan.mode, "domid": plan.domid, "decision": plan.decision.as_dict(),
                 "argv": plan.argv, "reason": reason, "warnings": list(plan.warnings),
                 "layers": plan.layers.as_dict()}
            )  # fmt: skip
        else:
            print(f"domid {plan.domid}, mode {plan.mode}: {reason}")
            print("\n".join(describe_decision(plan.decision)))
            print(shlex.join(plan.argv))
        return 0
    record = launcher.launch(request)
    if context.as_json:
        emit_json(vm_json(record, launcher))
    else:
        print(
            f"{record.name}: domid {record.domid}, QEMU pid {record.pid}, running as uid "
            f"{record.uid} gid {record.gid} (tier {record.tier}), verified from /proc"
        )
    return 0


def run_stop(args: argparse.Namespace, context: Context) -> int:
    """Stop one VM; exit 0 only when nothing of it is left."""
    launcher = context.launcher()
    record, warnings = launcher.stop(args.vm, timeout=args.timeout)
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


def run_list(_args: argparse.Namespace, context: Context) -> int:
    """List the VMs with their liveness."""
    launcher = context.launcher()
    records = launcher.store.all() if launcher.store.exists() else []
    if context.as_json:
        emit_json({"vms": [vm_json(record, launcher) for record in records]})
        return 0
    print(f"{'DOMID':>5}  {'NAME':<20} {'STATE':<9} {'PID':>7} {'UID':>10}  TIER")
    for record in records:
        print(
            f"{record.domid:>5}  {record.name:<20} {launcher.status(record):<9} "
            f"{record.pid or '-':>7} {record.uid if record.uid is not None else '-':>10}  "
            f"{record.tier or '-'}"
        )
    return 0


def run_recover(_args: argparse.Namespace, context: Context) -> int:
    """Reconcile the store with the host; exit 0 when done."""
    from qemu_depriv.recovery import RecoveryReport

    launcher = context.launcher()
    report = launcher.recover() if launcher.store.exists() else RecoveryReport()
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
