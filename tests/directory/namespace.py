"""A private mount namespace for a lab, held open by a holder process.

nslcd, libnss-ldapd, SSSD and libnss-sss all use fixed paths (/etc/nslcd.conf,
/run/nslcd/socket, /var/lib/sss/pipes/nss, /run/sssd.pid, /run/dbus/system_bus_socket...).  A
test cannot point them elsewhere, so each lab gets a namespace in which lab directories are
bind-mounted over those paths, and scratch files over /etc/passwd, /etc/group and
/etc/nsswitch.conf (through ``qemu_depriv.accounts.scratch``, the product's own mechanism).
The host's files are never written, and the mounts disappear with the namespace's last process.

Commands enter the namespace with util-linux ``nsenter --mount=/proc/HOLDER/ns/mnt``, which
execs the command itself (no fork for a mount namespace), so a daemon's pid is the pid of the
:class:`subprocess.Popen` that started it.  :meth:`MountNamespace.close` kills every process it
finds in the namespace, by pid, before it lets the holder go.
"""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.accounts.scratch import ScratchAccounts, write_scratch_accounts
from tests.directory import processes
from tests.directory.probe import ProbeResult, parse

HOLDER = Path(__file__).with_name("holder.py")
PROBE = Path(__file__).with_name("probe.py")
NSENTER = "/usr/bin/nsenter"


class NamespaceError(RuntimeError):
    """The holder could not set the namespace up; the message carries its stderr."""


@dataclass(frozen=True)
class Bind:
    """``source`` (a lab path) bind-mounted over ``target`` (a fixed path) in the namespace."""

    source: Path
    target: str


class MountNamespace:
    """Scratch account files and lab directories, at the system's paths for commands run here."""

    def __init__(
        self,
        root: Path,
        binds: Sequence[Bind],
        nsswitch: str,
        passwd: Iterable[str] = (),
        group: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.scratch: ScratchAccounts = write_scratch_accounts(
            root / "accounts", passwd, group, nsswitch
        )
        self.binds = tuple(binds)
        self._holder: subprocess.Popen[str] | None = None
        self._namespace: str | None = None

    def open(self, timeout: float = 10.0) -> None:
        """Start the holder and wait until every mount is in place.

        Raises:
            NamespaceError: the holder failed (not root, a missing target path...).
        """
        spec = self.root / "namespace.json"
        spec.write_text(
            json.dumps(
                {
                    "scratch": str(self.scratch.root),
                    "binds": [[str(bind.source), bind.target] for bind in self.binds],
                }
            ),
            encoding="utf-8",
        )
        stderr = self.root / "holder.log"
        with stderr.open("w") as err:
            self._holder = subprocess.Popen(
                [sys.executable, str(HOLDER), str(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=processes.base_env(),
            )
        assert self._holder.stdout is not None
        ready, _, _ = select.select([self._holder.stdout], [], [], timeout)
        line = self._holder.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.close()
            raise NamespaceError(f"namespace holder failed: {stderr.read_text(encoding='utf-8')}")
        self._namespace = processes.mount_namespace_of(self._holder.pid)

    @property
    def holder_pid(self) -> int:
        """The holder's pid.

        Raises:
            NamespaceError: the namespace is not open.
        """
        if self._holder is None or self._holder.poll() is not None:
            raise NamespaceError("the namespace is not open")
        return self._holder.pid

    def argv(self, *command: str) -> list[str]:
        """``command`` prefixed so that it runs inside this namespace.

        Raises:
            NamespaceError: the namespace is not open.
        """
        return [NSENTER, f"--mount=/proc/{self.holder_pid}/ns/mnt", "--", *command]

    def run(
        self, *command: str, timeout: float = 120.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside the namespace with an explicit environment; never raises on
        its exit status.

        Raises:
            NamespaceError: the namespace is not open.
            subprocess.TimeoutExpired: it ran longer than ``timeout`` seconds.
        """
        return subprocess.run(
            self.argv(*command),
            capture_output=True,
            text=True,
            env=processes.base_env(env),
            timeout=timeout,
            check=False,
        )

    def spawn(
        self, *command: str, log: Path, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a daemon inside the namespace (see :func:`processes.spawn`).

        Raises:
            NamespaceError: the namespace is not open.
            OSError: nsenter could not be started.
        """
        return processes.spawn(self.argv(*command), log, env)

    def probe(self, call: str, key: str | int) -> ProbeResult:
        """One raw ``getpwnam_r``/``getpwuid_r`` in here (probe.py), printed for ``pytest -rP``.

        Raises:
            NamespaceError: the namespace is not open.
            ValueError: the probe did not run.
        """
        done = self.run(sys.executable, str(PROBE), call, str(key))
        result = parse(done.stdout or done.stderr)
        print(f"{self.root.parent.name}: {result}")
        return result

    def pids(self) -> set[int]:
        """The live processes inside the namespace, but the holder."""
        if self._namespace is None:
            return set()
        inside = processes.pids_in_mount_namespace(self._namespace)
        return inside - ({self._holder.pid} if self._holder else set())

    def close(self) -> None:
        """Kill every process inside (SIGKILL, by pid), then end the holder; idempotent."""
        for pid in self.pids():
            processes.signal_pid(pid, signal.SIGCONT)
            processes.signal_pid(pid, signal.SIGKILL)
        left = processes.wait_gone(sorted(self.pids()), timeout=10)
        if self._holder is not None:
            if self._holder.stdin is not None:
                self._holder.stdin.close()
            try:
                self._holder.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._holder.kill()
                self._holder.wait(timeout=5)
            if self._holder.stdout is not None:
                self._holder.stdout.close()
            self._holder = None
        if left:
            raise NamespaceError(f"processes survived SIGKILL in the lab's namespace: {left}")
