"""A private OpenLDAP server: its own slapd.conf and mdb database under the test's tmp dir.

The server listens on 127.0.0.1 (a port that was free when the lab chose it) for nslcd and
SSSD, and on an ldapi:// socket in its directory for the lab's own ldapadd.  It runs as root
in the foreground (``-d 0``: no detaching, no debug output), without ``-u``, so it needs no
account of its own in any passwd file.  Access is slapd's default, read for everyone, so the
NSS daemons bind anonymously, as most sites' nslcd and SSSD do for id lookups.

The controls are what issue 12's table needs: :meth:`Slapd.stop` and :meth:`Slapd.start` (an
outage and a recovery on the same port and data), :meth:`Slapd.hang` (SIGSTOP: the kernel still
completes TCP handshakes on the listening socket, but nothing ever answers, which is how a wedged
server looks to a client) and :meth:`Slapd.resume`.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterable
from pathlib import Path

from tests.directory import processes
from tests.directory.accounts import (
    SUFFIX,
    DirectoryGroup,
    DirectoryUser,
    accounts_ldif,
    base_ldif,
)

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
LDAPADD = Path("/usr/bin/ldapadd")
LDAPSEARCH = Path("/usr/bin/ldapsearch")
SCHEMA_DIR = Path("/etc/ldap/schema")
#: RFC 2307's posixAccount and posixGroup are in nis.schema, which needs cosine's attributes.
SCHEMAS = ("core", "cosine", "nis")
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "lab-only-secret"


class SlapdError(RuntimeError):
    """slapd would not start, or a tool that feeds it failed; the message has its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def slapd_conf(directory: Path, pidfile: Path) -> str:
    """A static slapd.conf for one mdb database at ``directory`` (pure)."""
    includes = "".join(f"include {SCHEMA_DIR / name}.schema\n" for name in SCHEMAS)
    return (
        f"{includes}"
        f"pidfile {pidfile}\n"
        "modulepath /usr/lib/ldap\n"
        "moduleload back_mdb\n"
        "database mdb\n"
        "maxsize 16777216\n"
        f"suffix {SUFFIX}\n"
        f"rootdn {ROOT_DN}\n"
        f"rootpw {ROOT_PW}\n"
        f"directory {directory}\n"
        "index objectClass,uid,uidNumber,gidNumber,memberUid,cn eq\n"
    )


class Slapd:
    """One slapd process and its data; :meth:`kill` in a ``finally`` ends it whatever its state.

    Construction writes the config and loads the entries offline with ``slapadd``; :meth:`start`
    launches the server.
    """

    def __init__(
        self,
        root: Path,
        users: Iterable[DirectoryUser] = (),
        groups: Iterable[DirectoryGroup] = (),
    ) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        self.data.mkdir(mode=0o700, exist_ok=True)
        self.conf = root / "slapd.conf"
        self.conf.write_text(slapd_conf(self.data, root / "slapd.pid"), encoding="utf-8")
        self.log = root / "slapd.log"
        self.port = free_port()
        self.uri = f"ldap://127.0.0.1:{self.port}/"
        self.ldapi_uri = "ldapi://" + urllib.parse.quote(str(root / "ldapi"), safe="")
        self._process: subprocess.Popen[bytes] | None = None
        seed = root / "seed.ldif"
        seed.write_text(base_ldif() + accounts_ldif(users, groups), encoding="utf-8")
        self._tool(SLAPADD, "-f", str(self.conf), "-l", str(seed))

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (or is stopped), else None."""
        running = self._process is not None and self._process.poll() is None
        return self._process.pid if running and self._process else None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it answers a search.

        Raises:
            SlapdError: it exited or did not answer within ``timeout`` seconds.
        """
        if self.pid is not None:
            raise SlapdError("slapd is already running")
        argv = [str(SLAPD), "-f", str(self.conf), "-h", f"{self.uri} {self.ldapi_uri}", "-d", "0"]
        self._process = processes.spawn(argv, self.log)
        deadline = time.monotonic() + timeout
        while not self.answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise SlapdError(f"slapd did not start: {self._log_tail()}")
            time.sleep(0.05)

    def answers(self) -> bool:
        """Whether the server answers an anonymous base search on its TCP port within 2 s."""
        done = subprocess.run(
            [str(LDAPSEARCH), "-x", "-LLL", "-o", "nettimeout=2", "-l", "2",
             "-H", self.uri, "-b", SUFFIX, "-s", "base", "dn"],
            capture_output=True, env=processes.base_env({"LDAPNOINIT": "1"}),
            timeout=10, check=False,
        )  # fmt: skip
        return done.returncode == 0

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and reap it; data stay."""
        if self._process is not None:
            processes.end(self._process)
            self._process = None

    def hang(self) -> None:
        """SIGSTOP the server: connections still open, no request is ever answered.

        Raises:
            SlapdError: it is not running.
        """
        pid = self._running_pid()
        processes.signal_pid(pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while processes.state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.01)

    def resume(self) -> None:
        """SIGCONT a hung server.

        Raises:
            SlapdError: it is not running.
        """
        processes.signal_pid(self._running_pid(), signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the server, whatever its state, and reap it: the cleanup path."""
        if self._process is not None:
            processes.kill(self._process)
            self._process = None

    def add(
        self, users: Iterable[DirectoryUser] = (), groups: Iterable[DirectoryGroup] = ()
    ) -> None:
        """Add entries to the running server (ldapadd over ldapi://, as the root DN).

        Raises:
            SlapdError: ldapadd failed.
        """
        ldif = self.root / f"add-{time.monotonic_ns()}.ldif"
        ldif.write_text(accounts_ldif(users, groups), encoding="utf-8")
        self._tool(
            LDAPADD, "-x", "-H", self.ldapi_uri, "-D", ROOT_DN, "-w", ROOT_PW, "-f", str(ldif)
        )

    def _running_pid(self) -> int:
        pid = self.pid
        if pid is None:
            raise SlapdError("slapd is not running")
        return pid

    def _tool(self, *argv: str | Path) -> None:
        done = subprocess.run(
            [str(part) for part in argv],
            capture_output=True,
            text=True,
            env=processes.base_env({"LDAPNOINIT": "1"}),
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise SlapdError(f"{Path(argv[0]).name} failed: {done.stdout}{done.stderr}")

    def _log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(encoding="utf-8", errors="replace")[-2000:]
        return "(no log)"
