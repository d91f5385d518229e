"""bench/results/summary.md and distributions.png, from the workers' JSON files."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MS = 1000.0
US = 1e6
RESOLUTION_TARGET = 1.10


def fmt(value: float | None, scale: float = MS, digits: int = 1) -> str:
    """A number in the given unit, or a dash."""
    return "-" if value is None else f"{value * scale:.{digits}f}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def met(value: float | None, target: float) -> str:
    if value is None:
        return "n/a"
    return "met" if value <= target else "**missed**"


def median(summary: dict[str, Any] | None) -> float | None:
    if not summary or not summary.get("n"):
        return None
    return float(summary["median"])


def count_leftovers(left: dict[str, list[Any]]) -> int:
    """Processes, cgroups and store rows of the VMs that are still there."""
    return len(left["processes"]) + len(left["cgroups"]) + len(left["store_rows"])


def code_block(lines: Sequence[str]) -> list[str]:
    return ["```", *lines, "```"]


def profile_lines(title: str, profile: dict[str, Any] | None, *, tree: bool = True) -> list[str]:
    """A profile as the summary shows it: the flat top frames, then (optionally) the call tree."""
    if not profile:
        return []
    if "error" in profile:
        return [f"Profile of {title}: {profile['error']}", ""]
    flat = [
        f"Profile of {title} (pyinstrument, {profile.get('duration', 0):.3f} s, "
        f"{profile.get('samples', 0)} samples"
        + (f"; `{profile['command']}`" if profile.get("command") else "")
        + "). Top frames by own time (seconds):",
        "",
        *code_block(profile.get("flat", [])),
        "",
    ]
    if not tree:
        return flat
    return [
        *flat,
        "Call tree (project code; library frames folded; seconds):",
        "",
        *code_block(profile.get("tree", [])),
        "",
    ]


class Summary:
    """Builds summary.md from the results of every worker."""

    def __init__(self, results: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]]):
        self.results = results
        self.runs = runs
        self.glance: list[list[str]] = []
        self.lines: list[str] = []

    def worker_failed(self, name: str) -> bool:
        run = self.runs.get(name, {})
        if run.get("status") == "ok" and name in self.results:
            return False
        self.lines += [
            f"**The {name} worker failed** (exit {run.get('code')}); its last lines:",
            "",
            *code_block(run.get("tail", [])),
            "",
        ]
        return True

    def build(self) -> str:
        head = self.header()
        for section in (self.resolution, self.launch, self.libvirt, self.stop, self.scale):
            section()
        self.audit()
        glance = [
            "## At a glance",
            "",
            "| # | benchmark | qemu-depriv (median) | baseline (median) | ratio | target | |",
            "|---|---|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in self.glance),
            "",
        ]
        return "\n".join([*head, *glance, *self.lines]) + "\n"

    def header(self) -> list[str]:
        host: dict[str, Any] = next((r["host"] for r in self.results.values() if "host" in r), {})
        return [
            "# qemu-depriv benchmarks",
            "",
            "Produced by `make bench` (which runs `.venv/bin/python -m bench`); every number below "
            "comes from the JSON files beside this one. Each benchmark runs its baseline in the "
            "same run, interleaved with it (the order rotating every repetition), because this "
            "machine is shared and noisy; medians and ratios of medians are reported, and the "
            "plot `distributions.png` shows the spread.",
            "",
            f"Host: Linux {host.get('kernel', '?')}, {host.get('cpus', '?')} CPUs, "
            f"{host.get('qemu', '?')}, Python {host.get('python', '?')}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in host.get('loadavg', []))}; {host.get('time', '')}.",
            "",
            "Accounts come from scratch files in private mount namespaces (the host's /etc/passwd "
            "and /etc/group are never written); the benchmarks' ids are the range block at "
            "393216 (uid 393216+N for domid N) and the reaper 392000; every VM is named "
            "`bench-*`, state lives under `/tmp/bench-*`.",
            "",
        ]

    # -- 1 ------------------------------------------------------------------------------

    def resolution(self) -> None:
        self.lines += ["## 1. Resolution: the chain against the bare lookups", ""]
        self.lines += [
            "`resolve(Request(...), LibcLookup())` against its floor: the same `LibcLookup` "
            "calls done directly (each name of `decision.tried` once, `user_by_uid` for "
            "`uid N`, plus `groups_of` for a decision that names an account), alternating call "
            "by call. The target applies to the median of the per-pair ratios (resolve / floor of "
            "back-to-back calls). Command: `python -m bench.resolution {large,small} OUT.json`.",
            "",
        ]
        for kind in ("large", "small"):
            name = f"resolution-{kind}"
            if self.worker_failed(name):
                continue
            data = self.results[name]
            self.lines += [
                f"### {kind}: {data['passwd_lines']} passwd lines, {data['group_lines']} group "
                f"lines ({data['passwd_bytes'] / 1e6:.1f} MB passwd), {data['repetitions']} "
                "pairs per tier",
                "",
                f"Accounts: {data.get('layout', '?')}.",
                "",
                "| tier | runs as | lookups | resolve (us) | floor (us) | median ratio (per "
                "pair) | ratio of medians | target <= 1.10 | name looked up twice |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for label, tier in data["tiers"].items():
                lookups = sum(tier["lookups"]["calls"].values())
                repeated = tier["lookups"]["repeated"]
                self.lines.append(
                    f"| {label} | `{tier['runas'] or 'root: no -runas'}` | {lookups} | "
                    f"{fmt(median(tier['resolve']), US)} | {fmt(median(tier['floor']), US)} | "
                    f"{fmt_ratio(tier['paired_ratio'])} | {fmt_ratio(tier['ratio'])} | "
                    f"{met(tier['paired_ratio'], RESOLUTION_TARGET)} | "
                    f"{repeated or 'none'} |"
                )
                self.glance.append([
                    "1", f"resolve, {kind}, {label}", f"{fmt(median(tier['resolve']), US)} us",
                    f"{fmt(median(tier['floor']), US)} us", fmt_ratio(tier["paired_ratio"]),
                    "<= 1.10", met(tier["paired_ratio"], RESOLUTION_TARGET),
                ])  # fmt: skip
            self.lines += [
                "",
                "No name or uid was looked up twice in any tier: checked from `decision.tried` "
                "(count per name) and from a counting `AccountLookup` wrapped around "
                "`LibcLookup`.",
                "",
            ]
            profiles = data.get("profiles", {})
            worst = max(profiles, key=lambda t: data["tiers"][t]["paired_ratio"], default=None)
            for label, profile in profiles.items():
                title = f"`resolve` ({kind}, {label} tier, looped)"
                self.lines += profile_lines(title, profile, tree=label == worst)

    # -- 2 ------------------------------------------------------------------------------

    def launch(self) -> None:
        self.lines += ["## 2. Launch until verified and running, against raw QEMU", ""]
        if self.worker_failed("launch"):
            return
        data = self.results["launch"]
        self.lines += [
            f"Command: `python -m bench.launch OUT.json`; {data['repetitions']} repetitions of "
            "each variant, interleaved; each VM is stopped after it is measured.",
            "",
            "| variant | what is timed | median (ms) | p10 | p90 | ratio to raw | paired "
            "| target | |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        raw = median(data["variants"]["raw"])
        for variant, summary in data["variants"].items():
            target = data["targets"].get(variant)
            value = median(summary)
            to_raw = value / raw if value is not None and raw else None
            self.lines.append(
                f"| {variant} | `{data['commands'][variant]}` | {fmt(value)} | "
                f"{fmt(summary.get('p10'))} | {fmt(summary.get('p90'))} | "
                f"{fmt_ratio(to_raw)} | "
                f"{fmt_ratio(data['paired_ratios'].get(variant)) if target else ''} | "
                f"{f'<= {target}x' if target else ''} | "
                f"{met(data['ratios'].get(variant), target) if target else ''} |"
            )
        variants = data["variants"]
        startup = median(variants.get("cli_startup"))
        bare = median(variants.get("python"))
        cli, library = median(variants.get("cli")), median(variants.get("library"))
        if startup is not None and bare is not None and cli is not None and library and raw:
            self.lines += [
                "",
                f"Where the CLI's time goes: the bare interpreter takes {fmt(bare)} ms and "
                f"`qemu-depriv --version` (interpreter, every import, the parser, no VM) "
                f"{fmt(startup)} ms, so the imports and parser cost {fmt(startup - bare)} ms; "
                f"the library launch takes {fmt(library)} ms and the CLI launch {fmt(cli)} ms "
                f"(startup + library = {fmt(startup + library)} ms). The 4x target allows "
                f"{fmt(4 * raw)} ms in all.",
            ]
        for variant, target in data["targets"].items():
            self.glance.append([
                "2", f"launch, {variant}", f"{fmt(median(data['variants'][variant]))} ms",
                f"{fmt(raw)} ms (raw QEMU)", fmt_ratio(data["ratios"][variant]),
                f"<= {target}x", met(data["ratios"][variant], target),
            ])  # fmt: skip
        self.lines.append("")
        for variant, profile in data.get("profiles", {}).items():
            self.lines += profile_lines(f"one {variant} launch", profile)

    # -- 3 ------------------------------------------------------------------------------

    def libvirt(self) -> None:
        self.lines += ["## 3. Launch: the CLI against libvirt's `virsh create`", ""]
        if self.worker_failed("libvirt"):
            return
        data = self.results["libvirt"]
        if data["libvirt"] != "ran":
            self.lines += [
                "**libvirt could not run here**, so there is no baseline and no ratio. "
                "The error, verbatim:",
                "",
                *code_block([data.get("libvirt_error", "?")]),
                "",
            ]
            self.glance.append(["3", "launch vs libvirt", "-", "libvirt unavailable", "-",
                                "<= 0.4x", "n/a"])  # fmt: skip
        phase = data["pid1"]
        cli = median(phase["launch"].get("qemu-depriv"))
        virsh = median(phase["launch"].get("libvirt"))
        self.lines += [
            "Command: `python -m bench.libvirt OUT.json`. libvirtd and virtlogd are started by "
            "the benchmark in a private mount namespace (host passwd/group copies plus "
            "`libvirt-qemu` and the `kvm`/`libvirt-qemu` groups; a tmpfs on /run, an overlay on "
            "/var, its own /etc/libvirt; /dev/kvm shown as root:kvm 0660 as Debian's udev rule "
            "makes it, without which libvirt 9.0 re-probes QEMU on every `virsh create`)."
            + (
                f" libvirtd start and first capability probe: "
                f"{data.get('libvirt_startup_seconds', 0):.1f} s; first `virsh create`: "
                f"{fmt(data.get('libvirt_first_create_seconds'))} ms (not counted)."
                if data["libvirt"] == "ran"
                else ""
            ),
            "",
            "| variant | what is timed | median (ms) | p10 | p90 |",
            "|---|---|---|---|---|",
        ]
        commands = {
            "libvirt": "virsh -c qemu:///system create DOMAIN.xml (TCG, 64 MiB, no disk)",
            "qemu-depriv": "qemu-depriv --state-dir DIR launch CFG --json",
        }
        for phase_name in ("pid1", "subreaper"):
            for variant, summary in data[phase_name]["launch"].items():
                self.lines.append(
                    f"| {variant} ({'second set' if phase_name == 'subreaper' else 'main set'}) "
                    f"| `{commands[variant]}` | {fmt(median(summary))} | "
                    f"{fmt(summary.get('p10'))} | {fmt(summary.get('p90'))} |"
                )
        if data["libvirt"] == "ran":
            self.lines += [
                "",
                f"Ratio CLI / libvirt (main set): {fmt_ratio(data['ratio'])} (paired "
                f"{fmt_ratio(data['paired_ratio'])}); target <= 0.4x: "
                f"{met(data['ratio'], 0.4)}.",
                "",
            ]
            self.glance.append([
                "3", "launch, CLI vs libvirt", f"{fmt(cli)} ms", f"{fmt(virsh)} ms (virsh create)",
                fmt_ratio(data["ratio"]), "<= 0.4x", met(data["ratio"], 0.4),
            ])  # fmt: skip
        self.lines += profile_lines("one CLI launch", data.get("profile"))

    # -- 4 ------------------------------------------------------------------------------

    def stop(self) -> None:
        self.lines += ["## 4. Stop: `qemu-depriv stop` against `virsh destroy`", ""]
        if "libvirt" not in self.results:
            self.lines += ["(no data: the libvirt worker failed, see section 3)", ""]
            return
        data = self.results["libvirt"]
        self.lines += [
            "Each stop runs while the benchmark polls the VM's processes every millisecond: "
            "when each died (became a zombie or vanished) and when its pid went away (was "
            "reaped), against when the command returned. All times in ms from the command's "
            "start. QEMU under libvirt, and qemu-depriv's PID-namespace wrapper once the "
            "launching CLI has exited, are orphans whose parent is PID 1, which on this machine "
            "reaps only every ~2 s; so the stops ran twice: with PID 1 as their reaper (main "
            "set), and with the benchmark worker as a child subreaper that reaps them at once, "
            "as a prompt init would (second set).",
            "",
            "| set (reaper) | tool | returned | QEMU dead | QEMU reaped | QEMU reaped before "
            "return | wrapper dead | wrapper reaped | wrapper reaped before return | failures |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for phase_name in ("pid1", "subreaper"):
            phase = data[phase_name]
            for tool, stop in phase["stop"].items():
                qemu = stop.get("qemu", {})
                wrapper = stop.get("wrapper", {})
                self.lines.append(
                    f"| {phase['reaper']} | {tool} | {fmt(median(stop['returned']))} | "
                    f"{fmt(median(qemu.get('dead')))} | {fmt(median(qemu.get('reaped')))} | "
                    f"{qemu.get('reaped_before_return', '-')}/{qemu.get('count', '-')} | "
                    f"{fmt(median(wrapper.get('dead')))} | {fmt(median(wrapper.get('reaped')))} "
                    f"| {wrapper.get('reaped_before_return', '-')}/{wrapper.get('count', '-')} "
                    f"| {len(stop['failures'])} |"
                )
        self.lines += ["", "What each tool waits for, from these observations:", ""]
        self.lines += self.stop_findings(data)
        for phase_name, label in (
            ("pid1", "stop, qemu-depriv vs virsh destroy (PID 1 reaps)"),
            ("subreaper", "stop, the same with a prompt reaper"),
        ):
            stops = data[phase_name]["stop"]
            if "libvirt" not in stops:
                continue
            ours = median(stops["qemu-depriv"]["returned"])
            theirs = median(stops["libvirt"]["returned"])
            ratio = ours / theirs if ours is not None and theirs else None
            self.glance.append(
                ["4", label, f"{fmt(ours)} ms", f"{fmt(theirs)} ms", fmt_ratio(ratio), "none", ""]
            )
        self.lines.append("")

    @staticmethod
    def stop_findings(data: dict[str, Any]) -> list[str]:
        """What each command waited for, read from when things happened around its return."""
        found = []
        for phase_name in ("pid1", "subreaper"):
            phase = data[phase_name]
            for tool, stop in phase["stop"].items():
                qemu = stop.get("qemu", {})
                count = qemu.get("count", 0)
                what = (
                    f"- {tool}, {phase['reaper']} reaping: returned at "
                    f"{fmt(median(stop['returned']))} ms; QEMU died at "
                    f"{fmt(median(qemu.get('dead')))} ms and its pid went away at "
                    f"{fmt(median(qemu.get('reaped')))} ms; dead before the return in "
                    f"{qemu.get('dead_before_return')}/{count} runs, reaped before it in "
                    f"{qemu.get('reaped_before_return')}/{count}"
                )
                if wrapper := stop.get("wrapper"):
                    what += (
                        f"; its PID-namespace wrapper dead before the return in "
                        f"{wrapper['dead_before_return']}/{wrapper['count']}, reaped before it "
                        f"in {wrapper['reaped_before_return']}/{wrapper['count']}"
                    )
                live = stop.get("runs_with_live_processes_at_return", 0)
                what += f"; a live process of the VM at the return in {live}/{count} runs."
                found.append(what)
        found += ["", *Summary.stop_verdicts(data)]
        return found

    @staticmethod
    def stop_verdicts(data: dict[str, Any]) -> list[str]:
        """The conclusion, when the PID 1 set shows it unambiguously."""
        verdicts = []
        stops = data["pid1"]["stop"]
        virsh = stops.get("libvirt", {}).get("qemu", {})
        if virsh and virsh.get("reaped_before_return") == virsh.get("count"):
            verdicts.append(
                "`virsh destroy` returned only after QEMU's pid was reaped, every time: it "
                "waits for the reap, not for the death (libvirt's virProcessKillPainfully "
                "polls kill(pid, 0) every 0.2 s until ESRCH, and a zombie still answers). With "
                "PID 1 reaping every ~2 s its time here is mostly that wait; with a prompt "
                "reaper it is the 0.2 s poll."
            )
        ours = stops.get("qemu-depriv", {})
        qemu = ours.get("qemu", {})
        if qemu and qemu.get("dead_before_return") == qemu.get("count"):
            reaped = qemu.get("reaped_before_return")
            wrapper = ours.get("wrapper", {})
            verdicts.append(
                "`qemu-depriv stop` returned after QEMU and its wrapper were dead, every time, "
                "whether or not they had been reaped (QEMU's pid was gone before the return in "
                f"{reaped}/{qemu.get('count')} runs, the wrapper's in "
                f"{wrapper.get('reaped_before_return')}/{wrapper.get('count')}): it waits until "
                "no *live* process of the VM is left (zombies count as gone), and does not wait "
                "for PID 1's reap."
            )
        second = data["subreaper"]["stop"].get("qemu-depriv", {}).get("wrapper", {})
        codes = second.get("exit_codes_seen_by_subreaper", {})
        if codes.get("-9"):
            verdicts.append(
                f"QEMU's own zombie outlives the stop because of the wrapper: in the second set, "
                f"where this worker reaped the wrapper and saw its exit status, the wrapper was "
                f"killed by SIGKILL in {codes['-9']}/{sum(codes.values())} runs (exit codes "
                f"{codes}): the teardown's cgroup kill takes the `unshare` wrapper right after "
                "QEMU exits, often before the wrapper has reaped QEMU, so QEMU's zombie goes to "
                "PID 1 as well."
            )
        return verdicts

    # -- 5 ------------------------------------------------------------------------------

    def scale(self) -> None:
        self.lines += ["## 5. Scale: 100 VMs launched at once through the CLI", ""]
        if self.worker_failed("scale"):
            return
        data = self.results["scale"]
        raw_rounds, cli_rounds = data["rounds"]["raw"], data["rounds"]["cli"]
        self.lines += [
            "Command: `python -m bench.scale OUT.json`: rounds alternate 100 raw QEMUs started "
            "at once (until every QMP handshake) and 100 `qemu-depriv launch CFG --json` "
            "started at once (until the last exits verified), each VM TCG with 64 MiB; then 100 "
            "`qemu-depriv stop` at once for every VM in the store.",
            "",
            "| round | all verified (s) | verified | launch failures | peak CLI RSS per VM "
            "(MiB) | QEMU RSS per VM (MiB) | wrapper RSS per VM (MiB) | teardown (s) | stop "
            "failures | leftovers |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(cli_rounds):
            leftovers = count_leftovers(r["leftovers_after_teardown"])
            self.lines.append(
                f"| cli {i} | {r['launch_seconds']:.1f} | {r['verified']}/{data['count']} | "
                f"{len(r['launch_failures'])} | {r['peak_cli_rss_kib_per_vm'] / 1024:.1f} | "
                f"{r['qemu_rss_kib_per_vm'] / 1024:.1f} | "
                f"{r['wrapper_rss_kib_per_vm'] / 1024:.1f} | {r['teardown_seconds']:.1f} | "
                f"{len(r['stop_failures'])} | {leftovers} |"
            )
        for i, r in enumerate(raw_rounds):
            self.lines.append(
                f"| raw {i} | {r['seconds']:.1f} | {data['count'] - len(r['failures'])}/"
                f"{data['count']} | {len(r['failures'])} | - | "
                f"{r['qemu_rss_kib_per_vm'] / 1024:.1f} | - | - | - | - |"
            )
        failures = Counter(f["error"] for r in cli_rounds for f in r["launch_failures"])
        stop_failures = Counter(f["error"] for r in cli_rounds for f in r["stop_failures"])
        total_failures = sum(failures.values())
        self.lines += [
            "",
            f"Median time until all 100 were verified: {fmt(median(data['cli_launch']), 1, 1)} "
            f"s through the CLI against {fmt(median(data['raw']), 1, 1)} s for raw QEMU "
            f"({fmt_ratio(data['ratio'])}). Peak RSS of the CLI processes is the sampled sum "
            "(every 20 ms) of the live `qemu-depriv` processes, divided by the number launched; "
            "the wrapper is the `unshare` process that stays with each VM.",
            "",
            f"Launch failures (target 0): {total_failures} in {len(cli_rounds)} rounds.",
        ]
        if failures:
            self.lines += ["", "Their error lines, with counts:", ""]
            self.lines += code_block([f"{n} x {error}" for error, n in failures.most_common()])
        if stop_failures:
            self.lines += ["", "Stop failures, with counts:", ""]
            self.lines += code_block([f"{n} x {error}" for error, n in stop_failures.most_common()])
        left_after = sum(count_leftovers(r["leftovers_after_retry"]) for r in cli_rounds)
        left_total = sum(count_leftovers(r["leftovers_after_teardown"]) for r in cli_rounds)
        forced = [pid for r in cli_rounds for pid in r["killed_by_pid"]]
        self.lines += [
            "",
            "Leftovers after the teardown (target 0): "
            + "; ".join(
                f"round {i}: {len(r['leftovers_after_teardown']['processes'])} processes, "
                f"{len(r['leftovers_after_teardown']['cgroups'])} cgroups, "
                f"{len(r['leftovers_after_teardown']['store_rows'])} store rows"
                for i, r in enumerate(cli_rounds)
            )
            + f". After re-running failed stops: {left_after} left; killed by pid at the end: "
            f"{len(forced)}.",
            "",
        ]
        peak = statistics.median([r["peak_cli_rss_kib_per_vm"] for r in cli_rounds]) / 1024
        self.glance += [
            ["5", "100 concurrent launches, all verified",
             f"{fmt(median(data['cli_launch']), 1)} s",
             f"{fmt(median(data['raw']), 1)} s (100 raw)", fmt_ratio(data["ratio"]), "-", ""],
            ["5", "launch failures", str(total_failures), "0 (raw)", "-", "0",
             "met" if total_failures == 0 else "**missed**"],
            ["5", "peak CLI memory per VM", f"{peak:.1f} MiB", "-", "-", "-", ""],
            ["5", "teardown of 100", f"{fmt(median(data['cli_teardown']), 1)} s", "-", "-", "-",
             ""],
            ["5", "leftovers after teardown", str(left_total), "-", "-", "0",
             "met" if left_total == 0 else "**missed**"],
        ]  # fmt: skip
        profiles: dict[str, Any] = next((r["profiles"] for r in cli_rounds if "profiles" in r), {})
        for what, profile in profiles.items():
            self.lines += profile_lines(f"one {what} among the 100 concurrent ones", profile)

    def audit(self) -> None:
        self.lines += ["## 6. Audit over 100 device models", ""]
        result = self.results.get("audit")
        if not result:
            self.lines += ["The audit worker wrote no result; see runs.json.", ""]
            self.glance.append(
                ["6", "audit over 100 device models", "no result", "-", "-", "-", ""]
            )
            return
        variants, target = result["variants"], result["target_seconds"]
        self.lines += [
            f"{result['device_models']} QEMUs (`-machine none`, paused), each as its own uid, "
            "audited through the library and the CLI, alternating with `ps` listing the same "
            "processes. Command: `python -m bench.audit OUT.json`.",
            "",
            "| | median | ratio to ps | target |",
            "|---|---|---|---|",
        ]
        for name in ("ps", "library", "cli"):
            median = variants[name]["median"]
            ratio_text = "1.00x" if name == "ps" else f"{result['ratios'][name]:.2f}x"
            goal = "" if name == "ps" else f"<= {target * 1000:.0f} ms"
            self.lines.append(f"| {name} | {median * 1000:.1f} ms | {ratio_text} | {goal} |")
        self.lines.append("")
        for name in ("library", "cli"):
            median = variants[name]["median"]
            met = "met" if median <= target else "**missed**"
            self.glance.append(
                ["6", f"audit of 100, {name}", f"{median * 1000:.1f} ms",
                 f"{variants['ps']['median'] * 1000:.1f} ms (ps)",
                 f"{result['ratios'][name]:.2f}x", f"<= {target * 1000:.0f} ms", met]
            )  # fmt: skip


# -- the plot -------------------------------------------------------------------------------


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:  # noqa: PLR0915 - 5 panels
    """Box plots and distributions of every benchmark's samples, one panel each."""
    import matplotlib  # noqa: PLC0415 - optional, installed by make bench

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 3, figsize=(18, 10))
    (res_ax, launch_ax, libvirt_ax), (stop_ax, scale_ax, scale_stop_ax) = axes

    labels, data = [], []
    for kind in ("large", "small"):
        for label, tier in results.get(f"resolution-{kind}", {}).get("tiers", {}).items():
            samples = tier["samples"]
            labels.append(f"{kind[0]}:{label}")
            data.append(
                [a / b for a, b in zip(samples["resolve"], samples["floor"], strict=False) if b]
            )
    if data:
        res_ax.boxplot(data, showfliers=False)
        res_ax.set_xticks(range(1, len(labels) + 1), labels, rotation=60, fontsize=8)
        res_ax.axhline(RESOLUTION_TARGET, color="red", linestyle="--", label="target 1.10")
        res_ax.axhline(1.0, color="grey", linewidth=0.5)
        res_ax.legend(fontsize=8)
    res_ax.set_title("1. resolve / floor, per pair (l: 65,536 accounts, s: a handful)")

    launch = results.get("launch", {}).get("samples", {})
    if launch:
        names = list(launch)
        launch_ax.boxplot([[v * MS for v in launch[n]] for n in names])
        launch_ax.set_xticks(range(1, len(names) + 1), names)
        for i, name in enumerate(names, 1):
            launch_ax.scatter([i] * len(launch[name]), [v * MS for v in launch[name]], s=8,
                              alpha=0.5)  # fmt: skip
    launch_ax.set_ylabel("ms")
    launch_ax.set_title("2. launch until verified (raw: until QMP)")

    libvirt = results.get("libvirt", {})
    samples = libvirt.get("pid1", {}).get("launch_samples", {})
    if samples:
        names = list(samples)
        libvirt_ax.boxplot([[v * MS for v in samples[n]] for n in names])
        libvirt_ax.set_xticks(range(1, len(names) + 1), names)
    libvirt_ax.set_ylabel("ms")
    libvirt_ax.set_title("3. virsh create vs qemu-depriv launch")

    labels, data = [], []
    for phase in ("pid1", "subreaper"):
        for tool, stops in libvirt.get(phase, {}).get("stop_samples", {}).items():
            labels.append(f"{tool}\n({'PID 1' if phase == 'pid1' else 'prompt'} reaps)")
            data.append([s["returned"] * MS for s in stops])
    if data:
        stop_ax.boxplot(data)
        stop_ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    stop_ax.set_ylabel("ms until the command returned")
    stop_ax.set_title("4. virsh destroy vs qemu-depriv stop")

    scale = results.get("scale", {})
    for i, r in enumerate(scale.get("rounds", {}).get("cli", [])):
        failed = {f["index"] for f in r["launch_failures"]}
        ends = sorted(e for j, e in enumerate(r["launch_ends"]) if j not in failed)
        scale_ax.plot(ends, range(1, len(ends) + 1), label=f"cli round {i}: verified")
        if failed:
            times = sorted(r["launch_ends"][j] for j in failed)
            scale_ax.scatter(times, [len(ends)] * len(times), marker="x", color="red",
                             label=f"cli round {i}: failed ({len(times)})")  # fmt: skip
        failed = {f["index"] for f in r["stop_failures"]}
        stops = sorted(e for j, e in enumerate(r["teardown_ends"]) if j not in failed)
        scale_stop_ax.plot(stops, range(1, len(stops) + 1), label=f"stop round {i}")
    for i, r in enumerate(scale.get("rounds", {}).get("raw", [])):
        scale_ax.axvline(r["seconds"], color="grey", linestyle="--",
                         label=f"raw round {i}: all 100")  # fmt: skip
    scale_ax.set_xlabel("s since the 100 started")
    scale_ax.set_ylabel("VMs done")
    scale_ax.set_title("5. 100 concurrent launches")
    scale_ax.legend(fontsize=8)
    scale_stop_ax.set_xlabel("s since the 100 stops started")
    scale_stop_ax.set_ylabel("VMs stopped")
    scale_stop_ax.set_title("5. teardown: 100 concurrent stops")
    scale_stop_ax.legend(fontsize=8)

    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(
    results: dict[str, dict[str, Any]], runs: dict[str, dict[str, Any]], directory: Path
) -> Path:
    """Write summary.md and distributions.png; return the summary's path."""
    summary = directory / "summary.md"
    summary.write_text(Summary(results, runs).build(), encoding="utf-8")
    try:
        plot(results, directory / "distributions.png")
    except ImportError as exc:
        with summary.open("a", encoding="utf-8") as out:
            out.write(f"\n(no plot: {exc}; `make bench` installs matplotlib)\n")
    return summary
