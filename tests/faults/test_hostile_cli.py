"""Fuzzing the command line: any arguments give an exit code of the contract, one clear line,
no traceback and nothing started.  (The xl.cfg parser is fuzzed in tests/unit/test_xl_syntax.py.)

``demo``, ``provision`` and ``doctor`` are left out: the first enters a mount namespace, the
second writes account files, which no fuzzer may reach on a real host.
"""

from __future__ import annotations

import os
import string
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qemu_depriv.cli.main import main
from qemu_depriv.host.procfs import qemu_pids

SUBCOMMANDS = ["resolve", "launch", "stop", "list", "audit", "recover"]
OPTIONS = [
    "--domid", "--name", "--user", "--no-restrict", "--json", "--dry-run", "--mode", "xen",
    "standalone", "--qemu", "--accel", "kvm", "--timeout", "--start-timeout", "-v", "--debug",
    "--prefix", "--config", "--prometheus", "0", "7", "32752", "-1", "web", "", "/", ".", "..",
]  # fmt: skip
tokens = st.one_of(
    st.sampled_from(OPTIONS),
    st.text(string.printable, max_size=12),
    st.text(max_size=6),
    st.integers(-(2**40), 2**40).map(str),
)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory of the test's own to run in: relative paths the fuzzer makes up
    (``--prometheus xyz``) land there, never in the repository."""
    here = Path.cwd()
    place = tmp_path_factory.mktemp("fuzz")
    os.chdir(place)
    try:
        yield place
    finally:
        os.chdir(here)


@settings(
    max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.sampled_from(SUBCOMMANDS), st.lists(tokens, max_size=6))
def test_any_arguments_end_cleanly(
    capsys: pytest.CaptureFixture[str], workdir: Path, command: str, arguments: list[str]
) -> None:
    if "--debug" in arguments:
        arguments = [a for a in arguments if a != "--debug"]  # --debug shows tracebacks by design
    before = set(qemu_pids())
    code = main(["--state-dir", str(workdir / "state"), command, *arguments])
    captured = capsys.readouterr()
    assert code in (0, 1, 2, 3, 4)
    assert "Traceback" not in captured.err
    assert "internal error" not in captured.err
    if code not in (0, 1):
        lines = captured.err.strip().splitlines()
        assert lines
        assert lines[-1].startswith("qemu-depriv: error: ")
    assert set(qemu_pids()) - before == set()
