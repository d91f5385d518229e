"""``qemu-depriv demo``: the main job on a bare machine (see the README)."""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from qemu_depriv.cli.context import Commands, Context
from qemu_depriv.cli.output import describe_decision, emit_json

if TYPE_CHECKING:
    from qemu_depriv.demo import Event, Result


def add_parser(commands: Commands, parent: argparse.ArgumentParser) -> None:
    """Register the subcommand."""
    parser = commands.add_parser(
        "demo",
        parents=[parent],
        help="resolve domains across every tier, then launch, inspect and stop real VMs (root)",
    )
    parser.set_defaults(run=run)


def _scenario_json(result: Result) -> dict[str, Any]:
    request = result.scenario.request
    return {
        "title": result.scenario.title,
        "domid": request.domid,
        "name": request.name,
        "expect": result.scenario.expect,
        "got": result.got,
        "decision": result.decision.as_dict() if result.decision else None,
        "error": result.error.message if result.error else None,
    }


def _print_scenario(result: Result) -> None:
    request = result.scenario.request
    label = f"domid {request.domid}" + (f" ({request.name})" if request.name else "")
    print(f"== {result.scenario.title}: {label}, prefix {request.prefix}")
    if result.decision is not None:
        print("\n".join(describe_decision(result.decision)))
    elif result.error is not None:
        print(f"refused (exit {result.error.exit_code}): {result.error.message}")
    print()


def _print_event(event: Event) -> None:
    from qemu_depriv.demo import Escapee, Refused, Stopped, Supervised, VmShown

    if isinstance(event, VmShown):
        print(
            f"{event.name}: domid {event.domid}, tier {event.tier}, QEMU pid {event.pid}\n"
            f"  /proc/{event.pid}/status  Uid: {' '.join(map(str, event.uids))}  "
            f"Gid: {' '.join(map(str, event.gids))}  CapEff: {event.cap_eff:016x}\n"
            f"  /proc/{event.pid}/root    {event.root}\n"
            + "\n".join(
                textwrap.wrap(
                    "layers verified before the guest ran: " + ", ".join(event.verified),
                    78,
                    initial_indent="  ",
                    subsequent_indent="    ",
                )
            )
        )
    elif isinstance(event, Refused):
        print(
            f"{event.name}: refused (exit {event.exit_code}): {event.message}\n"
            f"  VMs in the store afterwards: {event.vms_after} (nothing was started)"
        )
    elif isinstance(event, Escapee):
        print(
            f"{event.name}: a process left behind as uid {event.uid}, in its own session "
            f"(as a compromised QEMU would): live processes of the uid: {list(event.pids)}"
        )
    elif isinstance(event, Stopped):
        print(f"{event.name}: stopped; live processes of uid {event.uid}: {list(event.left)}")
    elif isinstance(event, Supervised):
        print(
            f"qemu-depriv run -- {' '.join(event.command)}\n"
            f"  {event.name}: QEMU pid {event.pid} as uid {event.uid} (tier {event.tier}), "
            f"{len(event.verified)} layers verified, supervised in the foreground\n"
            f"  SIGTERM to the supervisor: exit {event.exit_code}; live processes of uid "
            f"{event.uid}: {list(event.left)}"
        )


def run(_args: argparse.Namespace, context: Context) -> int:
    """Run the resolution scenarios, then the VM walkthrough, printing each step."""
    from qemu_depriv.demo import (
        demo_host,
        resolution_scenarios,
        supervised_walkthrough,
        vm_walkthrough,
    )
    from qemu_depriv.settings import Settings
    from qemu_depriv.vms.launcher import system_launcher

    scenarios: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []

    def say(*lines: str) -> None:
        if not context.as_json:
            print("\n".join(lines))

    def show(walk: Iterator[Event]) -> None:
        for event in walk:
            if context.as_json:
                events.append({"event": type(event).__name__, **dataclasses.asdict(event)})
            else:
                _print_event(event)

    with demo_host() as state_dir:
        say(
            "Part 1: resolving domains against temporary accounts (real NSS, private",
            "mount namespace; the host's /etc/passwd and /etc/group are not touched).\n",
        )
        for result in resolution_scenarios(context.lookup()):
            if context.as_json:
                scenarios.append(_scenario_json(result))
            else:
                _print_scenario(result)
        say("Part 2: three real VMs (QEMU, TCG, 64 MiB, no disk), each as its own account.\n")
        show(vm_walkthrough(system_launcher(Settings(state_dir=state_dir))))
        say("\nPart 3: a QEMU command line someone already has, run as it is, supervised.\n")
        show(supervised_walkthrough(state_dir))
    if context.as_json:
        emit_json({"scenarios": scenarios, "vms": events})
    else:
        print("\nEvery step showed what it must: nothing of any VM is left.")
    return 0
