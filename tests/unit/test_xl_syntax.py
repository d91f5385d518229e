"""The xl.cfg reader: libxlutil's syntax and values, errors at file:line:col, a round trip.

Every expected value here was read from Xen 4.17's libxlutil by tests/xl's dumper; tests/xl
holds the reader against the library itself on whole files.
"""

from __future__ import annotations

import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qemu_depriv.cli.main import main
from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.config import XlNumberError, domain_config, load_domain, xl_long
from qemu_depriv.xl.syntax import (
    Setting,
    Value,
    format_xlcfg,
    parse_xlcfg,
    parse_xlcfg_bytes,
    read_xlcfg,
)


def values(text: str | bytes) -> dict[str, Value]:
    data = text if isinstance(text, bytes) else text.encode()
    return {key: setting.value for key, setting in parse_xlcfg_bytes(data, "t.cfg").items()}


def refusal(text: str | bytes) -> str:
    data = text if isinstance(text, bytes) else text.encode()
    with pytest.raises(InvalidInput) as caught:
        parse_xlcfg_bytes(data, "t.cfg")
    return caught.value.message


def test_settings_comments_separators_and_multi_line_lists() -> None:
    text = (
        "# a domain\n"
        'name = "web" # trailing comment\n'
        "memory = 512; vcpus = 2\n"
        "disk = [ 'phy:/dev/vg/web,xvda,w',  # root\n"
        "         'file:/srv/web.img,xvdb,w',\n"
        "       ]\n"
        "\n"
        "vif = [ ]\n"
    )
    assert values(text) == {
        "name": "web",
        "memory": "512",
        "vcpus": "2",
        "disk": ("phy:/dev/vg/web,xvda,w", "file:/srv/web.img,xvdb,w"),
        "vif": (),
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
        ("'C:\\\\dir'", "C:\\dir"),
        ("'a\\nb'", "a\nb"),
        ("'it\\'s'", "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        ('"x\ry"', "x\ry"),
    ],
)
def test_both_quotes_take_xls_escapes(literal: str, value: str) -> None:
    assert values(f"key = {literal}\n") == {"key": value}


@pytest.mark.parametrize("number", ["512", "0x1f", "010", "09", "12ab", "1e5", "0x", "5x5"])
def test_a_number_is_kept_as_its_text(number: str) -> None:
    assert values(f"key = {number}\n") == {"key": number}
    assert values(f"key = [{number}]\n") == {"key": (number,)}


def test_cpus_09_is_read_as_xl_reads_it() -> None:
    assert values("cpus = [09]\n") == {"cpus": ("09",)}  # xl_parse.c: strtoul(..., 10) is 9


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("memory = 0xFF\n", "number '0xFF': xl reads digits, a-f and x only"),
        ("memory = 0X10\n", "number '0X10'"),
        ("memory = 1.5\n", "number '1.5'"),
        ("memory = -1\n", "xl reads no signs"),
        ("memory = 12g\n", "expected the end of the line"),
    ],
)
def test_numbers_xl_refuses_are_refused(text: str, words: str) -> None:
    assert words in refusal(text)


def test_nested_lists_are_kept() -> None:
    text = (
        'vnuma = [ [ "pnode=0", "size=512" ],\n'
        '          [ "pnode=1", "size=512" ], ]\n'
        "deep = [ [ [ ] ], [ 1, [ 2 ] ] ]\n"
    )
    assert values(text) == {
        "vnuma": (("pnode=0", "size=512"), ("pnode=1", "size=512")),
        "deep": (((),), ("1", ("2",))),
    }


def test_nesting_runs_out_where_xls_parser_stack_does() -> None:
    assert values(b"a = " + b"[" * 4996 + b"]" * 4996 + b"\n")
    assert "nested too deeply" in refusal(b"a = " + b"[" * 4997 + b"]" * 4997 + b"\n")
    assert values(b"a = " + b"[1," * 1999 + b"]" * 1999 + b"\n")
    assert "nested too deeply" in refusal(b"a = " + b"[1," * 2000 + b"]" * 2000 + b"\n")


def test_a_duplicate_key_keeps_the_last_value_as_xl_does() -> None:
    assert values('name = "a"\nname = "b"\n') == {"name": "b"}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("vif = [ 'a' ]\nvif += [ 'b' ]\n", ("a", "b")),
        ("a = [ 1, [ 2 ] ]\na += [ [ 3 ], 4, ]\n", ("1", ("2",), ("3",), "4")),
        ("memory = 5\nmemory += 12\n", "512"),
        ('extra = "console=hvc0"\nextra += " quiet"\nextra += 1\n', "console=hvc0 quiet1"),
        ("memory += 512\n", "512"),
    ],
)
def test_plus_equals_joins_as_xl_does(text: str, value: Value) -> None:
    settings = parse_xlcfg(text)
    (setting,) = (settings[key] for key in settings)
    assert setting.value == value
    assert setting.appended


def test_plus_equals_cannot_join_a_list_and_one_value() -> None:
    assert "cannot add a list" in refusal("a = [ 1 ]\na += 2\n")
    assert "cannot add a list" in refusal("a = 1\na += [ 2 ]\n")


def test_a_value_set_with_plus_equals_is_never_a_number() -> None:
    with pytest.raises(XlNumberError, match=r"\+="):
        xl_long(parse_xlcfg("memory += 512\n")["memory"])


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("512", 512),
        ("0x200", 512),
        ("0X200", 512),
        ("010", 8),
        ("0", 0),
        ("  12", 12),
        ("\v+12", 12),
        ("-0x10", -16),
        ("9223372036854775807", 2**63 - 1),
        ("-9223372036854775808", -(2**63)),
    ],
)
def test_xl_long_reads_as_strtol_base_0(text: str, number: int) -> None:
    assert xl_long(Setting(text)) == number


@pytest.mark.parametrize(
    ("text", "errno"),
    [
        ("09", 22),
        ("12ab", 22),
        ("0x", 22),
        ("12 ", 22),
        ("", 22),
        ("lots", 22),
        ("9223372036854775808", 34),
        ("99999999999999999999x", 34),
        ("-9223372036854775809", 34),
    ],
)
def test_xl_long_refuses_as_xlu_cfg_get_long_does(text: str, errno: int) -> None:
    with pytest.raises(XlNumberError) as caught:
        xl_long(Setting(text))
    assert caught.value.errno == errno


def test_a_list_is_not_a_number() -> None:
    with pytest.raises(XlNumberError, match="list"):
        xl_long(Setting(("1",)))


def test_unknown_keys_are_kept() -> None:
    assert values("viridian = 1\non_crash = 'destroy'\nvif.default.script = 'x'\n") == {
        "viridian": "1",
        "on_crash": "destroy",
        "vif.default.script": "x",
    }


def test_the_last_setting_needs_no_final_newline() -> None:
    assert values('name = "web"') == {"name": "web"}


def test_a_comment_on_the_last_line_needs_a_final_newline() -> None:
    message = refusal('name = "web"\n# the end')
    assert message.startswith("t.cfg:2:1: a comment on the last line needs a newline")


@pytest.mark.parametrize("last", [b"#", b"@", b"\r", b"\x00", b"\xe9", b"'"])
def test_one_stray_byte_ending_the_file_is_dropped_as_xl_drops_it(last: bytes) -> None:
    assert values(b"memory = 512\n" + last) == {"memory": "512"}
    assert values(b"memory = 512 " + last) == {"memory": "512"}


def test_a_carriage_return_is_kept_in_strings_and_comments_and_refused_elsewhere() -> None:
    assert values(b'# dos\r\nname = "a\rb"\n') == {"name": "a\rb"}
    assert "carriage return" in refusal(b'name = "web"\r\n')


def test_latin1_bytes_pass_through_comments_and_strings() -> None:
    settings = parse_xlcfg_bytes(b'# J\xfcrgen\nextra = "Gr\xfc\xdfe"\nname = "caf\xc3\xa9"\n')
    assert settings["extra"].value == "Gr\udcfc\udcdfe"
    assert str(settings["extra"].value).encode("utf-8", "surrogateescape") == b"Gr\xfc\xdfe"
    assert settings["name"].value == "café"


def test_a_nul_byte_in_a_comment_is_kept_out_of_the_way() -> None:
    assert values(b"# a\x00b\nmemory = 1\n") == {"memory": "1"}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (b'name = "a\\101b"\n', "xl would silently drop"),
        (b'name = "a\\1 12b"\n', "xl would silently drop"),
        (b'name = "a\\12"\n', "xl refuses an octal escape without two more digits"),
        (b'name = "\\x41"\n', "xl refuses every \\x escape"),
        (b'name = "\\q"\n', "xl knows no such escape"),
        (b'name = "a\x00b"\n', "NUL byte in a string: xl aborts on it"),
    ],
)
def test_escapes_xl_refuses_or_drops_are_refused(text: bytes, words: str) -> None:
    message = refusal(text)
    assert message.startswith("t.cfg:1:8: ")
    assert words in message


def test_a_string_is_unquoted_as_it_is_read_even_where_no_string_belongs() -> None:
    # flex unquotes a string before bison sees it is out of place: xl aborts on this NUL
    assert refusal(b'"a\x00b" = 1\n').startswith("t.cfg:1:1: NUL byte in a string")
    assert refusal(b'a = 1 "\\q"\n').startswith("t.cfg:1:7: escape \\q")


# -- keys as xl's option code reads them ------------------------------------------------------


def domain(text: str) -> dict[str, object]:
    config = domain_config(parse_xlcfg('name = "web"\n' + text, "w.cfg"), "w.cfg")
    return vars(config)


def test_number_keys_take_any_number_xl_reads() -> None:
    config = domain("memory = 010\nmaxmem = '0x400'\nvcpus = \" 2\"\nvnc = '0x0'\nsdl = 2\n")
    assert (config["memory"], config["maxmem"], config["vcpus"]) == (8, 1024, 2)
    assert (config["vnc"], config["sdl"]) == (False, True)


@pytest.mark.parametrize(
    ("text", "dom_type"),
    [
        ('type = "h"', "hvm"),
        ('type = "p"', "pv"),
        ('type = "pvh"', "pvh"),
        ('type = ""', "hvm"),
        ('builder = "gen"', "pv"),
        ('type = "hvm"\nbuilder = "hvm"', "hvm"),
    ],
)
def test_type_and_builder_take_abbreviations_as_xl_does(text: str, dom_type: str) -> None:
    assert domain(text)["type"] == dom_type


def test_a_numeric_name_or_string_is_its_text() -> None:
    assert domain("device_model_user = 42\nserial = 'pty'\n")["device_model_user"] == "42"
    assert domain("serial = 'pty'\n")["serial"] == ("pty",)


def test_a_domain_with_vnuma_and_vsnd_nested_lists_loads(tmp_path: Path) -> None:
    path = tmp_path / "numa.cfg"
    path.write_text(
        'name = "numa"\ntype = "hvm"\nmemory = 1024\nvcpus = 2\n'
        'vnuma = [ [ "pnode=0", "size=512", "vcpus=0", "vdistances=10,20" ],\n'
        '          [ "pnode=1", "size=512", "vcpus=1", "vdistances=20,10" ] ]\n'
        "vsnd = [ [ 'card, short-name=Main', 'pcm, name=Main', 'stream, unique-id=0, type=p' ] ]\n"
        "disk = [ '/srv/numa.img,raw,xvda,w' ]\n"
    )
    config = load_domain(path)
    assert (config.name, config.type, config.max_vcpus) == ("numa", "hvm", 2)


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
    "bad-number": (b'name = "web"\nmemory = 12ab\n', ":2:1: memory must be a number: '12ab'"),
    "bad-octal": (b'name = "web"\nmemory = 09\n', ":2:1: memory must be a number: '09'"),
    "bad-hex": (b"memory = 0xZZ\n", ":1:10: number '0xZZ'"),
    "upper-hex": (b"memory = 0xFF\n", ":1:10: number '0xFF': xl reads digits, a-f and x only"),
    "negative": (b"memory = -5\n", ":1:10: xl reads no signs"),
    "huge-number": (b'name = "web"\nmemory = 99999999999999999999\n', "does not fit a C long"),
    "plus-equals-number": (b'name = "web"\nmemory = 5\nmemory += 12\n', "set with '+='"),
    "bad-escape": (b'name = "a\\qb"\n', ":1:8: escape \\q in a string: xl knows no such escape"),
    "hex-escape": (b'name = "\\x41"\n', ":1:8: escape \\x in a string: xl refuses every"),
    "octal-escape": (b'name = "\\101"\n', ":1:8: escape \\1 in a string: xl would silently"),
    "crlf": (b'name = "web"\r\n', ":1:13: carriage return"),
    "comment-at-eof": (b'name = "web"\n# end', ":2:1: a comment on the last line"),
    "upper-case-key": (b'Name = "web"\n', ":1:1: setting names are lower case"),
    "upper-case-value": (
        b"acpi = True\n",
        ":1:8: expected a value (a quoted string, a number or "
        "a list), found 'True': quote text (\"True\"); a flag is 1 or 0",
    ),
    "upper-case-item": (b'disk = [ "a", Web ]\n', ":1:15: expected a value"),
    "two-values": (b'name = "a" "b"\n', ":1:12: expected the end of the line"),
    "nested-item": (b"name = 'web'\ndisk = [ [ 'a' ] ]\n", ":2:1: disk item 1 is a list"),
    "list-for-one": (b"name = 'web'\nvnclisten = [ 'a' ]\n", ":2:1: vnclisten must be one value"),
    "one-for-list": (b"name = 'web'\ndisk = '/a,raw,xvda'\n", ":2:1: disk must be a list"),
    "list-without-comma": (b"disk = [ 'a' 'b' ]\n", ":1:14: expected ',' or ']'"),
    "mixed-plus-equals": (b"disk = [ 'a' ]\ndisk += 'b'\n", ":2:6: '+=' cannot add"),
    "nul-byte": (b'name = "web"\nmemory = 6\x004\n', ":2:11: unexpected byte b'\\x00'"),
    "nul-in-string": (b'name = "w\x00b"\n', ":1:8: NUL byte in a string"),
    "binary-garbage": (bytes(range(256)) * 4, ":1:1: unexpected byte b'\\x00'"),
    "python": (b"import os\n", ":1:8: expected '=' after 'import'"),
    "too-deep": (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deeply"),
    "missing-name": (b"memory = 64\n", ": no name"),
    "wrong-kind": (b'name = "web"\nmemory = [ 64 ]\n', ": memory must be a number"),
    "memory-zero": (b'name = "web"\nmemory = 0\n', ":2:1: memory 0 MiB is out of range"),
    "vga-unknown": (b'name = "web"\ntype = "hvm"\nvga = "std"\n', ":3:1: vga 'std' is unknown"),
    "disk-item": (
        b'name = "web"\ndisk = [ "/a.img,raw,hda,w",\n  "/b.img,hdb,w" ]\n',
        ":2:1: disk '/b.img,hdb,w': unknown value for format",
    ),
    "vif-item": (
        b'name = "web"\n\nvif = [ "bridge=br0,colour=red" ]\n',
        ":3:1: vif 'bridge=br0,colour=red': unknown setting 'colour=red'",
    ),
    "vnclisten-options": (
        b'name = "web"\nvnclisten = "0.0.0.0:1,websocket=6401"\n',
        ":2:1: vnclisten '0.0.0.0:1,websocket=6401' adds VNC options",
    ),
    "name-empty": (b'\nname = ""\n', ":2:1: domain name is empty"),
    "user-bad": (b'name = "web"\n\ndevice_model_user = "a b"\n', ":3:1: device_model_user 'a b'"),
    "memory-huge": (b'name = "web"\nmemory = 0x1000001\n', "is out of range"),
    "vcpus-zero": (b'name = "web"\nvcpus = 0\n', ": vcpus 0 is out of range"),
    "vcpus-many": (b'name = "web"\nvcpus = 513\n', ": vcpus 513 is out of range"),
    "bad-type": (b'name = "web"\ntype = "kvm"\n', ":2:1: type 'kvm' is unknown"),
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
    st.integers(min_value=0, max_value=2**64).map(str),
)
value_trees = st.recursive(
    atoms, lambda items: st.lists(items, max_size=4).map(tuple), max_leaves=8
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, value_trees, max_size=12))
def test_any_valid_config_survives_a_format_parse_round_trip(config: dict[str, Value]) -> None:
    parsed = parse_xlcfg(format_xlcfg(config))
    assert {key: setting.value for key, setting in parsed.items()} == config


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
