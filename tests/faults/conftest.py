"""Faults, races and hostile input (issue 9): as root, against real QEMU and real NSS."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from qemu_depriv.host.procfs import live_pids_of_uid
from qemu_depriv.vms.recovery import orphan_qemus
from tests.conftest import mark_folder
from tests.system.conftest import cli, failing_nss_modules, vmhost
from tests.system.vmhost import VmHost, vm_uids

__all__ = ["cli", "failing_nss_modules", "vmhost"]
HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, HERE, pytest.mark.faults)


def assert_consistent(host: VmHost) -> None:
    """Every lease is a verified running VM, and nothing runs without a lease."""
    vms = host.vms() if (host.state_dir / "state.db").exists() else []
    for vm in vms:
        assert vm["state"] == "running", vm
        assert vm["verification"]["ok"], vm
    leased_pids = {vm["pid"] for vm in vms}
    assert orphan_qemus(host.state_dir, leased_pids) == []
    leased_uids = {vm["uid"] for vm in vms}
    strays = {uid: live_pids_of_uid(uid) for uid in vm_uids() if uid not in leased_uids}
    assert {uid: pids for uid, pids in strays.items() if pids} == {}
    domids = {str(vm["domid"]) for vm in vms}
    for sub in ("vms", "chroot"):
        directory = host.state_dir / sub
        on_disk = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
        assert on_disk == domids, (sub, on_disk, domids)
    if (host.state_dir / "state.db").exists():
        with contextlib.closing(sqlite3.connect(host.state_dir / "state.db")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
