"""Guards for the whole suite: host account files unchanged, no QEMU left running, and the
repository's working tree as it was (every test works in a temporary directory)."""

from __future__ import annotations

import hashlib
import os
import subprocess
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


#: Set by the host tier (tests/hosts) for the suite it runs inside a booted Debian host: that
#: host is a throwaway guest (its disk a snapshot) whose own account files the host suite
#: provisions on purpose, as an administrator would.
INSIDE_HOST = "QEMU_DEPRIV_INSIDE_HOST"


@pytest.fixture(scope="session", autouse=True)
def host_account_files_unchanged() -> Iterator[None]:
    if os.environ.get(INSIDE_HOST) == "1":
        yield
        return
    before = _digests()
    yield
    after = _digests()
    changed = [name for name in HOST_FILES if before[name] != after[name]]
    assert not changed, f"the suite changed the host's {', '.join(changed)}"


REPOSITORY = Path(__file__).resolve().parent.parent


def _working_tree() -> str:
    """``git status`` of the checkout, untracked files listed one by one."""
    try:
        done = subprocess.run(
            ["git", "-C", str(REPOSITORY), "status", "--porcelain", "--untracked-files=all"],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
    except FileNotFoundError:
        return "(git is not installed: the checkout is a copy, as in the host tier's guests)"
    return done.stdout if done.returncode == 0 else f"(not a git checkout: {done.stderr.strip()})"


@pytest.fixture(scope="session", autouse=True)
def working_tree_unchanged() -> Iterator[None]:
    before = _working_tree()
    yield
    after = _working_tree()
    assert after == before, (
        "the suite changed the repository's working tree (a test wrote outside its temporary "
        f"directory):\nbefore:\n{before}\nafter:\n{after}"
    )


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


#: Command-line marks of QEMUs that are not VMs of the product under test: benchmarks (their
#: state dirs are /tmp/bench-*), which may run beside the suite, and the real-host tier's
#: guests (tests/hosts), which their own fixture stops.
FOREIGN_QEMU_MARKS = (b"/tmp/bench-", b"qemu-depriv-hosts-guest")


def _foreign(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # gone meanwhile
    return any(mark in cmdline for mark in FOREIGN_QEMU_MARKS)


@pytest.fixture(scope="session", autouse=True)
def no_qemu_left_running() -> Iterator[None]:
    before = _qemu_pids()
    yield
    left = {pid for pid in _qemu_pids() - before if not _foreign(pid)}
    assert not left, f"the suite left QEMU processes running: {sorted(left)}"


def mark_folder(items: list[pytest.Item], folder: Path, marker: pytest.MarkDecorator) -> None:
    """Mark the tests under ``folder``; skip them, with the reason, when not run as root."""
    for item in items:
        if folder in Path(str(item.fspath)).parents:
            item.add_marker(marker)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason="needs root (namespaces, real QEMU)"))
