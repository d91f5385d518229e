"""Our xl.cfg reader against libxlutil itself: Xen's examples, a corpus, the malformed corpus,
and generated files.

Each file goes through the dumper (libxlutil, as ``xl create`` reads it) and through our
reader; ``tests.xl.differential.compare`` fails on any disagreement that the admin guide's
table of deliberate differences does not explain, naming the file, the key and both values.
The session's terminal summary says how many files and generated cases were compared.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.disks import DISK_DIFFERENCES
from qemu_depriv.xl.syntax import DIFFERENCES, parse_xlcfg_bytes
from tests.unit.test_xl_syntax import CORPUS
from tests.xl.conftest import Libxlutil
from tests.xl.differential import KEY_ROWS
from tests.xl.strategies import xlcfg_files

EXAMPLES = Path(__file__).parents[2] / ".venv" / "xen-examples" / "etc" / "xen"
OURS = Path(__file__).parent / "corpus"


def examples() -> list[Path]:
    found = sorted(EXAMPLES.glob("xlexample.*"))
    if not found:
        pytest.fail(f"{EXAMPLES} holds no xlexample.*: 'make test' unpacks them (make deps)")
    return [*found, *sorted(EXAMPLES.glob("xl.conf"))]


def test_xens_shipped_examples_read_as_libxlutil_reads_them(libxlutil: Libxlutil) -> None:
    for path in examples():
        assert libxlutil.compare(str(path), path.read_bytes()) is None, path


def test_the_corpus_holds_at_least_40_configs() -> None:
    assert len(list(OURS.glob("*.cfg"))) >= 40


@pytest.mark.parametrize("name", sorted(path.name for path in OURS.glob("*.cfg")))
def test_the_corpus_reads_as_libxlutil_reads_it(libxlutil: Libxlutil, name: str) -> None:
    row = libxlutil.compare(f"corpus/{name}", (OURS / name).read_bytes())
    assert row in (None, *KEY_ROWS), row  # a key xl ignores is fine; a whole file is not


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_the_malformed_corpus_reads_as_libxlutil_reads_it(libxlutil: Libxlutil, case: str) -> None:
    libxlutil.compare(f"malformed/{case}", CORPUS[case][0])


@settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(xlcfg_files())
def test_generated_configs_read_as_libxlutil_reads_them(libxlutil: Libxlutil, data: bytes) -> None:
    libxlutil.compare("generated.cfg", data, generated=True)


@pytest.mark.parametrize(
    ("opening", "levels"),
    [(b"[", 4996), (b"[", 4997), (b"[1,", 1999), (b"[1,", 2000), (b"[1,\n", 1999)],
)
def test_nesting_runs_out_exactly_where_libxlutil_does(
    libxlutil: Libxlutil, opening: bytes, levels: int
) -> None:
    data = b"a = " + opening * levels + b"]" * levels + b"\n"
    if libxlutil.read_rc(data) == 0:
        parse_xlcfg_bytes(data)
    else:
        with pytest.raises(InvalidInput, match="nested too deeply"):
            parse_xlcfg_bytes(data)


def test_every_row_a_refusal_names_is_a_row_of_the_guides_table() -> None:
    guide = (Path(__file__).parents[2] / "docs" / "qemu-deprivilege.md").read_text()
    section = guide.split("## Domain configs (xl.cfg)", 1)[1].split("\n## ", 1)[0]
    table = section.split("| row | what xl does | what qemu-depriv does |", 1)[1].split("\n\n")[0]
    rows = re.findall(r"^\| `([a-z-]+)` \|", table, re.M)
    assert sorted(rows) == sorted([*DIFFERENCES, *DISK_DIFFERENCES])
