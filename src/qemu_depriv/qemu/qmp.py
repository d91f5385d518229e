"""A thin, synchronous use of the ``qemu.qmp`` library for the launcher.

``qemu.qmp`` is asyncio-based; the launcher is a short-lived, single-threaded command, so each
:class:`QmpConnection` runs its own event loop and every call is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Self

from qemu.qmp import ConnectError, QMPClient, QMPError

from qemu_depriv.errors import EnvironmentFailure

log = logging.getLogger(__name__)

#: The first wait between connection attempts, doubled up to the last.
_FIRST_RETRY, _LAST_RETRY = 0.001, 0.01


class QmpConnection:
    """One QMP session on a unix socket.

    Raises (every method):
        EnvironmentFailure: the deadline passed, QEMU went away, or a command failed.
    """

    def __init__(self, socket: Path, *, name: str = "qemu-depriv") -> None:
        self._socket = socket
        self._client = QMPClient(name)
        self._loop = asyncio.new_event_loop()

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
            left = deadline - time.monotonic()
            if left <= 0:
                raise EnvironmentFailure(
                    f"QEMU did not answer on {self._socket} within {timeout} s"
                )
            if not alive():
                raise EnvironmentFailure("QEMU exited before it answered on QMP")
            try:
                self._run(self._client.connect(str(self._socket)), left)
            except ConnectError:
                time.sleep(pause)
                pause = min(pause * 2, _LAST_RETRY)
            except EnvironmentFailure as exc:  # the deadline passed mid-attempt
                raise EnvironmentFailure(
                    f"QEMU did not answer on {self._socket} within {timeout} s"
                ) from exc
            else:
                return

    def execute(self, command: str, *, timeout: float = 10.0) -> object:
        """Run one QMP command and return its result."""
        try:
            return self._run(self._client.execute(command), timeout)
        except (QMPError, EOFError, OSError) as exc:
            raise EnvironmentFailure(f"QMP {command} failed: {exc!r}") from exc

    def close(self) -> None:
        """Disconnect (quietly) and close the event loop."""
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 2.0))
        except (QMPError, EOFError, OSError, TimeoutError) as exc:
            log.debug("QMP disconnect from %s: %s", self._socket, exc)
        finally:
            self._loop.close()

    def _run(self, coroutine: object, timeout: float) -> object:
        try:
            return self._loop.run_until_complete(
                asyncio.wait_for(coroutine, timeout)  # type: ignore[arg-type]
            )
        except TimeoutError as exc:
            raise EnvironmentFailure(
                f"QMP on {self._socket}: no answer within {timeout:.1f} s"
            ) from exc
