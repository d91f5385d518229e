"""Guards for the whole suite: host account files unchanged, no QEMU left running."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/shadow", "/etc/gshadow", "/etc/nsswitch.conf")


def _digests() -> dict[str, str]:
    digests = {}
    for name in HOST_FILES:
        path = Path(name)
        digests[name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "-"
    return digests


@pytest.fixture(scope="session", autouse=True)
def host_account_files_unchanged() -> Iterator[None]:
    before = _digests()
    yield
    after = _digests()
    changed = [name for name in HOST_FILES if before[name] != after[name]]
    assert not changed, f"the suite changed the host's {', '.join(changed)}"


def _qemu_pids() -> set[int]:
    """Live processes whose executable is a qemu-system binary (zombies have none)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "exe").readlink().name.startswith("qemu-system"):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_running() -> Iterator[None]:
    before = _qemu_pids()
    yield
    # Benchmarks (bench/, state dirs under /tmp/bench-) may run beside the suite: not ours.
    left = {
        pid
        for pid in _qemu_pids() - before
        if b"/tmp/bench-" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    }
    assert not left, f"the suite left QEMU processes running: {sorted(left)}"


def mark_folder(items: list[pytest.Item], folder: Path, marker: pytest.MarkDecorator) -> None:
    """Mark the tests under ``folder``; skip them, with the reason, when not run as root."""
    for item in items:
        if folder in Path(str(item.fspath)).parents:
            item.add_marker(marker)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (namespaces, real QEMU)"))
