"""A small synchronous client for the QEMU guest agent (qemu-ga), the harness's command channel.

Why qemu-ga and not a shell on the serial console: it is Debian's own package, started by a udev
rule as soon as its virtio-serial port appears, and its ``guest-exec`` runs an argv list with an
explicit environment and hands back the exit status and both output streams separately, base64
encoded, so nothing has to be parsed out of a terminal. The serial console stays a plain log.

The protocol is QMP's JSON without the greeting. Bytes written before the agent opens its port
wait in the socket and may be answered late, so a session starts with ``guest-sync-delimited``:
the agent flushes its parser on 0xFF and echoes our id; replies to older syncs are skipped.

Errors: ``AgentTimeout`` when no reply came in time, ``AgentError`` when the agent answered with an
error or the connection broke. The caller (``machine``) turns both into a ``GuestError`` that
names the guest and what it was doing.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.hosts.errors import HostsError

_SYNC_ATTEMPT_SECONDS = 2.0


class AgentError(HostsError):
    """The agent answered with an error, or the connection to it broke."""


class AgentTimeout(AgentError):
    """The agent did not answer before the deadline."""


@dataclass(frozen=True)
class ExecStatus:
    """What ``guest-exec-status`` reported for a process that has exited."""

    returncode: int
    stdout: bytes
    stderr: bytes
    truncated: bool


class GuestAgent:
    """One connection to qemu-ga through QEMU's ``-chardev socket`` (a unix socket QEMU serves)."""

    def __init__(self, path: Path, reply_timeout: float = 30.0) -> None:
        self.path = path
        #: How long ``spawn`` and ``status`` wait for the agent's reply.
        self.reply_timeout = reply_timeout
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._sync_id = int(time.time() * 1000) % 1_000_000

    def connect(self) -> None:
        """Connect to the socket QEMU listens on. Raises ``OSError`` while it does not exist yet."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self._sock = sock

    @property
    def connected(self) -> bool:
        """Whether ``connect`` succeeded and ``close`` was not called since."""
        return self._sock is not None

    def close(self) -> None:
        """Close the connection; the agent itself goes on running."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def sync(self, timeout: float) -> bool:
        """Try, for ``timeout`` seconds, to agree with the agent on where replies start.

        Returns False when the agent did not answer (it is not up yet); raises ``AgentError`` when
        the connection broke (QEMU went away).
        """
        self._sync_id += 1
        wanted = self._sync_id
        request = {"execute": "guest-sync-delimited", "arguments": {"id": wanted}}
        self._send(b"\xff" + json.dumps(request).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                reply = self._receive(deadline)
            except AgentTimeout:
                return False
            if reply.get("return") == wanted:
                return True

    def wait_ready(self, deadline: float) -> bool:
        """Sync repeatedly until the agent answers or ``deadline`` (monotonic) passes."""
        while time.monotonic() < deadline:
            if self.sync(min(_SYNC_ATTEMPT_SECONDS, max(0.1, deadline - time.monotonic()))):
                return True
        return False

    def execute(self, command: str, arguments: dict[str, Any], timeout: float) -> Any:
        """Run one agent command and return its ``return`` value.

        Raises ``AgentError`` with the agent's description when it answered with an error, and
        ``AgentTimeout`` when it did not answer in ``timeout`` seconds.
        """
        self._send(json.dumps({"execute": command, "arguments": arguments}).encode() + b"\n")
        reply = self._receive(time.monotonic() + timeout)
        if "error" in reply:
            error = reply["error"]
            raise AgentError(f"{command}: {error.get('class')}: {error.get('desc')}")
        return reply.get("return")

    def spawn(self, argv: list[str], env: dict[str, str], stdin: bytes | None) -> int:
        """Start ``argv`` in the guest with exactly ``env``; return the guest pid."""
        arguments: dict[str, Any] = {
            "path": argv[0],
            "arg": argv[1:],
            "env": [f"{key}={value}" for key, value in env.items()],
            "capture-output": True,
        }
        if stdin is not None:
            arguments["input-data"] = base64.b64encode(stdin).decode()
        result = self.execute("guest-exec", arguments, timeout=self.reply_timeout)
        return int(result["pid"])

    def status(self, pid: int) -> ExecStatus | None:
        """The exit status of a spawned process, or None while it runs."""
        result = self.execute("guest-exec-status", {"pid": pid}, timeout=self.reply_timeout)
        if not result.get("exited"):
            return None
        if "exitcode" in result:
            returncode = int(result["exitcode"])
        else:
            returncode = -int(result.get("signal", 0))
        return ExecStatus(
            returncode=returncode,
            stdout=base64.b64decode(result.get("out-data", "")),
            stderr=base64.b64decode(result.get("err-data", "")),
            truncated=bool(result.get("out-truncated") or result.get("err-truncated")),
        )

    def _send(self, data: bytes) -> None:
        if self._sock is None:
            raise AgentError(f"not connected to the guest agent at {self.path}")
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise AgentError(f"writing to the guest agent at {self.path}: {exc}") from exc

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next JSON object from the agent; 0xFF bytes (sync delimiters) are dropped."""
        if self._sock is None:
            raise AgentError(f"not connected to the guest agent at {self.path}")
        while True:
            line, found, rest = self._buffer.partition(b"\n")
            if found:
                self._buffer = rest
                text = line.replace(b"\xff", b"").strip()
                if text:
                    try:
                        message = json.loads(text)
                    except ValueError as exc:
                        raise AgentError(f"the guest agent sent {text[:200]!r}") from exc
                    if isinstance(message, dict):
                        return message
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeout(f"no answer from the guest agent at {self.path}")
            self._sock.settimeout(remaining)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError as exc:
                raise AgentTimeout(f"no answer from the guest agent at {self.path}") from exc
            except OSError as exc:
                raise AgentError(f"reading from the guest agent at {self.path}: {exc}") from exc
            if not chunk:
                raise AgentError(f"the guest agent's socket {self.path} was closed (QEMU gone?)")
            self._buffer += chunk
