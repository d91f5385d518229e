"""Reading a QEMU command line someone else wrote, as QEMU reads it (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.qemu.cmdline import (
    is_libxl_probe,
    memory_mib,
    network_facing,
    option_table,
    parse_command_line,
    refusals,
    rough_options,
    shape_of,
    split_opts,
    supervised_argv,
)

SAMPLES = Path(__file__).parent / "samples"
TABLE = option_table((SAMPLES / "qemu-7.2-help.txt").read_text())
TABLE_10 = option_table((SAMPLES / "qemu-10-style-help.txt").read_text())


def parse(*words: str, table: dict[str, bool] = TABLE) -> object:
    return parse_command_line(("qemu", *words), table)


@pytest.mark.parametrize(
    "option",
    ["name", "m", "xen-domid", "display", "hda", "hdb", "kernel", "append", "dtb", "option-rom",
     "usbdevice", "vnc", "nic"],
)  # fmt: skip
def test_the_help_text_says_which_options_take_a_value(option: str) -> None:
    # "-kernel bzImage use ...", "-dtb    file    use ...", "-hda/-hdb file  use ...": the
    # synopsis column is 16 wide, whatever the spacing after it.
    assert TABLE[option] is True


@pytest.mark.parametrize(
    "option",
    ["S", "nodefaults", "xen-attach", "xen-domid-restrict", "no-user-config", "async-teardown",
     "daemonize", "snapshot"],
)  # fmt: skip
def test_the_help_text_says_which_options_are_flags(option: str) -> None:
    # "-async-teardown enable asynchronous teardown": a flag whose description starts at 16.
    assert TABLE[option] is False


def test_qemu_10_has_run_with_and_no_runas() -> None:
    assert TABLE_10["run-with"]
    assert "runas" not in TABLE_10


def test_a_value_that_looks_like_an_option_is_still_a_value() -> None:
    cmdline = parse_command_line(("qemu", "-name", "-S", "-S"), TABLE)
    assert cmdline.values("name") == ["-S"]
    assert cmdline.has("S")
    assert parse_command_line(("qemu", "--name", "web"), TABLE).values("name") == ["web"]


@pytest.mark.parametrize(
    ("words", "why"),
    [(("-frobnicate",), "not one that qemu knows"), (("-name",), "needs a value"), ((), None)],
)
def test_a_command_line_qemu_would_refuse_is_invalid_input(
    words: tuple[str, ...], why: str | None
) -> None:
    if why is None:
        with pytest.raises(InvalidInput, match="no QEMU command line"):
            parse_command_line((), TABLE)
    else:
        with pytest.raises(InvalidInput, match=why):
            parse_command_line(("qemu", *words), TABLE)


def test_qemuopts_lists_split_as_qemu_splits_them() -> None:
    assert split_opts("web,,x,process=p", "guest") == [("guest", "web,x"), ("process", "p")]
    assert split_opts("tap,id=n0,nodelay", "type") == [("type", "tap"), ("id", "n0"),
                                                        ("delay", "off")]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "mib"),
    [(None, 128), ("512", 512), ("2G", 2048), ("size=1g,slots=2,maxmem=4G", 1024), ("64M", 64)],
)
def test_the_guests_memory_is_read_from_minus_m(value: str | None, mib: int) -> None:
    assert memory_mib(value) == mib


def test_what_the_supervisor_needs_is_read_from_libxls_argv() -> None:
    cmdline = parse_command_line(
        ("qemu", "-xen-domid", "7", "-chardev", "socket,id=libxl-cmd,fd=9,server=on,wait=off",
         "-S", "-name", "web", "-m", "1G", "-drive", "file=/img/a.qcow2,if=ide",
         "-netdev", "type=tap,id=net0,ifname=vif7.0-emu,script=no", "-runas", "131079:131072",
         "-add-fd", "fd=12,set=1", "-incoming", "fd:13"),
        TABLE,
    )  # fmt: skip
    shape = shape_of(cmdline)
    assert (shape.domid, shape.name, shape.user, shape.paused) == (7, "web", "131079:131072", True)
    assert (shape.memory_mib, shape.network, shape.control_fd) == (1024, True, 9)
    assert shape.files == ("/img/a.qcow2",)
    assert set(shape.fds) == {12, 13}


def test_the_account_of_run_with_user_is_read_too() -> None:
    cmdline = parse_command_line(("qemu", "-run-with", "chroot=/x,user=alice"), TABLE_10)
    assert shape_of(cmdline).user == "alice"


@pytest.mark.parametrize(
    ("words", "named"),
    [
        (("-daemonize",), "leave its supervisor"),
        (("-sandbox", "off"), "without its seccomp"),
        (("-sandbox", "enable=off"), "without its seccomp"),
        (("-runas", "0:5"), "as root"),
        (("-runas", "root"), "as root"),
        (("-runas", "1000:0"), "group 0"),
        (("-chroot", "/"), "confines nothing"),
        (("-chroot", "//"), "confines nothing"),
        (("-netdev", "tap,id=n,script=/etc/qemu-ifup"), "runs script"),
        (("-netdev", "tap,id=n,script=no,helper=/usr/lib/qemu/qemu-bridge-helper"), "helper"),
        (("-netdev", "bridge,id=n,br=br0"), "setuid"),
        (("-netdev", "user,id=n,guestfwd=tcp:10.0.2.100:1234-cmd:nc x"), "command"),
        (("-incoming", "exec:cat /x"), "shell command"),
        (("-plugin", "/x.so"), "code or settings"),
        (("-readconfig", "/x.cfg"), "code or settings"),
        (("-set", "drive.d.file=/x"), "code or settings"),
        (("-async-teardown",), "cloned while QEMU is still root"),
    ],
)
def test_every_option_that_undoes_the_deprivileging_is_named(
    words: tuple[str, ...], named: str
) -> None:
    (problem,) = refusals(parse_command_line(("qemu", *words), TABLE))
    assert named in problem
    assert words[0] in problem


def test_run_with_async_teardown_is_refused_on_qemu_10() -> None:
    cmdline = parse_command_line(("qemu", "-run-with", "async-teardown=on"), TABLE_10)
    assert refusals(cmdline) != []


@pytest.mark.parametrize(
    "words",
    [("-sandbox", "on,obsolete=deny"), ("-runas", "131079:131072"), ("-chroot", "/var/empty"),
     ("-netdev", "tap,id=n,ifname=vif7.0-emu,script=no,downscript=no"), ("-incoming", "fd:3"),
     ("-enable-kvm",), ("-drive", "file=/img,if=virtio")],
)  # fmt: skip
def test_ordinary_options_pass(words: tuple[str, ...]) -> None:
    assert refusals(parse_command_line(("qemu", *words), TABLE)) == []


def test_the_supervised_argv_owns_the_deprivileging_and_relays_libxls_qmp() -> None:
    cmdline = parse_command_line(
        ("qemu", "-chardev", "socket,id=libxl-cmd,fd=9,server=on,wait=off", "-S",
         "-runas", "1:1", "-chroot", "/var/run/xen/qemu-root-7", "-sandbox", "on", "-name", "w"),
        TABLE,
    )  # fmt: skip
    argv = supervised_argv(cmdline, control_socket=Path("/run/q/c.sock"), extra=["-S", "-x"])
    assert argv == ["qemu", "-chardev", "socket,id=libxl-cmd,path=/run/q/c.sock,server=on,wait=off",
                    "-name", "w", "-S", "-x"]  # fmt: skip


def test_libxls_probe_is_told_from_a_device_model() -> None:
    probe = parse_command_line(("qemu", "-S", "-machine", "none,accel=xen"), TABLE)
    model = parse_command_line(("qemu", "-xen-domid", "3", "-machine", "xenfv"), TABLE)
    assert is_libxl_probe(probe)
    assert not is_libxl_probe(model)


@pytest.mark.parametrize(
    ("words", "facing"),
    [
        (("-display", "none"), False),
        (("-net", "none"), False),
        (("-nic", "none"), False),
        (("-vnc", "none"), False),
        (("-netdev", "tap,id=n"), True),
        (("-nic", "user"), True),
        (("-vnc", ":1"), True),
        (("-serial", "tcp::4444,server=on"), True),
        (("-chardev", "socket,id=c,host=0.0.0.0,port=5"), True),
        (("-chardev", "socket,id=c,path=/run/x"), False),
    ],
)
def test_network_facing_as_the_launcher_plans_it(words: tuple[str, ...], facing: bool) -> None:
    assert network_facing(rough_options(("qemu", *words))) is facing
