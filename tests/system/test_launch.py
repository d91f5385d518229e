"""Launch, verify and stop real QEMU device models (TCG), as root, over scratch accounts."""

from __future__ import annotations

import os
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from qemu_depriv.host.procfs import live_pids_of_uid, parse_status
from qemu_depriv.qemu.qmp import QmpConnection
from tests.system.vmhost import (
    EXPLICIT_UID,
    GROUP,
    PASSWD,
    RANGE_BASE,
    VmHost,
    leftovers,
    start_escapee,
    wait_for,
)


def status_of(pid: int) -> dict[str, object]:
    status = parse_status(Path(f"/proc/{pid}/status").read_bytes())
    return {
        "uids": status.uids,
        "gids": status.gids,
        "groups": status.groups,
        "cap_eff": status.cap_eff,
        "root": str(Path(f"/proc/{pid}/root").readlink()),
    }


def test_qemu_runs_as_the_decisions_uid_with_no_capabilities(vmhost: VmHost) -> None:
    vm = vmhost.launch("web", "--domid", "7")
    uid, gid = RANGE_BASE + 7, RANGE_BASE
    assert (vm["tier"], vm["uid"], vm["gid"], vm["state"]) == ("range", uid, gid, "running")
    seen = status_of(vm["pid"])
    assert seen["uids"] == (uid, uid, uid, uid)
    assert seen["gids"] == (gid, gid, gid, gid)
    assert seen["groups"] == (gid,)
    assert seen["cap_eff"] == 0
    assert seen["root"] == str(vmhost.state_dir / "chroot" / "7")
    assert vm["verification"]["layers"]["uid"]["observed"] == [uid] * 4


def test_the_state_directory_and_database_are_roots_alone(vmhost: VmHost) -> None:
    vmhost.launch("web")
    state = vmhost.state_dir.stat()
    database = (vmhost.state_dir / "state.db").stat()
    assert (state.st_uid, state.st_mode & 0o777) == (0, 0o700)
    assert (database.st_uid, database.st_mode & 0o777) == (0, 0o600)


def test_the_explicit_user_of_the_config_is_used(vmhost: VmHost) -> None:
    vm = vmhost.launch("db", device_model_user="qemu-alice")
    assert (vm["tier"], vm["runas"], vm["uid"]) == ("explicit", "qemu-alice", EXPLICIT_UID)
    assert status_of(vm["pid"])["uids"] == (EXPLICIT_UID,) * 4


def test_vm_is_resumed_after_verification(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    with QmpConnection(Path(vm["qmp"])) as qmp:
        qmp.connect(timeout=5, alive=lambda: True)
        assert qmp.execute("query-status") == {
            "status": "running",
            "singlestep": False,
            "running": True,
        }


def test_stop_leaves_nothing_of_the_vm(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    done = vmhost.run("stop", "web")
    assert done.returncode == 0, done.stderr
    assert not live_pids_of_uid(vm["uid"])
    assert vmhost.vms() == []
    assert list((vmhost.state_dir / "vms").iterdir()) == []
    assert list((vmhost.state_dir / "chroot").iterdir()) == []


def test_escaped_processes_of_the_vm_uid_do_not_survive_stop(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    for _ in range(3):
        start_escapee(vm["uid"], vm["gid"])
    assert wait_for(lambda: len(live_pids_of_uid(vm["uid"])) >= 7)
    sessions = {os.getsid(pid) for pid in live_pids_of_uid(vm["uid"])}
    assert len(sessions) >= 4  # QEMU's and three escapees' own sessions
    done = vmhost.run("stop", "web")
    assert done.returncode == 0, done.stderr
    assert live_pids_of_uid(vm["uid"]) == []


def test_stop_by_domid_and_unknown_vm_is_invalid_input(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    assert vmhost.run("stop", "nosuch").returncode == 2
    assert vmhost.run("stop", "999").returncode == 2
    assert vmhost.run("stop", str(vm["domid"])).returncode == 0


def assert_nothing_left(vmhost: VmHost) -> None:
    assert leftovers() == []
    assert vmhost.vms() == []
    for sub in ("vms", "chroot"):
        directory = vmhost.state_dir / sub
        assert not directory.exists() or list(directory.iterdir()) == []


def test_a_missing_qemu_binary_leaves_nothing(vmhost: VmHost) -> None:
    done = vmhost.run("launch", str(vmhost.config("web")), "--qemu", "/nonexistent/qemu")
    assert done.returncode == 4
    assert "/nonexistent/qemu" in done.stderr
    assert_nothing_left(vmhost)


def _wrapper(vmhost: VmHost, body: str) -> Path:
    """A script in front of the real QEMU; -help and -version go straight through."""
    script = vmhost.root / "qemu-wrapper"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in -help|-version) exec qemu-system-x86_64 "$@";; esac\n' + body + "\n"
    )
    script.chmod(0o755)
    return script


def test_qemu_exiting_early_reports_its_stderr_and_leaves_nothing(vmhost: VmHost) -> None:
    qemu = _wrapper(vmhost, 'exec qemu-system-x86_64 "$@" -device no-such-device')
    done = vmhost.run("launch", str(vmhost.config("web")), "--qemu", str(qemu))
    assert done.returncode == 4
    assert "no-such-device" in done.stderr  # QEMU's own words
    assert len(done.stderr.strip().splitlines()) == 1
    assert_nothing_left(vmhost)


def test_a_start_that_times_out_is_killed_and_leaves_nothing(vmhost: VmHost) -> None:
    # A stand-in QEMU that never listens on QMP (named as the fake it is).
    qemu = _wrapper(vmhost, "exec sleep 600")
    done = vmhost.run(
        "launch", str(vmhost.config("web")), "--qemu", str(qemu), "--start-timeout", "1"
    )
    assert done.returncode == 4
    assert "did not answer" in done.stderr
    assert_nothing_left(vmhost)
    assert subprocess.run(["pgrep", "-f", "^sleep 600$"], check=False).returncode != 0


def test_a_uid_with_live_processes_is_never_handed_to_a_new_vm(vmhost: VmHost) -> None:
    start_escapee(RANGE_BASE + 5, RANGE_BASE)
    assert wait_for(lambda: bool(live_pids_of_uid(RANGE_BASE + 5)))
    done = vmhost.run("launch", str(vmhost.config("web")), "--domid", "5")
    assert done.returncode == 3
    assert f"processes of uid {RANGE_BASE + 5}" in done.stderr
    for pid in live_pids_of_uid(RANGE_BASE + 5):
        os.kill(pid, signal.SIGKILL)
    assert vmhost.vms() == []


def test_a_taken_name_or_domid_is_refused(vmhost: VmHost) -> None:
    vmhost.launch("web", "--domid", "3")
    assert vmhost.run("launch", str(vmhost.config("web"))).returncode == 3
    assert vmhost.run("launch", str(vmhost.config("db")), "--domid", "3").returncode == 3
    assert [vm["name"] for vm in vmhost.vms()] == ["web"]


def test_eight_concurrent_launches_of_one_domain_give_one_vm(vmhost: VmHost) -> None:
    config = str(vmhost.config("web"))
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: vmhost.run("launch", config).returncode, range(8)))
    assert sorted(codes) == [0] + [3] * 7
    assert len(vmhost.vms()) == 1


def test_eight_concurrent_launches_of_different_domains_give_eight_uids(vmhost: VmHost) -> None:
    configs = [str(vmhost.config(f"vm{i}")) for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda c: vmhost.run("launch", c), configs))
    assert [r.returncode for r in results] == [0] * 8, [r.stderr for r in results]
    vms = vmhost.vms()
    assert len({vm["uid"] for vm in vms}) == 8
    assert all(vm["state"] == "running" for vm in vms)
    for vm in vms:
        assert status_of(vm["pid"])["uids"] == (vm["uid"],) * 4


def test_a_qemu_that_exits_on_its_own_is_cleaned_up_by_the_next_command(vmhost: VmHost) -> None:
    vm = vmhost.launch("web", "--domid", "1")
    start_escapee(vm["uid"], vm["gid"])
    assert wait_for(lambda: len(live_pids_of_uid(vm["uid"])) == 4)
    escapees = set(live_pids_of_uid(vm["uid"])) - {vm["pid"]}
    os.kill(vm["pid"], signal.SIGKILL)
    assert wait_for(lambda: vmhost.vms()[0]["state"] == "exited")
    assert set(live_pids_of_uid(vm["uid"])) == escapees  # nothing has cleaned up yet
    vmhost.launch("db", "--domid", "2")  # any launch reconciles first
    assert [v["name"] for v in vmhost.vms()] == ["db"]
    assert live_pids_of_uid(vm["uid"]) == []
    assert not (vmhost.state_dir / "vms" / "1").exists()


def test_dry_run_prints_the_plan_and_starts_nothing(vmhost: VmHost) -> None:
    code, plan, stderr = vmhost.json("launch", str(vmhost.config("web")), "--dry-run")
    assert code == 0, stderr
    assert plan["mode"] == "standalone"
    assert plan["decision"]["tier"] == "range"
    assert plan["argv"][0].endswith("qemu-system-x86_64")
    assert "-S" in plan["argv"]
    assert "-runas" in plan["argv"]
    assert leftovers() == []
    assert not (vmhost.state_dir / "vms").exists()


def test_xen_mode_dry_run_builds_a_device_model_argv(vmhost: VmHost) -> None:
    code, plan, stderr = vmhost.json(
        "launch", str(vmhost.config("web")), "--dry-run", "--mode", "xen", "--domid", "9",
        "--qemu", "/usr/bin/qemu-system-x86_64",
    )  # fmt: skip
    assert code == 0, stderr
    argv = plan["argv"]
    assert argv[argv.index("-xen-domid") + 1] == "9"
    assert "-xen-domid-restrict" in argv
    assert argv[argv.index("-runas") + 1] == f"{RANGE_BASE + 9}:{RANGE_BASE}"


@pytest.mark.parametrize("content", ['name = "web', "memory = 64\n", 'name = "web"\nmemory = 0\n'])
def test_a_bad_config_is_invalid_input_and_starts_nothing(vmhost: VmHost, content: str) -> None:
    path = vmhost.root / "bad.cfg"
    path.write_text(content)
    done = vmhost.run("launch", str(path))
    assert done.returncode == 2
    assert str(path) in done.stderr
    assert leftovers() == []


def test_without_a_reaper_or_range_account_stop_still_kills_everything(vmhost: VmHost) -> None:
    vmhost.accounts(passwd=(PASSWD[2],), group=(GROUP[2],))  # qemu-alice only
    vm = vmhost.launch("db", device_model_user="qemu-alice")
    start_escapee(vm["uid"], vm["gid"])
    assert wait_for(lambda: len(live_pids_of_uid(vm["uid"])) >= 3)
    done = vmhost.run("stop", "db")
    assert done.returncode == 0, done.stderr
    assert live_pids_of_uid(vm["uid"]) == []


def test_six_vms_stopped_at_once_all_stop(vmhost: VmHost) -> None:
    vms = [vmhost.launch(f"vm{i}") for i in range(6)]
    for vm in vms:
        start_escapee(vm["uid"], vm["gid"])
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda vm: vmhost.run("stop", vm["name"]), vms))
    assert [r.returncode for r in results] == [0] * 6, [r.stderr for r in results]
    assert all(live_pids_of_uid(vm["uid"]) == [] for vm in vms)


def test_the_decisions_warnings_are_on_stderr_before_anything_starts(vmhost: VmHost) -> None:
    """A QEMU that dies at once: the shared-tier warning was printed all the same, so it came
    before the start, not after a success."""
    shared = f"xen-qemuuser-shared:x:{EXPLICIT_UID + 1}:{EXPLICIT_UID + 1}::/nonexistent:/bin/false"
    vmhost.accounts(
        (*PASSWD[1:], shared), (*GROUP[1:], f"xen-qemuuser-shared:x:{EXPLICIT_UID + 1}:")
    )
    qemu = _wrapper(vmhost, 'exec qemu-system-x86_64 "$@" -device no-such-device')
    done = vmhost.run("launch", str(vmhost.config("web")), "--qemu", str(qemu))
    assert done.returncode == 4
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("qemu-depriv: warning: shared tier:"), lines
    assert lines[-1].startswith("qemu-depriv: error: "), lines
    assert_nothing_left(vmhost)
