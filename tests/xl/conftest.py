"""The libxlutil dumpers, built once per session into a temporary directory, and a tally.

The dumpers (xlcfg_dump.c for whole files, xldisk_dump.c for diskspecs) need gcc and Debian's
libxen-dev, both installed by ``make test`` (the Makefile's APT_PACKAGES): without either,
every test here fails saying which is missing, never skips.  At the end of the session the
terminal summary says how many files, diskspecs and generated cases were compared with
libxlutil.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.xl.differential import XlView, compare, run_dumper
from tests.xl.disks import XlDisk, compare_disk, run_disk_dumper

HERE = Path(__file__).parent
HEADER = Path("/usr/include/libxlutil.h")


@dataclass
class Tally:
    """What the differential tests compared, for the summary."""

    files: int = 0
    generated: int = 0
    differences: dict[str, int] = field(default_factory=dict)
    verdicts: dict[str, int] = field(default_factory=dict)
    disks: dict[str, int] = field(default_factory=dict)  # diskspecs compared, by where from
    disk_verdicts: dict[str, int] = field(default_factory=dict)
    disk_differences: dict[str, int] = field(default_factory=dict)

    def add(self, row: str | None, verdict: str, *, generated: bool = False) -> None:
        if generated:
            self.generated += 1
        else:
            self.files += 1
        self.verdicts[verdict] = self.verdicts.get(verdict, 0) + 1
        if row is not None:
            self.differences[row] = self.differences.get(row, 0) + 1

    def add_disk(self, origin: str, accepted: bool, row: str | None) -> None:
        self.disks[origin] = self.disks.get(origin, 0) + 1
        verdict = "accepted" if accepted else "refused"
        self.disk_verdicts[verdict] = self.disk_verdicts.get(verdict, 0) + 1
        if row is not None:
            self.disk_differences[row] = self.disk_differences.get(row, 0) + 1


TALLY = pytest.StashKey[Tally]()


@dataclass
class Libxlutil:
    """The dumper, and a scratch directory for the files it reads."""

    dumper: Path
    scratch: Path
    tally: Tally

    def read(self, data: bytes) -> XlView:
        path = self.scratch / "case.cfg"
        path.write_bytes(data)
        return run_dumper(self.dumper, path)

    def read_rc(self, data: bytes) -> int:
        """Only xlu_cfg_readdata's result: for files nested too deep for Python's json."""
        path = self.scratch / "case.cfg"
        path.write_bytes(data)
        done = subprocess.run([str(self.dumper), str(path)], capture_output=True, check=True)
        found = re.match(rb'{"rc":([0-9]+),', done.stdout)
        assert found, done.stdout[:200]
        rc = int(found.group(1))
        self.tally.add(None, "accepted" if rc == 0 else "refused")
        return rc

    def compare(self, name: str, data: bytes, *, generated: bool = False) -> str | None:
        """Compare one file; return the table row that explains a difference, if one does."""
        xl = self.read(data)
        row = compare(name, data, xl)
        self.tally.add(row, xl.verdict, generated=generated)
        return row


@dataclass
class DiskLibxlutil:
    """xldisk_dump: xlu_disk_parse on diskspecs."""

    dumper: Path
    tally: Tally

    def read(self, specs: list[str]) -> list[XlDisk]:
        return run_disk_dumper(self.dumper, specs)

    def compare(self, origin: str, specs: list[str]) -> None:
        """Compare each spec, counting it under ``origin``; fails on the first disagreement."""
        for spec, xl in zip(specs, self.read(specs), strict=True):
            self.tally.add_disk(origin, xl.accepted, compare_disk(spec, xl))


def _build(tmp_path_factory: pytest.TempPathFactory, name: str, *libraries: str) -> Path:
    """Build tests/xl/NAME.c against the host's libxlutil, into a temporary directory."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is missing: 'make test' installs it (Debian package gcc)")
    if not HEADER.exists():
        pytest.fail(f"{HEADER} is missing: 'make test' installs it (Debian package libxen-dev)")
    out = tmp_path_factory.mktemp(name) / name
    built = subprocess.run(
        [gcc, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(HERE / f"{name}.c"),
         *libraries],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0:
        pytest.fail(f"cannot build {name} (Debian package libxen-dev):\n{built.stderr}")
    return out


@pytest.fixture(scope="session")
def dumper(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/xl/xlcfg_dump.c built against the host's libxlutil."""
    return _build(tmp_path_factory, "xlcfg_dump", "-lxlutil")


@pytest.fixture(scope="session")
def disk_libxlutil(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> DiskLibxlutil:
    """tests/xl/xldisk_dump.c built against the host's libxlutil (and libxl, for its enums)."""
    built = _build(tmp_path_factory, "xldisk_dump", "-lxlutil", "-lxenlight")
    return DiskLibxlutil(built, pytestconfig.stash.setdefault(TALLY, Tally()))


@pytest.fixture(scope="session")
def libxlutil(
    dumper: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Libxlutil:
    tally = pytestconfig.stash.setdefault(TALLY, Tally())
    return Libxlutil(dumper, tmp_path_factory.mktemp("xlcfg-cases"), tally)


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    tally = config.stash.get(TALLY, None)
    if tally is None or not tally.files + tally.generated + sum(tally.disks.values()):
        return
    terminalreporter.write_sep("-", "xl.cfg differential test against libxlutil")
    if tally.files + tally.generated:
        terminalreporter.write_line(
            f"compared {tally.files} files and {tally.generated} generated cases with "
            f"libxlutil (xl: {_counts(tally.verdicts)}); deliberate differences seen: "
            f"{_counts(tally.differences, first='row') or 'none'}"
        )
    if tally.disks:
        terminalreporter.write_line(
            f"compared {sum(tally.disks.values())} diskspecs with xlu_disk_parse "
            f"({_counts(tally.disks)}; xl: {_counts(tally.disk_verdicts)}); deliberate "
            f"differences seen: {_counts(tally.disk_differences, first='row') or 'none'}"
        )


def _counts(counts: dict[str, int], first: str = "count") -> str:
    """``12 accepted, 3 refused``, or with ``first='row'`` ``disk-vdev 2, ...``."""
    items = sorted(counts.items())
    if first == "row":
        return ", ".join(f"{name} {count}" for name, count in items)
    return ", ".join(f"{count} {name}" for name, count in items)
