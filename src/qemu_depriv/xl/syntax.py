r"""The xl.cfg(5) reader: domain configs read exactly as Xen 4.17's libxlutil reads them (pure).

libxlutil (``tools/libs/util``: a flex lexer, a bison grammar and ``libxlu_cfg.c``) is what
``xl create`` uses, and this module agrees with it byte for byte; ``tests/xl`` holds it against
the real library.  What libxlutil does, and so what this does:

- A file is bytes, not text: any byte passes through comments and quoted strings (a Latin-1
  ``é`` stays the byte 0xE9).  Values are str decoded from UTF-8 with ``surrogateescape``,
  so a non-UTF-8 byte round-trips (``value.encode("utf-8", "surrogateescape")``).
- Settings are ``key = value`` or ``key += value``, ended by a newline or ``;``; the last one
  may end the file.  Keys are ``[a-z][._0-9a-z]*``.  ``#`` starts a comment that only a
  newline ends: a comment on the last line without a final newline is refused, but one stray
  character at the very end of a file is dropped (``a = 1 #`` at EOF reads ``a = 1``).
- An atom is a quoted string or a number, and libxlutil keeps both as text: ``512``, ``"512"``
  and ``'512'`` are the same value.  A bare number is ``[0-9][0-9a-fx]*``, so ``12ab`` and
  ``09`` are values (text), while ``0xFF``, ``0X10``, ``-1`` and ``1.5`` are refused.  How a
  number is read is each key's business (:func:`qemu_depriv.xl.config.xl_long` is
  ``xlu_cfg_get_long``, C ``strtol`` base 0; xl reads a few keys such as ``cpus`` items in
  base 10, so ``[09]`` is CPU 9).
- Single and double quotes are the same, with the same escapes: ``\\ \" \' \a \b \f \n \r
  \t \v``.  ``\x..`` is always refused by libxlutil; an octal escape ``\NNN`` is silently
  dropped by it, digits and all, which we refuse (see below).  A carriage return is kept
  inside a string or comment and refused elsewhere.
- Lists ``[ a, b, ]`` nest, span lines, may hold comments, and take a trailing comma.
  libxlutil's parser stack holds 9,999 entries, which bounds nesting (4,996 levels of ``[[``,
  1,999 of ``[1,[``); so does ours, to the entry.
- A key given twice keeps its last value.  ``+=`` joins the new value to the current one:
  text to text (``1`` then ``+= 2`` is ``"12"``), list to list; a list to text is refused.
  A value set with ``+=`` is never a number to xl.

Where libxlutil or xl's option code silently changes what a file says, this refuses the file
instead, with a message that says why; each such case is a row of the admin guide's table
(docs/qemu-deprivilege.md, "Domain configs (xl.cfg)") and carries one of
:data:`DIFFERENCES`' phrases.  Errors are :class:`~qemu_depriv.errors.InvalidInput` naming
``FILE:LINE:COL`` and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeAlias

from qemu_depriv.errors import InvalidInput

#: A config larger than this is refused unread: real ones are a few kilobytes.
MAX_CONFIG_BYTES = 1 << 20

#: An atom (xl keeps numbers as their text) or a list, whose items may be lists.
Value: TypeAlias = str | tuple["Value", ...]

#: The deliberate differences from xl, by the admin guide's row: the phrase each refusal says.
DIFFERENCES = {
    "octal-escape": "xl would silently drop",
    "nul-in-string": "xl aborts on it",
    "wrong-kind": "xl would ignore the setting",
    "not-a-number": "xl would ignore it and use its default",
    "nested-item": "xl would stop reading the list there",
    "too-large": "not a domain config file",
    "vif-setting": "xl would warn and ignore it",
    "unsafe-name": "which would reach QEMU's options",
    "vnc-options": "which would reach QEMU's -vnc unchecked",
}

#: bison's YYMAXDEPTH in libxlutil's parser: a push onto its 10,000th entry exhausts it.
_PARSER_STACK = 9999

_TOKEN = re.compile(
    rb"(?P<space>[ \t]+)"
    rb"|(?P<newline>\n|#[^\n]*\n)"
    rb"|(?P<ident>[a-z][._0-9a-z]*)"
    rb"|(?P<number>[0-9][0-9a-fx]*)"
    rb"""|(?P<string>"(?:[^"\\\n]|\\[^\n])*"|'(?:[^'\\\n]|\\[^\n])*')"""
    rb"|(?P<op>\+=|[=\[\],;])"
)
_ESCAPES = {ord(k): ord(v) for k, v in zip("\"'\\abfnrtv", "\"'\\\a\b\f\n\r\t\v", strict=True)}
_C_SPACE = b" \t\n\v\f\r"
#: What C's strtol(value, &end, 0) reads: leading C whitespace, a sign, hex, octal or decimal.
_WORD = re.compile(rb"[^ \t\n,\];]*")
#: The tokens after which a value comes: a word there is a value, not a setting's name.
_BEFORE_VALUE = (b"=", b"+=", b"[", b",")
_STRAY = {
    b"#": "a comment on the last line needs a newline at its end: xl refuses it without",
    b"\r": "carriage return: xl reads Unix line ends only (convert with dos2unix)",
    b"A": "setting names are lower case, starting with a letter, in xl",
    **dict.fromkeys(
        (b'"', b"'"), "unterminated string: close it on the same line (write \\n for a newline)"
    ),
    **dict.fromkeys(
        (bytes([c]) for c in b"+-.():"),
        'xl reads no signs, decimals or expressions: quote text such as "-1"',
    ),
}


@dataclass(frozen=True)
class Setting:
    """One key as xl uses it: its last assignment, with every ``+=`` before it applied.

    ``appended`` is set when that last assignment was ``+=``: xl then never reads the value
    as a number.  ``line`` and ``col`` say where it was set, for messages.
    """

    value: Value
    appended: bool = False
    line: int = 0
    col: int = 0


@dataclass(frozen=True)
class _Token:
    kind: str
    raw: bytes
    pos: int
    line: int
    line_start: int
    text: str = ""  # an atom's value


class _Reader:
    """One pass over the bytes of a file: flex's tokens fed to bison's grammar, by hand."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data, self.source = data, source
        self.pos, self.line, self.line_start = 0, 1, 0
        self.ahead: _Token | None = None
        self.previous: _Token | None = None
        self.depth = 0

    def error(self, pos: int, message: str, *, line: int | None = None) -> InvalidInput:
        line = self.line if line is None else line
        start = self.data.rfind(b"\n", 0, pos) + 1
        col = len(self.data[start:pos].decode("utf-8", "surrogateescape")) + 1
        return InvalidInput(f"{self.source}:{line}:{col}: {message}")

    def at(self, token: _Token, message: str) -> InvalidInput:
        return self.error(token.pos, message, line=token.line)

    # -- the lexer (libxlu_cfg_l.l) -------------------------------------------------------------

    def lex(self) -> _Token:
        while True:
            match = _TOKEN.match(self.data, self.pos)
            if match is None:
                if self.pos >= len(self.data) - 1:
                    # flex's lexerr state meets the end of the file: its error rule never
                    # runs, so one stray last byte is dropped without a word.
                    self.pos = len(self.data)
                    return _Token("eof", b"", self.pos, self.line, self.line_start)
                raise self.stray()
            kind = match.lastgroup or ""
            token = _Token(kind, match.group(), self.pos, self.line, self.line_start)
            self.pos = match.end()
            if kind == "newline":
                self.line, self.line_start = self.line + 1, self.pos
            elif kind == "number":
                token = replace(token, text=token.raw.decode("ascii"))
            elif kind == "string":  # unquoted as it is lexed, wherever it stands, as flex does
                text = _dequote(token, self).decode("utf-8", "surrogateescape")
                token = replace(token, text=text)
            if kind != "space":
                self.previous = token
                return token

    def stray(self) -> InvalidInput:
        """Why a byte that no token starts with is refused, and what to write instead."""
        char, before = self.data[self.pos : self.pos + 1], self.previous
        if (
            before is not None
            and before.kind == "number"
            and before.pos + len(before.raw) == self.pos
            and re.match(rb"[A-Z._]", char)
        ):
            rest = _WORD.match(self.data, self.pos)
            text = (before.raw + (rest.group() if rest else b"")).decode("utf-8", "surrogateescape")
            fix = "quote it if it is text"
            if re.fullmatch(r"[0-9][0-9a-fx]*", text.lower()):
                fix = f"write {text.lower()!r}, or quote it if it is text"
            return self.at(
                before, f"number {text!r}: xl reads digits, a-f and x only (hex in lower case, "
                f"no signs or decimals): {fix}",
            )  # fmt: skip
        if (char.isupper() or char == b"_") and before is not None and before.raw in _BEFORE_VALUE:
            word = _WORD.match(self.data, self.pos)
            shown = (word.group() if word else char).decode("utf-8", "surrogateescape")
            return self.error(
                self.pos,
                f"expected a value (a quoted string, a number or a list), found {shown!r}: "
                f'quote text ("{shown}"); a flag is 1 or 0',
            )
        if char.isupper() or char == b"_":
            char = b"A"
        why = _STRAY.get(char, f"unexpected byte {char!r} outside quotes and comments")
        return self.error(self.pos, why)

    def peek(self) -> _Token:
        if self.ahead is None:
            self.ahead = self.lex()
        return self.ahead

    def take(self) -> _Token:
        token = self.peek()
        self.ahead = None
        return token

    # -- the grammar (libxlu_cfg_y.y) -----------------------------------------------------------

    def push(self, count: int, token: _Token) -> None:
        """Mirror bison's stack, whose overflow ("memory exhausted") refuses the file."""
        self.depth += count
        if self.depth > _PARSER_STACK:
            raise self.at(token, "lists nested too deeply: xl's parser runs out of stack")

    def newlines(self) -> None:
        """``nlok``: any newlines (and comments), each shifted then reduced."""
        while self.peek().kind == "newline":
            self.push(1, self.take())
            self.depth -= 1

    def parse(self) -> dict[str, Setting]:
        settings: dict[str, Setting] = {}
        while (token := self.take()).kind != "eof":
            if token.kind == "newline" or token.raw == b";":
                continue
            if token.kind != "ident":
                raise self.at(token, f"expected a setting name, found {_show(token)}")
            operator = self.take()
            if operator.raw not in (b"=", b"+="):
                raise self.at(
                    operator, f"expected '=' after {_name(token)}, found {_show(operator)}"
                )
            self.depth = 4  # bison's states for: start, stmts, IDENT, the operator
            value = self.value()
            end = self.peek()
            if end.kind not in ("newline", "eof") and end.raw != b";":
                raise self.at(
                    end, f"expected the end of the line after the value of {_name(token)}, found "
                    f"{_show(end)}",
                )  # fmt: skip
            key = token.raw.decode("ascii")
            appended = operator.raw == b"+="
            if appended and key in settings:
                value = self.join(settings[key].value, value, operator)
            col = len(self.data[token.line_start : token.pos].decode("utf-8", "surrogateescape"))
            settings[key] = Setting(value, appended, token.line, col + 1)
        return settings

    def join(self, old: Value, new: Value, operator: _Token) -> Value:
        """``+=`` as ``xlu__cfg_concat_vals`` does it: text to text, list to list."""
        if isinstance(old, str) and isinstance(new, str):
            return old + new
        if isinstance(old, tuple) and isinstance(new, tuple):
            return old + new
        raise self.at(operator, "'+=' cannot add a list to one value or one value to a list")

    def value(self) -> Value:
        """One value, lists iteratively: a file may nest them thousands deep.

        ``self.depth`` follows bison's stack through ``value: '[' nlok valuelist ']'``,
        ``values: value nlok | values ',' nlok value nlok`` and ``valuelist: | values |
        values ',' nlok``, so that nesting runs out where libxlutil's does.
        """
        open_lists: list[tuple[list[Value], _Token]] = []
        while True:
            token = self.take()
            if token.kind in ("number", "string"):
                self.push(1, token)
                value: Value = token.text
            elif token.raw == b"[":
                self.push(2, token)  # '[' and an empty nlok
                self.newlines()
                if self.peek().raw != b"]":
                    open_lists.append(([], token))
                    continue
                self.push(2, self.take())  # an empty valuelist, then ']'
                self.depth -= 3
                value = ()
            else:
                raise self.unexpected(token, open_lists)
            while open_lists:
                if not self.item_done(value, *open_lists[-1]):
                    break
                value = tuple(open_lists.pop()[0])
            else:
                return value

    def item_done(self, value: Value, items: list[Value], opened: _Token) -> bool:
        """Add an item to an open list; whether the list then closed (else an item follows)."""
        self.push(1, opened)  # nlok after the item
        self.newlines()
        self.depth -= 4 if items else 1  # reduced to 'values'
        items.append(value)
        separator = self.take()
        if separator.raw == b",":
            self.push(2, separator)
            self.newlines()
            if self.peek().raw != b"]":
                return False
            self.depth -= 2
            separator = self.take()
        elif separator.raw != b"]":
            if separator.kind == "eof":
                raise self.at(opened, "unterminated list: close it with ']'")
            raise self.at(separator, f"expected ',' or ']' in the list, found {_show(separator)}")
        self.push(1, separator)
        self.depth -= 3
        return True

    def unexpected(
        self, token: _Token, open_lists: list[tuple[list[Value], _Token]]
    ) -> InvalidInput:
        if token.kind == "eof" and open_lists:
            return self.at(open_lists[-1][1], "unterminated list: close it with ']'")
        expected = "a value (a quoted string, a number or a list)"
        if open_lists and token.raw in (b",", b"]"):
            expected = "a list item"
        return self.at(token, f"expected {expected}, found {_show(token)}")


def _dequote(token: _Token, reader: _Reader) -> bytes:
    r"""A quoted string's bytes, as ``xlu__cfgl_dequote`` makes them.

    Raises InvalidInput for a NUL byte (libxlutil's ``strlen`` stops there and an assertion
    kills xl), ``\x`` (libxlutil skips a digit and then always fails), an unknown escape, and
    an octal escape: libxlutil refuses one with fewer than two characters after its digit
    that C's ``strtoul(..., 10)`` reads, and silently drops any other, digits included.
    """
    raw = token.raw
    if b"\0" in raw:
        raise reader.at(token, f"NUL byte in a string: {DIFFERENCES['nul-in-string']}: remove it")
    out, index = bytearray(), 1
    while index < len(raw) - 1:
        char = raw[index]
        index += 1
        if char != ord("\\"):
            out.append(char)
            continue
        escape = raw[index]
        index += 1
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            continue
        shown = "\\" + chr(escape) if escape < 0x80 else "\\" + repr(bytes([escape]))
        if escape == ord("x"):
            why = "xl refuses every \\x escape (its reader of them is broken)"
        elif ord("0") <= escape <= ord("7"):
            if _strtoul_length(raw[index : index + 3]) < 2:
                why = "xl refuses an octal escape without two more digits"
            else:
                why = f"{DIFFERENCES['octal-escape']} the escape and the digits after it"
        else:
            why = "xl knows no such escape"
        raise reader.at(
            token, f"escape {shown} in a string: {why}: write the character itself, or \\\\ "
            "for a backslash",
        )  # fmt: skip
    return bytes(out)


def _strtoul_length(text: bytes) -> int:
    """How many bytes C's ``strtoul(text, &end, 10)`` consumes (0 when it reads no digit)."""
    index = 0
    while index < len(text) and text[index] in _C_SPACE:
        index += 1
    if index < len(text) and text[index] in b"+-":
        index += 1
    digits = len(text[index:]) - len(text[index:].lstrip(b"0123456789"))
    return index + digits if digits else 0


def _show(token: _Token) -> str:
    if token.kind in ("newline", "eof"):
        return {"newline": "the end of the line", "eof": "the end of the file"}[token.kind]
    return repr(token.raw.decode("utf-8", "surrogateescape"))


def _name(token: _Token) -> str:
    return repr(token.raw.decode("ascii"))


def parse_xlcfg_bytes(data: bytes, source: str = "<config>") -> dict[str, Setting]:
    """Parse an xl.cfg file's bytes into its settings, as libxlutil does.

    Raises:
        InvalidInput: what libxlutil refuses, and the deliberate differences, at
            ``source:line:col``.
    """
    return _Reader(data, source).parse()


def parse_xlcfg(text: str, source: str = "<config>") -> dict[str, Setting]:
    """Parse xl.cfg text (non-UTF-8 bytes as ``surrogateescape`` characters).

    Raises:
        InvalidInput: see :func:`parse_xlcfg_bytes`.
        UnicodeEncodeError: ``text`` holds a surrogate that stands for no byte, so it was
            never read from a file.
    """
    return parse_xlcfg_bytes(text.encode("utf-8", "surrogateescape"), source)


def read_xlcfg(path: Path) -> dict[str, Setting]:
    """Read and parse an xl.cfg file.

    Raises:
        InvalidInput: missing, unreadable, not a regular file, too large, or malformed.
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
            f"{path}: larger than {MAX_CONFIG_BYTES} bytes: {DIFFERENCES['too-large']}"
        )
    return parse_xlcfg_bytes(raw, str(path))


def format_xlcfg(settings: Mapping[str, Value]) -> str:
    """Write values back as xl.cfg text that :func:`parse_xlcfg` reads to the same values.

    Raises:
        ValueError: a value holds a NUL character, which no xl.cfg string can.
    """
    return "".join(f"{key} = {_format_value(value)}\n" for key, value in settings.items())


def _format_value(value: Value) -> str:
    if isinstance(value, tuple):
        return "[ " + ", ".join(_format_value(item) for item in value) + " ]"
    if "\0" in value:
        raise ValueError("an xl.cfg string cannot hold a NUL character")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
