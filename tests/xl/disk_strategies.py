"""Random diskspecs from the grammar of libxlutil's disk lexer, corners first (hypothesis).

A spec is parameters joined by commas, with blanks or not around them: positional values
(targets with spaces and colons, formats, vdevs, ``vdev:devtype``, access words, empty ones),
a deprecated prefix before one of them (the known ones, chained ones and unknown ones),
``key=value`` settings for every key the lexer knows and some it does not, flags, and a
``target=`` that eats the rest.  Then a character or two that the lexer treats specially may
be inserted or deleted anywhere.
"""

from __future__ import annotations

from hypothesis import strategies as st

TARGETS = (
    "/dev/vg/web", "/srv/xen/a.img", "/srv/my disk.img", "/srv/x:y.img", "disk.img", "",
    "iqn.2001-04.com.example:storage", "r0", "host:1234", "/dev/disk/by-id/ata-X_Y-part1",
    "C:\\img", "/srv/\u00e9t\u00e9.img", "raw", "xvda", "cdrom",
)  # fmt: skip
FORMATS = ("raw", "qcow", "qcow2", "vhd", "qed", "empty", "", "vmdk", "RAW", "aio")
VDEVS = (
    "xvda", "xvdb", "hda", "hdc", "sda", "xvda1", "xvdaa", "xvdq", "hde", "d0p1", "51712",
    "0x300", "xvda01", "0768", "nvme0n1", "", "xvd", "hdc:cdrom", "hda:disk", "xvdb:floppy",
    "a:b:cdrom", ":cdrom", "xvda ",
)  # fmt: skip
ACCESS = ("r", "ro", "w", "rw", "", "x", "RW", "w ")
PREFIXES = (
    "phy:", "file:", "tap:", "tap2:", "aio:", "tapdisk:", "ioemu:", "tap:aio:", "tap2:aio:",
    "tap:qcow2:", "tap:vhd:", "tap:tapdisk:aio:", "raw:", "qcow:", "qcow2:", "vhd:", "iscsi:",
    "nbd:", "enbd:", "drbd:", "qed:", "foo:", "w:", "Phy:", "phy::", "9p:",
)  # fmt: skip
FLAGS = (
    "cdrom", "discard", "no-discard", "direct-io-safe", "colo", "no-colo", "trusted",
    "untrusted", "cdromx",
)  # fmt: skip
SETTINGS = (
    ("format", FORMATS),
    ("vdev", VDEVS),
    ("access", ACCESS),
    ("devtype", ("cdrom", "disk", "floppy", "", "cdrom ")),
    ("backendtype", ("phy", "qdisk", "tap", "standalone", "vbd", "")),
    ("backend", ("driverdom", "0", "")),
    ("specification", ("xen", "virtio", "other", "")),
    ("script", ("block-iscsi", "/etc/xen/scripts/block-drbd", "")),
    ("colo-host", ("10.0.0.2", "")),
    ("colo-port", ("7777", "0", "x", "-1", " 9", "4294967296", "")),
    ("colo-export", ("exp", "")),
    ("active-disk", ("/a", "")),
    ("hidden-disk", ("/h", "")),
    ("colour", ("red", "", "r")),
    ("transport", ("mmio",)),
    ("grant_usage", ("0", "1")),
    ("Format", ("raw",)),
    ("cache", ("none",)),
)
_SEPARATORS = (",", ",", ",", ", ", " ,", ",\t", ",  ", ",\n")


def _setting(key: str, values: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).map(lambda value: f"{key}={value}")


_SETTING = st.one_of(*(_setting(key, values[:2]) for key, values in SETTINGS[:13]))
_PARAMETER = st.one_of(
    st.sampled_from(TARGETS),
    st.builds(str.__add__, st.sampled_from(PREFIXES), st.sampled_from(TARGETS)),
    st.sampled_from(FORMATS),
    st.sampled_from(VDEVS),
    st.builds(str.__add__, st.sampled_from(("ioemu:", "phy:", "")), st.sampled_from(VDEVS)),
    st.sampled_from(ACCESS),
    st.sampled_from(FLAGS),
    *(_setting(key, values) for key, values in SETTINGS),
)


@st.composite
def _documented(draw: st.DrawFn) -> list[str]:
    """The manual's shapes: [prefix]target, [format], vdev, [access], then settings and flags."""
    prefix = draw(st.sampled_from(("", "", "", *PREFIXES[:20])))
    parts = {"target": draw(st.sampled_from(TARGETS[:6]))}
    if not prefix or draw(st.integers(0, 4)) == 0:
        parts["format"] = draw(st.sampled_from(FORMATS[:7]))
    parts["vdev"] = draw(st.sampled_from(VDEVS[:11] + VDEVS[17:19]))
    if draw(st.booleans()):
        parts["access"] = draw(st.sampled_from(ACCESS[:5]))
    extra = draw(st.lists(st.sampled_from(FLAGS[:6]) | _SETTING, max_size=2))
    if draw(st.booleans()):  # by key, target last: it takes the rest
        keyed = [f"{key}={value}" for key, value in parts.items() if key != "target"]
        return [*keyed, *extra, "target=" + parts["target"]]
    return [prefix + parts.pop("target"), *parts.values(), *extra]


@st.composite
def diskspecs(draw: st.DrawFn) -> str:
    """One diskspec, well formed or nearly."""
    parameters = draw(_documented() | st.lists(_PARAMETER, max_size=6))
    spec = draw(st.sampled_from(("", "", "", " ", "\t")))
    for index, parameter in enumerate(parameters):
        spec += (draw(st.sampled_from(_SEPARATORS)) if index else "") + parameter
    if draw(st.integers(0, 3)) == 0:
        target = draw(st.sampled_from(("/srv/a,b.img", "/x:y,z,", "", "/dev/vg/t, rw", "/a\nxvda")))
        spec += draw(st.sampled_from(_SEPARATORS)) + "target=" + target
    spec += draw(st.sampled_from(("", "", "", ",", " ", ",,")))
    for _ in range(draw(st.sampled_from((0, 0, 0, 1, 2)))):
        where = draw(st.integers(0, len(spec)))
        if draw(st.booleans()) and where < len(spec):
            spec = spec[:where] + spec[where + 1 :]
        else:
            noise = draw(st.sampled_from((",", ":", "=", " ", "\n", "A", "_", "-", "\u00e9")))
            spec = spec[:where] + noise + spec[where:]
    return spec
