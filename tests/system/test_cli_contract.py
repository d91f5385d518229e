"""The command line's own contract: one error line, a quiet end on a closed pipe, bad paths."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from qemu_depriv.cli.main import EXIT_BROKEN_PIPE, main
from qemu_depriv.vms.store import Mode, StateStore, current_owner


def test_a_usage_error_is_one_line_with_one_prefix(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("qemu-depriv: error: argument command: invalid choice: 'frobnicate'")
    assert line.count("qemu-depriv:") == 1


def test_a_subcommands_usage_error_names_the_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["stop"]) == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith("qemu-depriv: error: stop: the following arguments are required")


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        done = subprocess.run(
            [sys.executable, "-m", "qemu_depriv", "--state-dir", str(tmp_path / "s"), "list",
             "--json"],
            stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == EXIT_BROKEN_PIPE


def test_audit_refuses_a_directory_as_its_prometheus_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--state-dir", str(tmp_path / "s"), "audit", "--prometheus", str(tmp_path)])
    assert code == 2
    assert "is a directory" in capsys.readouterr().err


def test_audit_reports_an_unwritable_prometheus_file_as_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = "/proc/qemu-depriv.prom"  # /proc refuses new files, even to root
    code = main(["--state-dir", str(tmp_path / "s"), "audit", "--prometheus", target])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert err[-1].startswith(f"qemu-depriv: error: --prometheus {target}: cannot write it")
    assert not Path(target).exists()


def test_json_is_one_line_for_a_program_and_indented_on_a_terminal(tmp_path: Path) -> None:
    state = str(tmp_path / "s")
    argv = [sys.executable, "-m", "qemu_depriv", "--state-dir", state, "list", "--json"]
    piped = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=60)
    assert piped.stdout == '{"vms": []}\n'
    controller, terminal = os.openpty()
    try:
        try:
            subprocess.run(argv, stdout=terminal, check=True, timeout=60)
        finally:
            os.close(terminal)
        shown = b""
        while chunk := _read_pty(controller):
            shown += chunk
    finally:
        os.close(controller)
    assert shown.decode().replace("\r\n", "\n") == '{\n  "vms": []\n}\n'


def _read_pty(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except OSError:  # EIO: the terminal's other end is closed and all was read
        return b""


def test_an_audit_without_prometheus_does_not_load_prometheus_client(tmp_path: Path) -> None:
    """Its import costs about as much as the rest of an audit: only --prometheus pays it."""
    state, metrics = str(tmp_path / "s"), str(tmp_path / "audit.prom")
    program = (
        "import sys\nfrom qemu_depriv.cli.main import main\n"
        "code = main(sys.argv[1:])\nprint(code, 'prometheus_client' in sys.modules)\n"
    )
    for extra, loaded in (([], "False"), (["--prometheus", metrics], "True")):
        argv = [sys.executable, "-c", program, "--state-dir", state, "audit", *extra]
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
        assert done.stdout.split()[-1] == loaded, done.stderr
    assert Path(metrics).exists()


@pytest.mark.parametrize(
    ("command", "machinery"),
    [
        (["stop", "no-such-vm"], "qemu_depriv.vms.teardown"),
        (["recover"], "qemu_depriv.vms.teardown"),
        (["list"], "qemu_depriv.vms.store"),
    ],
)
def test_commands_that_launch_nothing_do_not_import_the_launcher_or_nss(
    tmp_path: Path, command: list[str], machinery: str
) -> None:
    """The launch machinery took some 40 ms of each stop, NSS (ctypes, nsswitch.conf) 15 ms.

    A teardown loads NSS only to pick the reaper's account (tests/faults/test_escapes.py).
    """
    unwanted = ("qemu_depriv.vms.launcher", "qemu_depriv.accounts.nss")
    program = (
        "import sys\nfrom qemu_depriv.cli.main import main\ncode = main(sys.argv[1:])\n"
        f"print(code, *(m in sys.modules for m in {unwanted!r}), {machinery!r} in sys.modules)\n"
    )
    argv = [sys.executable, "-c", program, "--state-dir", str(tmp_path / "s"), *command]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.stdout.split()[-3:] == ["False", "False", "True"], done.stderr


@pytest.mark.parametrize("given", ["", "state", "./s"])
def test_a_relative_or_empty_state_dir_is_refused_before_anything(
    given: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset shell variable gives ``--state-dir ''``: that is no working directory."""
    monkeypatch.chdir(tmp_path)
    tmp_path.chmod(0o1777)
    assert main(["--state-dir", given, "recover"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"qemu-depriv: error: state directory {given!r} is not an absolute path: give "
        "--state-dir (or state_dir in the config) as one, such as /run/qemu-depriv"
    ]
    assert list(tmp_path.iterdir()) == []
    assert tmp_path.stat().st_mode & 0o7777 == 0o1777


def test_a_shared_directory_as_state_dir_is_left_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--state-dir /tmp`` by mistake: refused, not made root's alone."""
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    config = tmp_path / "web.cfg"
    config.write_text('name = "web"\nmemory = 64\n')
    assert main(["--state-dir", str(shared), "launch", str(config)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"qemu-depriv: error: state directory {shared} is owned by uid 0 ")
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert list(shared.iterdir()) == []


def test_stopping_an_unknown_vm_creates_no_state(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--state-dir", str(tmp_path / "s"), "stop", "web"]) == 2
    assert "no VM named or with domid 'web'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_key_of_unicode_digits_is_a_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """'²' is a digit to str.isdigit, and no domid: stop looks for a VM of that name."""
    state = tmp_path / "s"
    StateStore(state).reserve("web", None, mode=Mode.STANDALONE, owner=current_owner())
    assert main(["--state-dir", str(state), "stop", "\u00b2"]) == 2
    assert "no VM named or with domid '\u00b2'" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "3601", "ten"])
@pytest.mark.parametrize(
    "command",
    [["stop", "web", "--timeout"], ["launch", "web.cfg", "--start-timeout"],
     ["run", "--start-timeout"]],
)  # fmt: skip
def test_a_wait_is_more_than_0_and_at_most_an_hour(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str], value: str
) -> None:
    """Refused before the command begins: a stop must not claim its VM and then fail."""
    code = main(["--state-dir", str(tmp_path / "s"), *command, value])
    (line,) = capsys.readouterr().err.splitlines()
    assert code == 2
    assert f"argument {command[-1]}: " in line
    assert not (tmp_path / "s").exists()


def test_a_damaged_state_store_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "s"
    StateStore(state).reserve("web", None, mode=Mode.STANDALONE, owner=current_owner())
    with contextlib.closing(sqlite3.connect(state / "state.db")) as db:
        db.execute("UPDATE vms SET decision = '{'")
        db.commit()
    for command in (["list"], ["stop", "web"], ["--json", "list"]):
        assert main(["--state-dir", str(state), *command]) == 4
        captured = capsys.readouterr()
        (line,) = captured.err.splitlines()
        assert line.startswith(f"qemu-depriv: error: state store {state / 'state.db'} is damaged")
        if "--json" in command:
            assert json.loads(captured.out)["error"]["kind"] == "environment"
