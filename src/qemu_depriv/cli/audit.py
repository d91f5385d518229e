"""``qemu-depriv audit``: every QEMU on the host, what it lacks, and monitoring output."""

from __future__ import annotations

import argparse
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import emit_json
from qemu_depriv.errors import InvalidInput

if TYPE_CHECKING:
    from qemu_depriv.checks.audit import Audited

WIDTH = 80


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    parser = commands.add_parser(
        "audit", parents=[parent], help="inspect every QEMU process on the host, ours or not"
    )
    parser.add_argument(
        "--prometheus", type=Path, metavar="FILE", help="also write node-exporter textfile metrics"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Audit, print, export; exit 1 when any finding is a warning or worse."""
    from qemu_depriv.accounts.nss import LibcLookup
    from qemu_depriv.checks.audit import audit_host, summary

    if args.prometheus is not None:
        _check_target(args.prometheus)
    lookup = LibcLookup(timeout=context.settings.lookup_timeout)
    audited = audit_host(context.settings.state_dir, lookup)
    report = summary(audited)
    if args.prometheus is not None:
        # Only here: prometheus_client takes 100-130 ms to import, half an audit's time.
        from qemu_depriv.checks.prometheus import write_metrics

        write_metrics(args.prometheus, audited, report)
    if context.as_json:
        emit_json({"processes": [a.as_dict() for a in audited], "summary": report})
    else:
        _table(audited, report)
    return 0 if report["ok"] else 1


def _check_target(path: Path) -> None:
    """Refuse a --prometheus path that can never be written, before auditing anything."""
    if path.is_dir():
        raise InvalidInput(f"--prometheus {path}: is a directory: give the file to write")
    if not path.parent.is_dir():
        raise InvalidInput(f"--prometheus {path}: {path.parent} is no directory")


def _table(audited: list[Audited], report: dict[str, object]) -> None:
    """Every finding, worst first, each with its fix wrapped under it; clean processes last."""
    print(f"{'SEVERITY':<9} {'CODE':<15} {'PID':>7} {'UID':>10}  VM / USER")
    rows = sorted(
        ((finding, entry) for entry in audited for finding in entry.findings),
        key=lambda row: (-row[0].severity, row[0].code, row[1].observed.snap.pid),
    )
    for finding, entry in rows:
        print(f"{finding.severity!s:<9} {finding.code:<15} {_where(entry)}"[:WIDTH])
        for line in textwrap.wrap(finding.message, WIDTH - 10):
            print(f"{'':<10}{line}")
    for entry in audited:
        if not entry.findings:
            print(f"{'ok':<9} {'':<15} {_where(entry)}"[:WIDTH])
    models, ours, worst = report["device_models"], report["ours"], report["worst"]
    print(f"{models} device model(s), {ours} ours; worst: {worst}")


def _where(entry: Audited) -> str:
    snap = entry.observed.snap
    who = entry.vm or entry.observed.user or "-"
    return f"{snap.pid:>7} {snap.status.uids[1]:>10}  {who}"
