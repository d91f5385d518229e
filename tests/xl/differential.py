"""What libxlutil reads from a file (through the dumper), compared with what our reader reads.

``compare`` is the whole differential test for one file: the verdicts (accepted, refused, xl
aborted), every key's value, whether it was set with ``+=``, the number ``xlu_cfg_get_long``
reads from it, and, for the keys the product uses, the value ``domain_config`` takes against
the one xl's option code (tools/xl/xl_parse.c, Xen 4.17) takes.  A disagreement is allowed only
where a row of the admin guide's table explains it, which the refusal names with the row's
phrase from ``qemu_depriv.xl.config.DIFFERENCES``; any other fails, naming the file, the key and
both values.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.config import XlNumberError, domain_config, xl_long
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.syntax import DIFFERENCES, Setting, Value, parse_xlcfg_bytes

#: A value as bytes, the way libxlutil holds it.
Raw: TypeAlias = bytes | tuple["Raw", ...]

#: Refusals of a whole file that xl reads, by row.
FILE_ROWS = ("octal-escape", "too-large")
#: Refusals of one key's value that xl's option code would drop or cut short, by row.
KEY_ROWS = ("wrong-kind", "not-a-number", "nested-item")

#: The keys domain_config reads, by how xl_parse.c reads them.
NUMBER_KEYS = ("memory", "maxmem", "vcpus", "maxvcpus", "videoram", "vncdisplay")
FLAG_KEYS = ("vnc", "vncunused", "sdl", "dm_restrict")
STRING_KEYS = (
    "name", "device_model_user", "device_model_version", "device_model_override", "vnclisten",
    "boot", "uuid", "accel",
)  # fmt: skip
LIST_KEYS = ("device_model_args", "device_model_args_hvm", "vfb", "p9", "channel", "usbctrl")
_ALL_LIST_KEYS = (*LIST_KEYS, "disk", "vif")
_FIELDS = {"vfb": "vfbs", "p9": "p9s", "channel": "channels", "usbctrl": "usbctrls"}


@dataclass(frozen=True)
class XlSetting:
    """One key as the dumper printed it."""

    value: Raw
    appended: bool
    long: tuple[int, int]  # xlu_cfg_get_long's result (0 or an errno) and number
    string: int  # xlu_cfg_get_string's result
    list: int  # xlu_cfg_get_list's result
    items: tuple[bytes | None, ...] | None  # xlu_cfg_get_listitem of each item of a list


@dataclass(frozen=True)
class XlView:
    """What libxlutil made of a file: ``verdict`` is accepted, refused or aborted."""

    verdict: str
    settings: dict[str, XlSetting]
    stderr: str


def _raw(value: Any) -> Raw:
    if isinstance(value, list):
        return tuple(_raw(item) for item in value)
    return str(value).encode("latin-1")


def _setting(entry: dict[str, Any]) -> XlSetting:
    items = entry["items"]
    return XlSetting(
        value=_raw(entry["value"]),
        appended=entry["op"] == "+=",
        long=(entry["long"][0], entry["long"][1]),
        string=entry["string"],
        list=entry["list"],
        items=None
        if items is None
        else tuple(None if i is None else i.encode("latin-1") for i in items),
    )


def run_dumper(dumper: Path, path: Path) -> XlView:
    """Run the dumper on ``path``; an assertion in libxlutil is the verdict ``aborted``."""
    done = subprocess.run([str(dumper), str(path)], capture_output=True, timeout=60, check=False)
    stderr = done.stderr.decode("utf-8", "replace")
    if done.returncode == -signal.SIGABRT:
        return XlView("aborted", {}, stderr)
    assert done.returncode == 0, f"the dumper failed on {path}: {stderr}"
    printed = json.loads(done.stdout)
    settings = {entry["name"]: _setting(entry) for entry in printed["settings"]}
    return XlView("accepted" if printed["rc"] == 0 else "refused", settings, stderr)


def as_raw(value: Value) -> Raw:
    """Our value as libxlutil's bytes: the reader decoded them with surrogateescape."""
    if isinstance(value, tuple):
        return tuple(as_raw(item) for item in value)
    return value.encode("utf-8", "surrogateescape")


def row_of(message: str, rows: tuple[str, ...]) -> str | None:
    """The table row a refusal names, if any."""
    return next((row for row in rows if DIFFERENCES[row] in message), None)


class Disagreement(AssertionError):
    """Our reader and libxlutil disagree outside the admin guide's table."""


def compare(name: str, data: bytes, xl: XlView) -> str | None:
    """Compare our reader with libxlutil on one file.

    Returns None when they agree, or the table row that explains a difference.

    Raises:
        Disagreement: any other difference, naming the file, the key and both values.
    """
    try:
        ours = parse_xlcfg_bytes(data, name)
    except InvalidInput as exc:
        if xl.verdict == "accepted":
            row = row_of(exc.message, FILE_ROWS)
            if row is None:
                raise Disagreement(
                    f"{name}: xl accepts the file, we refuse it: {exc.message}"
                ) from exc
            return row
        if xl.verdict == "aborted":
            # xl crashed on a NUL in a string; we stop at the first string we refuse, which
            # may be an earlier one xl would have changed silently.
            row = row_of(exc.message, ("nul-in-string", *FILE_ROWS))
            if row is None:
                raise Disagreement(
                    f"{name}: xl aborts (a NUL in a string), we refuse for another reason: "
                    f"{exc.message}"
                ) from exc
            return row
        return None
    if xl.verdict != "accepted":
        raise Disagreement(f"{name}: xl {xl.verdict} the file, we accept it: {xl.stderr.strip()}")
    _compare_settings(name, ours, xl)
    return _compare_domain(name, ours, xl)


def _compare_settings(name: str, ours: dict[str, Setting], xl: XlView) -> None:
    if set(ours) != set(xl.settings):
        raise Disagreement(
            f"{name}: keys differ: only ours {sorted(set(ours) - set(xl.settings))}, "
            f"only xl's {sorted(set(xl.settings) - set(ours))}"
        )
    for key, setting in ours.items():
        theirs = xl.settings[key]
        if as_raw(setting.value) != theirs.value:
            raise Disagreement(
                f"{name}: key {key}: ours {as_raw(setting.value)!r}, xl's {theirs.value!r}"
            )
        if setting.appended != theirs.appended:
            raise Disagreement(
                f"{name}: key {key}: ours appended={setting.appended}, xl's {theirs.appended}"
            )
        try:
            long = (0, xl_long(setting))
        except XlNumberError as exc:
            long = (exc.errno, 0)
        if long != theirs.long:
            raise Disagreement(
                f"{name}: key {key} ({theirs.value!r}) as a number: ours {long}, "
                f"xlu_cfg_get_long's {theirs.long}"
            )


def _text(value: Raw) -> str:
    assert isinstance(value, bytes)
    return value.decode("utf-8", "surrogateescape")


def _xl_type(xl: dict[str, XlSetting]) -> str | None:
    """xl_parse.c's choice of type: ``!strncmp(buf, word, strlen(buf))``, type then builder."""
    chosen = None
    if "type" in xl and isinstance(xl["type"].value, bytes):
        buf = xl["type"].value
        chosen = next((w for w in (b"hvm", b"pv", b"pvh") if w[: len(buf)] == buf), None)
        if chosen is None:
            return None
    if "builder" in xl and isinstance(xl["builder"].value, bytes):
        buf = xl["builder"].value
        builder = next(
            (t for w, t in ((b"hvm", b"hvm"), (b"generic", b"pv")) if w[: len(buf)] == buf), None
        )
        if builder is None or (chosen is not None and chosen != builder):
            return None
        chosen = builder
    return (chosen or b"pv").decode()


def _compare_domain(name: str, ours: dict[str, Setting], xl: XlView) -> str | None:
    """The keys the product uses: our DomainConfig against what xl's option code reads."""
    try:
        domain = domain_config(ours, name)
    except InvalidInput as exc:
        row = row_of(exc.message, KEY_ROWS)
        if row is not None:
            _confirm_xl_drops(name, row, exc.message, xl)
        return row
    expected: dict[str, Any] = {"type": _xl_type(xl.settings)}
    for key, setting in xl.settings.items():
        value = setting.value
        if key in NUMBER_KEYS or key in FLAG_KEYS:
            expected[key] = setting.long[1] if key in NUMBER_KEYS else setting.long[1] != 0
        elif key in STRING_KEYS:
            expected[key] = _text(value)
        elif key in (*LIST_KEYS, "serial"):
            items = value if isinstance(value, tuple) else (value,)
            expected[_FIELDS.get(key, key)] = tuple(_text(item) for item in items)
        elif key in ("disk", "vif"):
            assert isinstance(value, tuple)
            got = getattr(domain, key + "s")
            if len(got) != len(value):
                raise Disagreement(f"{name}: key {key}: ours {len(got)} items, xl's {len(value)}")
    for field, want in expected.items():
        got = getattr(domain, field)
        if got != want:
            raise Disagreement(f"{name}: key {field}: ours {got!r}, xl's {want!r}")
    _check_vga(name, domain, xl.settings)
    return None


def _check_vga(name: str, domain: DomainConfig, xl: dict[str, XlSetting]) -> None:
    """``vga`` wins; else ``stdvga`` as a number chooses stdvga or cirrus."""
    if "vga" in xl:
        want: str | None = _text(xl["vga"].value)
    elif "stdvga" in xl:
        want = "stdvga" if xl["stdvga"].long[1] else "cirrus"
    else:
        want = None
    if domain.vga != want:
        raise Disagreement(f"{name}: key vga: ours {domain.vga!r}, xl's {want!r}")


def _confirm_xl_drops(name: str, row: str, message: str, xl: XlView) -> None:
    """A key-level refusal must name a key that xl would indeed ignore or cut short."""
    found = re.search(r": ([a-z][._0-9a-z]*) (?:must|item)", message)
    assert found, f"{name}: a refusal that names no key: {message}"
    setting = xl.settings[found.group(1)]
    drops = {
        "not-a-number": setting.long[0] != 0,
        "wrong-kind": isinstance(setting.value, bytes) == (found.group(1) in _ALL_LIST_KEYS),
        "nested-item": isinstance(setting.value, tuple)
        and any(isinstance(item, tuple) for item in setting.value),
    }[row]
    if not drops:
        raise Disagreement(f"{name}: we refuse ({message}) where xl reads {setting!r}")
