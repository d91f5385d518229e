"""libxl's QMP socket, relayed to QEMU only once QEMU is verified.

Under ``dm_restrict`` libxl opens the device model's QMP socket itself, passes it as
``-chardev socket,id=libxl-cmd,fd=N``, starts QEMU paused (``-S``) and later sends ``cont``
on it: from libxl's side, nothing would wait for the supervisor's verification.  So the
supervisor keeps that listening socket, gives QEMU a private one in the run directory instead,
and starts accepting libxl's connections only when every layer is verified; each connection is
then joined to QEMU's socket, byte for byte and descriptor for descriptor (libxl passes files
with ``add-fd``/``getfd`` over SCM_RIGHTS).  libxl waits for QMP up to its start timeout, so a
connection made earlier simply waits in the listen queue.

Written by hand: no library relays unix sockets with their ancillary descriptors.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import selectors
import socket
from pathlib import Path

log = logging.getLogger(__name__)

#: Enough for any QMP message in one read; a larger one is just read in several.
_CHUNK = 65536
#: The most descriptors one message may carry (libxl passes one at a time).
_MAX_FDS = 16


class Relay:
    """Joins each connection to ``listener`` with a new connection to ``target``."""

    def __init__(self, listener: socket.socket, target: Path) -> None:
        self.listener = listener
        self.target = target
        self._peers: dict[socket.socket, socket.socket] = {}

    def open(self, selector: selectors.BaseSelector) -> None:
        """Start accepting: call only once QEMU is verified."""
        self.listener.setblocking(False)
        selector.register(self.listener, selectors.EVENT_READ, self._accept)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        try:
            client, _ = self.listener.accept()
        except BlockingIOError:
            return
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            upstream.connect(str(self.target))
        except OSError as exc:
            log.warning("QMP relay: QEMU's control socket %s: %s", self.target, exc)
            upstream.close()
            client.close()
            return
        for one, other in ((client, upstream), (upstream, client)):
            self._peers[one] = other
            selector.register(one, selectors.EVENT_READ, functools.partial(self._pump, source=one))

    def _pump(self, selector: selectors.BaseSelector, *, source: socket.socket) -> None:
        sink = self._peers[source]
        try:
            data, fds, _, _ = socket.recv_fds(source, _CHUNK, _MAX_FDS)
        except OSError:
            data, fds = b"", []
        try:
            if data:
                sent = socket.send_fds(sink, [data], fds) if fds else sink.send(data)
                sink.sendall(data[sent:])
        except OSError:
            data = b""
        finally:
            for fd in fds:
                with contextlib.suppress(OSError):
                    socket.close(fd)
        if not data:
            self._drop(selector, source)

    def _drop(self, selector: selectors.BaseSelector, one: socket.socket) -> None:
        other = self._peers.pop(one)
        self._peers.pop(other, None)
        for end in (one, other):
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(end)
            end.close()

    def close(self, selector: selectors.BaseSelector | None = None) -> None:
        """Close every joined connection and the listener."""
        for end in list(self._peers):
            if end in self._peers:
                if selector is not None:
                    self._drop(selector, end)
                else:
                    self._peers.pop(end).close()
                    end.close()
        if selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(self.listener)
        self.listener.close()
