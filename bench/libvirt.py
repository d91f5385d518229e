"""Benchmarks 3 and 4: launch and stop through the CLI against libvirt's ``virsh``.

libvirtd (and virtlogd) are started here, inside a private mount namespace that is theirs and
the CLI's alone:

- /etc/passwd and /etc/group are scratch copies of the host's plus the ``libvirt-qemu`` user
  and the ``kvm`` and ``libvirt-qemu`` groups libvirt expects, the range base and the reaper;
- /run is a fresh tmpfs (with the host's /run/lock, where qemu-depriv's host-wide reaper lock
  lives), /var an overlay whose writes land in this run's directory, and /etc/libvirt a
  directory of this run's: nothing libvirt writes reaches the host;
- /dev/kvm is shown as root:kvm 0660, as Debian's udev rule makes it.  With the host's
  root:root 0600 node, libvirt 9.0 discards its QEMU capability cache on every lookup ("KVM
  was enabled when probing ... but it is not available now") and probes QEMU again, some 36 s
  per ``virsh create`` here.

Benchmark 3 times ``virsh -c qemu:///system create DOMAIN.xml`` (TCG, 64 MiB, no disk, no
graphics, no network) until it returns, against ``qemu-depriv launch CFG --json`` until it
exits.  Target: the CLI at most 0.4x libvirt.

Benchmark 4 times ``virsh destroy`` against ``qemu-depriv stop`` and watches the VM's processes
every millisecond meanwhile: when each died and when its pid went away (was reaped), compared
with when the command returned.  QEMU under libvirt, and qemu-depriv's PID-namespace wrapper
once the CLI has exited, are orphans whose parent is PID 1, which on this machine reaps only
every ~2 s.  So the stops run twice: with PID 1 as the reaper, then with this worker as a child
subreaper that reaps them at once (as a prompt init would).

Usage: python -m bench.libvirt OUT.json
"""

from __future__ import annotations

import ctypes
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import (
    KVM_GID,
    LAUNCH_GROUP,
    LAUNCH_PASSWD,
    LIBVIRT_QEMU_UID,
    RESULTS,
    bench_processes,
    end_child,
    enter_accounts,
    group_line,
    host_info,
    log,
    paired_ratio,
    ratio,
    rotations,
    run,
    state_root,
    summarize,
    wait_for_no_bench_processes,
    write_json,
)
from bench.profiling import profile_cli
from bench.vm import StopObservation, observe_stop, qd, run_qd, watch, write_config
from qemu_depriv.accounts.scratch import BASE_GROUP, BASE_PASSWD
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host import syscalls

REPETITIONS = 8
SUBREAPER_REPETITIONS = 4
TARGET = 0.4
URI = "qemu:///system"
VIRSH = "/usr/bin/virsh"
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
CGROUP_ROOT = Path("/sys/fs/cgroup")
DOMAIN_XML = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""

_libc = ctypes.CDLL(None, use_errno=True)


def prctl(option: int, value: int) -> None:
    """Set one process attribute (the library wraps only PR_SET_NO_NEW_PRIVS)."""
    if _libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"prctl({option}): {os.strerror(code)}")


def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the worker dies, so no daemon outlives it."""
    prctl(PR_SET_PDEATHSIG, 15)


class LibvirtUnavailable(Exception):
    """libvirt cannot run here; the message says why, with libvirt's own words."""


def host_accounts(path: Path, base: tuple[str, ...]) -> list[str]:
    """The host's entries of ``path``, but those the scratch files' base already has."""
    names = {line.split(":", 1)[0] for line in base}
    return [line for line in path.read_text().splitlines() if line.split(":", 1)[0] not in names]


def enter_namespace(root: Path) -> None:
    """Enter the private mount namespace described in the module docstring."""
    passwd = [
        *host_accounts(Path("/etc/passwd"), BASE_PASSWD),
        f"libvirt-qemu:x:{LIBVIRT_QEMU_UID}:{LIBVIRT_QEMU_UID}:Libvirt Qemu:/var/lib/libvirt:"
        "/usr/sbin/nologin",
        *LAUNCH_PASSWD,
    ]
    group = [
        *host_accounts(Path("/etc/group"), BASE_GROUP),
        group_line("libvirt-qemu", LIBVIRT_QEMU_UID),
        group_line("kvm", KVM_GID, ["libvirt-qemu"]),
        *LAUNCH_GROUP,
    ]
    enter_accounts(root, passwd, group)
    for sub in ("var-upper", "var-work", "etc-libvirt", "run-lock"):
        (root / sub).mkdir()
    for conf in Path("/etc/libvirt").glob("*.conf"):
        shutil.copy(conf, root / "etc-libvirt")
    # The host's /run/lock stays visible: qemu-depriv's reaper lock is host-wide.
    syscalls.bind("/run/lock", str(root / "run-lock"))
    syscalls.mount("tmpfs", "/run", "tmpfs", 0)
    Path("/run").chmod(0o755)
    Path("/run/lock").mkdir()
    syscalls.bind(str(root / "run-lock"), "/run/lock")
    # mount(8), not mount(2): the library's mount takes no options.  /run is ours by now, so
    # what mount(8) notes in /run/mount stays in this namespace.
    overlay = f"lowerdir=/var,upperdir={root}/var-upper,workdir={root}/var-work"
    done = run(["/usr/bin/mount", "-t", "overlay", "-o", overlay, "overlay", "/var"])
    if done.returncode != 0:
        raise OSError(f"mount overlay on /var: {done.stderr.strip()}")
    syscalls.bind(str(root / "etc-libvirt"), "/etc/libvirt")
    if Path("/dev/kvm").exists():
        node = root / "kvm"
        os.mknod(node, 0o660 | stat.S_IFCHR, os.makedev(10, 232))
        os.chown(node, 0, KVM_GID)
        node.chmod(0o660)
        syscalls.bind(str(node), "/dev/kvm")


class Libvirt:
    """libvirtd and virtlogd, started and stopped by this worker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.daemons: list[subprocess.Popen[bytes]] = []
        self.domains: set[str] = set()

    def start(self) -> float:
        """Start both daemons, wait for the socket, warm the capability cache; return seconds.

        Raises:
            LibvirtUnavailable: a binary is missing, a daemon exited, or virsh fails.
            EnvironmentFailure: virsh did not answer in time.
        """
        for binary in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd", VIRSH):
            if not Path(binary).exists():
                apt = RESULTS / "logs" / "apt.log"
                said = (
                    apt.read_text(errors="replace").strip().splitlines()[-5:]
                    if apt.exists()
                    else []
                )
                raise LibvirtUnavailable(
                    f"{binary} is not installed (make bench installs libvirt-daemon, "
                    "libvirt-daemon-driver-qemu and libvirt-clients)"
                    + (f"; apt-get said: {' | '.join(said)}" if said else "")
                )
        start = time.perf_counter()
        for daemon in ("virtlogd", "libvirtd"):
            with (self.root / f"{daemon}.log").open("wb") as out:
                # The worker has no thread yet, so preexec_fn is safe.
                daemon_process = subprocess.Popen(
                    [f"/usr/sbin/{daemon}"],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    preexec_fn=die_with_parent,  # noqa: PLW1509
                )
                self.daemons.append(daemon_process)
        socket = Path("/run/libvirt/libvirt-sock")
        deadline = time.monotonic() + 30
        while not socket.exists():
            if any(d.poll() is not None for d in self.daemons) or time.monotonic() > deadline:
                raise LibvirtUnavailable(f"libvirtd did not open {socket}: {self.log_tail()}")
            time.sleep(0.05)
        done = self.virsh("version", timeout=180)
        if done.returncode != 0:
            raise LibvirtUnavailable(f"virsh version failed: {done.stderr.strip()}")
        return time.perf_counter() - start

    def log_tail(self) -> str:
        text = (self.root / "libvirtd.log").read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-5:]) or "(libvirtd printed nothing)"

    def virsh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([VIRSH, "-c", URI, *args], timeout=timeout)

    def create(self, name: str) -> tuple[float, int]:
        """``virsh create`` a transient domain; return (seconds, QEMU pid)."""
        xml = self.root / f"{name}.xml"
        xml.write_text(DOMAIN_XML.format(name=name))
        start = time.perf_counter()
        done = self.virsh("create", str(xml))
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise LibvirtUnavailable(f"virsh create failed: {done.stderr.strip()}")
        self.domains.add(name)
        state = self.virsh("domstate", name).stdout.strip()
        assert state == "running", f"{name} is {state!r} after virsh create"
        pid = int(Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip())
        return seconds, pid

    def destroy(self, name: str, pid: int, *, reap: bool) -> StopObservation:
        """``virsh destroy``, watching QEMU."""
        watched = [w for w in [watch("qemu", pid)] if w is not None]
        observed = observe_stop([VIRSH, "-c", URI, "destroy", name], watched, reap=reap)
        if observed.code == 0:
            self.domains.discard(name)
        return observed

    def stop(self) -> None:
        for name in sorted(self.domains):
            self.virsh("destroy", name, timeout=60)
        self.domains.clear()
        for daemon in reversed(self.daemons):
            end_child(daemon, grace=10)
        self.daemons.clear()


class DeprivCli:
    """qemu-depriv's CLI over a state directory in the same namespace."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "s"
        self.names: set[str] = set()

    def launch(self, name: str) -> tuple[float, int]:
        """``qemu-depriv launch``; return (seconds, QEMU pid)."""
        config = write_config(self.root, name)
        launched = run_qd(self.state_dir, "launch", str(config))
        if launched.data.get("name") == name or launched.code == 0:
            self.names.add(name)
        assert launched.code == 0, f"qemu-depriv launch {name}: {launched.error}"
        assert launched.data["state"] == "running", launched.data
        return launched.seconds, int(launched.data["pid"])

    def stop(self, name: str, pid: int, *, reap: bool) -> StopObservation:
        """``qemu-depriv stop``, watching QEMU and its PID-namespace wrapper."""
        qemu = watch("qemu", pid)
        watched = [w for w in [qemu, watch("wrapper", qemu.parent) if qemu else None] if w]
        observed = observe_stop(qd(self.state_dir, "stop", name, "--json"), watched, reap=reap)
        if observed.code == 0:
            self.names.discard(name)
        return observed

    def stop_all(self) -> None:
        for name in sorted(self.names):
            run_qd(self.state_dir, "stop", name)
        self.names.clear()


def stop_summary(observations: list[StopObservation]) -> dict[str, Any]:
    """Medians of when the command returned and when each process died and was reaped."""
    roles = sorted({w.role for o in observations for w in o.watched})
    summary: dict[str, Any] = {
        "returned": summarize([o.returned for o in observations]),
        "failures": [o.error for o in observations if o.code != 0],
        "runs_with_live_processes_at_return": sum(1 for o in observations if o.live_at_return),
        "count": len(observations),
    }
    for role in roles:
        entries = [w for o in observations for w in o.watched if w.role == role]
        pairs = [(o, w) for o in observations for w in o.watched if w.role == role]
        summary[role] = {
            "dead": summarize([w.dead for w in entries if w.dead is not None]),
            "reaped": summarize([w.reaped for w in entries if w.reaped is not None]),
            "dead_before_return": sum(
                1 for o, w in pairs if w.dead is not None and w.dead <= o.returned
            ),
            "reaped_before_return": sum(
                1 for o, w in pairs if w.reaped is not None and w.reaped <= o.returned
            ),
            "count": len(pairs),
            "parent_at_start": sorted({w.parent for w in entries}),
            "exit_codes_seen_by_subreaper": dict(
                Counter(str(w.exit_code) for w in entries if w.exit_code is not None)
            ),
        }
    return summary


def run_phase(
    libvirt: Libvirt | None, cli: DeprivCli, *, reap: bool, repetitions: int, tag: str
) -> dict[str, Any]:
    """Alternate the two tools: launch, then stop while watching; collect both."""
    variants = ("libvirt", "qemu-depriv") if libvirt is not None else ("qemu-depriv",)
    launches: dict[str, list[float]] = {v: [] for v in variants}
    stops: dict[str, list[StopObservation]] = {v: [] for v in variants}
    for rep, variant in rotations(variants, repetitions):
        name = f"bench-{tag}{'v' if variant == 'libvirt' else 'q'}-{rep}"
        if variant == "libvirt":
            assert libvirt is not None
            seconds, pid = libvirt.create(name)
            observed = libvirt.destroy(name, pid, reap=reap)
        else:
            seconds, pid = cli.launch(name)
            observed = cli.stop(name, pid, reap=reap)
        launches[variant].append(seconds)
        stops[variant].append(observed)
        log(
            f"{tag} rep {rep} {variant}: launch {seconds * 1000:.0f} ms, stop returned "
            f"{observed.returned * 1000:.0f} ms (exit {observed.code}) {observed.error}"
        )
    return {
        "reaper": "bench worker (child subreaper)" if reap else "PID 1",
        "launch": {v: summarize(launches[v]) for v in variants},
        "launch_samples": launches,
        "stop": {v: stop_summary(stops[v]) for v in variants},
        "stop_samples": {v: [o.as_dict() for o in stops[v]] for v in variants},
    }


def machine_cgroups() -> set[Path]:
    """The ``machine`` cgroup directories (libvirt's) that exist now."""
    return set(CGROUP_ROOT.glob("*/machine"))


def main() -> None:  # noqa: PLR0915 - one scenario, top to bottom
    out = Path(sys.argv[1])
    root = state_root("v")
    enter_namespace(root)
    cgroups_before = machine_cgroups()
    libvirt: Libvirt | None = Libvirt(root)
    cli = DeprivCli(root)
    result: dict[str, Any] = {
        "benchmark": "libvirt", "target_ratio": TARGET, "host": host_info(), "state_dir": str(root),
    }  # fmt: skip
    try:
        try:
            assert libvirt is not None
            result["libvirt_startup_seconds"] = libvirt.start()
            result["libvirt_version"] = libvirt.virsh("version").stdout.strip().splitlines()
            warm, pid = libvirt.create("bench-warm-v")
            libvirt.destroy("bench-warm-v", pid, reap=False)
            result["libvirt_first_create_seconds"] = warm
            result["libvirt"] = "ran"
        except (LibvirtUnavailable, EnvironmentFailure, OSError, subprocess.SubprocessError) as exc:
            result["libvirt"] = "unavailable"
            result["libvirt_error"] = str(exc)
            log(f"libvirt cannot run here: {exc}")
            if libvirt is not None:
                libvirt.stop()
            libvirt = None
        _, pid = cli.launch("bench-warm-q")
        warm_stop = cli.stop("bench-warm-q", pid, reap=False)
        assert warm_stop.code == 0, f"qemu-depriv stop bench-warm-q: {warm_stop.error}"
        result["pid1"] = run_phase(libvirt, cli, reap=False, repetitions=REPETITIONS, tag="a")
        prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            result["subreaper"] = run_phase(
                libvirt, cli, reap=True, repetitions=SUBREAPER_REPETITIONS, tag="b"
            )
        finally:
            prctl(PR_SET_CHILD_SUBREAPER, 0)
        samples = result["pid1"]["launch_samples"]
        if libvirt is not None:
            result["ratio"] = ratio(samples["qemu-depriv"], samples["libvirt"])
            result["paired_ratio"] = paired_ratio(samples["qemu-depriv"], samples["libvirt"])
            result["missed"] = result["ratio"] is None or result["ratio"] > TARGET
        else:
            result["ratio"] = result["paired_ratio"] = None
            result["missed"] = None
        if result["missed"]:
            name = "bench-prof-q"
            config = write_config(root, name)
            profile, done = profile_cli(qd(cli.state_dir, "launch", str(config), "--json")[1:])
            if done.returncode == 0:
                cli.names.add(name)
            result["profile"] = profile
    finally:
        cli.stop_all()
        if libvirt is not None:
            libvirt.stop()
        for directory in machine_cgroups() - cgroups_before:
            try:
                directory.rmdir()
            except OSError as exc:
                result.setdefault("cgroup_residue", []).append(f"{directory}: {exc.strerror}")
    left = wait_for_no_bench_processes(10)
    result["leftovers"] = [p.pid for p in left]
    write_json(out, result)
    assert not bench_processes(), "processes of the benchmark's uids survived"


if __name__ == "__main__":
    main()
