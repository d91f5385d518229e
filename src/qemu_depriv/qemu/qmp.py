"""QMP for the launcher and the teardown: a small synchronous client on a unix socket.

Written here rather than taken from ``qemu.qmp``, which the project used until issue 18:
``qemu.qmp`` is built on asyncio, and importing asyncio alone took 60-80 ms on the
development machine (``python -c 'import asyncio'``, against 20 ms for the bare interpreter):
as much as a raw QEMU start, in every ``launch`` and ``stop`` of the CLI. What the tool says
over QMP is three commands on a socket it made itself: the handshake, ``cont`` and ``quit``
(and ``query-status`` in tests), each answered by one JSON object on a line. The protocol
(QEMU's docs/interop/qmp-spec) is that small: a greeting, ``qmp_capabilities``, then
commands whose answer is ``return`` or ``error``, with asynchronous ``event`` objects in
between, which are skipped. Every wait is bounded by a deadline.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from qemu_depriv.errors import EnvironmentFailure

log = logging.getLogger(__name__)

#: The first wait between connection attempts, doubled up to the last.
_FIRST_RETRY, _LAST_RETRY = 0.001, 0.01
#: The longest message accepted: QEMU's answers to these commands are a few hundred bytes.
MESSAGE_MAX = 1 << 20


class _NotYet(Exception):
    """QEMU does not listen yet, or hung up before the handshake ended: try again."""


class QmpConnection:
    """One QMP session on a unix socket.

    Raises (every method but ``close``):
        EnvironmentFailure: the deadline passed, QEMU went away, or a command failed.
    """

    def __init__(self, socket_path: Path, *, name: str = "qemu-depriv") -> None:
        self._path = socket_path
        self._name = name
        self._socket: socket.socket | None = None
        self._buffer = b""
        self._ids = 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def connect(self, *, timeout: float, alive: Callable[[], bool]) -> None:
        """Connect and finish the handshake, retrying until QEMU listens or ``timeout``.

        ``alive`` is asked between tries: a QEMU that exited will never listen.
        """
        deadline = time.monotonic() + timeout
        pause = _FIRST_RETRY
        while True:
            if time.monotonic() >= deadline:
                raise EnvironmentFailure(f"QEMU did not answer on {self._path} within {timeout} s")
            if not alive():
                raise EnvironmentFailure("QEMU exited before it answered on QMP")
            try:
                self._handshake(deadline)
            except _NotYet as exc:
                log.debug("QMP %s: %s", self._path, exc)
                self.close()
                time.sleep(pause)
                pause = min(pause * 2, _LAST_RETRY)
            except EnvironmentFailure as exc:  # the deadline passed mid-handshake
                self.close()
                raise EnvironmentFailure(
                    f"QEMU did not answer on {self._path} within {timeout} s"
                ) from exc
            else:
                return

    def execute(self, command: str, *, timeout: float = 10.0) -> object:
        """Run one QMP command and return its result."""
        try:
            return self._command(command, time.monotonic() + timeout)
        except (_NotYet, OSError) as exc:
            raise EnvironmentFailure(f"QMP {command} failed: {exc}") from exc

    def close(self) -> None:
        """Hang up (quietly)."""
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._buffer = b""

    def _handshake(self, deadline: float) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._socket = sock
        try:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(str(self._path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise _NotYet(exc.strerror) from exc
        except TimeoutError:
            raise EnvironmentFailure(f"QMP on {self._path}: connecting timed out") from None
        greeting = self._message(deadline)
        if "QMP" not in greeting:
            raise _NotYet(f"no QMP greeting but {str(greeting)[:200]}")
        self._command("qmp_capabilities", deadline)

    def _command(self, command: str, deadline: float) -> object:
        if self._socket is None:
            raise _NotYet("not connected")
        self._ids += 1
        ident = f"{self._name}-{self._ids}"
        line = json.dumps({"execute": command, "id": ident}).encode() + b"\n"
        self._socket.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            self._socket.sendall(line)
        except TimeoutError:
            raise EnvironmentFailure(f"QMP on {self._path}: {command} not sent in time") from None
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _NotYet(f"QEMU hung up: {exc.strerror}") from exc
        while True:
            reply = self._message(deadline)
            if "event" in reply or reply.get("id") != ident:
                continue
            if "error" in reply:
                error = reply["error"] if isinstance(reply["error"], dict) else {}
                raise EnvironmentFailure(
                    f"QMP {command} failed: {error.get('class', '?')}: {error.get('desc', '?')}"
                )
            if "return" not in reply:
                raise EnvironmentFailure(f"QMP {command}: an answer without a result: {reply}")
            return reply["return"]

    def _message(self, deadline: float) -> dict[str, Any]:
        """The next JSON object QEMU sends (one per line)."""
        line = b""
        while not line.strip():
            line = self._line(deadline)
        try:
            message = json.loads(line)
        except ValueError as exc:
            raise EnvironmentFailure(f"QMP on {self._path}: not JSON: {line[:200]!r}") from exc
        if not isinstance(message, dict):
            raise EnvironmentFailure(f"QMP on {self._path}: not an object: {line[:200]!r}")
        return message

    def _line(self, deadline: float) -> bytes:
        assert self._socket is not None  # noqa: S101 - only called while connected
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise EnvironmentFailure(f"QMP on {self._path}: no answer in time")
            self._socket.settimeout(left)
            try:
                chunk = self._socket.recv(65536)
            except TimeoutError:
                raise EnvironmentFailure(f"QMP on {self._path}: no answer in time") from None
            except ConnectionResetError as exc:
                raise _NotYet(f"QEMU hung up: {exc.strerror}") from exc
            if not chunk:
                raise _NotYet("QEMU hung up")
            self._buffer += chunk
            if len(self._buffer) > MESSAGE_MAX:
                raise EnvironmentFailure(f"QMP on {self._path}: a message over {MESSAGE_MAX} B")
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line
