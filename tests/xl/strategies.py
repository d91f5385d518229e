r"""Random xl.cfg files from libxlutil's grammar, corners first (hypothesis).

A file is statements (``key = value`` or ``key += value``) ended by newlines, ``;`` or
comments, with blank lines, tabs and comments between, and maybe no final newline.  Values
are numbers of every form the lexer takes or nearly takes, strings in either quote with every
escape (good, refused and silently dropped ones), raw CRs, control, Latin-1, UTF-8 and now and
then NUL bytes, and lists nested a few deep that span lines, hold comments and end in a
trailing comma.  Keys are the product's own (so that domain_config is exercised) and random
ones.  Then a few bytes may be inserted or deleted anywhere, which reaches the lexer's and the
parser's errors, and a stray byte may end the file.
"""

from __future__ import annotations

import string

from hypothesis import strategies as st

OUR_KEYS = (
    "name", "type", "builder", "memory", "maxmem", "vcpus", "maxvcpus", "videoram", "vncdisplay",
    "vnc", "vncunused", "sdl", "stdvga", "dm_restrict", "vga", "vnclisten", "boot", "uuid",
    "device_model_user", "device_model_version", "device_model_override", "device_model_args",
    "device_model_args_hvm", "serial", "disk", "vif", "vfb", "p9", "channel", "usbctrl",
)  # fmt: skip
OTHER_KEYS = ("cpus", "vnuma", "vsnd", "extra", "pci", "kernel", "on_crash", "a", "a.b", "x_1.")

NUMBERS = (
    "0", "00", "007", "010", "08", "09", "0x", "0xx", "0x0", "0x1f", "0xdeadbeef", "12ab", "1e5",
    "5x5", "9223372036854775807", "9223372036854775808", "18446744073709551616",
    "0777777777777777777777", "01777777777777777777777", "0x7fffffffffffffff",
    "0x8000000000000000", "0xffffffffffffffffff", "4294967296", "512", "1",
)  # fmt: skip
ESCAPES = (
    "\\\\", '\\"', "\\'", "\\a", "\\b", "\\f", "\\n", "\\r", "\\t", "\\v",
    "\\x41", "\\x", "\\q", "\\ ", "\\1", "\\12", "\\123", "\\1234", "\\189", "\\1 2", "\\1+5",
    "\\7\\7", "\\0", "\\00", "\\000",
)  # fmt: skip
RAW_PIECES = (
    "a", "web", "0", " ", "\t", "\r", ",", "=", "[", "]", "#", ";", "+=", "x", "\x01", "\x7f",
)  # fmt: skip
NASTY = (b"\xe9", b"\xc3\xa9", b"\xff", b"\xed\xa0\x80", b"\x00")


@st.composite
def _string(draw: st.DrawFn) -> bytes:
    quote = draw(st.sampled_from(["'", '"']))
    other = "'" if quote == '"' else '"'
    good, bad = ESCAPES[:10], ESCAPES[10:]  # xl's own escapes; then refused or dropped ones
    pool = [*(p.encode() for p in (*RAW_PIECES * 3, *good * 2, *bad, other)), *NASTY[:-1]]
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from([*pool, *pool, NASTY[-1]]),  # a NUL now and then: xl aborts
                st.text(st.characters(codec="utf-8", exclude_characters=f"\n\\{quote}\x00")).map(
                    lambda text: text.encode("utf-8", "surrogatepass")
                ),
            ),
            max_size=6,
        )
    )
    return quote.encode() + b"".join(pieces) + quote.encode()


ATOMS = st.one_of(
    st.sampled_from(NUMBERS).map(str.encode),
    st.integers(min_value=0, max_value=2**70).map(lambda n: str(n).encode()),
    st.builds(
        lambda first, rest: (first + rest).encode(),
        st.sampled_from("0123456789"),
        st.text("0123456789abcdefx", max_size=5),
    ),
    _string(),
)

_SPACE = st.sampled_from([b"", b" ", b"  ", b"\t", b" \t"])
_GAP = st.sampled_from([b"", b" ", b"\n", b"  \n  ", b" # a comment\n", b"\n\n", b"#\n"])


@st.composite
def _list(draw: st.DrawFn, items: st.SearchStrategy[bytes]) -> bytes:
    drawn = draw(st.lists(items, max_size=4))
    out = [b"[", draw(_GAP)]
    for index, item in enumerate(drawn):
        out += [item, draw(_GAP)]
        if index < len(drawn) - 1 or draw(st.booleans()):
            out += [b",", draw(_GAP)]
    return b"".join([*out, b"]"])


VALUES = st.recursive(ATOMS, _list, max_leaves=12)

_END = st.sampled_from([b"\n", b";", b";\n", b" ;  ; \n", b" # end\n", b"\n\n", b"\t\n"])


@st.composite
def _statement(draw: st.DrawFn) -> bytes:
    key = draw(
        st.one_of(
            st.sampled_from(OUR_KEYS + OTHER_KEYS),
            st.builds(
                str.__add__,
                st.sampled_from(string.ascii_lowercase),
                st.text("._0123456789" + string.ascii_lowercase, max_size=8),
            ),
        )
    )
    operator = draw(st.sampled_from([b"=", b"=", b"+="]))
    space = [draw(_SPACE) for _ in range(3)]
    value = draw(VALUES)
    return key.encode() + space[0] + operator + space[1] + value + space[2] + draw(_END)


@st.composite
def xlcfg_files(draw: st.DrawFn) -> bytes:
    """One xl.cfg file's bytes, well formed or nearly."""
    parts = []
    if draw(st.booleans()):
        parts.append(b'name = "gen"\n')
    for statement in draw(st.lists(_statement(), max_size=8)):
        parts.append(draw(st.sampled_from([b"", b"", b"\n", b"# comment \xe9\r\n", b"\t;\n"])))
        parts.append(statement)
    data = bytearray(b"".join(parts))
    ending = draw(st.sampled_from(["keep"] * 4 + ["strip", "comment", "stray", "crlf"]))
    if ending == "strip":
        data = bytearray(data.rstrip(b"\n;"))
    elif ending == "comment":
        data += b"# no newline after this"
    elif ending == "stray":
        data += draw(st.sampled_from([b"#", b"@", b"\r", b"\x00", b"\xe9", b"'", b"+", b"A"]))
    elif ending == "crlf":
        data = bytearray(data.replace(b"\n", b"\r\n"))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        where = draw(st.integers(0, len(data)))
        if draw(st.booleans()) and where < len(data):
            del data[where]
        else:
            noise = draw(st.sampled_from([b"A", b"-", b".", b"\r", b"#", b'"', b"'", b"[", b"]"]))
            data[where:where] = noise + draw(st.sampled_from([b"", b"\x00", b"F", b"\n"]))
    return bytes(data)
