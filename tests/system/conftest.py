"""Fixtures for tests against real NSS, in private mount namespaces, as root."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.accounts.scratch import FILES_ONLY, write_scratch_accounts
from tests.conftest import mark_folder
from tests.system.vmhost import VmHost

HERE = Path(__file__).parent
NSEXEC = HERE / "nsexec.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, HERE, pytest.mark.system)


@dataclass
class Cli:
    """The command line, run in a private mount namespace over scratch account files."""

    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def accounts(
        self, passwd: Iterable[str] = (), group: Iterable[str] = (), nsswitch: str = FILES_ONLY
    ) -> None:
        write_scratch_accounts(self.root, passwd, group, nsswitch)

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", **self.env}
        command = [sys.executable, str(NSEXEC), str(self.root), "--"]
        command += [sys.executable, "-m", "qemu_depriv", *args]
        return subprocess.run(
            command, capture_output=True, text=True, env=env, timeout=60, check=False
        )

    def json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        done = self.run(*args, "--json")
        return done.returncode, json.loads(done.stdout), done.stderr


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    runner = Cli(tmp_path / "accounts")
    runner.accounts()
    return runner


@pytest.fixture(scope="session")
def failing_nss_modules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build libnss_qdunavail.so.2, libnss_qdagain.so.2 and libnss_qdsel.so.2; return the dir."""
    out = tmp_path_factory.mktemp("nss")
    source = HERE / "nss_failing.c"
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing: 'make test' installs it (Debian package gcc)"
    for module, status, err, extra in (
        ("qdunavail", "NSS_STATUS_UNAVAIL", "EIO", []),
        ("qdagain", "NSS_STATUS_TRYAGAIN", "EAGAIN", []),
        ("qdsel", "NSS_STATUS_UNAVAIL", "EIO", ["-DSELECTIVE"]),
    ):
        subprocess.run(
            [
                gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", *extra,
                f"-DMODULE={module}", f"-DSTATUS={status}", f"-DERR={err}",
                "-o", str(out / f"libnss_{module}.so.2"), str(source),
            ],
            check=True,
        )  # fmt: skip
    return out


@pytest.fixture
def vmhost(tmp_path: Path) -> Iterator[VmHost]:
    """A host for real QEMU launches; fails the test if a process of a VM's uid survives."""
    host = VmHost(tmp_path)
    try:
        yield host
    finally:
        left = host.teardown()
    assert not left, f"processes of a VM's uid survived the test: {left}"
