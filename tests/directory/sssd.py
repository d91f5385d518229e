"""SSSD (LDAP id provider) and libnss-sss against the lab's slapd: ``passwd: files sss``.

SSSD's paths are compiled in: /etc/sssd (its config and conf.d), /var/lib/sss (cache db, the
``nss`` socket libnss-sss connects to, the memory-cache files libnss-sss maps, pubconf...),
/var/log/sssd and /run/sssd.pid.  The lab bind-mounts a directory of its own over each, inside
its namespace, and over /run as well, which then holds the private system bus's socket
(/run/dbus/system_bus_socket, where libdbus looks by default).  SSSD runs as root (``-i``: in
the foreground, its responders as its children), logging to files in the lab's ``log``.

No TLS is needed for id lookups: the domain uses ``ldap://`` without StartTLS
(``ldap_id_use_start_tls = false``, the default) and binds anonymously; SSSD insists on TLS
only for password authentication, which ``auth_provider = none`` switches off.

The private bus is a ``dbus-daemon`` with a config of its own (no ``<user>``: the namespace's
passwd has no ``messagebus``; no activation: nothing may start a service behind the lab's back)
that includes the packages' policies from /usr/share/dbus-1/system.d, so that sssd_ifp may own
``org.freedesktop.sssd.infopipe`` and anyone may call it, as on a real host.

:class:`SssdTimings` holds the options that decide how long SSSD stays offline; its defaults are
SSSD's own (sssd.conf(5), sssd-ldap(5)).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.directory import processes
from tests.directory.accounts import SUFFIX
from tests.directory.namespace import Bind, MountNamespace
from tests.directory.probe import ProbeResult
from tests.directory.slapd import Slapd

SSSD = Path("/usr/sbin/sssd")
DBUS_DAEMON = Path("/usr/bin/dbus-daemon")
SSS_NSSWITCH = "passwd: files sss\ngroup: files sss\nshadow: files\ngshadow: files\n"
#: The lab's SSSD domain.  Its dot shows InfoPipe's object-path escaping (``lab_2etest``).
DOMAIN = "lab.test"
BUS_SOCKET = "/run/dbus/system_bus_socket"
INFOPIPE = "org.freedesktop.sssd.infopipe"
#: /var/lib/sss as the package lays it out; SSSD refuses to start without these directories.
_STATE_DIRS = {
    "db": 0o700,
    "pipes": 0o755,
    "pipes/private": 0o700,
    "mc": 0o775,
    "pubconf": 0o755,
    "pubconf/krb5.include.d": 0o755,
    "gpo_cache": 0o755,
    "secrets": 0o700,
    "deskprofile": 0o751,
    "keytabs": 0o700,
}


@dataclass(frozen=True)
class SssdTimings:
    """How long SSSD waits, caches and stays offline, in seconds; defaults are SSSD's.

    - ``offline_timeout``: after going offline, the first retry of the server; later retries
      double up to ``offline_timeout_max``, each plus up to ``offline_timeout_random_offset``;
    - ``ldap_network_timeout``/``ldap_opt_timeout``/``ldap_search_timeout``: how long a
      connection, an operation and a search may take (a hung server costs about these);
    - ``entry_cache_timeout``: how long a cached entry counts as fresh;
    - ``memcache_timeout``: how long libnss-sss may answer from the memory cache by itself
      (0 switches it off);
    - ``entry_negative_timeout``: how long a "not found" is remembered.
    """

    offline_timeout: int = 60
    offline_timeout_max: int = 3600
    offline_timeout_random_offset: int = 30
    ldap_network_timeout: int = 6
    ldap_opt_timeout: int = 8
    ldap_search_timeout: int = 6
    entry_cache_timeout: int = 5400
    memcache_timeout: int = 300
    entry_negative_timeout: int = 15


#: SSSD's own defaults, as Debian ships it.
DEFAULT_SSSD = SssdTimings()
#: Short waits, for tests whose point is not SSSD's default timing.
FAST_SSSD = SssdTimings(
    offline_timeout=3,
    offline_timeout_max=3,
    offline_timeout_random_offset=0,
    ldap_network_timeout=2,
    ldap_opt_timeout=2,
    ldap_search_timeout=2,
)


def sssd_conf(uri: str, timings: SssdTimings, services: tuple[str, ...]) -> str:
    """sssd.conf for one LDAP domain read anonymously without TLS (pure)."""
    return (
        "[sssd]\n"
        f"services = {', '.join(services)}\n"
        f"domains = {DOMAIN}\n"
        "\n[nss]\n"
        f"memcache_timeout = {timings.memcache_timeout}\n"
        f"entry_negative_timeout = {timings.entry_negative_timeout}\n"
        "\n[ifp]\n"
        f"\n[domain/{DOMAIN}]\n"
        "id_provider = ldap\n"
        "auth_provider = none\n"
        f"ldap_uri = {uri}\n"
        f"ldap_search_base = {SUFFIX}\n"
        "ldap_schema = rfc2307\n"
        "ldap_id_use_start_tls = false\n"
        "cache_credentials = false\n"
        "enumerate = false\n"
        f"offline_timeout = {timings.offline_timeout}\n"
        f"offline_timeout_max = {timings.offline_timeout_max}\n"
        f"offline_timeout_random_offset = {timings.offline_timeout_random_offset}\n"
        f"ldap_network_timeout = {timings.ldap_network_timeout}\n"
        f"ldap_opt_timeout = {timings.ldap_opt_timeout}\n"
        f"ldap_search_timeout = {timings.ldap_search_timeout}\n"
        f"entry_cache_timeout = {timings.entry_cache_timeout}\n"
        "debug_level = 3\n"
    )


def bus_config(socket: str) -> str:
    """A system bus config like Debian's, minus <user>, <fork>, pid file and activation (pure)."""
    return f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus"
           send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <includedir>/usr/share/dbus-1/system.d</includedir>
  <includedir>/etc/dbus-1/system.d</includedir>
</busconfig>
"""


class SssdError(RuntimeError):
    """SSSD or its bus would not start; the message carries their logs."""


class SssdLab:
    """A namespace whose NSS asks ``files`` then ``sss`` (SSSD, then the lab's slapd).

    ``ifp``: run the InfoPipe responder (``services = nss, ifp``) or not (``services = nss``).
    ``bus``: run the private system bus; without it sssd_ifp has nowhere to register.
    """

    def __init__(
        self,
        root: Path,
        slapd: Slapd,
        timings: SssdTimings = DEFAULT_SSSD,
        *,
        ifp: bool = True,
        bus: bool = True,
        passwd: Iterable[str] = (),
        group: Iterable[str] = (),
    ) -> None:
        self.root = root
        self.slapd = slapd
        self.timings = timings
        self.ifp = ifp
        self.bus = bus
        self.etc = root / "etc-sssd"
        self.state = root / "var-lib-sss"
        self.logs = root / "log"
        self.run_dir = root / "run"
        for directory in (self.etc / "conf.d", self.logs, self.run_dir / "dbus"):
            directory.mkdir(parents=True, exist_ok=True)
        self.etc.chmod(0o711)
        for name, mode in _STATE_DIRS.items():
            path = self.state / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
        self.conf = self.etc / "sssd.conf"
        services = ("nss", "ifp") if ifp else ("nss",)
        self.conf.write_text(sssd_conf(slapd.uri, timings, services), encoding="utf-8")
        self.conf.chmod(0o600)  # sssd refuses a config that others can read
        self.bus_conf = root / "bus.conf"
        self.bus_conf.write_text(bus_config(BUS_SOCKET), encoding="utf-8")
        self.namespace = MountNamespace(
            root / "ns",
            [
                Bind(self.etc, "/etc/sssd"),
                Bind(self.state, "/var/lib/sss"),
                Bind(self.logs, "/var/log/sssd"),
                Bind(self.run_dir, "/run"),
            ],
            SSS_NSSWITCH,
            passwd,
            group,
        )
        self._sssd: subprocess.Popen[bytes] | None = None
        self._bus: subprocess.Popen[bytes] | None = None

    @property
    def nss_socket(self) -> Path:
        """Where /var/lib/sss/pipes/nss is, seen from the host."""
        return self.state / "pipes" / "nss"

    @property
    def bus_socket(self) -> Path:
        """Where the private system bus listens, seen from the host."""
        return self.run_dir / "dbus" / "system_bus_socket"

    @property
    def sssd_pid(self) -> int | None:
        """The sssd monitor's pid while it runs."""
        running = self._sssd is not None and self._sssd.poll() is None
        return self._sssd.pid if running and self._sssd else None

    def open(self) -> None:
        """Make the namespace, then start the bus (if wanted) and SSSD in it.

        Raises:
            NamespaceError: the namespace could not be made.
            SssdError: the bus or SSSD did not start.
        """
        self.namespace.open()
        if self.bus:
            self.start_bus()
        self.start()

    def start_bus(self, timeout: float = 10.0) -> None:
        """Start the private system bus and wait for its socket.

        Raises:
            SssdError: dbus-daemon exited or made no socket within ``timeout`` seconds.
        """
        self._bus = self.namespace.spawn(
            str(DBUS_DAEMON), f"--config-file={self.bus_conf}", "--nofork", "--nopidfile",
            "--nosyslog", log=self.logs / "dbus-daemon.log",
        )  # fmt: skip
        self._wait(self.bus_socket.exists, self._bus, timeout, "dbus-daemon")

    def start(self, timeout: float = 20.0) -> None:
        """Start sssd; wait for its nss socket and, with ifp and a bus, for InfoPipe's name.

        Raises:
            SssdError: sssd exited or was not ready within ``timeout`` seconds.
        """
        self.nss_socket.unlink(missing_ok=True)
        self._sssd = self.namespace.spawn(
            str(SSSD), "-i", "--logger=files", "-c", "/etc/sssd/sssd.conf",
            log=self.logs / "sssd-stdout.log",
        )  # fmt: skip
        self._wait(self.nss_socket.exists, self._sssd, timeout, "sssd")
        if self.ifp and self.bus:
            self._wait(self.infopipe_registered, self._sssd, timeout, "sssd_ifp")

    def infopipe_registered(self) -> bool:
        """Whether ``org.freedesktop.sssd.infopipe`` has an owner on the private bus."""
        done = self.namespace.run(
            "dbus-send", "--system", "--print-reply", "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner", f"string:{INFOPIPE}",
            timeout=10,
        )  # fmt: skip
        return "boolean true" in done.stdout

    def stop(self) -> None:
        """Stop sssd (SIGTERM to the monitor, which stops its responders) and reap it.

        Responders that outlive their monitor are killed by pid too: only the bus and the
        holder may remain in the namespace.
        """
        if self._sssd is not None:
            processes.end(self._sssd)
            self._sssd = None
        keep = {self._bus.pid} if self._bus is not None and self._bus.poll() is None else set()
        strays = sorted(self.namespace.pids() - keep)
        for pid in processes.wait_gone(strays, timeout=5):
            processes.signal_pid(pid, signal.SIGKILL)

    def stop_bus(self) -> None:
        """Stop the private bus and reap it."""
        if self._bus is not None:
            processes.end(self._bus)
            self._bus = None

    def argv(self, *command: str) -> list[str]:
        """``command`` prefixed to run inside the lab's namespace."""
        return self.namespace.argv(*command)

    def probe(self, call: str, key: str | int) -> ProbeResult:
        """One raw ``getpwnam_r``/``getpwuid_r`` inside the namespace (see probe.py).

        Raises:
            ValueError: the probe did not run.
        """
        return self.namespace.probe(call, key)

    def sssctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``sssctl ARGS`` inside the namespace (it talks to the monitor over SSSD's own sbus)."""
        return self.namespace.run("sssctl", *args, timeout=60)

    def log_tail(self, size: int = 3000) -> str:
        """The end of every SSSD log, for failure messages."""
        tails = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(encoding="utf-8", errors="replace")[-size:]
            tails.append(f"--- {log.name}\n{text}")
        return "\n".join(tails)

    def close(self) -> None:
        """Kill SSSD, the bus and everything else in the namespace, by pid; end the namespace."""
        for process in (self._sssd, self._bus):
            if process is not None:
                processes.kill(process)
        self._sssd = self._bus = None
        self.namespace.close()

    def _wait(
        self,
        ready: Callable[[], bool],
        process: subprocess.Popen[bytes],
        timeout: float,
        what: str,
    ) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if process.poll() is not None or time.monotonic() > deadline:
                state = "exited" if process.poll() is not None else "was not ready"
                raise SssdError(f"{what} {state}: {self.log_tail()}")
            time.sleep(0.05)
