"""Guards for the whole suite: the host's account files are never changed by a test."""

from __future__ import annotations

import hashlib
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
