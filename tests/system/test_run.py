"""``qemu-depriv run`` and ``qemu-depriv-dm``: existing QEMU command lines, deprivileged and
supervised, against real QEMU.

There is no Xen hypervisor here: where QEMU would need one, the wrapper's ``xen_qemu`` is
tests/system/xen_stand_in.py, a named stand-in that removes only the Xen options (``-xen-domid``,
``-xen-domid-restrict``, the ``xenfv`` machine) and execs the real QEMU in the same process.
libxl itself is played by :class:`LibxlSpawner`: fork, ``setsid``, exec the wrapper with the
argv libxl builds, remember the pid, and destroy with SIGHUP.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.accounts.chain import Decision, Tier
from qemu_depriv.host.procfs import children, cmdline, live_pids_of_uid, parse_status
from qemu_depriv.qemu.caps import parse_caps
from qemu_depriv.qemu.xen import xen_argv
from qemu_depriv.vms.supervisor import WAITER
from qemu_depriv.xl.config import domain_config
from qemu_depriv.xl.syntax import parse_xlcfg
from tests.system.vmhost import NSEXEC, RANGE_BASE, VmHost, leftovers, wait_for

STAND_IN = Path(__file__).with_name("xen_stand_in.py")
WRAPPER = Path(sys.executable).with_name("qemu-depriv-dm")
QEMU = "/usr/bin/qemu-system-x86_64"


def private_kib(pid: int) -> int:
    """The memory only ``pid`` holds (Private_Clean + Private_Dirty of smaps_rollup), in KiB."""
    rows = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
    return sum(int(row.split()[1]) for row in rows if row.startswith("Private_"))


def status_file(host: VmHost) -> Path:
    return host.root / "status.json"


def read_status(host: VmHost) -> dict[str, Any]:
    path = status_file(host)
    return json.loads(path.read_text()) if path.exists() else {}


@dataclass
class Running:
    """A ``run`` in the background: its process (the supervisor) and its host."""

    host: VmHost
    process: subprocess.Popen[bytes]

    def wait_running(self, timeout: float = 60) -> dict[str, Any]:
        assert wait_for(lambda: read_status(self.host).get("state") == "running", timeout), (
            self.output()
        )
        return read_status(self.host)

    def output(self) -> str:
        if self.process.poll() is None:
            return "(still running)"
        out, _ = self.process.communicate(timeout=10)
        return out.decode(errors="replace")


@contextlib.contextmanager
def run(host: VmHost, *qemu: str, options: tuple[str, ...] = ()) -> Iterator[Running]:
    """``qemu-depriv run`` in the background; SIGKILLed (and the VM torn down) if left running."""
    command = host.command("run", "--json-status", str(status_file(host)), *options, "--", *qemu)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **host.env}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield Running(host, process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_a_users_own_command_line_runs_deprivileged_and_stops_clean(vmhost: VmHost) -> None:
    disk = vmhost.root / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    console = vmhost.root / "console.sock"
    with run(
        vmhost, QEMU, "-name", "mine", "-machine", "pc", "-accel", "tcg", "-m", "96", "-smp", "2",
        "-nodefaults", "-display", "none", "-drive", f"file={disk},format=qcow2,if=virtio",
        "-chardev", f"socket,id=con0,path={console},server=on,wait=off",
        "-serial", "chardev:con0",
    ) as vm:  # fmt: skip
        state = vm.wait_running()
        pid, uid = state["pid"], state["uid"]
        status = parse_status(Path(f"/proc/{pid}/status").read_bytes())
        assert status.uids == (uid,) * 4
        assert uid not in (0, os.getuid())
        assert status.cap_eff == 0
        assert state["verification"]["ok"]
        layers = state["verification"]["layers"]
        assert {"seccomp", "chroot", "pid_namespace", "cgroup", "fds", "net_namespace"} <= set(
            layers
        )
        assert str(disk) in layers["fds"]["planned"] or layers["fds"]["observed"]["stray"] == []
        # While the VM runs, its supervisor (the same pid) is a bare interpreter that waits.
        supervisor = state["supervisor"]
        assert wait_for(lambda: str(WAITER) in (cmdline(supervisor) or ()), 10), cmdline(supervisor)
        assert children(supervisor)  # QEMU's wrapper is still its child, to be reaped
        assert private_kib(supervisor) < 8 * 1024  # against 12 MiB with the package loaded
        with socket.socket(socket.AF_UNIX) as serial:  # the console answers on its socket
            serial.connect(str(console))
        (listed,) = vmhost.vms()
        assert (listed["name"], listed["state"], listed["uid"]) == ("mine", "running", uid)
        vm.process.send_signal(signal.SIGTERM)
        assert vm.process.wait(timeout=30) == 0
    assert read_status(vmhost)["state"] == "stopped"
    assert vmhost.vms() == []
    assert live_pids_of_uid(uid) == []
    assert not any((vmhost.state_dir / "vms").iterdir())


def test_qemu_killed_from_outside_is_cleaned_up_by_its_supervisor_at_once(
    vmhost: VmHost,
) -> None:
    with run(vmhost, QEMU, "-name", "victim", "-m", "64", "-nodefaults", "-display", "none") as vm:
        state = vm.wait_running()
        killed = time.monotonic()
        os.kill(state["pid"], signal.SIGKILL)
        vm.process.wait(timeout=10)
        took = time.monotonic() - killed
        assert (vmhost.state_dir / "state.db").exists()
        assert vmhost.vms() == []  # no other command ran: the supervisor did it
        assert took < 1.0, took
    assert live_pids_of_uid(state["uid"]) == []
    assert not any((vmhost.state_dir / "vms").iterdir())


def test_a_killed_supervisor_leaves_a_stale_lease_that_recover_clears(vmhost: VmHost) -> None:
    with run(vmhost, QEMU, "-name", "orphan", "-m", "64", "-nodefaults", "-display", "none") as vm:
        state = vm.wait_running()
        vm.process.kill()
        vm.process.wait()
        (listed,) = vmhost.vms()
        assert listed["state"] == "stale"
        done = vmhost.run("recover")
        assert done.returncode == 0, done.stderr
    assert vmhost.vms() == []
    assert live_pids_of_uid(state["uid"]) == []


def test_stop_by_name_ends_a_supervised_vm_and_its_supervisor(vmhost: VmHost) -> None:
    with run(vmhost, QEMU, "-name", "served", "-m", "64", "-nodefaults", "-display", "none") as vm:
        state = vm.wait_running()
        done = vmhost.run("stop", "served")
        assert done.returncode == 0, done.stderr
        assert vm.process.wait(timeout=30) == 0
    assert live_pids_of_uid(state["uid"]) == []


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["-daemonize"], "-daemonize"),
        (["-sandbox", "off"], "-sandbox off"),
        (["-runas", "0:0"], "-runas 0:0"),
        (["-chroot", "/"], "-chroot /"),
        (["-netdev", "tap,id=n0,script=/etc/qemu-ifup"], "script"),
        (["-netdev", "bridge,id=n0,br=br0"], "qemu-bridge-helper"),
        (["-incoming", "exec:cat /tmp/x"], "-incoming exec:"),
        (["-plugin", "/tmp/x.so"], "-plugin"),
        (["-readconfig", "/tmp/x.cfg"], "-readconfig"),
    ],
)
def test_an_option_that_would_undo_the_deprivileging_is_refused_and_starts_nothing(
    vmhost: VmHost, options: list[str], named: str
) -> None:
    done = vmhost.run("run", "--", QEMU, "-name", "bad", "-m", "64", *options)
    assert done.returncode == 3, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("qemu-depriv: error: QEMU option ")
    assert named in line
    assert not (vmhost.state_dir / "state.db").exists() or vmhost.vms() == []
    assert leftovers() == []


def test_run_and_launch_on_one_store_at_once_never_give_one_uid_to_two_vms(
    vmhost: VmHost,
) -> None:
    """Four VMs all wanting domid 5, two through run and two through launch: one wins."""
    config = str(vmhost.config("same"))

    def launch() -> int:
        return vmhost.run("launch", config, "--domid", "5").returncode

    runs = [
        subprocess.Popen(
            vmhost.command("run", "--domid", "5", "--", QEMU, "-name", "same", "-m", "64",
                           "-nodefaults", "-display", "none"),
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        with ThreadPoolExecutor(2) as pool:
            launched = list(pool.map(lambda _: launch(), range(2)))
        time.sleep(3)
        vms = vmhost.vms()
        live = [vm for vm in vms if vm["state"] == "running"]
        assert len(live) <= 1, vms
        uids = [vm["uid"] for vm in vms if vm["uid"] is not None]
        assert len(uids) == len(set(uids)), vms
        owners = {vm["uid"]: live_pids_of_uid(vm["uid"]) for vm in live}
        assert all(owners.values()), owners
        assert launched.count(0) + sum(p.poll() is None for p in runs) >= 1
    finally:
        for process in runs:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
        # A launch may be the one that won: its VM runs on until stopped.
        for vm in vmhost.vms():
            if vm["state"] == "running":
                assert vmhost.run("stop", vm["name"]).returncode == 0
    assert leftovers() == []


# -- libxl's device model: qemu-depriv-dm in device_model_override ----------------------------

XL_CONFIG = """
name = "xenweb"
type = "hvm"
memory = 96
vcpus = 1
disk = [ '{disk},raw,hda,w' ]
vif = [ 'mac=00:16:3e:11:22:33,bridge=xenbr0,model=e1000' ]
vnc = 1
vnclisten = "127.0.0.1"
vncdisplay = 3
"""


def libxl_argv(host: VmHost, *, domid: int, restrict: bool, control_fd: int | None) -> list[str]:
    """The device-model argv libxl builds for a domain with a disk, a NIC and VNC.

    From the project's own Xen argv builder, made into libxl's shape: libxl's QMP chardev (a
    path, or under dm_restrict the descriptor it opened itself, and -S), the account it chose
    (-runas), its chroot, and no -sandbox (libxl passes none).
    """
    disk = host.root / "xen-disk.img"
    disk.write_bytes(b"\0" * (1 << 20))
    config = domain_config(parse_xlcfg(XL_CONFIG.format(disk=disk)), "xenweb.cfg")
    help_text = subprocess.run([QEMU, "-help"], capture_output=True, text=True, check=True)
    caps = parse_caps(str(WRAPPER), help_text.stdout, "QEMU emulator version 7.2")
    runas = f"{RANGE_BASE + domid}:{RANGE_BASE}"
    decision = Decision(Tier.RANGE, runas, RANGE_BASE + domid, RANGE_BASE, (RANGE_BASE,), None,
                        kill_by_uid=True)  # fmt: skip
    libxl_qmp = host.root / f"qmp-libxl-{domid}"  # libxl's /var/run/xen/qmp-libxl-N
    argv = xen_argv(
        caps, config, decision, domid=domid, qmp=libxl_qmp,
        chroot=Path(f"/var/run/xen/qemu-root-{domid}"), restrict=True, seccomp=False,
    )  # fmt: skip
    argv = argv[1:]  # libxl puts the wrapper's path in argv[0]; the spawner does too
    if not restrict:
        argv = [a for a in argv if a not in ("-S", "-xen-domid-restrict")]
        drop = {"-runas", "-chroot"}
        argv = [a for i, a in enumerate(argv) if a not in drop and argv[i - 1] not in drop]
    if control_fd is not None:
        argv = [
            f"socket,id=libxl-cmd,fd={control_fd},server=on,wait=off"
            if a.startswith("socket,id=libxl-cmd")
            else a
            for a in argv
        ]
    return argv


@dataclass
class LibxlSpawner:
    """What libxl does with a device model: fork, setsid, exec, record the pid, SIGHUP it."""

    host: VmHost
    process: subprocess.Popen[bytes] | None = None

    def spawn(self, argv: list[str], *, pass_fds: tuple[int, ...] = ()) -> int:
        settings = self.host.root / "dm.toml"
        settings.write_text(f'state_dir = "{self.host.state_dir}"\nxen_qemu = "{STAND_IN}"\n')
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "QEMU_DEPRIV_CONFIG": str(settings),
               "XEN_QEMU_CONSOLE_LIMIT": "1048576"}  # fmt: skip
        # In a network namespace of the test's own: libxl's tap (vif7.0-emu) is made there.
        command = ["unshare", "--net", "--", sys.executable, str(NSEXEC),
                   str(self.host.root / "accounts"), "--", str(WRAPPER), *argv]  # fmt: skip
        self.process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True, pass_fds=pass_fds,
        )  # fmt: skip
        return self.process.pid  # unshare and nsexec exec: this pid is the wrapper's

    def output(self) -> str:
        assert self.process is not None
        out, _ = self.process.communicate(timeout=30)
        return out.decode(errors="replace")


def running_record(host: VmHost, name: str, timeout: float = 60) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def up() -> bool:
        if not (host.state_dir / "state.db").exists():
            return False
        found.update(next((v for v in host.vms() if v["name"] == name), {}))
        return found.get("state") == "running"

    assert wait_for(up, timeout)
    return found


def test_libxls_device_model_runs_verified_and_sighup_leaves_nothing(vmhost: VmHost) -> None:
    spawner = LibxlSpawner(vmhost)
    pid = spawner.spawn(libxl_argv(vmhost, domid=7, restrict=False, control_fd=None))
    try:
        vm = running_record(vmhost, "xenweb")
        assert vm["domid"] == 7
        # Without dm_restrict libxl names no account: the chain decides, as for launch.
        assert (vm["tier"], vm["uid"]) == ("range", RANGE_BASE + 7)
        assert vm["verification"]["ok"]
        assert "net_namespace" not in vm["verification"]["layers"]  # a NIC and VNC: host's net
        # libxl's tap (ifname=vif7.0-emu,script=no) is opened by the wrapper and handed over.
        assert [(t["name"], t["bridge"]) for t in vm["taps"]] == [("vif7.0-emu", None)]
        assert vm["verification"]["layers"]["taps"]["observed"] == ["vif7.0-emu"]
        group = vm["layers"]["cgroup"]["name"]
    finally:
        os.kill(pid, signal.SIGHUP)
    assert spawner.process is not None
    assert spawner.process.wait(timeout=30) == 0, spawner.output()
    assert vmhost.vms() == []
    assert live_pids_of_uid(RANGE_BASE + 7) == []
    assert not any((vmhost.state_dir / "vms").iterdir())
    assert not any((vmhost.state_dir / "chroot").iterdir())
    assert group
    assert not list(Path("/sys/fs/cgroup").glob(f"**/qemu-depriv/{group}"))


def test_under_dm_restrict_libxl_reaches_qemu_only_after_verification(vmhost: VmHost) -> None:
    """libxl passes -S and its own QMP socket, and sends cont itself: the guest cannot run
    before the layers are verified, because libxl's socket is relayed only then."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(vmhost.root / "qmp-libxl.sock"))
    listener.listen(1)
    spawner = LibxlSpawner(vmhost)
    argv = libxl_argv(vmhost, domid=8, restrict=True, control_fd=listener.fileno())
    pid = spawner.spawn(argv, pass_fds=(listener.fileno(),))
    listener.close()  # the wrapper holds it now, as QEMU holds libxl's
    try:
        with socket.socket(socket.AF_UNIX) as qmp:
            qmp.connect(str(vmhost.root / "qmp-libxl.sock"))  # libxl connects at once
            qmp.settimeout(60)
            reader = qmp.makefile()
            greeting = json.loads(reader.readline())
            seen = next(v for v in vmhost.vms() if v["name"] == "xenweb")
            assert "QMP" in greeting
            assert seen["verification"]["ok"]  # verified before libxl heard anything
            # libxl's own choice (its range tier's -runas uid:gid) is the explicit tier.
            assert (seen["tier"], seen["uid"]) == ("explicit", RANGE_BASE + 8)

            def execute(command: str) -> Any:
                qmp.sendall(json.dumps({"execute": command}).encode() + b"\n")
                while "event" in (answer := json.loads(reader.readline())):
                    continue  # RESUME and the like
                return answer["return"]

            execute("qmp_capabilities")
            assert execute("query-status")["status"] == "prelaunch"
            execute("cont")  # libxl's unpause
            assert execute("query-status")["status"] == "running"
    finally:
        os.kill(pid, signal.SIGHUP)
    assert spawner.process is not None
    assert spawner.process.wait(timeout=30) == 0, spawner.output()
    assert vmhost.vms() == []
    assert live_pids_of_uid(RANGE_BASE + 8) == []


def test_a_xen_argv_without_its_domid_is_invalid_input(vmhost: VmHost) -> None:
    spawner = LibxlSpawner(vmhost)
    argv = libxl_argv(vmhost, domid=9, restrict=False, control_fd=None)
    at = argv.index("-xen-domid")
    spawner.spawn([*argv[:at], *argv[at + 2 :]])
    assert spawner.process is not None
    assert spawner.process.wait(timeout=60) == 2
    assert "needs -xen-domid" in spawner.output()
    assert leftovers() == []
