"""Disk specs of xl.cfg (pure).

A diskspec is read as libxlutil's ``xlu_disk_parse`` (Xen 4.17, tools/libs/util/libxlu_disk_l.l
and libxlu_disk.c) reads it, which is what xl-disk-configuration(5) describes with its corners
filled in; the differential test in tests/xl holds this module against the library itself.
Its lexer is a flex scanner, so :func:`parse_disk` is one too: at each place every rule is
tried, the longest match wins (a rule's trailing context, after ``/`` in flex, counts towards
its length but is not consumed) and the first rule wins a tie.  That is why ``target=`` and the
deprecated prefixes (``phy:``, ``file:``, ``tap:aio:``, ``qcow2:`` ...) beat the positional
parameters, and why blanks are skipped only before a parameter, never after one.

On top of what libxlutil accepts, a disk that libxl would refuse when the domain starts, a vdev
name outside the families known here, and the features whose device-model options are not
built here (COLO, virtio disks) are refused while reading the config, each naming its row of
the admin guide's table of deliberate differences (:data:`DISK_DIFFERENCES`).

Values that end up inside QEMU options are checked here: a vdev name with a comma in it would
smuggle extra options into QEMU's command line (a target is escaped where the argv is built).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from qemu_depriv.errors import InvalidInput

#: The rows of the admin guide's table of deliberate differences that concern disks, and the
#: phrase each refusal quotes.
DISK_DIFFERENCES = {
    "disk-vdev": "qemu-depriv knows only xvd*, hd*, sd* and decimal vdev names",
    "disk-libxl-refuses": "libxl would refuse the domain when starting it",
    "disk-unsupported": "qemu-depriv does not build QEMU's options for it",
}

SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]+\Z")


@dataclass(frozen=True)
class Disk:
    """One diskspec, as libxl holds it once xlu_disk_parse is done (libxl_device_disk).

    ``target`` is ``pdev_path`` ("" for an empty CD-ROM); ``format`` is the image format
    (raw when the spec names none, empty for a CD-ROM without media); ``backendtype`` is the
    backend the spec asks for with ``backendtype=``, None to let libxl choose
    (:func:`libxl_backend`); ``script`` is the hotplug script (``script=``, or ``block-NAME``
    from an ``iscsi:``, ``nbd:``, ``enbd:`` or ``drbd:`` prefix).
    """

    target: str
    format: str
    vdev: str
    readonly: bool
    cdrom: bool
    backendtype: str | None
    script: str | None


def bad_spec(source: str, what: str, spec: str, why: str) -> InvalidInput:
    """A spec refused: the file, the kind of spec, the spec itself, and why."""
    return InvalidInput(f"{source}: {what} {spec!r}: {why}")


class _Refused(Exception):
    """xlu__disk_err: libxlutil reports the spec, xl exits."""

    def __init__(self, message: str, near: str | None = None) -> None:
        super().__init__(message)
        self.message = message if near is None else f"{message}: near {near!r}"


@dataclass
class _Parse:
    """libxlutil's DiskParseContext and the libxl_device_disk it fills (None is NULL/UNKNOWN).

    Strings are kept under the names libxlutil's "respecified" errors give them (``target``
    is ``pdev_path``, ``backend`` is ``backend_domname``).
    """

    saved: dict[str, str] = field(default_factory=dict)
    format: str | None = None
    backend: str | None = None
    specification: str | None = None
    readwrite: bool = True
    is_cdrom: bool = False
    colo: bool = False
    had_depr_prefix: bool = False
    access_set: bool = False

    def save(self, what: str, value: str) -> None:
        """savestring: a string may be set once, but an empty one may be overwritten."""
        if self.saved.get(what):
            raise _Refused(f"{what} respecified", value)
        self.saved[what] = value

    def set_enum(self, what: str, value: str, allowed: tuple[str, ...], key: str = "") -> None:
        """DSET: an enum may be set again only to the same value."""
        if value not in allowed:
            raise _Refused(f"unknown value for {key or what}", value)
        current = getattr(self, what)
        if current is not None and current != value:
            raise _Refused(f"{what} respecified", value)
        setattr(self, what, value)

    def set_format(self, value: str) -> None:
        self.set_enum("format", value or "raw", _FORMATS)

    def set_access(self, value: str) -> None:
        if value not in ("r", "ro", "w", "rw", ""):
            raise _Refused("unknown value for access", value)
        self.readwrite = value not in ("r", "ro")

    def vdev_and_devtype(self, text: str) -> bool:
        """The legacy ``vdev:cdrom`` and ``vdev:disk``; False (doing nothing) without a colon."""
        vdev, colon, devtype = text.rpartition(":")
        if not colon:
            return False
        self.save("vdev", vdev)
        if devtype not in ("cdrom", "disk"):
            raise _Refused("unknown deprecated type", devtype)
        self.is_cdrom = devtype == "cdrom"
        return True

    def positional(self, text: str) -> None:
        """target, then format (or ``vdev:devtype`` after an empty target), vdev, access."""
        text = _strip(text, ",")
        target = self.saved.get("target")
        if target is None:
            self.save("target", text)
        elif not self.had_depr_prefix and self.format is None:
            if not target and self.vdev_and_devtype(text):
                self.format = "empty"
            else:
                self.set_format(text)
        elif "vdev" not in self.saved:
            if not self.vdev_and_devtype(text):
                self.save("vdev", text)
        elif not self.access_set:
            self.access_set = True
            self.set_access(text)
        else:
            raise _Refused("too many positional parameters", text)


_FORMATS = ("raw", "qcow", "qcow2", "vhd", "empty", "qed")


def _strip(text: str, delim: str) -> str:
    """STRIP: chop one delimiter off the end."""
    return text[:-1] if text.endswith(delim) else text


def _value(text: str) -> str:
    """FROMEQUALS after STRIP(','): what follows the first ``=``."""
    return _strip(text, ",").partition("=")[2]


def _colo_port(_parse: _Parse, text: str) -> None:
    """atoi(): glibc's strtol in base 10, clamped to a long, then cut to an int; 0 is refused."""
    value = _value(text)
    found = re.match(r"[ \t\n\v\f\r]*([+-]?[0-9]+)", value)
    number = max(-(1 << 63), min((1 << 63) - 1, int(found.group(1)))) if found else 0
    if (number + (1 << 31)) % (1 << 32) - (1 << 31) == 0:
        raise _Refused("unknown value for colo_port", value)


def _cdrom(value: bool) -> Callable[[_Parse, str], None]:
    def action(parse: _Parse, _text: str) -> None:
        parse.is_cdrom = value

    return action


def _colo(value: bool) -> Callable[[_Parse, str], None]:
    def action(parse: _Parse, _text: str) -> None:
        parse.colo = value

    return action


def _nothing(_parse: _Parse, _text: str) -> None:
    """Blanks, and the flags whose settings nothing here uses (direct-io-safe, discard)."""


def _bad_syntax(_parse: _Parse, _text: str) -> None:
    """Any other character: handled in :func:`_lex`, which quotes the rest of the line."""


def _saving(what: str) -> Callable[[_Parse, str], None]:
    return lambda parse, text: parse.save(what, _value(text))


def _refusing(message: str) -> Callable[[_Parse, str], None]:
    def refuse(_parse: _Parse, text: str) -> None:
        raise _Refused(message, text)

    return refuse


def _prefix(parse: _Parse, _text: str) -> None:
    parse.had_depr_prefix = True


def _format_prefix(parse: _Parse, text: str) -> None:
    parse.had_depr_prefix = True
    parse.set_format(_strip(text, ":"))


def _script_prefix(parse: _Parse, text: str) -> None:
    parse.had_depr_prefix = True
    parse.save("script", "block-" + _strip(text, ":"))


_Action = Callable[[_Parse, str], None]
_KEY = "=[^,]*,?"
#: libxlu_disk_l.l's rules in their order; a rule's ``head`` group is what it consumes, the
#: rest of its match is flex's trailing context.  Xen 4.17's lexer has no ``trusted``,
#: ``untrusted`` or ``grant_usage``: they reach the positional rule, as the library shows.
_RULE_TABLE: tuple[tuple[str, _Action], ...] = (
    (r"(?P<head>[ \t\n]+)(?:[^ \t\n].*)?", _nothing),
    ("format" + _KEY, lambda parse, text: parse.set_format(_value(text))),
    (r"cdrom,?", _cdrom(True)),
    (r"devtype=cdrom,?", _cdrom(True)),
    (r"devtype=disk,?", _cdrom(False)),
    ("devtype" + _KEY, _refusing("unknown value for type")),
    ("access" + _KEY, lambda parse, text: parse.set_access(_value(text))),
    ("backend" + _KEY, _saving("backend")),
    (
        "backendtype" + _KEY,
        lambda parse, text: parse.set_enum(
            "backend", _value(text), ("phy", "tap", "qdisk", "standalone"), "backendtype"
        ),
    ),
    (
        "specification" + _KEY,
        lambda parse, text: parse.set_enum("specification", _value(text), ("xen", "virtio")),
    ),
    ("vdev" + _KEY, _saving("vdev")),
    ("script" + _KEY, _saving("script")),
    (r"direct-io-safe,?", _nothing),
    (r"discard,?", _nothing),
    (r"no-discard,?", _nothing),
    (r"colo,?", _colo(True)),
    (r"no-colo,?", _colo(False)),
    ("colo-host" + _KEY, _saving("colo-host")),
    ("colo-port" + _KEY, _colo_port),
    ("colo-export" + _KEY, _saving("colo-export")),
    ("active-disk" + _KEY, _saving("active-disk")),
    ("hidden-disk" + _KEY, _saving("hidden-disk")),
    (r"target=.*", _saving("target")),
    (r"[a-z][-a-z0-9]*=[^,],?", _refusing("unknown parameter")),
    (r"(?P<head>(?:raw|qcow2?|vhd):).*", _format_prefix),
    (r"(?P<head>(?:iscsi|e?nbd|drbd):).*", _script_prefix),
    (r"(?P<head>tapdisk:).*", _prefix),
    (r"(?P<head>tap2?:).*", _prefix),
    (r"(?P<head>aio:).*", _prefix),
    (r"(?P<head>ioemu:).*", _prefix),
    (r"(?P<head>file:).*", _prefix),
    (r"(?P<head>phy:).*", _prefix),
    (r"(?P<head>[a-z][a-z0-9]*:)(?:[^a-z0-9].*)?", _refusing("unknown deprecated disk prefix")),
    (r"[^=,]+,?|,", _Parse.positional),
    (r".", _bad_syntax),
)


@functools.cache
def _rules() -> tuple[tuple[re.Pattern[str], _Action], ...]:
    """The compiled rules, made on the first disk spec: most launches have none."""
    return tuple((re.compile(pattern), action) for pattern, action in _RULE_TABLE)


def _lexerr(spec: str, place: int) -> None:
    """The LEXERR state of flex after a stray character: ``.*`` takes the rest of the line.

    It needs a character to match: a stray character that ends the spec is dropped, and
    one just before a newline jams the scanner, which makes xl exit.

    Raises:
        _Refused: unless the stray character ends the spec.
    """
    if place + 1 == len(spec):
        return
    rest = spec[place:].partition("\n")[0]
    raise _Refused("bad disk syntax" if len(rest) > 1 else "flex scanner jammed", rest)


def _lex(spec: str) -> _Parse:
    """Run libxlutil's scanner over a spec, then xlu_disk_parse's checks.

    Raises:
        _Refused: what libxlutil reports; xl exits on it.
    """
    parse, place = _Parse(), 0
    while place < len(spec):
        best: tuple[re.Match[str], _Action] | None = None
        for pattern, action in _rules():
            found = pattern.match(spec, place)
            if found and (best is None or found.end() > best[0].end()):
                best = found, action
        assert best is not None  # noqa: S101 - "." or the blank rule takes any character
        found, action = best
        if action is _bad_syntax:
            _lexerr(spec, place)
            break
        text = found.group("head") if "head" in found.re.groupindex else found.group()
        action(parse, text)
        place += len(text)
    if parse.format is None:
        parse.format = "raw"
    if parse.is_cdrom:
        parse.readwrite = False
        if not parse.saved.get("target"):
            parse.format = "empty"
    if "vdev" not in parse.saved:
        raise _Refused("no vdev specified")
    if "target" not in parse.saved and not parse.is_cdrom:
        raise _Refused("no target specified (and device not removable)")
    return parse


def parse_disk(spec: str, source: str = "<config>") -> Disk:
    """Parse one diskspec as xlu_disk_parse does, then refuse what cannot run here.

    Raises:
        InvalidInput: what libxlutil refuses (xl would exit), quoting its message; and, naming
            a row of :data:`DISK_DIFFERENCES`, a disk libxl would refuse when the domain
            starts, a vdev outside xvd*, hd*, sd* and numbers, COLO and virtio disks.
    """
    try:
        parse = _lex(spec)
    except _Refused as exc:
        raise bad_spec(source, "disk", spec, f"{exc.message}: {_hint(exc.message)}") from exc
    disk = Disk(
        target=parse.saved.get("target", ""),
        format=parse.format or "raw",
        vdev=parse.saved["vdev"],
        readonly=not parse.readwrite,
        cdrom=parse.is_cdrom,
        backendtype=parse.backend,
        script=parse.saved.get("script"),
    )
    problem = _unsupported(parse) or _libxl_refuses(disk) or _unknown_vdev(disk.vdev)
    if problem:
        raise bad_spec(source, "disk", spec, problem)
    return disk


def _hint(message: str) -> str:
    """The fix for what xl refuses; the legacy ``target,vdev,access`` is the usual case."""
    if message.startswith("unknown value for format"):
        return (
            "xl refuses it too; the second parameter is the format: write "
            "'/srv/a.img,raw,xvda,w', or 'format=raw, vdev=xvda, access=w, target=/srv/a.img'"
        )
    return "xl refuses it too; see xl-disk-configuration(5)"


def _unsupported(parse: _Parse) -> str | None:
    why = (
        "COLO replication (colo)"
        if parse.colo
        else "a virtio disk (specification=virtio)"
        if parse.specification == "virtio"
        else None
    )
    return why and f"{why}: {DISK_DIFFERENCES['disk-unsupported']}"


def _libxl_refuses(disk: Disk) -> str | None:
    """What libxl__device_disk_setdefault and libxl__device_disk_set_backend refuse."""
    why = (
        "no target: give the file or device that backs the disk, or make it a cdrom"
        if not disk.target and not disk.cdrom
        else "format empty is for a CD-ROM without media"
        if disk.format == "empty" and (disk.target or not disk.cdrom)
        else f"no backend fits ({_backend_rules()})"
        if libxl_backend(disk) is None
        else None
    )
    return why and f"{why}: {DISK_DIFFERENCES['disk-libxl-refuses']}"


def _backend_rules() -> str:
    return (
        "phy takes raw images, qdisk those without a script, tap needs blktap that Xen 4.17 "
        "lacks, standalone only virtio disks"
    )


def _unknown_vdev(vdev: str) -> str | None:
    if SAFE_NAME.match(vdev) and disk_number(vdev) is not None:
        return None
    return (
        f"vdev {vdev!r} is not a disk name such as xvda, hda or sdb: "
        f"{DISK_DIFFERENCES['disk-vdev']}"
    )


def libxl_backend(disk: Disk) -> str | None:
    """The backend libxl (4.17) picks for a disk, or None when it refuses the disk.

    libxl__device_disk_set_backend tries the ``backendtype`` given, or else phy, qdisk, tap
    and standalone in turn (disk_try_backend): phy takes a raw image, qdisk any image without
    a hotplug script, tap nothing (Xen 4.17 has no blktap) and standalone only virtio disks,
    which :func:`parse_disk` refuses.  An empty CD-ROM's format is empty, not raw, so it goes
    to qdisk.  libxl also stats a phy target and passes on to qdisk one that is neither a
    regular file nor a block device; that look at the host is left out here.
    """
    tried = (disk.backendtype,) if disk.backendtype else ("phy", "qdisk", "tap", "standalone")
    for backend in tried:
        if (backend == "phy" and disk.format == "raw") or (
            backend == "qdisk" and disk.script is None
        ):
            return backend
    return None


def _letters(text: str) -> int:
    """Map xvda to 0, xvdz to 25, xvdaa to 26 (libxl's bijective base 26)."""
    number = 0
    for char in text:
        number = number * 26 + (ord(char) - ord("a") + 1)
    return number - 1


def _xvd(disk: int, partition: int) -> int | None:
    if disk < 16 and partition < 16:
        return (202 << 8) | (disk << 4) | partition
    if disk < (1 << 20) and partition < 256:
        return (1 << 28) | (disk << 8) | partition
    return None


def _hd(disk: int, partition: int) -> int | None:
    if disk > 3 or partition > 63:
        return None
    return ((3 if disk < 2 else 22) << 8) | ((disk & 1) << 6) | partition


def _sd(disk: int, partition: int) -> int | None:
    return None if disk > 15 or partition > 15 else (8 << 8) | (disk << 4) | partition


_FAMILIES = {"xvd": _xvd, "hd": _hd, "sd": _sd}


def disk_number(vdev: str) -> tuple[int, int, int] | None:
    """Return (devnum, disk index, partition) for a vdev, as libxl__device_disk_dev_number does.

    None when the name is not one libxl knows (xvd*, hd*, sd*, or a plain number).  libxl
    refuses a partition number with a leading zero (``xvda01``) and reads a number with one
    in octal (``0768`` is no number at all): both are refused here, as are libxl's rarer
    ``d0p1`` names and hex numbers.
    """
    if re.fullmatch(r"0|[1-9][0-9]*", vdev):
        return (int(vdev), 0, 0) if int(vdev) < (1 << 31) else None
    match = re.fullmatch(r"(xvd|hd|sd)([a-z]+)((?:[1-9][0-9]*)?)", vdev)
    if match is None:
        return None
    family, letters, part_text = match.groups()
    disk, partition = _letters(letters), int(part_text or 0)
    devnum = _FAMILIES[family](disk, partition)
    return None if devnum is None else (devnum, disk, partition)
