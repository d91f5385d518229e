"""nslcd and libnss-ldapd against the lab's slapd: ``passwd: files ldap`` in a private namespace.

nslcd reads /etc/nslcd.conf and listens on /run/nslcd/socket; libnss-ldapd connects to that
socket.  Both paths are compiled in (nslcd has no option for either), so the lab bind-mounts
its own nslcd.conf over /etc/nslcd.conf and a lab directory over /run (which also hides nscd's
socket and any host nslcd's), inside the namespace.  nslcd runs as root (no ``uid``/``gid``
lines: the namespace's passwd has no ``nslcd`` account) with ``-d``, which keeps it in the
foreground and writes its debug log to the lab's ``nslcd.log``.  ``LDAPNOINIT`` keeps libldap
from reading the host's /etc/ldap/ldap.conf.

:class:`NslcdTimings` holds the reconnect options that decide how long an outage lasts for a
client; its defaults are nslcd's own (nslcd.conf(5)).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.directory import processes
from tests.directory.accounts import SUFFIX
from tests.directory.namespace import Bind, MountNamespace
from tests.directory.probe import ProbeResult
from tests.directory.slapd import Slapd

NSLCD = Path("/usr/sbin/nslcd")
LDAP_NSSWITCH = "passwd: files ldap\ngroup: files ldap\nshadow: files\ngshadow: files\n"


@dataclass(frozen=True)
class NslcdTimings:
    """nslcd.conf's time limits and reconnect back-off, in seconds; defaults are nslcd's.

    - ``reconnect_sleeptime``: the first sleep after every server failed (doubling after);
    - ``reconnect_retrytime``: after this long the server counts as down, and is retried only
      once per this period: lookups meanwhile fail at once;
    - ``timelimit``: how long a search may wait for an answer (0: for ever);
    - ``bind_timelimit``: how long connecting and binding may take.
    """

    reconnect_sleeptime: int = 1
    reconnect_retrytime: int = 10
    timelimit: int = 0
    bind_timelimit: int = 10


#: nslcd's own defaults, as Debian ships it.
DEFAULT_NSLCD = NslcdTimings()
#: Short waits, for tests whose point is not nslcd's default timing.
FAST_NSLCD = NslcdTimings(
    reconnect_sleeptime=1, reconnect_retrytime=2, timelimit=2, bind_timelimit=2
)


def nslcd_conf(uri: str, timings: NslcdTimings) -> str:
    """nslcd.conf for an anonymous, unencrypted connection to the lab's slapd (pure)."""
    return (
        f"uri {uri}\n"
        f"base {SUFFIX}\n"
        f"timelimit {timings.timelimit}\n"
        f"bind_timelimit {timings.bind_timelimit}\n"
        f"reconnect_sleeptime {timings.reconnect_sleeptime}\n"
        f"reconnect_retrytime {timings.reconnect_retrytime}\n"
    )


class NslcdLab:
    """A namespace whose NSS asks ``files`` then ``ldap`` (nslcd, then the lab's slapd)."""

    def __init__(
        self,
        root: Path,
        slapd: Slapd,
        timings: NslcdTimings = DEFAULT_NSLCD,
        passwd: Iterable[str] = (),
        group: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.slapd = slapd
        self.timings = timings
        root.mkdir(parents=True, exist_ok=True)
        self.conf = root / "nslcd.conf"
        self.conf.write_text(nslcd_conf(slapd.uri, timings), encoding="utf-8")
        self.run_dir = root / "run"
        (self.run_dir / "nslcd").mkdir(parents=True, exist_ok=True)
        self.log = root / "nslcd.log"
        self.namespace = MountNamespace(
            root / "ns",
            [Bind(self.conf, "/etc/nslcd.conf"), Bind(self.run_dir, "/run")],
            LDAP_NSSWITCH,
            passwd,
            group,
        )
        self._nslcd: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        """Where /run/nslcd/socket is, seen from the host."""
        return self.run_dir / "nslcd" / "socket"

    @property
    def pid(self) -> int | None:
        """nslcd's pid while it runs."""
        running = self._nslcd is not None and self._nslcd.poll() is None
        return self._nslcd.pid if running and self._nslcd else None

    def open(self) -> None:
        """Make the namespace and start nslcd in it.

        Raises:
            NamespaceError: the namespace could not be made.
            RuntimeError: nslcd did not start.
        """
        self.namespace.open()
        self.start()

    def start(self, timeout: float = 10.0) -> None:
        """Start nslcd and wait for its socket.

        Raises:
            RuntimeError: nslcd exited or made no socket within ``timeout`` seconds.
        """
        self.socket.unlink(missing_ok=True)
        self._nslcd = self.namespace.spawn(str(NSLCD), "-d", log=self.log, env={"LDAPNOINIT": "1"})
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self._nslcd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"nslcd did not start: {self.log_tail()}")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop nslcd (SIGTERM, SIGKILL after 5 s) and reap it."""
        if self._nslcd is not None:
            processes.end(self._nslcd)
            self._nslcd = None

    def argv(self, *command: str) -> list[str]:
        """``command`` prefixed to run inside the lab's namespace."""
        return self.namespace.argv(*command)

    def probe(self, call: str, key: str | int) -> ProbeResult:
        """One raw ``getpwnam_r``/``getpwuid_r`` inside the namespace (see probe.py).

        Raises:
            ValueError: the probe did not run.
        """
        return self.namespace.probe(call, key)

    def log_tail(self, size: int = 3000) -> str:
        """The end of nslcd's debug log, for failure messages."""
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        """Kill nslcd and everything else in the namespace, by pid; end the namespace."""
        if self._nslcd is not None:
            processes.kill(self._nslcd)
            self._nslcd = None
        self.namespace.close()
