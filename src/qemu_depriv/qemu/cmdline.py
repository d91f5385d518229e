"""An existing QEMU command line, read as QEMU reads it (pure).

``qemu-depriv run`` takes a command line that someone else wrote (libxl's device model, or a
KVM user's script) and must know which of its words are options and which are their values:
``-name -S`` names a VM ``-S``, while ``-S -name web`` pauses it.  QEMU decides that per option
(``HAS_ARG`` in qemu-options.hx), and so does this module, from the binary's own ``-help``
(:func:`option_table`).  An option the binary does not list is an error, as it is to QEMU.

Values that are option lists (``-netdev tap,id=n0,script=no``) are split the QemuOpts way:
``,`` separates, ``,,`` is a literal comma, and a first item without ``=`` is the option's
implied key (``type`` for ``-netdev``, ``guest`` for ``-name``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from qemu_depriv.errors import InvalidInput

#: The width of the synopsis column of QEMU's -help.
_SYNOPSIS_WIDTH = 16
#: The key a QemuOpts list gives its first item when that has no ``=``.
IMPLIED_KEYS = {
    "name": "guest", "netdev": "type", "nic": "type", "net": "type", "chardev": "backend",
    "sandbox": "enable", "machine": "type", "display": "type", "m": "size", "vnc": "vnc",
    "fsdev": "fsdriver", "virtfs": "fsdriver", "incoming": "uri", "accel": "accel",
    "blockdev": "driver", "object": "qom-type", "device": "driver", "smp": "cpus",
}  # fmt: skip


def option_table(help_text: str) -> dict[str, bool]:
    """Every option ``-help`` lists, mapped to whether it takes an argument (pure).

    QEMU's help is laid out in two columns: the synopsis (``-kernel bzImage``, ``-dtb    file``,
    ``-S``) in the first 16, the description from there (or, after a longer synopsis such as
    ``-m [size=]megs[,slots=n,maxmem=size]``, after two spaces or on the next lines).  An option
    takes an argument when its synopsis has a second word.  One listed on several lines
    (``-display sdl``, ``-display none``) takes one when any line shows one; ``-hda/-hdb file``
    lists two options.
    """
    table: dict[str, bool] = {}
    for line in help_text.splitlines():
        if not re.match(r"-[A-Za-z0-9]", line):
            continue
        if len(line) > _SYNOPSIS_WIDTH and line[_SYNOPSIS_WIDTH - 1] == " ":
            synopsis = line[:_SYNOPSIS_WIDTH]
        else:
            synopsis = re.split(r" {2,}|\t", line, maxsplit=1)[0]
        words = synopsis.split()
        for name in words[0].split("/"):
            key = name.lstrip("-")
            table[key] = table.get(key, False) or len(words) > 1
    return table


@dataclass(frozen=True)
class Option:
    """One option as written: its name (no dashes), its value (None for a flag), its spelling."""

    name: str
    value: str | None
    spelled: str

    def words(self) -> list[str]:
        """The option back as argv words."""
        return [self.spelled] if self.value is None else [self.spelled, self.value]


@dataclass(frozen=True)
class CommandLine:
    """A QEMU command line: the binary, then options and positional words in order."""

    binary: str
    items: tuple[Option | str, ...]

    @property
    def options(self) -> list[Option]:
        """The options, in order."""
        return [item for item in self.items if isinstance(item, Option)]

    def values(self, name: str) -> list[str]:
        """Every value of option ``name``, in order (a flag counts as an empty value)."""
        return [o.value or "" for o in self.options if o.name == name]

    def has(self, name: str) -> bool:
        """Whether option ``name`` appears."""
        return any(o.name == name for o in self.options)

    def without(self, names: Iterable[str]) -> CommandLine:
        """This command line with every occurrence of the options ``names`` left out."""
        drop = set(names)
        kept = tuple(i for i in self.items if not (isinstance(i, Option) and i.name in drop))
        return replace(self, items=kept)

    def with_binary(self, binary: str) -> CommandLine:
        """The same options for another QEMU binary."""
        return replace(self, binary=binary)

    def argv(self, *extra: str) -> list[str]:
        """The command line as argv, with ``extra`` words appended."""
        words = [self.binary]
        for item in self.items:
            words += item.words() if isinstance(item, Option) else [item]
        return [*words, *extra]


def parse_command_line(argv: Sequence[str], takes_argument: Mapping[str, bool]) -> CommandLine:
    """Split ``argv`` (binary first) into options and their values, as QEMU does.

    ``--opt`` is the same as ``-opt``; a word that does not start with ``-`` is positional
    (QEMU reads one as the first hard disk's image).

    Raises:
        InvalidInput: no binary, an option the binary does not know, or one without its value.
    """
    if not argv:
        raise InvalidInput("no QEMU command line: give the binary and its options after '--'")
    items: list[Option | str] = []
    words = iter(argv[1:])
    for word in words:
        if not word.startswith("-") or word == "-":
            items.append(word)
            continue
        name = word.lstrip("-") if word.startswith("--") else word[1:]
        if name not in takes_argument:
            raise InvalidInput(
                f"QEMU option {word!r} is not one that {argv[0]} knows (see its -help)"
            )
        if not takes_argument[name]:
            items.append(Option(name, None, word))
            continue
        value = next(words, None)
        if value is None:
            raise InvalidInput(f"QEMU option {word!r} needs a value")
        items.append(Option(name, value, word))
    return CommandLine(argv[0], tuple(items))


def split_opts(value: str, implied: str | None = None) -> list[tuple[str, str]]:
    """Split a QemuOpts list into (key, value) pairs, in order (pure).

    ``,,`` is a literal comma; a first item without ``=`` gets the ``implied`` key (or, without
    one, the empty key); a later item without ``=`` is a boolean flag set to ``on``.
    """
    items: list[str] = []
    current: list[str] = []
    index = 0
    while index < len(value):
        char = value[index]
        if char == ",":
            if value[index + 1 : index + 2] == ",":
                current.append(",")
                index += 2
                continue
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current))
    pairs = []
    for position, item in enumerate(items):
        key, equals, rest = item.partition("=")
        if equals:
            pairs.append((key, rest))
        elif position == 0:
            pairs.append((implied or "", item))
        elif item:
            pairs.append((item.removeprefix("no"), "off" if item.startswith("no") else "on"))
    return pairs


def opts(option: Option) -> dict[str, str]:
    """An option's QemuOpts value as a dict (the last value of a key wins, as in QEMU)."""
    return dict(split_opts(option.value or "", IMPLIED_KEYS.get(option.name)))


def join_opts(pairs: Iterable[tuple[str, str]]) -> str:
    """The inverse of :func:`split_opts`: commas in values doubled."""
    return ",".join(f"{k}={v.replace(',', ',,')}" if k else v.replace(",", ",,") for k, v in pairs)


def rough_options(words: Sequence[str]) -> list[tuple[str, str | None]]:
    """Options of a command line read without the binary's table (pure).

    Each ``-opt`` takes the next word as its value when that does not start with ``-``: right
    for every option that matters to :func:`network_facing`, and good enough for looking at a
    QEMU that someone else started (the audit); ``run`` parses with the real table instead.
    """
    pairs: list[tuple[str, str | None]] = []
    index = 1
    while index < len(words):
        word = words[index]
        if word.startswith("-") and word != "-":
            value = words[index + 1] if index + 1 < len(words) else None
            takes = value is not None and not value.startswith("-")
            pairs.append((word.lstrip("-"), value if takes else None))
            index += 2 if takes else 1
        else:
            index += 1
    return pairs


#: Chardev and serial backends that listen on, or connect to, the network.
_NETWORK_BACKENDS = ("tcp:", "udp:", "telnet:", "websocket:", "socket,host=", "socket,port=")


def network_facing(options: Iterable[tuple[str, str | None]]) -> bool:
    """Whether QEMU talks to the network: a NIC, a VNC or SPICE display, or a socket on it.

    Such a QEMU keeps the host's network namespace (a tap, a listening address live there);
    any other gets one of its own.  The launcher plans from the domain config by the same rule
    (:func:`qemu_depriv.isolation.layers.needs_network`); the audit and ``run`` read it here.
    """
    for name, value in options:
        text = value or ""
        if name in ("netdev", "nic", "net") and text.split(",")[0] not in ("none", ""):
            return True
        if name == "vnc" and text != "none":
            return True
        if name == "spice" or (name == "display" and text.startswith("vnc")):
            return True
        if name in ("chardev", "serial", "monitor", "qmp", "parallel") and (
            text.startswith(_NETWORK_BACKENDS) or ",host=" in text or ",port=" in text
        ):
            return True
    return False


# -- what `run` needs to know of a command line someone else wrote -----------------------------

#: Options whose value is a host file that QEMU keeps open (disk images, firmware, logs).
_FILE_OPTIONS = frozenset(
    {"hda", "hdb", "hdc", "hdd", "cdrom", "fda", "fdb", "pflash", "mtdblock", "sd", "D",
     "pidfile"}
)  # fmt: skip
#: Options whose QemuOpts value may name host files with these keys.
_FILE_KEYS = ("file", "filename", "path")
#: Chardev-style option values that name a file: ``file:PATH``, ``pipe:PATH``.
_FILE_BACKENDS = ("file:", "pipe:")
#: Options whose QemuOpts value may carry inherited descriptors.
_FD_KEYS = ("fd", "fds", "vhostfd", "vhostfds", "sock_fd")


@dataclass(frozen=True)
class Shape:
    """What the supervisor needs to know of a QEMU command line (see :func:`shape_of`).

    ``user`` is the account ``-runas`` or ``-run-with user=`` names (the explicit tier);
    ``paused`` whether the command line itself starts QEMU paused (``-S``: its author will
    ``cont``); ``memory_mib`` the guest's RAM; ``network`` whether QEMU talks to the network;
    ``files`` the host files it holds open; ``fds`` the descriptors it inherits by number;
    ``control_fd`` libxl's QMP socket passed as a descriptor (``-chardev socket,id=libxl-cmd,
    fd=N``, which libxl opens itself under ``dm_restrict``).
    """

    domid: int | None
    name: str | None
    user: str | None
    paused: bool
    memory_mib: int
    network: bool
    files: tuple[str, ...]
    fds: tuple[int, ...]
    control_fd: int | None


def _single(cmdline: CommandLine, name: str) -> str | None:
    values = cmdline.values(name)
    if len(values) > 1:
        raise InvalidInput(f"QEMU option -{name} is given {len(values)} times: give it once")
    return values[0] if values else None


def memory_mib(value: str | None) -> int:
    """The guest's RAM from ``-m [size=]N[KMGT]`` in MiB; QEMU's default (128) without it.

    Raises:
        InvalidInput: the size is not a size.
    """
    if value is None:
        return 128
    size = dict(split_opts(value, "size")).get("size", "128")
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)[bB]?", size.strip())
    if match is None:
        raise InvalidInput(f"QEMU option -m {value!r}: not a memory size such as 512 or 2G")
    number, unit = float(match.group(1)), match.group(2).lower() or "m"
    scale = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[unit]
    return max(1, int(number * scale))


def _files(cmdline: CommandLine) -> list[str]:
    found: list[str] = [item for item in cmdline.items if isinstance(item, str)]
    for option in cmdline.options:
        value = option.value or ""
        if option.name in _FILE_OPTIONS:
            found.append(value)
        elif value.startswith(_FILE_BACKENDS):
            found.append(value.split(":", 1)[1])
        else:
            found += [v for k, v in split_opts(value) if k.split(".")[-1] in _FILE_KEYS]
    return [f for f in found if f.startswith("/") or not f.startswith(("unix:", "socket"))]


def _fds(cmdline: CommandLine) -> list[int]:
    found: list[int] = []
    for option in cmdline.options:
        value = option.value or ""
        if option.name == "incoming" and value.startswith("fd:"):
            found.append(int(value[3:]))
            continue
        for key, text in split_opts(value):
            if key.split(".")[-1] in _FD_KEYS:
                found += [int(n) for n in text.split(":") if n.isdigit()]
            if key.endswith("addr.str") or key == "str":
                found += [int(text)] if text.isdigit() else []
    return found


def _control_fd(cmdline: CommandLine) -> int | None:
    for value in cmdline.values("chardev"):
        settings = dict(split_opts(value, "backend"))
        if settings.get("id") == "libxl-cmd" and settings.get("fd", "").isdigit():
            return int(settings["fd"])
    return None


def shape_of(cmdline: CommandLine) -> Shape:
    """Read what the supervisor needs from ``cmdline`` (pure).

    Raises:
        InvalidInput: ``-xen-domid`` or ``-name`` given twice or malformed, a bad ``-m``.
    """
    domid_text = _single(cmdline, "xen-domid")
    if domid_text is not None and not domid_text.strip().isdigit():
        raise InvalidInput(f"QEMU option -xen-domid {domid_text!r} is not a number")
    name_value = _single(cmdline, "name")
    name = dict(split_opts(name_value, "guest")).get("guest") if name_value else None
    user = None
    for value in cmdline.values("runas"):
        user = value
    for value in cmdline.values("run-with"):
        user = dict(split_opts(value)).get("user", user)
    options = [(o.name, o.value) for o in cmdline.options]
    control = _control_fd(cmdline)
    return Shape(
        domid=int(domid_text) if domid_text is not None else None,
        name=name,
        user=user,
        paused=cmdline.has("S"),
        memory_mib=memory_mib(_single(cmdline, "m")),
        network=network_facing(options),
        files=tuple(dict.fromkeys(_files(cmdline))),
        fds=tuple(dict.fromkeys(fd for fd in _fds(cmdline) if fd != control)),
        control_fd=control,
    )


def handed_over_tap(settings: Mapping[str, str]) -> bool:
    """Whether qemu-depriv opens this tap for QEMU (:mod:`qemu_depriv.qemu.taps`).

    A tap named by ``ifname=``, single-queue, with no descriptor or helper of its own: such a
    tap is passed as ``fd=`` and QEMU runs no script for it.  Any other tap QEMU opens itself.
    """
    return (
        settings.get("type") == "tap"
        and "ifname" in settings
        and not {"fd", "fds", "vhostfds", "helper"} & settings.keys()
        and settings.get("queues", "1") == "1"
    )


def _tap_refusal(option: Option) -> str | None:
    settings = opts(option)
    kind = settings.get("type", "")
    if option.name in ("netdev", "nic", "net") and kind == "bridge":
        return "runs qemu-bridge-helper, a setuid program"
    if kind == "tap" or (option.name == "nic" and kind == ""):
        for key in ("script", "downscript"):
            if settings.get(key, "no") not in ("no", ""):
                return f"runs {key} {settings[key]!r} as root"
        if "helper" in settings:
            return f"runs the helper {settings['helper']!r}"
        own_fds = {"fd", "fds"} & settings.keys()
        if (
            kind == "tap"
            and not handed_over_tap(settings)
            and not own_fds
            and "script" not in settings
        ):
            return (
                "QEMU runs its default /etc/qemu-ifup as root for it: add script=no,"
                "downscript=no, or name the tap with ifname= for qemu-depriv to open"
            )
    if kind == "user" and "cmd:" in settings.get("guestfwd", ""):
        return "runs a command for guest forwarding"
    return None


def refusals(cmdline: CommandLine) -> list[str]:
    """Every option of ``cmdline`` that would undo the deprivileging, each with why (pure).

    Refused: leaving the supervisor (``-daemonize``); no seccomp (``-sandbox off``); root or
    group 0 for QEMU's own account; ``/`` as its chroot; a process QEMU clones while still
    root (``async-teardown``); scripts, helpers or commands run for networks or migration;
    code or configuration read from outside the command line (``-plugin``, ``-readconfig``,
    ``-set``); the test and semihosting interfaces.  Everything else passes through.
    """
    found: list[str] = []
    for option in cmdline.options:
        value = option.value or ""
        spelled = " ".join(option.words())
        why: str | None = None
        if option.name in ("daemonize", "plugin", "readconfig", "qtest", "set",
                           "semihosting", "semihosting-config", "async-teardown"):  # fmt: skip
            why = {
                "daemonize": "QEMU would leave its supervisor",
                "async-teardown": "its cleanup process is cloned while QEMU is still root",
            }.get(option.name, "it brings in code or settings the wrapper cannot check")
        elif option.name == "sandbox" and opts(option).get("enable", "on") != "on":
            why = "QEMU would run without its seccomp filter"
        elif option.name == "chroot" and value.rstrip("/") == "":
            why = "a chroot into / confines nothing"
        elif option.name in ("runas", "run-with"):
            why = _run_with_refusal(option)
        elif option.name == "incoming" and value.startswith("exec:"):
            why = "it runs a shell command before QEMU drops its privileges"
        elif option.name in ("netdev", "nic", "net"):
            why = _tap_refusal(option)
        if why is not None:
            found.append(f"{spelled!r}: {why}")
    return found


def _run_with_refusal(option: Option) -> str | None:
    settings = opts(option) if option.name == "run-with" else {"user": option.value or ""}
    if settings.get("async-teardown") == "on":
        return "its cleanup process is cloned while QEMU is still root"
    if settings.get("chroot", "x").rstrip("/") == "":
        return "a chroot into / confines nothing"
    user = settings.get("user")
    if user is None:
        return None
    uid, colon, gid = user.partition(":")
    if user == "root" or (colon and uid.strip() == "0"):
        return "QEMU would keep running as root"
    if colon and gid.strip() == "0":
        return "QEMU would run in group 0 (root)"
    return None


def is_libxl_probe(cmdline: CommandLine) -> bool:
    """Whether this is libxl's capability probe (Xen 4.20 and later), not a device model.

    libxl runs its device-model binary once with ``-machine none,accel=xen`` and no domain,
    asks ``query-command-line-options`` over QMP and kills it (libxl_dm.c, the QEMU probe).
    """
    machine = cmdline.values("machine")
    return not cmdline.has("xen-domid") and any(m.split(",")[0] == "none" for m in machine)


def supervised_argv(
    cmdline: CommandLine, *, control_socket: Path | None, extra: Iterable[str]
) -> list[str]:
    """The command line the supervisor starts (pure).

    What the deprivileging owns is taken out and given again by ``extra`` (the account, the
    chroot, ``-sandbox``, ``-S`` and the supervisor's own QMP): ``-runas``, ``-run-with``,
    ``-chroot``, ``-sandbox`` and ``-S``.  libxl's QMP descriptor, when there is one, becomes
    ``control_socket``, which the supervisor relays to libxl once QEMU is verified.
    """
    kept = cmdline.without(("runas", "run-with", "chroot", "sandbox", "S"))
    if control_socket is not None:
        items: list[Option | str] = []
        for item in kept.items:
            pairs = split_opts(item.value or "") if isinstance(item, Option) else []
            if (
                isinstance(item, Option)
                and item.name == "chardev"
                and (dict(pairs).get("id") == "libxl-cmd")
            ):
                pairs = [(k, v) for k, v in pairs if k != "fd"]
                pairs.insert(2, ("path", str(control_socket)))
                items.append(replace(item, value=join_opts(pairs)))
            else:
                items.append(item)
        kept = replace(kept, items=tuple(items))
    return kept.argv(*extra)
