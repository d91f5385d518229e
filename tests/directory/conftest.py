"""Fixtures for the directory-service lab: real slapd, nslcd and SSSD, as root.

Every test here is marked ``directory`` and, like tests/system, skipped with the reason when
not run as root.  ``directory_lab`` hands a test a :class:`~tests.directory.lab.DirectoryLab`
and tears it down after it, failing the test if a daemon or a namespace outlived it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import mark_folder
from tests.directory.lab import DirectoryLab, missing_programs

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    mark_folder(items, HERE, pytest.mark.directory)


@pytest.fixture
def directory_lab(tmp_path: Path) -> Iterator[DirectoryLab]:
    """Servers and NSS namespaces for one test; everything killed by pid afterwards."""
    missing = missing_programs()
    if missing:
        pytest.fail(f"the directory lab needs {', '.join(missing)}: 'make deps' installs them")
    lab = DirectoryLab(tmp_path / "lab")
    try:
        yield lab
    finally:
        problems = lab.close()
    assert not problems, f"the lab did not end cleanly: {problems}"
