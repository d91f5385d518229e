"""A prototype of a resident launcher, to measure what it would gain (issue 18, target 1).

Not the product: the CLI's time is mostly the interpreter and the imports (``cli_startup``),
which a resident process pays once. Here a server imports what ``launch`` and ``stop`` run,
listens on a unix socket, and for each request forks a child that runs
``qemu_depriv.cli.main.main(ARGV)`` with the client's stdin, stdout and stderr (passed with
SCM_RIGHTS), then sends back the exit code. The client is a bare interpreter
(``python -I -S``) that only sends its arguments and descriptors and waits.

What a product version would need beyond this: the caller's namespaces (a scratch mount
namespace's accounts, the network namespace where the bridges are), environment, working
directory, umask, cgroup and credentials, a socket only root may reach (SO_PEERCRED), a
version check against the installed package, and a start by the service manager. None of
that is here: both ends run in the worker's own namespace, as root.

Usage (from bench.launch): :func:`serve` in a child process, :data:`CLIENT` as the command.
"""

from __future__ import annotations

import array
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import end_child

#: The client: ``python -I -S -c CLIENT SOCKET ARGS...``.
CLIENT = """
import array, json, os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
fds = array.array("i", [0, 1, 2])
rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
s.sendmsg([json.dumps(sys.argv[2:]).encode() + b"\\n"], rights)
answer = b""
while not answer.endswith(b"\\n"):
    chunk = s.recv(64)
    if not chunk:
        sys.exit(4)
    answer += chunk
sys.exit(int(answer))
"""


def client_command(socket_path: Path, *args: str) -> list[str]:
    """The command that runs ``qemu-depriv ARGS`` through the server."""
    return [sys.executable, "-I", "-S", "-c", CLIENT, str(socket_path), *args]


def start(socket_path: Path, *, timeout: float = 60.0) -> subprocess.Popen[bytes]:
    """Start the server as a child (``python -m bench.forkserver SOCKET``), listening on return.

    The caller ends it (``bench.common.end_child``).  One that exits, or does not listen within
    ``timeout`` seconds, is ended here and fails the benchmark.
    """
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.forkserver", str(socket_path)], stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            end_child(server)
            raise AssertionError(f"the prototype server did not listen on {socket_path}")
        time.sleep(0.01)
    return server


def serve(socket_path: Path) -> None:
    """Import the launch and stop paths, then serve requests until SIGTERM."""
    from qemu_depriv.cli.main import main  # noqa: PLC0415

    for module in ("qemu_depriv.vms.launcher", "qemu_depriv.xl.config"):
        importlib.import_module(module)  # what launch and stop import, before the first request

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(socket_path))
    listener.listen(128)
    while True:
        connection, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            code = 4
            try:
                fds = array.array("i")
                data, ancillary, _, _ = connection.recvmsg(65536, socket.CMSG_SPACE(3 * 4))
                for level, kind, payload in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                    os.close(fd)
                sys.stdout = os.fdopen(1, "w", closefd=False)
                sys.stderr = os.fdopen(2, "w", closefd=False)
                code = main(json.loads(data))
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                with contextlib.suppress(OSError):
                    connection.sendall(f"{code}\n".encode())
                os._exit(code)
        connection.close()


if __name__ == "__main__":
    serve(Path(sys.argv[1]))
