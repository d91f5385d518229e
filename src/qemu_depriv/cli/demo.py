"""``qemu-depriv demo``: the main job on a bare machine (see the README)."""

from __future__ import annotations

import argparse
from typing import Any

from qemu_depriv.cli.context import Context
from qemu_depriv.cli.output import describe_decision, emit_json
from qemu_depriv.demo import run_demo


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parent: argparse.ArgumentParser,
) -> None:
    """Register the subcommand."""
    parser = commands.add_parser(
        "demo",
        parents=[parent],
        help="show every tier and some refusals against temporary accounts (root)",
    )
    parser.set_defaults(run=run)


def run(_args: argparse.Namespace, context: Context) -> int:
    """Run the scenarios, printing each as it completes."""
    results: list[dict[str, Any]] = []
    if not context.as_json:
        print("Resolving domains against temporary accounts in a private mount namespace.")
        print("The host's /etc/passwd and /etc/group are not touched.\n")
    for result in run_demo():
        request = result.scenario.request
        if context.as_json:
            results.append(
                {
                    "title": result.scenario.title,
                    "domid": request.domid,
                    "name": request.name,
                    "expect": result.scenario.expect,
                    "got": result.got,
                    "decision": result.decision.as_dict() if result.decision else None,
                    "error": result.error.message if result.error else None,
                }
            )
            continue
        label = f"domid {request.domid}" + (f" ({request.name})" if request.name else "")
        print(f"== {result.scenario.title}: {label}, prefix {request.prefix}")
        if result.decision is not None:
            print("\n".join(describe_decision(result.decision)))
        elif result.error is not None:
            print(f"refused (exit {result.error.exit_code}): {result.error.message}")
        print()
    if context.as_json:
        emit_json({"scenarios": results})
    else:
        print("Every scenario gave what it must.")
    return 0
