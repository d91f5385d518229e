"""bench/results/summary.md and distributions.png, from the workers' JSON files.

Tables only: what each benchmark runs, and how to read its table, is in bench/README.md.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.axes import Axes

Result = dict[str, Any]
Row = Sequence[object]
MS = 1e3
US = 1e6
#: The two sets of stops (bench/libvirt.py): who reaps the orphaned processes.
SETS = {"pid1": "PID 1", "subreaper": "the worker"}
RESOLUTION = ("resolution-large", "resolution-small")
#: The launch variants that split the CLI's time (bench/launch.py).
VARIANTS_OF_CLI_TIME = ("python", "cli_startup", "library", "cli")


def num(value: float | None, scale: float = MS, digits: int = 1) -> str:
    """``value`` in the unit ``scale`` makes of seconds, or a dash."""
    return "-" if value is None else f"{value * scale:.{digits}f}"


def times(value: float | None) -> str:
    """A ratio, or a dash."""
    return "-" if value is None else f"{value:.2f}x"


def verdict(value: float | None, target: float) -> str:
    """Whether ``value`` is within ``target``."""
    if value is None:
        return "n/a"
    return "met" if value <= target else "**missed**"


def ratio_row(
    number: str, label: str, ours: str, baseline: str, *, ratio: float | None, target: float
) -> Row:
    """A target row whose figure is a ratio: what was measured, the ratio and its verdict."""
    return [number, label, ours, baseline, times(ratio), f"<= {target}x", verdict(ratio, target)]


def median(summary: Result | None) -> float | None:
    """The median of a worker's ``summarize`` output, None when it had no sample."""
    if not summary or not summary.get("n"):
        return None
    return float(summary["median"])


def table(header: Sequence[str], rows: Iterable[Row]) -> list[str]:
    """A Markdown table, then a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def code(lines: Sequence[str]) -> list[str]:
    """A fenced block, then a blank line."""
    return ["```", *lines, "```", ""]


def profile(title: str, found: Result | None, *, tree: bool = True) -> list[str]:
    """A pyinstrument profile: the top frames by own time, then (with ``tree``) the call tree."""
    if not found:
        return []
    if "error" in found:
        return [f"Profile of {title}: {found['error']}", ""]
    command = f", `{found['command']}`" if found.get("command") else ""
    lines = [
        f"Profile of {title} ({found['duration']:.3f} s, {found['samples']} samples{command}), "
        "top frames by own time" + (", then the project's call tree" if tree else "") + " (s):",
        "",
        *code(found["flat"]),
    ]
    return lines + code(found["tree"]) if tree else lines


def worker_failed(name: str, results: dict[str, Result], runs: dict[str, Result]) -> list[str]:
    """Nothing when the worker ran; else its exit code and last lines."""
    worker = runs.get(name, {})
    if worker.get("status") == "ok" and name in results:
        return []
    tail = worker.get("tail", [])
    return [
        f"**The {name} worker failed** (exit {worker.get('code')}); its last lines:",
        "",
        *code(tail),
    ]


# -- the sections: each returns its lines and appends its rows to the glance table ----------


def resolution(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 1. Resolution: the chain against the bare lookups", ""]
    for name in RESOLUTION:
        kind = name.removeprefix("resolution-")
        lines += [f"### {kind}", ""]
        if failed := worker_failed(name, results, runs):
            lines += failed
            continue
        data = results[name]
        target = data["target_ratio"]
        lines += table(
            ["passwd lines", "passwd MB", "group lines", "pairs per tier"],
            [[data["passwd_lines"], f"{data['passwd_bytes'] / 1e6:.1f}", data["group_lines"],
              data["repetitions"]]],
        )  # fmt: skip
        rows = []
        for label, tier in data["tiers"].items():
            chain, floor = median(tier["resolve"]), median(tier["floor"])
            paired = tier["paired_ratio"]
            rows.append([
                label, f"`{tier['runas'] or 'root: no -runas'}`",
                sum(tier["lookups"]["calls"].values()), num(chain, US), num(floor, US),
                times(paired), times(tier["ratio"]), verdict(paired, target),
                tier["lookups"]["repeated"] or "none",
            ])  # fmt: skip
            glance.append([
                "1", f"resolve, {kind}, {label}", f"{num(chain, US)} us", f"{num(floor, US)} us",
                times(paired), f"<= {target:.2f}", verdict(paired, target),
            ])  # fmt: skip
        lines += table(
            ["tier", "runs as", "lookups", "resolve (us)", "floor (us)", "ratio per pair",
             "ratio of medians", f"<= {target:.2f}", "looked up twice"],
            rows,
        )  # fmt: skip
        profiles = data.get("profiles", {})
        worst = max(profiles, key=lambda t: data["tiers"][t]["paired_ratio"], default=None)
        for label, found in profiles.items():
            lines += profile(f"`resolve` ({kind}, {label}, looped)", found, tree=label == worst)
    return lines


def launch(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 2. Launch until verified and running, against raw QEMU", ""]
    if failed := worker_failed("launch", results, runs):
        return lines + failed
    data = results["launch"]
    variants, targets = data["variants"], data["targets"]
    raw = median(variants["raw"])
    rows = []
    for variant, summary in variants.items():
        value, target = median(summary), targets.get(variant)
        to_raw = times(value / raw if value is not None and raw else None)
        against = (
            [times(data["paired_ratios"][variant]), f"<= {target}x",
             verdict(data["ratios"][variant], target)]
            if target else ["", "", ""]
        )  # fmt: skip
        rows.append([
            variant, f"`{data['commands'][variant]}`", num(value), num(summary.get("p10")),
            num(summary.get("p90")), to_raw, *against,
        ])  # fmt: skip
    lines += table(
        ["variant", "what is timed", "median (ms)", "p10", "p90", "to raw", "paired", "target", ""],
        rows,
    )
    bare, startup, library, cli = (median(variants.get(v)) for v in VARIANTS_OF_CLI_TIME)
    if bare is not None and startup is not None and library is not None and raw is not None:
        lines += table(
            ["where the CLI's time goes", "ms"],
            [["bare interpreter", num(bare)], ["interpreter, imports, parser", num(startup)],
             ["imports and parser", num(startup - bare)], ["library launch", num(library)],
             ["startup + library launch", num(startup + library)], ["CLI launch", num(cli)],
             [f"what {targets['cli']}x raw allows", num(targets["cli"] * raw)]],
        )  # fmt: skip
    for variant, target in targets.items():
        glance.append(ratio_row(
            "2", f"launch, {variant}", f"{num(median(variants[variant]))} ms",
            f"{num(raw)} ms (raw QEMU)", ratio=data["ratios"][variant], target=target,
        ))  # fmt: skip
    for variant, found in data.get("profiles", {}).items():
        lines += profile(f"one {variant} launch", found)
    return lines


def libvirt(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 3. Launch: the CLI against libvirt's `virsh create`", ""]
    if failed := worker_failed("libvirt", results, runs):
        return lines + failed
    data = results["libvirt"]
    target, ran = data["target_ratio"], data["libvirt"] == "ran"
    if ran:
        lines += table(
            ["libvirtd start and first probe (s)", "first `virsh create` (ms, not counted)"],
            [[f"{data['libvirt_startup_seconds']:.1f}", num(data["libvirt_first_create_seconds"])]],
        )
    else:
        lines += ["**libvirt could not run here**: no baseline, no ratio.", ""]
        lines += code([data.get("libvirt_error", "?")])
    rows = [
        [variant, SETS[phase], num(median(summary)), num(summary.get("p10")),
         num(summary.get("p90"))]
        for phase in SETS
        for variant, summary in data[phase]["launch"].items()
    ]  # fmt: skip
    lines += table(["tool", "reaper", "median (ms)", "p10", "p90"], rows)
    launches = data["pid1"]["launch"]
    cli, virsh = median(launches.get("qemu-depriv")), median(launches.get("libvirt"))
    glance.append(ratio_row(
        "3", "launch, CLI vs libvirt", f"{num(cli)} ms",
        f"{num(virsh)} ms (virsh create)" if ran else "libvirt unavailable",
        ratio=data["ratio"], target=target,
    ))  # fmt: skip
    if ran:
        lines += table(
            ["CLI / libvirt (PID 1 reaps)", "paired", "target", ""],
            [[times(data["ratio"]), times(data["paired_ratio"]), f"<= {target}x",
              verdict(data["ratio"], target)]],
        )  # fmt: skip
    return lines + profile("one CLI launch", data.get("profile"))


def watched(process: Result) -> list[str]:
    """A watched process's columns: when it died, when it was reaped, before the return."""
    if not process:
        return ["-", "-", "-"]
    return [
        num(median(process["dead"])),
        num(median(process["reaped"])),
        f"{process['dead_before_return']} / {process['reaped_before_return']} of "
        f"{process['count']}",
    ]


def stop(results: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 4. Stop: `qemu-depriv stop` against `virsh destroy`", ""]
    if "libvirt" not in results:
        return [*lines, "(no data: see section 3)", ""]
    data = results["libvirt"]
    rows = []
    for phase, reaper in SETS.items():
        for tool, found in data[phase]["stop"].items():
            wrapper = found.get("wrapper", {})
            codes = wrapper.get("exit_codes_seen_by_subreaper", {})
            live = f"{found['runs_with_live_processes_at_return']}/{found['count']}"
            rows.append([
                reaper, tool, num(median(found["returned"])), *watched(found.get("qemu", {})),
                *watched(wrapper), live,
                ", ".join(f"{n} x {code}" for code, n in codes.items()) or "-",
                len(found["failures"]),
            ])  # fmt: skip
        stops = data[phase]["stop"]
        if "libvirt" in stops:
            ours, theirs = (
                median(stops["qemu-depriv"]["returned"]),
                median(stops["libvirt"]["returned"]),
            )
            ratio = ours / theirs if ours is not None and theirs else None
            glance.append([
                "4", f"stop vs virsh destroy ({reaper} reaps)", f"{num(ours)} ms",
                f"{num(theirs)} ms", times(ratio), "none", "",
            ])  # fmt: skip
    lines += table(
        ["reaper", "tool", "returned (ms)", "QEMU dead (ms)", "QEMU reaped (ms)",
         "QEMU dead / reaped before return", "wrapper dead (ms)", "wrapper reaped (ms)",
         "wrapper dead / reaped before return", "live process at return",
         "wrapper exit codes seen", "failures"],
        rows,
    )  # fmt: skip
    return lines


LEFTOVERS = ("processes", "cgroups", "store_rows")


def leftovers(found: Result) -> int:
    """Processes, cgroups and store rows of the VMs that are still there."""
    return sum(len(found[kind]) for kind in LEFTOVERS)


def scale(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 5. Scale: 100 VMs launched at once through the CLI", ""]
    if failed := worker_failed("scale", results, runs):
        return lines + failed
    data = results["scale"]
    count, raw_rounds, cli_rounds = data["count"], data["rounds"]["raw"], data["rounds"]["cli"]
    rows = [
        [f"cli {i}", f"{r['launch_seconds']:.1f}", f"{r['verified']}/{count}",
         len(r["launch_failures"]), f"{r['peak_cli_rss_kib_per_vm'] / 1024:.1f}",
         f"{r['qemu_rss_kib_per_vm'] / 1024:.1f}", f"{r['wrapper_rss_kib_per_vm'] / 1024:.1f}",
         f"{r['teardown_seconds']:.1f}", len(r["stop_failures"]),
         " / ".join(str(len(r["leftovers_after_teardown"][k])) for k in LEFTOVERS),
         leftovers(r["leftovers_after_retry"]), len(r["killed_by_pid"])]
        for i, r in enumerate(cli_rounds)
    ] + [
        [f"raw {i}", f"{r['seconds']:.1f}", f"{count - len(r['failures'])}/{count}",
         len(r["failures"]), "-", f"{r['qemu_rss_kib_per_vm'] / 1024:.1f}", "-", "-", "-", "-",
         "-", "-"]
        for i, r in enumerate(raw_rounds)
    ]  # fmt: skip
    lines += table(
        ["round", "all verified (s)", "verified", "launch failures",
         "peak CLI RSS per VM (MiB)", "QEMU RSS per VM (MiB)", "wrapper RSS per VM (MiB)",
         "teardown (s)", "stop failures", "left after teardown: processes / cgroups / rows",
         "left after retried stops", "killed by pid"],
        rows,
    )  # fmt: skip
    for what, key in (("Launch", "launch_failures"), ("Stop", "stop_failures")):
        if errors := Counter(f["error"] for r in cli_rounds for f in r[key]):
            lines += [f"{what} failures, by error line:", ""]
            lines += code([f"{n} x {error}" for error, n in errors.most_common()])
    failures = sum(len(r["launch_failures"]) for r in cli_rounds)
    left = sum(leftovers(r["leftovers_after_teardown"]) for r in cli_rounds)
    peak = statistics.median(r["peak_cli_rss_kib_per_vm"] for r in cli_rounds) / 1024
    target = data.get("target_ratio")
    glance += [
        ["5", "100 concurrent launches, all verified", f"{num(median(data['cli_launch']), 1)} s",
         f"{num(median(data['raw']), 1)} s (100 raw)", times(data["ratio"]),
         f"<= {target}x" if target else "-", verdict(data["ratio"], target) if target else ""],
        ["5", "launch failures", failures, "0 (raw)", "-", "0", verdict(failures, 0)],
        ["5", "peak CLI memory per VM", f"{peak:.1f} MiB", "-", "-", "-", ""],
        ["5", "teardown of 100", f"{num(median(data['cli_teardown']), 1)} s", "-", "-", "-", ""],
        ["5", "leftovers after teardown", left, "-", "-", "0", verdict(left, 0)],
    ]  # fmt: skip
    profiles: Result = next((r["profiles"] for r in cli_rounds if "profiles" in r), {})
    for what, found in profiles.items():
        lines += profile(f"one {what} among the 100 concurrent ones", found)
    return lines


def audit(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 6. Audit over 100 device models", ""]
    if failed := worker_failed("audit", results, runs):
        glance.append(["6", "audit over 100 device models", "no result", "-", "-", "-", ""])
        return lines + failed
    data = results["audit"]
    variants, target = data["variants"], data["target_seconds"]
    ps = median(variants["ps"])
    goal = f"<= {num(target, MS, 0)} ms"
    rows: list[Row] = [["ps", num(ps), "1.00x", "", "", ""]]
    for name in ("library", "cli"):
        value, ratio = median(variants[name]), times(data["ratios"][name])
        paired = times(data["paired_ratios"][name])
        rows.append([name, num(value), ratio, paired, goal, verdict(value, target)])
        glance.append([
            "6", f"audit of 100, {name}", f"{num(value)} ms", f"{num(ps)} ms (ps)", ratio, goal,
            verdict(value, target),
        ])  # fmt: skip
    return lines + table(["", "median (ms)", "to ps", "paired", "target", ""], rows)


#: The load worker's commands, each judged against raw at the same level (bench/load.py).
LOAD_COMMANDS = ("launch", "stop", "list", "audit_cli")
KIB_PER_MIB = 1024
#: The resident worker's processes per VM (bench/resident.py), ``ours`` being the first two.
RESIDENT_ROLES = {
    "supervisor": "supervisor (`run`)",
    "wrapper": "PID-namespace wrapper (`unshare`)",
    "ours": "**supervisor + wrapper**",
    "qemu": "QEMU (not ours, for context)",
}


def levels_of(data: Result) -> list[str]:
    """The load worker's levels, as its JSON keys them."""
    return [str(level) for level in data["levels"]]


def load(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 7. Load: launch, stop, list and audit as the host fills up", ""]
    failed = worker_failed("load", results, runs)
    if "load" not in results:
        glance.append(["7", "commands as the host fills up", "no result", "-", "-", "-", ""])
        return lines + failed
    data = results["load"]
    lines += failed
    if bad := data.get("audit_findings_on_ours"):
        lines += ["**Audit findings on this worker's own VMs** (each fails the worker):", ""]
        lines += code(
            [f"level {f['level']} ({f['via']}): {f['vm']} pid {f['pid']}: {f['severity']} "
             f"{f['code']}: {f['message']}" for f in bad[:40]]
        )  # fmt: skip
    rows = []
    for level in levels_of(data):
        found, background = data["results"][level], data["background"][level]
        variants, ratios = found["variants"], found["ratios"]
        rows.append([
            level, num(median(variants["raw"])),
            *(f"{num(median(variants[v]))} ({times(ratios[v])})" for v in LOAD_COMMANDS),
            num(median(variants["audit_library"])), num(found["audit_cli_minus_library"]),
            num(median(background["launch_seconds"])), settled(background.get("settled", {})),
            " ".join(background["loadavg"]),
        ])  # fmt: skip
    lines += table(
        ["running VMs", "raw start", "CLI launch (to raw)", "CLI stop (to raw)",
         "CLI list (to raw)", "CLI audit (to raw)", "library audit", "what the CLI adds to audit",
         "background launches (library)", "quiet after (s); CPUs busy: host, background",
         "load average"],
        rows,
    )  # fmt: skip
    lines += [f"Medians in ms, of {data['repetitions']} repetitions per level.", ""]
    flat, target = data["flatness"], data["targets"]["flatness"]
    top = flat["to_level"]
    rows = []
    for command, found in flat["commands"].items():
        value = found["flatness"]
        rows.append([
            command, times(found["ratio_at_first"]), times(found["ratio_at_last"]), times(value),
            times(found["paired_flatness"]), f"<= {target:.2f}", verdict(value, target),
        ])  # fmt: skip
        glance.append([
            "7", f"{command} at {top} running VMs against at 0, each to raw",
            f"{times(found['ratio_at_last'])} raw", f"{times(found['ratio_at_first'])} raw at 0",
            times(value), f"<= {target:.2f}", verdict(value, target),
        ])  # fmt: skip
    lines += table(
        ["command", "to raw at 0", f"to raw at {top}", f"flatness ({top} / 0)",
         "flatness of the paired ratios", "target", ""],
        rows,
    )  # fmt: skip
    library, library_target = data["audit_library_at_top"], data["targets"]["audit_library_seconds"]
    stop, stop_target = data["stop_to_raw_at_0"], data["targets"]["stop_to_raw_at_0"]
    first = levels_of(data)[0]
    stop_ms = median(data["results"][first]["variants"]["stop"])
    raw_ms = median(data["results"][first]["variants"]["raw"])
    goal = f"<= {num(library_target, MS, 0)} ms"
    lines += table(
        ["other targets", "ours", "target", ""],
        [[f"library audit at {library['level']} running VMs", f"{num(library['median'])} ms",
          goal, verdict(library["median"], library_target)],
         [f"CLI stop at {first} / raw start at {first}", f"{times(stop['ratio'])} "
          f"(paired {times(stop['paired'])})", f"<= {stop_target}x",
          verdict(stop["ratio"], stop_target)]],
    )  # fmt: skip
    glance += [
        ["7", f"library audit at {library['level']} running VMs", f"{num(library['median'])} ms",
         "-", "-", goal, verdict(library["median"], library_target)],
        ratio_row("7", "CLI stop, nothing else running", f"{num(stop_ms)} ms",
                  f"{num(raw_ms)} ms (raw start)", ratio=stop["ratio"], target=stop_target),
    ]  # fmt: skip
    if foreign := data.get("audit_findings_on_foreign"):
        counts = ", ".join(f"{n} x {finding}" for finding, n in sorted(foreign.items()))
        lines += [f"Findings on QEMUs that were not this worker's (not counted): {counts}.", ""]
    return lines


def resident(results: dict[str, Result], runs: dict[str, Result], glance: list[Row]) -> list[str]:
    lines = ["## 8. Resident memory per supervised VM (`qemu-depriv run`)", ""]
    if failed := worker_failed("resident", results, runs):
        if "resident" not in results:
            glance.append(["8", "resident PSS per supervised VM", "no result", "-", "-", "-", ""])
            return lines + failed
        lines += failed
    data = results["resident"]
    pss, kib, target = data["pss_kib"], data["kib"], data["target_kib"]

    def mib(value: float | None) -> str:
        return "-" if value is None else f"{value / KIB_PER_MIB:.1f}"

    rows = [
        [label, mib(pss[role]["median"]), mib(pss[role]["max"]),
         mib(kib[role]["rss"]) if role in kib else "-",
         mib(kib[role]["private"]) if role in kib else "-"]
        for role, label in RESIDENT_ROLES.items()
    ]  # fmt: skip
    bare = kib["bare_interpreter"]
    rows.append([
        "bare interpreter of the venv (`python -c`, asleep; for reference)", mib(bare["pss"]),
        "-", mib(bare["rss"]), mib(bare["private"]),
    ])  # fmt: skip
    lines += table(
        [f"process, {data['count']} VMs running", "PSS median (MiB)", "PSS max", "RSS median",
         "private median"],
        rows,
    )  # fmt: skip
    ours = data["ours_pss_median_kib"]
    stopped = data["stop"]
    lines += table(
        ["supervisor + wrapper PSS per VM", "target", "", "start until verified (median)",
         f"all {data['count']} stopped by SIGTERM", "exited non-zero or not stopped"],
        [[f"{mib(ours)} MiB", f"<= {mib(target)} MiB", verdict(ours, target),
          f"{num(median(data['start_seconds']))} ms", f"{stopped['seconds']:.1f} s",
          len(stopped["failures"])]],
    )  # fmt: skip
    glance.append([
        "8", f"resident PSS per supervised VM ({data['count']} running)", f"{mib(ours)} MiB",
        f"{mib(bare['pss'])} MiB (bare python)", "-", f"<= {mib(target)} MiB",
        verdict(ours, target),
    ])  # fmt: skip
    return lines


def settled(found: Result) -> str:
    """How long the load worker waited for a quiet host, and how busy it still was."""
    if not found:
        return "-"
    return (f"{found['seconds']:.0f}; {found['host_cpus']:.2f}, "
            f"{found['background_cpus']:.2f}")  # fmt: skip


def issue18(results: dict[str, Result]) -> list[str]:
    """The five targets of issue 18, from the launch, load, scale and resident workers."""
    rows: list[Row] = []
    none = ["no result", "-", "-", "-", "n/a"]
    if launched := results.get("launch"):
        variants, target = launched["variants"], launched["targets"]["cli"]
        value = launched["ratios"]["cli"]
        raw = f"{num(median(variants['raw']))} ms"
        rows.append(ratio_row(
            "1", "CLI launch / raw start", f"{num(median(variants['cli']))} ms", raw,
            ratio=value, target=target,
        ))  # fmt: skip
        if proto := launched.get("prototype_ratios"):
            rows += [
                ratio_row("1p", f"prototype resident launcher (bench/forkserver.py): {what}",
                          f"{num(median(variants[key]))} ms", raw, ratio=proto[what], target=goal)
                for what, key, goal in (("launch", "prototype", target),
                                        ("stop", "prototype_stop", 3.0))
            ]  # fmt: skip
    else:
        rows.append(["1", "CLI launch / raw start", *none])
    loaded = results.get("load")
    if loaded:
        first = levels_of(loaded)[0]
        variants = loaded["results"][first]["variants"]
        stop, target = loaded["stop_to_raw_at_0"]["ratio"], loaded["targets"]["stop_to_raw_at_0"]
        rows.append(ratio_row(
            "2", "CLI stop / raw start (nothing else running)",
            f"{num(median(variants['stop']))} ms", f"{num(median(variants['raw']))} ms",
            ratio=stop, target=target,
        ))  # fmt: skip
        flat, target = loaded["flatness"], loaded["targets"]["flatness"]
        library = loaded["audit_library_at_top"]
        limit = loaded["targets"]["audit_library_seconds"]
        commands = flat["commands"]
        worst = max(commands, key=lambda c: commands[c]["flatness"] or 0.0)
        each = ", ".join(f"{c} {times(found['flatness'])}" for c, found in commands.items())
        met = [verdict(found["flatness"], target) for found in commands.values()]
        met.append(verdict(library["median"], limit))
        raw = loaded["results"]
        rows.append([
            "3", f"flat at {flat['to_level']} running VMs: (ratio to raw at {flat['to_level']}) "
            "/ (ratio to raw at 0)", f"{each}; library audit {num(library['median'])} ms",
            f"raw {num(median(raw[first]['variants']['raw']))} ms at 0, "
            f"{num(median(raw[str(flat['to_level'])]['variants']['raw']))} ms at "
            f"{flat['to_level']}",
            f"worst {times(flat['worst'])} ({worst})",
            f"<= {target:.2f} each; library audit <= {num(limit, MS, 0)} ms",
            next((m for m in met if m != "met"), "met"),
        ])  # fmt: skip
    else:
        rows += [["2", "CLI stop / raw start", *none], ["3", "flat as the host fills up", *none]]
    if scaled := results.get("scale"):
        target = scaled.get("target_ratio", 3.0)
        peak = (
            statistics.median(r["peak_cli_rss_kib_per_vm"] for r in scaled["rounds"]["cli"])
            / KIB_PER_MIB
        )
        raw = f"{num(median(scaled['raw']), 1)} s"
        rows.append(ratio_row(
            "4", "100 concurrent CLI launches / 100 concurrent raw starts",
            f"{num(median(scaled['cli_launch']), 1)} s; peak CLI memory {peak:.1f} MiB per VM",
            raw, ratio=scaled["ratio"], target=target,
        ))  # fmt: skip
        if proto := scaled.get("prototype"):
            rows.append(ratio_row(
                "4p", "the same through the resident-launcher prototype (bench/forkserver.py)",
                f"{num(proto['launch_seconds'], 1)} s ({proto['verified']} verified)",
                raw, ratio=proto["ratio"], target=target,
            ))  # fmt: skip
    else:
        rows.append(["4", "100 concurrent CLI launches / 100 raw", *none])
    if kept := results.get("resident"):
        ours, target = kept["ours_pss_median_kib"], kept["target_kib"]
        bare = kept["kib"]["bare_interpreter"]["pss"]
        supervisor, wrapper = (kept["pss_kib"][r]["median"] for r in ("supervisor", "wrapper"))
        rows.append([
            "5", f"resident PSS per supervised VM ({kept['count']} running)",
            f"{ours / KIB_PER_MIB:.1f} MiB (supervisor {supervisor / KIB_PER_MIB:.1f} + wrapper "
            f"{wrapper / KIB_PER_MIB:.1f})", f"{bare / KIB_PER_MIB:.1f} MiB (bare python)",
            "-", f"<= {target / KIB_PER_MIB:.0f} MiB", verdict(ours, target),
        ])  # fmt: skip
    else:
        rows.append(["5", "resident PSS per supervised VM", *none])
    return [
        "## Issue 18 targets",
        "",
        *table(["#", "target", "ours (median)", "raw / baseline (median)", "ratio", "target", ""],
               rows),
    ]  # fmt: skip


def summary(results: dict[str, Result], runs: dict[str, Result]) -> str:
    """summary.md: the host, the glance table, then each benchmark's tables."""
    host: Result = next((r["host"] for r in results.values() if "host" in r), {})
    glance: list[Row] = []
    sections = [
        *resolution(results, runs, glance),
        *launch(results, runs, glance),
        *libvirt(results, runs, glance),
        *stop(results, glance),
        *scale(results, runs, glance),
        *audit(results, runs, glance),
        *load(results, runs, glance),
        *resident(results, runs, glance),
    ]
    head = [
        "# qemu-depriv benchmarks",
        "",
        "What each benchmark runs and how to read its table: bench/README.md. Raw samples: the "
        "JSON files beside this one; their spread: distributions.png; launch latency against "
        "the number of running VMs: load.png.",
        "",
        *table(
            ["kernel", "CPUs", "QEMU", "Python", "load average at start", "time"],
            [[host.get("kernel", "?"), host.get("cpus", "?"), host.get("qemu", "?"),
              host.get("python", "?"), ", ".join(f"{x:.2f}" for x in host.get("loadavg", [])),
              host.get("time", "")]],
        ),
        *issue18(results),
        "## At a glance",
        "",
        *table(["#", "benchmark", "qemu-depriv (median)", "baseline (median)", "ratio", "target",
                ""], glance),
    ]  # fmt: skip
    return "\n".join([*head, *sections])


# -- the plot -------------------------------------------------------------------------------


def plot_resolution(ax: Axes, results: dict[str, Result]) -> None:
    labels, data = [], []
    for name in RESOLUTION:
        for label, tier in results.get(name, {}).get("tiers", {}).items():
            pairs = zip(tier["samples"]["resolve"], tier["samples"]["floor"], strict=False)
            labels.append(f"{name.removeprefix('resolution-')[0]}:{label}")
            data.append([a / b for a, b in pairs if b])
    if data:
        target = next(results[n]["target_ratio"] for n in RESOLUTION if n in results)
        ax.boxplot(data, showfliers=False)
        ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, fontsize=8)
        ax.axhline(target, color="red", linestyle="--", label=f"target {target:.2f}")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=8)
    ax.set_title("1. resolve / floor, per pair (l: 65,536 accounts, s: a handful)")


def plot_boxes(ax: Axes, samples: dict[str, list[float]], title: str, *, dots: bool) -> None:
    values = [[v * MS for v in series] for series in samples.values()]
    if values:
        ax.boxplot(values)
        ax.set_xticks(range(1, len(values) + 1), list(samples), fontsize=8)
    for i, series in enumerate(values if dots else [], 1):
        ax.scatter([i] * len(series), series, s=8, alpha=0.5)
    ax.set_ylabel("ms")
    ax.set_title(title)


def plot_scale(launches: Axes, stops: Axes, scale: Result) -> None:
    for i, r in enumerate(scale.get("rounds", {}).get("cli", [])):
        failed = {f["index"] for f in r["launch_failures"]}
        ends = sorted(e for j, e in enumerate(r["launch_ends"]) if j not in failed)
        launches.plot(ends, range(1, len(ends) + 1), label=f"cli round {i}: verified")
        if failed:
            at = sorted(r["launch_ends"][j] for j in failed)
            launches.scatter(at, [len(ends)] * len(at), marker="x", color="red",
                             label=f"cli round {i}: failed ({len(at)})")  # fmt: skip
        failed = {f["index"] for f in r["stop_failures"]}
        done = sorted(e for j, e in enumerate(r["teardown_ends"]) if j not in failed)
        stops.plot(done, range(1, len(done) + 1), label=f"stop round {i}")
    for i, r in enumerate(scale.get("rounds", {}).get("raw", [])):
        launches.axvline(r["seconds"], color="grey", linestyle="--", label=f"raw round {i}: all")
    for ax, title in ((launches, "5. 100 concurrent launches"), (stops, "5. 100 concurrent stops")):
        ax.set_xlabel("s since the 100 started")
        ax.set_ylabel("VMs done")
        ax.set_title(title)
        ax.legend(fontsize=8)


def plot(results: dict[str, Result], path: Path) -> None:
    """Box plots and distributions of every benchmark's samples, one panel each."""
    import matplotlib  # noqa: PLC0415 - the bench extra; summary.md is written without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the backend

    fig, ((res, launched, created), (stopped, scaled, scale_stops)) = plt.subplots(
        2, 3, figsize=(18, 10)
    )
    plot_resolution(res, results)
    plot_boxes(launched, results.get("launch", {}).get("samples", {}),
               "2. launch until verified (raw: until QMP)", dots=True)  # fmt: skip
    phases = results.get("libvirt", {})
    plot_boxes(created, phases.get("pid1", {}).get("launch_samples", {}),
               "3. virsh create vs qemu-depriv launch", dots=False)  # fmt: skip
    returned = {
        f"{tool}\n({reaper} reaps)": [s["returned"] for s in samples]
        for phase, reaper in SETS.items()
        for tool, samples in phases.get(phase, {}).get("stop_samples", {}).items()
    }
    plot_boxes(stopped, returned, "4. until the stop returned", dots=False)
    plot_scale(scaled, scale_stops, results.get("scale", {}))
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_load(data: Result, path: Path) -> None:
    """Launch latency against the number of running VMs, ours and raw; and the flatness."""
    import matplotlib  # noqa: PLC0415 - the bench extra; summary.md is written without it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 - after choosing the backend

    fig, (latency, flat) = plt.subplots(1, 2, figsize=(14, 5.5))
    lines = (("launch", "qemu-depriv launch (CLI), until it exits", "tab:blue"),
             ("raw", "raw QEMU, until the QMP handshake", "tab:grey"))  # fmt: skip
    for variant, label, colour in lines:
        points = data["plot"][variant]
        running = [point["level"] for point in points]
        low, high = ([point[k] * MS for point in points] for k in ("p10", "p90"))
        latency.plot(running, [point["median"] * MS for point in points], marker="o",
                     color=colour, label=f"{label}: median")  # fmt: skip
        latency.fill_between(running, low, high, color=colour, alpha=0.2, label="p10 to p90")
    latency.set_xlabel("running VMs (background, launched through the library)")
    latency.set_ylabel("ms")
    latency.set_ylim(bottom=0)
    latency.set_title("7. launch latency as the host fills up")
    latency.legend(fontsize=8)
    levels = levels_of(data)
    for variant in LOAD_COMMANDS:
        base = data["results"][levels[0]]["ratios"][variant]
        values = [data["results"][level]["ratios"][variant] / base for level in levels]
        flat.plot([int(n) for n in levels], values, marker="o", label=variant.removesuffix("_cli"))
    target = data["targets"]["flatness"]
    flat.axhline(target, color="red", linestyle="--", label=f"target {target:.2f}")
    flat.axhline(1.0, color="grey", linewidth=0.5)
    flat.set_xlabel("running VMs")
    flat.set_ylabel("(CLI / raw at N) / (CLI / raw at 0)")
    flat.set_title("7. each command's ratio to a raw start, against its ratio at 0")
    flat.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict[str, Result], runs: dict[str, Result], directory: Path) -> Path:
    """Write summary.md, distributions.png and load.png; return the summary's path."""
    text = summary(results, runs)
    try:
        plot(results, directory / "distributions.png")
        if "load" in results:
            plot_load(results["load"], directory / "load.png")
    except ImportError as exc:
        text += f"\n(no plot: {exc}; the bench extra installs matplotlib)\n"
    path = directory / "summary.md"
    path.write_text(text, encoding="utf-8")
    return path
