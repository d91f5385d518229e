"""The settings of an xl.cfg file, converted per key as xl's own option code converts them.

:mod:`qemu_depriv.xl.syntax` reads the file as libxlutil does; this module reads the keys we
use the way ``tools/xl/xl_parse.c`` (``parse_config_data``) does: numbers through
``xlu_cfg_get_long`` (:func:`xl_long`), strings, flags and lists as xl takes them, and the
domain's type by xl's abbreviation rule.  Where xl would warn and carry on with a default, we
refuse (a row of the admin guide's table of deliberate differences).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Mapping
from pathlib import Path

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.disks import parse_disk
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.nics import parse_vif
from qemu_depriv.xl.syntax import DIFFERENCES, Setting, read_xlcfg

_ERANGE, _EINVAL = errno.ERANGE, errno.EINVAL
#: C ``strtol(..., 0)``: whitespace, a sign, then 0x hex, 0 octal or decimal digits.
_STRTOL = re.compile(r"[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


class XlNumberError(ValueError):
    """A value ``xlu_cfg_get_long`` refuses; ``errno`` is its result (EINVAL or ERANGE)."""

    def __init__(self, errno: int, why: str) -> None:
        super().__init__(why)
        self.errno, self.why = errno, why


def xl_long(setting: Setting) -> int:
    """The number ``xlu_cfg_get_long`` reads from a setting: C ``strtol(value, &end, 0)``.

    Leading C whitespace and a sign are allowed, then ``0x``/``0X`` hex, ``0`` octal or
    decimal, and nothing after; the result must fit a 64-bit C ``long``.

    Raises:
        XlNumberError: a list, a value set with ``+=``, text that is not such a number
            (EINVAL), or one beyond a C long (ERANGE).
    """
    value = setting.value
    if isinstance(value, tuple):
        raise XlNumberError(_EINVAL, "it is a list")
    if setting.appended:
        raise XlNumberError(_EINVAL, "it was set with '+=', which xl never reads as a number")
    match = _STRTOL.match(value)
    if match is None:
        raise XlNumberError(_EINVAL, "it is not a decimal, 0x hex or 0 octal number")
    sign, digits = match.groups()
    number = int(digits, 16 if digits[1:2] in ("x", "X") else 8 if digits[0] == "0" else 10)
    number = -number if sign == "-" else number
    if not -(2**63) <= number < 2**63:  # strtol's ERANGE comes first, whatever follows
        raise XlNumberError(_ERANGE, "it does not fit a C long")
    if match.end() != len(value):
        raise XlNumberError(_EINVAL, "it is not a decimal, 0x hex or 0 octal number")
    return number


# -- the keys we use, read as tools/xl/xl_parse.c (parse_config_data) reads them ----------------


def _where(source: str, setting: Setting) -> str:
    return f"{source}:{setting.line}:{setting.col}"


def _string(settings: Mapping[str, Setting], key: str, source: str) -> str | None:
    """``xlu_cfg_get_string``: one value, a number's text included."""
    setting = settings.get(key)
    if setting is None:
        return None
    if isinstance(setting.value, tuple):
        raise InvalidInput(
            f"{_where(source, setting)}: {key} must be one value, not a list: "
            f"{DIFFERENCES['wrong-kind']}, with a warning"
        )
    return setting.value


def _integer(settings: Mapping[str, Setting], key: str, source: str) -> int | None:
    """``xlu_cfg_get_long``; where it fails xl warns and goes on with its default."""
    setting = settings.get(key)
    if setting is None:
        return None
    try:
        return xl_long(setting)
    except XlNumberError as exc:
        shown = setting.value if isinstance(setting.value, str) else "a list"
        raise InvalidInput(
            f"{_where(source, setting)}: {key} must be a number: {shown!r} is not one xl "
            f"reads ({exc.why}); {DIFFERENCES['not-a-number']}: write it in decimal, 0x hex or "
            "0 octal"
        ) from exc


def _flag(settings: Mapping[str, Setting], key: str, source: str) -> bool | None:
    """``xlu_cfg_get_defbool``: any number xl reads, non-zero being true."""
    number = _integer(settings, key, source)
    return None if number is None else number != 0


def _strings(
    settings: Mapping[str, Setting], key: str, source: str, *, one_value_too: bool = False
) -> tuple[str, ...]:
    """A list of values (``xlu_cfg_get_list``); ``serial`` may be one value as well.

    xl reads the items with ``xlu_cfg_get_listitem`` until it returns NULL, which it does for
    a nested list too: a list inside such a list would cut it short.
    """
    setting = settings.get(key)
    if setting is None:
        return ()
    if isinstance(setting.value, str):
        if one_value_too:
            return (setting.value,)
        raise InvalidInput(
            f"{_where(source, setting)}: {key} must be a list, as in {key} = [ '...' ]: "
            f"{DIFFERENCES['wrong-kind']}, with a warning"
        )
    items: list[str] = []
    for index, item in enumerate(setting.value):
        if not isinstance(item, str):
            raise InvalidInput(
                f"{_where(source, setting)}: {key} item {index + 1} is a list: "
                f"{DIFFERENCES['nested-item']} and drop it and every item after it: "
                "give each item as a quoted string"
            )
        items.append(item)
    return tuple(items)


def _prefix_of(value: str, word: str) -> bool:
    """Whether xl's ``!strncmp(value, word, strlen(value))`` holds: the empty value too."""
    return word.startswith(value)


def _domain_type(settings: Mapping[str, Setting], source: str) -> str:
    """``type``, else ``builder``, else PV as on x86; xl takes any abbreviation of the word."""
    dom_type = _string(settings, "type", source)
    chosen = None
    if dom_type is not None:
        chosen = next((t for t in ("hvm", "pv", "pvh") if _prefix_of(dom_type, t)), None)
        if chosen is None:
            where = _where(source, settings["type"])
            raise InvalidInput(f"{where}: type {dom_type!r} is unknown: use hvm, pv or pvh")
    builder = _string(settings, "builder", source)
    if builder is not None:
        from_builder = next(
            (t for w, t in (("hvm", "hvm"), ("generic", "pv")) if _prefix_of(builder, w)), None
        )
        where = _where(source, settings["builder"])
        if from_builder is None:
            raise InvalidInput(f"{where}: builder {builder!r} is unknown: use hvm or generic")
        if chosen is not None and chosen != from_builder:
            raise InvalidInput(f"{where}: type {dom_type!r} and builder {builder!r} disagree")
        chosen = from_builder
    return chosen or "pv"


def _vga(settings: Mapping[str, Setting], source: str) -> str | None:
    vga = _string(settings, "vga", source)
    if vga is not None:
        return vga
    stdvga = _flag(settings, "stdvga", source)
    return None if stdvga is None else "stdvga" if stdvga else "cirrus"


def domain_config(settings: Mapping[str, Setting], source: str = "<config>") -> DomainConfig:
    """Map parsed settings to a validated :class:`DomainConfig`, as xl's option code reads them.

    Other keys are ignored, as xl ignores keys it does not know.

    Raises:
        InvalidInput: a required key is missing, a value is of the wrong kind (where xl would
            ignore it with a warning, or cut a list short), or out of range.
    """
    name = _string(settings, "name", source)
    if name is None:
        raise InvalidInput(f'{source}: no name = "..." setting: every domain needs a name')
    positions = {key: _where(source, setting) for key, setting in settings.items()}
    memory, vcpus = _integer(settings, "memory", source), _integer(settings, "vcpus", source)
    maxmem = _integer(settings, "maxmem", source)
    if memory is None:  # xl: memory sets the target and the maximum; libxl: the target is the
        memory = maxmem if maxmem is not None else DomainConfig.memory  # maximum, 32 MiB
    return DomainConfig(
        name=name,
        type=_domain_type(settings, source),
        memory=memory,
        maxmem=maxmem,
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
        serial=_strings(settings, "serial", source, one_value_too=True),
        boot=_string(settings, "boot", source),
        vga=_vga(settings, source),
        videoram=_integer(settings, "videoram", source),
        uuid=_string(settings, "uuid", source),
        disks=tuple(
            parse_disk(d, positions.get("disk", source)) for d in _strings(settings, "disk", source)
        ),
        vifs=tuple(
            parse_vif(v, devid, positions.get("vif", source))
            for devid, v in enumerate(_strings(settings, "vif", source))
        ),
        vfbs=_strings(settings, "vfb", source),
        p9s=_strings(settings, "p9", source),
        channels=_strings(settings, "channel", source),
        usbctrls=_strings(settings, "usbctrl", source),
        accel=_string(settings, "accel", source),
        source=source,
        positions=positions,
    )


def load_domain(path: Path) -> DomainConfig:
    """Read ``path`` and return its validated domain config.

    Raises:
        InvalidInput: see :func:`read_xlcfg` and :func:`domain_config`.
    """
    return domain_config(read_xlcfg(path), str(path))
