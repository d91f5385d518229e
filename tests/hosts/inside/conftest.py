"""Fixtures of the host suite: the host provisioned once, the CLI, and checks after each test.

Each test records what it saw (``saw``): a JUnit property that the host side prints, so that a
green run also says which scope, which limit, which kill.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hosts.inside.host import Host, scope_units

if os.environ.get("QEMU_DEPRIV_INSIDE_HOST") != "1":  # pragma: no cover - collect_ignore'd
    raise RuntimeError("the host suite runs only inside a booted host (tests/hosts)")


@pytest.fixture(scope="session")
def provisioned() -> Host:
    """The host with the range and reaper accounts made by ``qemu-depriv provision``."""
    host = Host(Path("/run/qd-host-suite"))
    for kind in ("range", "reaper"):
        done = host.cli("provision", kind)
        assert done.returncode == 0, done.stderr
    return host


@pytest.fixture
def host(provisioned: Host, tmp_path: Path) -> Iterator[Host]:
    """The provisioned host with a fresh settings file; after the test, nothing of it is left.

    Every VM the store still knows is stopped; the test fails if a qemu-depriv scope unit or
    a process of a range uid survives.
    """
    host = provisioned.fresh(tmp_path)
    try:
        yield host
    finally:
        left = host.clean_up()
    assert not left["units"], f"scope units survived the test: {left['units']}"
    assert not left["pids"], f"processes of a VM's uid survived the test: {left['pids']}"
    assert not scope_units()


@pytest.fixture
def saw(record_property: Callable[[str, object], None]) -> Callable[[str, object], None]:
    """Record what the test saw, as a JUnit property (JSON) the host side reports."""

    def record(what: str, value: object) -> None:
        record_property(what, json.dumps(value) if not isinstance(value, str) else value)

    return record
