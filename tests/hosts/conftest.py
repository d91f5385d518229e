"""Fixtures for the host tier: each Debian host booted once per session, then shared.

``host`` is parametrized over the distributions, session-scoped: pytest runs every test of one
distribution, then tears its guest down before booting the next, so one guest runs at a time
(two TCG guests would fight over the machine's two cores).

A host that cannot be built or booted fails every test that asks for it, with the reason
(pytest keeps a session fixture's error): never a skip. Only running as non-root skips, as
for the other root-only folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import INSIDE_HOST, mark_folder
from tests.hosts.distros import DISTROS
from tests.hosts.machine import Guest
from tests.hosts.pool import HostPool

HERE = Path(__file__).parent
_POOL = pytest.StashKey[HostPool]()
#: The host suite (``inside/``) runs inside a booted host only; test_host_suite starts it there.
collect_ignore = [] if os.environ.get(INSIDE_HOST) == "1" else ["inside"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, HERE, pytest.mark.hosts)


@pytest.fixture(scope="session")
def host_pool(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> HostPool:
    """The session's pool; its work directories (serial logs, shares) are under pytest's tmp."""
    pool = HostPool(scratch=lambda name: tmp_path_factory.mktemp(f"host-{name}"))
    pytestconfig.stash[_POOL] = pool
    return pool


@pytest.fixture(scope="session", params=sorted(DISTROS))
def host(request: pytest.FixtureRequest, host_pool: HostPool) -> Iterator[Guest]:
    """A booted Debian host with the checkout in ``/root/venv``; killed after its tests."""
    guest = host_pool.boot(request.param)
    try:
        yield guest
    finally:
        guest.close()


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """How each host came up (accelerator, cache, seconds), below the test results."""
    pool = config.stash.get(_POOL, None)
    if pool is not None and pool.report():
        terminalreporter.section("hosts")
        for line in pool.report():
            terminalreporter.write_line(line)
