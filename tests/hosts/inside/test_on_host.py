"""The product on a real Debian host: systemd as PID 1, cgroup v2 only, Debian's QEMU.

Each VM must run in its scope unit, ``qemu-depriv-DOMID-NAME.scope`` in ``qemu-depriv.slice``,
with its limits as systemd set them, and leave no unit behind. Every test records what it saw.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.hosts.inside.host import (
    CGROUP,
    SLICE_DIR,
    START_TIMEOUT,
    Host,
    alive,
    cgroup_of,
    in_scope,
    pids_of_uids,
    systemctl,
    unit_show,
    wait_for,
)

Saw = Callable[[str, object], None]
QEMU = "/usr/bin/qemu-system-x86_64"
MIB = 1 << 20


def qemu_version() -> tuple[int, int]:
    done = subprocess.run([QEMU, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"version (\d+)\.(\d+)", done.stdout)
    assert match, done.stdout
    return int(match.group(1)), int(match.group(2))


def scope_of(vm: dict[str, object]) -> str:
    layers = vm["layers"]
    assert isinstance(layers, dict)
    unit = layers["cgroup"]["unit"]
    assert unit == f"qemu-depriv-{vm['domid']}-{vm['name']}.scope", unit
    return str(unit)


def events(unit: str, name: str) -> dict[str, int]:
    text = (SLICE_DIR / unit / name).read_text()
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


def test_provision_and_doctor_find_a_ready_systemd_host(host: Host, saw: Saw) -> None:
    code, report, stderr = host.json("doctor")
    assert code == 0, [f for f in report.get("findings", []) if not f["ok"]] or stderr
    cgroups = [f["message"] for f in report["findings"] if f["area"] == "cgroups"]
    saw("doctor on cgroups", cgroups)
    assert any("places each VM in a scope" in m and "qemu-depriv.slice" in m for m in cgroups)
    accounts = [f["message"] for f in report["findings"] if f["area"] == "accounts"]
    saw("doctor on accounts", accounts)


def test_a_vm_runs_in_its_scope_with_its_limits_and_stops_without_a_trace(
    host: Host, saw: Saw
) -> None:
    vm = host.launch("web")
    unit, pid = scope_of(vm), int(vm["pid"])
    path = f"/qemu.slice/qemu-depriv.slice/{unit}"
    assert cgroup_of(pid) == path
    limit = (64 + 256) * MIB
    shown = unit_show(
        unit, "ActiveState", "Slice", "MemoryMax", "TasksMax", "CPUWeight", "Delegate",
        "ControlGroup",
    )  # fmt: skip
    assert shown == {
        "ActiveState": "active", "Slice": "qemu-depriv.slice", "MemoryMax": str(limit),
        "TasksMax": "256", "CPUWeight": "100", "Delegate": "no", "ControlGroup": path,
    }  # fmt: skip
    files = {name: (CGROUP / path.lstrip("/") / name).read_text().strip() for name in
             ("memory.max", "pids.max", "cpu.weight")}  # fmt: skip
    assert files == {"memory.max": str(limit), "pids.max": "256", "cpu.weight": "100"}
    verified = vm["verification"]["layers"]["cgroup"]
    assert verified["observed"]["paths"] == dict.fromkeys(("memory", "pids", "cpu"), path)
    status = systemctl("status", "qemu-depriv.slice")
    assert unit in status
    assert str(pid) in status
    saw("scope", unit)
    saw("cgroup files", files)
    saw("systemctl show", shown)
    saw("systemctl status qemu-depriv.slice", status)

    host.stop("web")
    assert unit_show(unit, "LoadState")["LoadState"] == "not-found"
    assert not (CGROUP / path.lstrip("/")).exists()
    assert not alive(pid)
    assert pids_of_uids(range(vm["uid"], vm["uid"] + 1)) == []


def test_run_supervises_a_command_line_in_its_scope(host: Host, saw: Saw) -> None:
    assert host.workdir is not None
    status = host.workdir / "status.json"
    command = host.command(
        "run", "--json-status", str(status), "--start-timeout", START_TIMEOUT, "--",
        QEMU, "-name", "served", "-machine", "pc", "-accel", "tcg", "-m", "64", "-nodefaults",
        "-display", "none",
    )  # fmt: skip
    supervisor = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:

        def running() -> bool:
            return status.exists() and json.loads(status.read_text()).get("state") == "running"

        assert wait_for(running, 600), supervisor.communicate()[0] if supervisor.poll() else ""
        state = json.loads(status.read_text())
        pid = state["pid"]
        (vm,) = host.vms()
        unit = scope_of(vm)
        assert cgroup_of(pid) == f"/qemu.slice/qemu-depriv.slice/{unit}"
        assert unit_show(unit, "ActiveState")["ActiveState"] == "active"
        saw("supervised scope", unit)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=300) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
    assert unit_show(unit, "LoadState")["LoadState"] == "not-found"
    assert not alive(pid)


HOG = """
import sys
chunks = []
for _ in range(256):  # 2 GiB, far past the scope's memory.max
    chunks.append(b"\\x01" * (8 << 20))
print("the hog was never killed")
"""


def test_the_memory_limit_oom_kills_a_hog_in_the_scope_and_the_vm_lives(
    host: Host, saw: Saw
) -> None:
    vm = host.launch("mem")
    unit, pid = scope_of(vm), int(vm["pid"])
    hog = in_scope(unit, HOG)
    out, err = hog.communicate(timeout=600)
    memory_events = events(unit, "memory.events")
    saw("memory.max", (SLICE_DIR / unit / "memory.max").read_text().strip())
    saw("hog", {"returncode": hog.returncode, "stdout": out, "stderr": err[-300:]})
    saw("memory.events", memory_events)
    assert hog.returncode == -signal.SIGKILL, (out, err)
    assert memory_events["oom_kill"] >= 1
    assert alive(pid), "QEMU was killed with the hog"
    after = unit_show(unit, "ActiveState", "OOMPolicy")
    saw("unit after the OOM kill", after)
    assert after["ActiveState"] == "active"
    (listed,) = host.vms()
    assert (listed["pid"], listed["state"]) == (pid, "running")
    host.stop("mem")


BOMB = """
import json, os, sys, time
children = []
try:
    while True:
        child = os.fork()
        if child == 0:
            time.sleep(3600)
            os._exit(0)
        children.append(child)
except BlockingIOError as exc:
    print(json.dumps({"forked": len(children), "error": exc.strerror}), flush=True)
sys.stdin.read()  # until the teardown kills the whole scope
"""


def test_pids_max_refuses_a_fork_bomb_and_the_teardown_kills_all_of_it(
    host: Host, saw: Saw
) -> None:
    host.layers = "pids_max = 48"
    vm = host.launch("forks")
    unit, pid = scope_of(vm), int(vm["pid"])
    bomb = in_scope(unit, BOMB)
    try:
        assert bomb.stdout is not None
        line = bomb.stdout.readline()
        assert line, bomb.stderr.read() if bomb.stderr else ""
        result = json.loads(line)
        pids = {n: (SLICE_DIR / unit / n).read_text().strip() for n in ("pids.max", "pids.current")}
        saw("fork bomb", result)
        saw("pids", {**pids, "events": events(unit, "pids.events")})
        assert pids["pids.max"] == "48"
        assert pids["pids.current"] == "48"
        assert result["error"] == "Resource temporarily unavailable"
        assert events(unit, "pids.events")["max"] >= 1
        assert alive(pid)
        members = [int(p) for p in (SLICE_DIR / unit / "cgroup.procs").read_text().split()]
        host.stop(
            "forks"
        )  # the bomb and its children are root's: only the scope's kill reaches them
        assert bomb.wait(timeout=60) == -signal.SIGKILL
        survivors = [p for p in members if alive(p)]
        saw("teardown", {"members before": len(members), "alive after": survivors})
        assert survivors == []
        assert unit_show(unit, "LoadState")["LoadState"] == "not-found"
    finally:
        if bomb.poll() is None:
            bomb.kill()
            bomb.wait()


def test_a_killed_supervisor_leaves_a_stale_vm_that_recover_removes_with_its_scope(
    host: Host, saw: Saw
) -> None:
    assert host.workdir is not None
    status = host.workdir / "status.json"
    supervisor = subprocess.Popen(
        host.command(
            "run", "--json-status", str(status), "--start-timeout", START_TIMEOUT, "--",
            QEMU, "-name", "orphan", "-m", "64", "-nodefaults", "-display", "none",
        ),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(
            lambda: status.exists() and json.loads(status.read_text()).get("state") == "running",
            600,
        )
        supervisor.kill()  # the launcher crashes; QEMU runs on in its scope
        supervisor.wait()
        (vm,) = host.vms()
        unit, pid = scope_of(vm), int(vm["pid"])
        before = {"list": vm["state"], "unit": unit_show(unit, "ActiveState")["ActiveState"]}
        saw("after the crash", before)
        assert before == {"list": "stale", "unit": "active"}
        assert alive(pid)
        code, recovered, stderr = host.json("recover")
        assert code == 0, stderr
        saw("recover", recovered)
        assert host.vms() == []
        assert not alive(pid)
        assert unit_show(unit, "LoadState")["LoadState"] == "not-found"
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()


def test_audit_finds_our_vms_clean(host: Host, saw: Saw) -> None:
    vm = host.launch("audited")
    code, report, stderr = host.json("audit")
    saw("audit summary", report.get("summary"))
    assert code == 0, stderr
    (process,) = report["processes"]
    assert process["pid"] == vm["pid"]
    assert report["summary"]["ours"] == 1
    assert report["summary"]["ok"], report["summary"]
    codes = {finding["code"] for finding in process["findings"]}
    saw("audit findings", sorted(codes))
    assert "no-limits" not in codes
    host.stop("audited")


def test_the_capability_probe_picks_the_form_this_qemu_offers(host: Host, saw: Saw) -> None:
    code, plan, stderr = host.json("launch", str(host.domain("probe")), "--dry-run")
    assert code == 0, stderr
    argv, runas = plan["argv"], plan["decision"]["runas"]
    version = qemu_version()
    if version >= (9, 1):  # -runas is deprecated from 9.1: -run-with user= replaces it
        assert "-runas" not in argv
        chosen = ["-run-with", argv[argv.index("-run-with") + 1]]
        assert f"user={runas}" in chosen[1].split(",")
    else:
        assert "-run-with" not in argv
        chosen = ["-runas", argv[argv.index("-runas") + 1]]
        assert chosen[1] == runas
    saw("qemu", {"version": ".".join(map(str, version)), "chosen form": " ".join(chosen)})


@contextlib.contextmanager
def vm_on_a_bridge(host: Host, name: str, mac: str) -> Iterator[tuple[dict[str, Any], str]]:
    """A VM launched with one NIC on a bridge of its own: its launch JSON and its tap."""
    bridge = f"qdbr-{name}"
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    try:
        subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
        assert host.workdir is not None
        path = host.workdir / f"{name}.cfg"
        path.write_text(
            f'name = "{name}"\ntype = "hvm"\nmemory = 64\nvcpus = 1\n'
            f"vif = [ 'mac={mac},bridge={bridge},model=e1000' ]\n"
        )
        code, vm, stderr = host.json("launch", str(path), "--start-timeout", START_TIMEOUT)
        assert code == 0, stderr
        yield vm, f"vif{vm['domid']}.0-emu"
    finally:
        subprocess.run(["ip", "link", "delete", bridge], check=False)


def link_of(device: str) -> dict[str, Any]:
    """What ``ip -j link show`` says of ``device``."""
    shown = subprocess.run(
        ["ip", "-j", "link", "show", device], capture_output=True, text=True, check=True
    )
    return dict(json.loads(shown.stdout)[0])


def test_a_nic_on_a_bridge_is_a_tap_the_launcher_hands_qemu_and_takes_away(
    host: Host, saw: Saw
) -> None:
    """The guest is disposable: its own network namespace gets the bridge."""
    with vm_on_a_bridge(host, "nic", "00:16:3e:4e:00:09") as (vm, tap):
        shown = link_of(tap)
        saw("tap", {k: shown.get(k) for k in ("ifname", "master", "address", "mtu")})
        assert (shown["master"], shown["address"]) == ("qdbr-nic", "fe:16:3e:4e:00:09")
        saw("verified", vm["verification"]["layers"]["taps"])
        assert vm["verification"]["layers"]["taps"]["observed"] == [tap]
        host.stop("nic")
        gone = subprocess.run(["ip", "link", "show", tap], capture_output=True, check=False)
        assert gone.returncode != 0


UDEV_LINK = "/run/systemd/network/10-qd-test-taps.link"


def test_an_address_udev_gives_a_new_tap_is_set_back_to_the_vms(host: Host, saw: Saw) -> None:
    """udev applies a .link to each new tap, racing the launcher; the launcher has the last word.

    ``MACAddressPolicy=none`` with ``MACAddress=`` makes udev set its address on every tap it
    sees arrive (whatever the tap's ``addr_assign_type``), so it always acts after the
    launcher set the tap's address: the race that ``MACAddressPolicy=persistent`` only
    sometimes loses, made certain.
    """
    link = Path(UDEV_LINK)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text(
        "[Match]\nOriginalName=vif*-emu\n\n[Link]\nMACAddressPolicy=none\n"
        "MACAddress=02:75:64:65:76:01\n"
    )
    subprocess.run(["udevadm", "control", "--reload"], check=True)
    try:
        with vm_on_a_bridge(host, "udev", "00:16:3e:4e:00:0a") as (_vm, tap):
            info = subprocess.run(
                ["udevadm", "info", "--query=property", f"/sys/class/net/{tap}"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            applied = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)
            saw("udev", {k: applied.get(k) for k in ("ID_NET_LINK_FILE", "INTERFACE")})
            assert applied.get("ID_NET_LINK_FILE") == UDEV_LINK  # udev processed it with ours
            shown = link_of(tap)
            saw("tap", {k: shown.get(k) for k in ("ifname", "master", "address")})
            assert (shown["master"], shown["address"]) == ("qdbr-udev", "fe:16:3e:4e:00:0a")
            host.stop("udev")
    finally:
        link.unlink(missing_ok=True)
        subprocess.run(["udevadm", "control", "--reload"], check=False)
