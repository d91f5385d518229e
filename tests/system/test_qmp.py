"""The QMP client against a real QEMU: handshake, results, errors, events, hang-ups, deadlines."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.qemu.qmp import QmpConnection

QEMU = "/usr/bin/qemu-system-x86_64"


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """A paused QEMU (no machine) with a QMP socket, killed afterwards."""
    path = tmp_path / "qmp.sock"
    process = subprocess.Popen(
        [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S",
         "-qmp", f"unix:{path},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield process, path
    finally:
        process.kill()
        process.wait(timeout=30)


def status_of(qmp: QmpConnection) -> str:
    status = qmp.execute("query-status")
    assert isinstance(status, dict)
    return str(status["status"])


def test_commands_return_their_results_and_events_are_skipped(
    qemu: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, path = qemu
    with QmpConnection(path) as qmp:
        qmp.connect(timeout=30, alive=lambda: process.poll() is None)
        assert status_of(qmp) == "prelaunch"
        assert qmp.execute("cont") == {}
        # cont makes QEMU send a RESUME event: the next answer is still the command's own.
        assert status_of(qmp) == "running"


def test_an_error_answer_names_the_command_and_qemu_s_error(
    qemu: tuple[subprocess.Popen[bytes], Path],
) -> None:
    process, path = qemu
    with QmpConnection(path) as qmp:
        qmp.connect(timeout=30, alive=lambda: process.poll() is None)
        with pytest.raises(EnvironmentFailure, match="QMP no-such-thing failed: CommandNotFound"):
            qmp.execute("no-such-thing")
        assert status_of(qmp) == "prelaunch"


def test_quit_ends_qemu(qemu: tuple[subprocess.Popen[bytes], Path]) -> None:
    process, path = qemu
    with QmpConnection(path) as qmp:
        qmp.connect(timeout=30, alive=lambda: process.poll() is None)
        with contextlib.suppress(EnvironmentFailure):  # QEMU may hang up before it answers
            qmp.execute("quit", timeout=5)
    assert process.wait(timeout=10) == 0


def test_connect_waits_for_a_qemu_that_is_not_listening_yet(tmp_path: Path) -> None:
    path = tmp_path / "late.sock"
    process: list[subprocess.Popen[bytes]] = []
    argv = [QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S",
            "-qmp", f"unix:{path},server=on,wait=off"]  # fmt: skip

    def start_later() -> None:
        time.sleep(0.3)
        process.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    starter = threading.Thread(target=start_later)
    starter.start()
    try:
        with QmpConnection(path) as qmp:
            qmp.connect(timeout=30, alive=lambda: True)
            assert status_of(qmp) == "prelaunch"
    finally:
        starter.join()
        for started in process:
            started.kill()
            started.wait(timeout=30)


def test_a_silent_listener_is_a_bounded_wait(tmp_path: Path) -> None:
    path = tmp_path / "silent.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        start = time.monotonic()
        with (
            QmpConnection(path) as qmp,
            pytest.raises(EnvironmentFailure, match=r"did not answer on .* within 0.5 s"),
        ):
            qmp.connect(timeout=0.5, alive=lambda: True)
        assert time.monotonic() - start < 5


def test_a_dead_qemu_is_not_waited_for(tmp_path: Path) -> None:
    with (
        QmpConnection(tmp_path / "none.sock") as qmp,
        pytest.raises(EnvironmentFailure, match="exited before it answered"),
    ):
        qmp.connect(timeout=30, alive=lambda: False)


def test_a_greeting_that_is_not_qmp_is_retried_until_the_deadline(tmp_path: Path) -> None:
    path = tmp_path / "liar.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()
        stop = threading.Event()

        def serve() -> None:
            listener.settimeout(0.1)
            while not stop.is_set():
                try:
                    peer, _ = listener.accept()
                except TimeoutError:
                    continue
                with peer:
                    peer.sendall(b'{"hello": "not qmp"}\r\n')

        server = threading.Thread(target=serve)
        server.start()
        try:
            with (
                QmpConnection(path) as qmp,
                pytest.raises(EnvironmentFailure, match="did not answer"),
            ):
                qmp.connect(timeout=0.5, alive=lambda: True)
        finally:
            stop.set()
            server.join()
