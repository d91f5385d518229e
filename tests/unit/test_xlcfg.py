"""The xl.cfg parser: libxlu's syntax, errors at file:line:col, and a formatter round trip."""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_depriv.cli.main import main
from qemu_depriv.errors import InvalidInput
from qemu_depriv.xlcfg import Value, format_xlcfg, parse_xlcfg, read_xlcfg


def test_settings_comments_separators_and_multi_line_lists() -> None:
    text = (
        "# a domain\n"
        'name = "web" # trailing comment\n'
        "memory = 512; vcpus = 2\n"
        "disk = [ 'phy:/dev/vg/web,xvda,w',\n"
        "         'file:/srv/web.img,xvdb,w',\n"
        "       ]\n"
        "\n"
        "vif = [ ]\n"
    )
    assert parse_xlcfg(text) == {
        "name": "web",
        "memory": 512,
        "vcpus": 2,
        "disk": ["phy:/dev/vg/web,xvda,w", "file:/srv/web.img,xvdb,w"],
        "vif": [],
    }


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ('"a\\\\b"', "a\\b"),
        ('"say \\"hi\\""', 'say "hi"'),
        ('"it\\\'s"', "it's"),
        ('"tab\\tnl\\ncr\\r"', "tab\tnl\ncr\r"),
        ('"\\a\\b\\f\\v"', "\a\b\f\v"),
        ('"raw \x01 control"', "raw \x01 control"),
        ("'no \\n escapes'", "no \\n escapes"),
        ("0x1F", 31),
        ("010", 8),
        ("0", 0),
        ("4294967296", 4294967296),
    ],
)
def test_values_are_read_as_libxlu_reads_them(literal: str, value: Value) -> None:
    assert parse_xlcfg(f"key = {literal}\n") == {"key": value}


def test_a_duplicate_key_keeps_the_last_value_as_xl_does() -> None:
    assert parse_xlcfg('name = "a"\nname = "b"\n') == {"name": "b"}


def test_plus_equals_appends_to_a_list() -> None:
    assert parse_xlcfg("vif = [ 'a' ]\nvif += [ 'b' ]\n") == {"vif": ["a", "b"]}


def test_unknown_keys_are_kept() -> None:
    assert parse_xlcfg("viridian = 1\non_crash = 'destroy'\n") == {
        "viridian": 1,
        "on_crash": "destroy",
    }


def test_a_file_without_a_final_newline_parses() -> None:
    assert parse_xlcfg('name = "web"') == {"name": "web"}


# -- the malformed corpus -------------------------------------------------------------------

CORPUS: dict[str, tuple[bytes, str]] = {
    "unterminated-string": (b'name = "web\nmemory = 64\n', ":1:8: unterminated string"),
    "unterminated-single": (b"name = 'web\n", ":1:8: unterminated string"),
    "unterminated-list": (b"disk = [ 'a',\n 'b'\n", ":1:8: unterminated list"),
    "unterminated-list-eof": (b"disk = [", ":1:8: unterminated list"),
    "missing-value": (b"name =\nmemory = 64\n", ":1:7: expected a value"),
    "missing-value-eof": (b"name = ", ":1:8: expected a value"),
    "missing-key": (b'= "web"\n', ":1:1: expected a setting name"),
    "missing-equals": (b'name "web"\n', ":1:6: expected '='"),
    "bad-number": (b"memory = 12ab\n", ":1:10: bad number '12ab'"),
    "bad-octal": (b"memory = 09\n", ":1:10: bad number '09'"),
    "bad-hex": (b"memory = 0xZZ\n", ":1:10: bad number"),
    "negative": (b"memory = -5\n", ":1:10: unexpected character '-'"),
    "bad-escape": (b'name = "a\\qb"\n', ":1:8: escape \\q in string: xl knows no such escape"),
    "hex-escape": (b'name = "\\x41"\n', ":1:8: escape \\x in string: xl fails on"),
    "octal-escape": (b'name = "\\101"\n', ":1:8: escape \\1 in string: xl drops octal"),
    "crlf": (b'name = "web"\r\n', ":1:13: carriage return"),
    "upper-case-key": (b'Name = "web"\n', ":1:1: setting name 'Name'"),
    "two-values": (b'name = "a" "b"\n', ":1:12: expected the end of the line"),
    "nested-list": (b"disk = [ [ 'a' ] ]\n", ":1:10: expected a list item"),
    "list-without-comma": (b"disk = [ 'a' 'b' ]\n", ":1:14: expected ',' or ']'"),
    "non-utf8": (b'name = "caf\xe9"\n', ":1:12: not UTF-8"),
    "nul-byte": (b'name = "web"\nmemory = 6\x004\n', ":2: NUL byte"),
    "binary-garbage": (bytes(range(256)) * 4, ":1: NUL byte"),
    "missing-name": (b"memory = 64\n", ": no name"),
    "wrong-kind": (b'name = "web"\nmemory = [ 64 ]\n', ": memory must be a number"),
    "memory-zero": (b'name = "web"\nmemory = 0\n', ": memory 0 MiB is out of range"),
    "memory-huge": (b'name = "web"\nmemory = 0x1000001\n', "is out of range"),
    "vcpus-zero": (b'name = "web"\nvcpus = 0\n', ": vcpus 0 is out of range"),
    "vcpus-many": (b'name = "web"\nvcpus = 513\n', ": vcpus 513 is out of range"),
    "bad-type": (b'name = "web"\ntype = "kvm"\n', ": type 'kvm' is unknown"),
    "bad-name": (b'name = "web\\nserver"\n', ": domain name 'web\\nserver' holds a control"),
    "digit-name": (b'name = "1234"\n', "all digits"),
}


def run_cli(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_a_malformed_config_is_invalid_input_at_file_line_col(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, where = CORPUS[case]
    path = tmp_path / f"{case}.cfg"
    path.write_bytes(content)
    code, err = run_cli("launch", str(path), "--dry-run", capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"qemu-depriv: error: {path}")
    assert where in lines[0]
    assert "Traceback" not in err


def test_a_directory_a_missing_file_and_a_symlink_loop_are_invalid_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop = tmp_path / "loop.cfg"
    loop.symlink_to(loop)
    for path, words in (
        (tmp_path, "is a directory"),
        (tmp_path / "nope.cfg", "no such file"),
        (loop, "symbolic links"),
    ):
        code, err = run_cli("launch", str(path), "--dry-run", capsys=capsys)
        assert code == 2
        assert words in err
        assert len(err.strip().splitlines()) == 1


def test_a_3_mb_file_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "big.cfg"
    path.write_bytes(b"# padding\n" * 300_000)
    code, err = run_cli("launch", str(path), "--dry-run", capsys=capsys)
    assert code == 2
    assert "larger than" in err


# -- properties -----------------------------------------------------------------------------

keys = st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True)
atoms = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00")),
    st.integers(min_value=0, max_value=2**64),
)
values = st.one_of(atoms, st.lists(atoms, max_size=5))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, values, max_size=12))
def test_any_valid_config_survives_a_format_parse_round_trip(config: dict[str, Value]) -> None:
    assert parse_xlcfg(format_xlcfg(config)) == config


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=string.printable + "[]=;,#'\"\\\x00é", max_size=200))
def test_any_text_parses_or_is_invalid_input(text: str) -> None:
    error = None
    try:
        parse_xlcfg(text, "fuzz.cfg")
    except InvalidInput as exc:
        error = exc
    assert error is None or error.message.startswith("fuzz.cfg:")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_read_or_are_invalid_input(
    tmp_path_factory: pytest.TempPathFactory, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "x.cfg"
    path.write_bytes(raw)
    error = None
    try:
        read_xlcfg(path)
    except InvalidInput as exc:
        error = exc
    assert error is None or error.message.startswith(str(path))
