"""``qemu-depriv audit`` against real QEMU processes: foreign ones, and ours."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.vmhost import VmHost

HUMAN_UID = 250150
FOREIGN = ["qemu-system-x86_64", "-machine", "none", "-nodefaults", "-display", "none", "-S"]


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
