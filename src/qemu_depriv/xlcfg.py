r"""A parser for xl.cfg(5) domain configuration files, as Xen's libxlu reads them (pure).

Syntax: ``KEY = VALUE`` settings ended by a newline or ``;``; ``#`` comments; values are
strings in double quotes (with libxlu's escapes ``\\ \" \' \a \b \f \n \r \t \v``) or single
quotes (no escapes), numbers (decimal, ``0x`` hex, ``0`` octal), or lists ``[ a, b, ]`` of
strings and numbers that may span lines and end with a comma.  ``KEY += VALUE`` appends.
A key given twice keeps the last value, as in xl; unknown keys are kept (xl ignores them).

Errors are :class:`~qemu_depriv.errors.InvalidInput` naming ``FILE:LINE:COL``.  This is written
by hand because no maintained Python library reads libxlu's grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import InvalidInput
from qemu_depriv.xldevices import parse_disk, parse_vif

#: A config larger than this is refused unread: real ones are a few kilobytes.
MAX_CONFIG_BYTES = 1 << 20

Value = str | int | list[str | int]

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t]+)
  | (?P<comment>\#[^\n]*)
  | (?P<newline>\n)
  | (?P<ident>[a-z][a-z0-9_.]*)
  | (?P<badident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<number>0[xX][0-9A-Fa-f]+|[0-9]+)(?![A-Za-z0-9_.])
  | (?P<badnumber>[0-9][A-Za-z0-9_.]*)
  | (?P<dstring>"(?:[^"\\\n]|\\.)*")
  | (?P<sstring>'[^'\n]*')
  | (?P<op>\+=|[=\[\],;])
    """,
    re.VERBOSE,
)
_ESCAPE = re.compile(r"\\(.)", re.S)
_SIMPLE_ESCAPES = {
    '"': '"', "'": "'", "\\": "\\", "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
    "t": "\t", "v": "\v",
}  # fmt: skip


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int
    col: int


class _Lexer:
    def __init__(self, text: str, source: str) -> None:
        self.text, self.source = text, source

    def error(self, line: int, col: int, message: str) -> InvalidInput:
        return InvalidInput(f"{self.source}:{line}:{col}: {message}")

    def tokens(self) -> list[_Token]:
        out: list[_Token] = []
        pos, line, line_start = 0, 1, 0
        while pos < len(self.text):
            match = _TOKEN.match(self.text, pos)
            col = pos - line_start + 1
            if match is None:
                char = self.text[pos]
                if char == "\r":
                    raise self.error(
                        line, col, "carriage return: xl reads Unix line ends only (dos2unix)"
                    )
                if char in "\"'":
                    raise self.error(line, col, "unterminated string: close it on the same line")
                raise self.error(line, col, f"unexpected character {char!r}")
            kind = match.lastgroup or ""
            if kind == "badident":
                raise self.error(
                    line, col, f"setting name {match.group()!r}: xl reads only lower-case names"
                )
            if kind == "badnumber":
                raise self.error(
                    line, col, f"bad number {match.group()!r}: use decimal digits or 0x and hex"
                )
            if kind == "newline":
                out.append(_Token("newline", "\n", line, col))
                line, line_start = line + 1, match.end()
            elif kind not in ("space", "comment"):
                out.append(_Token(kind, match.group(), line, col))
            pos = match.end()
        out.append(_Token("eof", "", line, pos - line_start + 1))
        return out


def _dequote(token: _Token, lexer: _Lexer) -> str:
    body = token.text[1:-1]
    if token.kind == "sstring":
        return body

    def replace(match: re.Match[str]) -> str:
        escape = match.group(1)
        if escape in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[escape]
        why = {
            "x": "xl fails on \\x escapes",
            **dict.fromkeys("01234567", "xl drops octal escapes"),
        }.get(escape, "xl knows no such escape")
        raise lexer.error(
            token.line,
            token.col,
            f"escape \\{escape} in string: {why}; write the character itself, or \\\\ for a "
            "backslash",
        )

    return _ESCAPE.sub(replace, body)


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.lexer = _Lexer(text, source)
        self.tokens = self.lexer.tokens()
        self.pos = 0

    def peek(self) -> _Token:
        return self.tokens[self.pos]

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def error(self, token: _Token, message: str) -> InvalidInput:
        return self.lexer.error(token.line, token.col, message)

    def skip_newlines(self) -> None:
        while self.peek().kind == "newline":
            self.take()

    def parse(self) -> dict[str, Value]:
        settings: dict[str, Value] = {}
        while (token := self.take()).kind != "eof":
            if token.kind == "newline" or token.text == ";":
                continue
            if token.kind != "ident":
                raise self.error(token, f"expected a setting name, found {_show(token)}")
            operator = self.take()
            if operator.text not in ("=", "+="):
                raise self.error(
                    operator, f"expected '=' after {token.text!r}, found {_show(operator)}"
                )
            value = self.value()
            end = self.take()
            if end.kind not in ("newline", "eof") and end.text != ";":
                raise self.error(
                    end,
                    f"expected the end of the line after the value of {token.text!r}, "
                    f"found {_show(end)}",
                )
            if end.kind == "eof":
                self.pos -= 1
            if operator.text == "+=":
                value = _append(settings.get(token.text), value, self, operator)
            settings[token.text] = value
        return settings

    def atom(self) -> str | int | None:
        token = self.peek()
        if token.kind in ("dstring", "sstring"):
            self.take()
            return _dequote(token, self.lexer)
        if token.kind == "number":
            self.take()
            value = parse_number(token.text)
            if value is None:
                raise self.error(token, f"bad number {token.text!r}: octal digits are 0-7")
            return value
        return None

    def value(self) -> Value:
        token = self.peek()
        atom = self.atom()
        if atom is not None:
            return atom
        if token.text != "[":
            raise self.error(
                token,
                f"expected a value (a quoted string, a number or a list), found {_show(token)}",
            )
        self.take()
        items: list[str | int] = []
        self.skip_newlines()
        while self.peek().text != "]":
            item_token = self.peek()
            item = self.atom()
            if item is None:
                if item_token.kind == "eof":
                    raise self.error(token, "unterminated list: close it with ']'")
                raise self.error(
                    item_token,
                    "expected a list item (a quoted string or a number), "
                    f"found {_show(item_token)}",
                )
            items.append(item)
            self.skip_newlines()
            separator = self.peek()
            if separator.text == ",":
                self.take()
                self.skip_newlines()
            elif separator.text != "]":
                if separator.kind == "eof":
                    raise self.error(token, "unterminated list: close it with ']'")
                raise self.error(
                    separator, f"expected ',' or ']' in the list, found {_show(separator)}"
                )
        self.take()
        return items


def parse_number(text: str) -> int | None:
    """Read a number as libxlu's consumers do (``strtol`` base 0): ``0x`` hex, ``0`` octal.

    Returns None when ``text`` is not such a number.
    """
    text = text.strip()
    if re.fullmatch(r"0[xX][0-9A-Fa-f]+", text):
        return int(text, 16)
    if re.fullmatch(r"0[0-7]+", text):
        return int(text, 8)
    if re.fullmatch(r"[0-9]+", text) and not (len(text) > 1 and text[0] == "0"):
        return int(text)
    return None


def format_xlcfg(settings: dict[str, Value]) -> str:
    """Write settings back as xl.cfg text that :func:`parse_xlcfg` reads to the same value."""
    return "".join(f"{key} = {_format_value(value)}\n" for key, value in settings.items())


def _format_value(value: Value) -> str:
    if isinstance(value, list):
        return "[ " + ", ".join(_format_value(item) for item in value) + " ]"
    if isinstance(value, int):
        return str(value)
    escaped = []
    for char in value:
        escaped.append(_FORMAT_ESCAPES.get(char, char))
    return '"' + "".join(escaped) + '"'


_FORMAT_ESCAPES = {value: f"\\{key}" for key, value in _SIMPLE_ESCAPES.items() if key != "'"}


def _append(old: Value | None, new: Value, parser: _Parser, at: _Token) -> Value:
    if old is None:
        return new
    if isinstance(old, list) and isinstance(new, list):
        return old + new
    if isinstance(old, str) and isinstance(new, str):
        return old + new
    raise parser.error(at, "'+=' needs two lists or two strings")


def _show(token: _Token) -> str:
    return {"newline": "the end of the line", "eof": "the end of the file"}.get(
        token.kind, repr(token.text)
    )


def parse_xlcfg(text: str, source: str = "<config>") -> dict[str, Value]:
    """Parse the text of an xl.cfg file into its settings.

    Raises:
        InvalidInput: a syntax error, at ``source:line:col``.
    """
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise InvalidInput(f"{source}:{line}: NUL byte: this is not a text file")
    return _Parser(text, source).parse()


def read_xlcfg(path: Path) -> dict[str, Value]:
    """Read and parse an xl.cfg file.

    Raises:
        InvalidInput: missing, unreadable, not a regular file, too large, not UTF-8, or
            malformed.
    """
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path}: is a directory: give the domain's config file") from exc
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path}: no such file: check the path") from exc
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read it: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise InvalidInput(
            f"{path}: larger than {MAX_CONFIG_BYTES} bytes: not a domain config file"
        )
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise InvalidInput(f"{path}:{line}: NUL byte: this is not a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidInput(
            f"{path}:{line}:{col}: not UTF-8 text (byte {raw[exc.start]:#04x})"
        ) from exc
    return parse_xlcfg(text, str(path))


def _string(settings: dict[str, Value], key: str, source: str) -> str | None:
    value = settings.get(key)
    if value is not None and not isinstance(value, str):
        raise InvalidInput(f"{source}: {key} must be a quoted string, not {value!r}")
    return value


def _integer(settings: dict[str, Value], key: str, source: str) -> int | None:
    """A number; libxlu's consumers also read one written in quotes."""
    value = settings.get(key)
    if value is None or isinstance(value, int):
        return value
    number = parse_number(value) if isinstance(value, str) else None
    if number is None:
        raise InvalidInput(f"{source}: {key} must be a number, not {value!r}")
    return number


def _flag(settings: dict[str, Value], key: str, source: str) -> bool | None:
    number = _integer(settings, key, source)
    return None if number is None else number != 0


def _strings(settings: dict[str, Value], key: str, source: str) -> tuple[str, ...]:
    """A list of strings; a single string counts as a list of one (as xl takes serial)."""
    value = settings.get(key)
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(item, str) for item in items):
        raise InvalidInput(f"{source}: {key} must be a list of quoted strings, not {value!r}")
    return tuple(str(item) for item in items)


def _domain_type(settings: dict[str, Value], source: str) -> str:
    """``type``, else ``builder`` ("hvm"; "generic" is PV), else PV, as xl decides on x86."""
    dom_type = _string(settings, "type", source)
    builder = _string(settings, "builder", source)
    from_builder = {"hvm": "hvm", "generic": "pv"}.get(builder or "")
    if builder is not None and from_builder is None:
        raise InvalidInput(f"{source}: builder {builder!r} is unknown: use hvm or generic")
    if dom_type is not None and from_builder is not None and dom_type != from_builder:
        raise InvalidInput(f"{source}: type {dom_type!r} and builder {builder!r} disagree")
    return dom_type or from_builder or "pv"


def _vga(settings: dict[str, Value], source: str) -> str | None:
    vga = _string(settings, "vga", source)
    if vga is not None:
        return vga
    stdvga = _flag(settings, "stdvga", source)
    return None if stdvga is None else "stdvga" if stdvga else "cirrus"


def domain_config(settings: dict[str, Value], source: str = "<config>") -> DomainConfig:
    """Map parsed settings to a validated :class:`DomainConfig`, as xl's parser reads them.

    Raises:
        InvalidInput: a required key is missing, or a value is of the wrong kind or range.
    """
    name = _string(settings, "name", source)
    if name is None:
        raise InvalidInput(f'{source}: no name = "..." setting: every domain needs a name')
    memory, vcpus = _integer(settings, "memory", source), _integer(settings, "vcpus", source)
    return DomainConfig(
        name=name,
        type=_domain_type(settings, source),
        memory=128 if memory is None else memory,
        maxmem=_integer(settings, "maxmem", source),
        vcpus=1 if vcpus is None else vcpus,
        maxvcpus=_integer(settings, "maxvcpus", source),
        device_model_user=_string(settings, "device_model_user", source),
        dm_restrict=_flag(settings, "dm_restrict", source),
        device_model_version=_string(settings, "device_model_version", source),
        device_model_override=_string(settings, "device_model_override", source),
        device_model_args=_strings(settings, "device_model_args", source),
        device_model_args_hvm=_strings(settings, "device_model_args_hvm", source),
        vnc=_flag(settings, "vnc", source),
        vnclisten=_string(settings, "vnclisten", source),
        vncdisplay=_integer(settings, "vncdisplay", source),
        vncunused=_flag(settings, "vncunused", source),
        sdl=bool(_flag(settings, "sdl", source)),
        serial=_strings(settings, "serial", source),
        boot=_string(settings, "boot", source),
        vga=_vga(settings, source),
        videoram=_integer(settings, "videoram", source),
        uuid=_string(settings, "uuid", source),
        disks=tuple(parse_disk(d, source) for d in _strings(settings, "disk", source)),
        vifs=tuple(
            parse_vif(v, devid, source) for devid, v in enumerate(_strings(settings, "vif", source))
        ),
        vfbs=_strings(settings, "vfb", source),
        p9s=_strings(settings, "p9", source),
        channels=_strings(settings, "channel", source),
        usbctrls=_strings(settings, "usbctrl", source),
        accel=_string(settings, "accel", source),
        source=source,
    )


def load_domain(path: Path) -> DomainConfig:
    """Read ``path`` and return its validated domain config.

    Raises:
        InvalidInput: see :func:`read_xlcfg` and :func:`domain_config`.
    """
    return domain_config(read_xlcfg(path), str(path))
