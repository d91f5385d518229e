"""The lab a test gets: slapd servers and NSS namespaces, all torn down with the test.

Usage (the ``directory_lab`` fixture in conftest.py hands one to a test)::

    server = directory_lab.slapd(users=[DirectoryUser("xen-qemuuser-web", 524289, 524288)])
    ldap = directory_lab.nslcd(server)                    # passwd: files ldap
    sss = directory_lab.sssd(server, timings=FAST_SSSD)  # passwd: files sss, InfoPipe on
    subprocess.run(ldap.argv(sys.executable, "-m", "qemu_depriv", "resolve", "--domid", "7"))
    server.stop()  # an outage; server.start(), .hang(), .resume(); ldap.stop(), sss.stop()...

Every lab is closed in reverse order of creation, whatever the test did: namespaces first
(every process found in them killed by pid), then the servers.  :meth:`DirectoryLab.close`
reports anything that would not die.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from tests.directory.accounts import DirectoryGroup, DirectoryUser
from tests.directory.nslcd import DEFAULT_NSLCD, NSLCD, NslcdLab, NslcdTimings
from tests.directory.slapd import SLAPADD, SLAPD, Slapd
from tests.directory.sssd import DBUS_DAEMON, DEFAULT_SSSD, SSSD, SssdLab, SssdTimings

#: The programs the lab runs, and the Debian package that brings each (``make deps``).
PROGRAMS = {
    SLAPD: "slapd",
    SLAPADD: "slapd",
    Path("/usr/bin/ldapadd"): "ldap-utils",
    NSLCD: "nslcd",
    Path("/usr/lib/x86_64-linux-gnu/libnss_ldap.so.2"): "libnss-ldapd",
    SSSD: "sssd-common",
    Path("/usr/lib/x86_64-linux-gnu/sssd/libsss_ldap.so"): "sssd-ldap",
    Path("/usr/libexec/sssd/sssd_ifp"): "sssd-dbus",
    Path("/usr/sbin/sssctl"): "sssd-tools",
    Path("/usr/lib/x86_64-linux-gnu/libnss_sss.so.2"): "libnss-sss",
    DBUS_DAEMON: "dbus-daemon",
    Path("/usr/bin/nsenter"): "util-linux",
}


def missing_programs() -> list[str]:
    """The programs the lab needs that are not installed, each with its package."""
    return [f"{path} ({package})" for path, package in PROGRAMS.items() if not path.exists()]


class DirectoryLab:
    """Makes servers and namespaces under ``root`` and remembers them for :meth:`close`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._servers: list[Slapd] = []
        self._labs: list[NslcdLab | SssdLab] = []

    def slapd(
        self,
        users: Iterable[DirectoryUser] = (),
        groups: Iterable[DirectoryGroup] = (),
    ) -> Slapd:
        """A started slapd holding ``users`` and ``groups``.

        Raises:
            SlapdError: it would not start.
        """
        server = Slapd(self.root / f"slapd{len(self._servers)}", users, groups)
        self._servers.append(server)
        server.start()
        return server

    def nslcd(
        self,
        server: Slapd,
        timings: NslcdTimings = DEFAULT_NSLCD,
        passwd: Iterable[str] = (),
        group: Iterable[str] = (),
    ) -> NslcdLab:
        """A namespace with ``passwd: files ldap`` and nslcd running against ``server``.

        ``passwd``/``group`` are extra lines for the namespace's local files.

        Raises:
            NamespaceError: the namespace could not be made.
            RuntimeError: nslcd would not start.
        """
        lab = NslcdLab(self.root / f"nslcd{len(self._labs)}", server, timings, passwd, group)
        self._labs.append(lab)
        lab.open()
        return lab

    def sssd(
        self,
        server: Slapd,
        timings: SssdTimings = DEFAULT_SSSD,
        *,
        ifp: bool = True,
        bus: bool = True,
        passwd: Iterable[str] = (),
        group: Iterable[str] = (),
    ) -> SssdLab:
        """A namespace with ``passwd: files sss``, SSSD against ``server``, and a private bus.

        Raises:
            NamespaceError: the namespace could not be made.
            SssdError: the bus or SSSD would not start.
        """
        lab = SssdLab(
            self.root / f"sssd{len(self._labs)}",
            server,
            timings,
            ifp=ifp,
            bus=bus,
            passwd=passwd,
            group=group,
        )
        self._labs.append(lab)
        lab.open()
        return lab

    def close(self) -> list[str]:
        """End everything, namespaces first; return what went wrong (empty when all is gone)."""
        problems = []
        for lab in reversed(self._labs):
            try:
                lab.close()
            except (RuntimeError, OSError) as exc:
                problems.append(f"{lab.root.name}: {exc}")
        for server in reversed(self._servers):
            server.kill()
        self._labs.clear()
        self._servers.clear()
        return problems


def busctl() -> str | None:
    """systemd's busctl, when installed (it is not one of the lab's packages)."""
    return shutil.which("busctl")
