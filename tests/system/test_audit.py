"""``qemu-depriv audit`` against real QEMU processes: foreign ones, and ours."""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from qemu_depriv.checks.audit import observe
from qemu_depriv.host.procfs import read_status
from qemu_depriv.isolation.cgroups import CgroupHost, remove_empty_group
from tests.system.vmhost import GROUP, PASSWD, VmHost, wait_for
from tests.unit.table_lookup import TableLookup

HUMAN_UID = 250150
#: Uids no account owns (as the range tier's), for the audit's lookups through NSS.
SHARED_UID, FAILING_UID, HUNG_UID = 250160, 250161, 250162
FOREIGN = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S"]
#: Every passwd miss of the files goes on to tests/system/nss_failing.c's module.
THROUGH_QDSEL = "passwd: files qdsel\ngroup: files\n"
ALICE = f"alice:x:{HUMAN_UID}:{HUMAN_UID}:Alice:/home/alice:/bin/bash"


@pytest.fixture
def foreign() -> Iterator[list[int]]:
    """Three QEMUs started by hand: one as root, two with -runas nobody."""
    started = [
        subprocess.Popen([*FOREIGN], stderr=subprocess.DEVNULL),
        subprocess.Popen([*FOREIGN, "-runas", "nobody"], stderr=subprocess.DEVNULL),
        subprocess.Popen([*FOREIGN, "-runas", "nobody"], stderr=subprocess.DEVNULL),
    ]
    try:
        time.sleep(0.5)
        yield [process.pid for process in started]
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


@contextlib.contextmanager
def qemus_as(*uids: int) -> Iterator[list[int]]:
    """One foreign QEMU per uid given, started in that order; their pids, once they run as it."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        for uid in uids:
            command = [*FOREIGN, "-runas", f"{uid}:{uid}"]
            started.append(subprocess.Popen(command, stderr=subprocess.DEVNULL))

        def dropped() -> bool:
            statuses = [read_status(p.pid) for p in started]
            return all(
                s is not None and s.uids[1] == u for s, u in zip(statuses, uids, strict=True)
            )

        assert wait_for(dropped, 30), "the QEMUs did not drop to their uids"
        yield [process.pid for process in started]
    finally:
        for process in started:
            process.kill()
            process.wait(timeout=10)


def by_pid(report: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {p["pid"]: p for p in report["processes"]}


def codes(entry: dict[str, Any]) -> set[str]:
    return {f["code"] for f in entry["findings"]}


def test_foreign_qemus_get_their_findings_and_exit_1(vmhost: VmHost, foreign: list[int]) -> None:
    code, report, stderr = vmhost.json("audit")
    assert code == 1, stderr
    seen = by_pid(report)
    root, nobody1, nobody2 = (seen[pid] for pid in foreign)
    assert {
        "uid-root",
        "caps",
        "no-seccomp",
        "no-chroot",
        "no-namespaces",
        "no-limits",
        "not-ours",
    } <= codes(root)
    for nobody in (nobody1, nobody2):
        assert nobody["uid"] == 65534
        assert nobody["user"] == "nobody"
        assert {"uid-shared", "no-seccomp", "no-chroot", "not-ours"} <= codes(nobody)
        assert "uid-root" not in codes(nobody)
        assert "caps" not in codes(nobody)
    severities = {f["code"]: f["severity"] for f in root["findings"]}
    assert severities["uid-root"] == severities["caps"] == "critical"
    assert severities["not-ours"] == "info"


def test_an_account_with_a_login_shell_is_reported_as_human(vmhost: VmHost) -> None:
    passwd = vmhost.root / "accounts" / "passwd"
    passwd.write_text(
        passwd.read_text() + f"alice:x:{HUMAN_UID}:{HUMAN_UID}:Alice:/home/alice:/bin/bash\n"
    )
    process = subprocess.Popen(
        [*FOREIGN, "-runas", f"{HUMAN_UID}:{HUMAN_UID}"], stderr=subprocess.DEVNULL
    )
    try:
        time.sleep(0.5)
        _, report, _ = vmhost.json("audit")
        entry = by_pid(report)[process.pid]
        assert entry["user"] == "alice"
        assert "uid-human" in codes(entry)
    finally:
        process.kill()
        process.wait(timeout=10)


def test_our_own_vm_has_no_finding_and_is_matched(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    code, report, _ = vmhost.json("audit")
    entry = by_pid(report)[vm["pid"]]
    assert entry["ours"]
    assert entry["vm"] == "web"
    assert entry["findings"] == []
    assert entry["layers"]["seccomp"] == 2
    others = [p for p in report["processes"] if p["pid"] != vm["pid"]]
    if not any(f["severity"] != "info" for p in others for f in p["findings"]):
        assert code == 0  # nothing else on the host is wrong


def test_a_vm_that_differs_from_its_lease_is_a_mismatch(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    with contextlib.closing(sqlite3.connect(vmhost.state_dir / "state.db")) as db, db:
        db.execute("UPDATE vms SET pid = pid + 100000 WHERE domid = ?", (vm["domid"],))
    code, report, _ = vmhost.json("audit")
    assert code == 1
    assert "lease-mismatch" in codes(by_pid(report)[vm["pid"]])
    with contextlib.closing(sqlite3.connect(vmhost.state_dir / "state.db")) as db, db:
        db.execute("UPDATE vms SET pid = pid - 100000 WHERE domid = ?", (vm["domid"],))


@pytest.mark.usefixtures("foreign")
def test_the_prometheus_file_parses_and_counts(vmhost: VmHost, tmp_path: Path) -> None:
    vmhost.launch("web")
    path = tmp_path / "qemu_depriv.prom"
    done = vmhost.run("audit", "--prometheus", str(path))
    assert done.returncode == 1
    families = {f.name: f for f in text_string_to_metric_families(path.read_text())}
    models = {s.labels["ours"]: s.value for s in families["qemu_depriv_device_models"].samples}
    assert models["true"] >= 1
    assert models["false"] >= 3
    findings = {
        (s.labels["code"], s.labels["severity"]): s.value
        for s in families["qemu_depriv_findings"].samples
    }
    assert findings[("uid-root", "critical")] >= 1
    assert findings[("uid-shared", "warning")] >= 2
    assert families["qemu_depriv_audit_ok"].samples[0].value == 0
    assert not list(tmp_path.glob("*.prom.*"))  # the temporary file was renamed into place


@pytest.mark.usefixtures("foreign")
def test_the_human_table_fits_80_columns_and_puts_the_worst_first(vmhost: VmHost) -> None:
    done = vmhost.run("audit")
    lines = done.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    severities = [
        line.split()[0]
        for line in lines[1:]
        if line[:1] != " " and line.split()[0] in ("critical", "warning", "info")
    ]
    order = {"critical": 0, "warning": 1, "info": 2}
    assert severities == sorted(severities, key=order.__getitem__)
    assert severities[0] == "critical"


def test_each_uid_is_looked_up_once_per_audit_and_a_failing_lookup_keeps_the_findings(
    vmhost: VmHost, failing_nss_modules: Path, tmp_path: Path
) -> None:
    asked = tmp_path / "asked"
    vmhost.accounts(nsswitch=THROUGH_QDSEL)
    vmhost.env = {
        "LD_LIBRARY_PATH": str(failing_nss_modules),
        "QDNSS_LOG": str(asked),
        "QDNSS_FAIL_UID": str(FAILING_UID),
    }
    with qemus_as(SHARED_UID, SHARED_UID, FAILING_UID) as (one, two, failing):
        for _ in range(2):
            code, report, stderr = vmhost.json("audit")
            assert code == 1, stderr
            seen = by_pid(report)
            for pid in (one, two):
                assert seen[pid]["user"] is None  # no account owns it
                assert {"uid-shared", "no-seccomp", "no-chroot", "not-ours"} <= codes(seen[pid])
                assert "lookup-error" not in codes(seen[pid])
            # The failed lookup does not end the audit, nor drop this process or its findings,
            # and it is a finding of its own, never "no such account".
            assert seen[failing]["user"] is None
            assert seen[failing]["uid"] == FAILING_UID
            expected = {"no-seccomp", "no-chroot", "no-namespaces", "no-limits", "not-ours"}
            assert expected | {"lookup-error"} <= codes(seen[failing])
    lines = asked.read_text().splitlines()
    # Once per uid per audit: the two QEMUs of one uid share its lookup; the next audit asks again.
    assert lines.count(f"uid {SHARED_UID}") == 2
    assert lines.count(f"uid {FAILING_UID}") == 2


def test_a_hung_lookup_times_out_once_and_the_next_uid_is_still_looked_up(
    vmhost: VmHost, failing_nss_modules: Path, tmp_path: Path
) -> None:
    timeout = 3.0
    asked = tmp_path / "asked"
    vmhost.accounts((*PASSWD, ALICE), (*GROUP, f"alice:x:{HUMAN_UID}:"), THROUGH_QDSEL)
    vmhost.settings = f"lookup_timeout = {timeout}\n"
    vmhost.env = {
        "LD_LIBRARY_PATH": str(failing_nss_modules),
        "QDNSS_LOG": str(asked),
        "QDNSS_HANG_UID": str(HUNG_UID),
    }
    with qemus_as(HUNG_UID, HUNG_UID, HUMAN_UID) as (hung, hung_too, alice):
        assert hung < hung_too < alice  # the audit looks the uids up in this order
        started = time.monotonic()
        code, report, stderr = vmhost.json("audit")
        took = time.monotonic() - started
    assert code == 1, stderr
    # One wait of lookup_timeout for the hung uid, not one per QEMU of it.
    assert timeout <= took < 2 * timeout, took
    assert asked.read_text().splitlines().count(f"uid {HUNG_UID}") == 1
    seen = by_pid(report)
    for pid in (hung, hung_too):
        assert seen[pid]["user"] is None
        assert {"uid-shared", "no-seccomp", "not-ours", "lookup-error"} <= codes(seen[pid])
    # Looked up after the hung one, on a fresh thread: found, and judged by its login shell.
    assert seen[alice]["user"] == "alice"
    assert "uid-human" in codes(seen[alice])


def test_a_limit_set_on_a_group_above_counts() -> None:
    """libvirt limits ``.../libvirt`` and runs QEMU in ``.../libvirt/emulator``: the kernel holds
    the child group to its parent's limits, and so does the audit (real groups, cgroup v1)."""
    placement = CgroupHost.detect().placement()
    roots: dict[str, Path] = {c: placement[c][1] for c in ("memory", "pids") if c in placement}
    if len(roots) < 2 or not all((root / "cgroup.procs").exists() for root in roots.values()):
        pytest.skip("needs the memory and pids controllers")
    if (roots["memory"] / "cgroup.subtree_control").exists():
        pytest.skip("cgroup v1 only: a v2 child group needs the controllers delegated")
    parents = {c: root / f"qd-audit-{os.getpid()}" for c, root in roots.items()}
    child = subprocess.Popen(["sleep", "30"])
    try:
        for controller, parent in parents.items():
            (parent / "emulator").mkdir(parents=True)
            limit = "memory.limit_in_bytes" if controller == "memory" else "pids.max"
            (parent / limit).write_text("268435456" if controller == "memory" else "64")
            (parent / "emulator" / "cgroup.procs").write_text(str(child.pid))

        def root(controller: str) -> Path | None:
            return roots.get(controller)

        (seen,) = observe([child.pid], TableLookup(), root)
        assert (seen.memory_limited, seen.pids_limited) == (True, True)
    finally:
        child.kill()
        child.wait()
        for parent in parents.values():
            wait_for(functools.partial(remove_empty_group, parent / "emulator"), 5)
            remove_empty_group(parent)
