"""The raw facts of issue 12, measured against real directory services.

What glibc's ``getpwnam_r``/``getpwuid_r`` return through libnss-ldapd and libnss-sss when the
LDAP server, or the NSS daemon, is up, stopped, hung or just back; and what SSSD's InfoPipe
says about its online status.  The product's lookups (``qemu_depriv.accounts.nss``) and its
SSSD online check rest on exactly these facts: if a package update changes one, a test here
fails first.

Timings use the daemons' defaults where the timing is the point (one test per outage case);
elsewhere the lab's short timings keep the file within a few minutes.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.directory import processes
from tests.directory.accounts import ID_BLOCK, DirectoryGroup, DirectoryUser
from tests.directory.lab import DirectoryLab, busctl
from tests.directory.namespace import MountNamespace
from tests.directory.nslcd import DEFAULT_NSLCD, FAST_NSLCD, NslcdLab, NslcdTimings
from tests.directory.probe import ProbeResult
from tests.directory.sssd import DOMAIN, FAST_SSSD, INFOPIPE, SssdLab, SssdTimings

INFOPIPE_SCRIPT = Path(__file__).with_name("infopipe.py")
GID = ID_BLOCK.start
USERS = [
    DirectoryUser("xen-qemuuser-web", GID + 1, GID),
    DirectoryUser("xen-qemuuser-domid7", GID + 7, GID),
    DirectoryUser("xen-qemuuser-shared", GID + 100, GID),
    DirectoryUser("xen-qemuuser-range-base", GID + 1000, GID),
]
GROUPS = [DirectoryGroup("xen-qemuuser", GID)]
WEB, DOMID7, SHARED, RANGE_BASE = USERS
MISSING = "xen-qemuuser-nosuchdomain"
DOMAIN_PATH = "/org/freedesktop/sssd/infopipe/Domains/lab_2etest"
DOMAIN_INTERFACE = "org.freedesktop.sssd.infopipe.Domains.Domain"


def assert_failed_with_enoent(result: ProbeResult) -> None:
    """libnss-ldapd's outage: NSS_STATUS_UNAVAIL, which glibc returns as the errno ENOENT."""
    assert (result.rc, result.null, result.errno) == (errno.ENOENT, True, errno.ENOENT), result


def assert_not_found(result: ProbeResult) -> None:
    """glibc's "no such account": 0, a NULL result, errno untouched (0)."""
    assert (result.rc, result.null, result.errno) == (0, True, 0), result


def assert_found(result: ProbeResult, user: DirectoryUser) -> None:
    assert result.found, result
    assert (result.name, result.uid, result.gid) == (user.name, user.uid, user.gid), result


def infopipe_status(lab: SssdLab) -> dict[str, Any]:
    """Run infopipe.py (jeepney) inside the lab's namespace; its JSON answer."""
    done = lab.namespace.run(sys.executable, str(INFOPIPE_SCRIPT), timeout=30)
    assert done.returncode == 0, done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    print(f"infopipe.py: {answer}")
    return answer


def is_online(lab: SssdLab) -> bool:
    """IsOnline of the lab's one domain, over the lab's bus (jeepney)."""
    answer = infopipe_status(lab)
    assert "error" not in answer, answer
    (domain,) = answer["domains"]
    online: bool = domain["online"]
    return online


def until_nslcd_counts_slapd_down(lab: NslcdLab) -> list[ProbeResult]:
    """Look up until a lookup fails at once (nslcd has given up retrying); every one fails."""
    results = []
    for _ in range(5):
        result = lab.probe("getpwnam", WEB.name)
        assert_failed_with_enoent(result)
        results.append(result)
        if result.seconds < 0.5:
            return results
    pytest.fail(f"nslcd kept retrying the stopped slapd: {[str(r) for r in results]}")


# nslcd and libnss-ldapd: passwd: files ldap


def test_nslcd_finds_directory_accounts_and_a_missing_name_is_not_found(
    directory_lab: DirectoryLab,
) -> None:
    lab = directory_lab.nslcd(directory_lab.slapd(USERS, GROUPS))

    for user in USERS:
        assert_found(lab.probe("getpwnam", user.name), user)
    assert_found(lab.probe("getpwuid", DOMID7.uid), DOMID7)
    assert_not_found(lab.probe("getpwnam", MISSING))
    assert_not_found(lab.probe("getpwuid", GID + 9999))
    local = lab.probe("getpwnam", "root")
    assert (local.rc, local.name, local.uid) == (0, "root", 0), local


def test_nslcd_with_slapd_stopped_fails_every_lookup_with_enoent_after_retrying(
    directory_lab: DirectoryLab,
) -> None:
    """nslcd's defaults: the first lookup retries for about 9 s (sleeping 1, 2, 4 s between
    tries), the next for about 2 s; once nslcd counts slapd down, lookups fail at once."""
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.nslcd(server)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    server.stop()
    results = until_nslcd_counts_slapd_down(lab)
    missing = lab.probe("getpwnam", MISSING)
    by_uid = lab.probe("getpwuid", WEB.uid)

    timings = [round(r.seconds, 1) for r in results]
    assert 1 <= results[0].seconds <= DEFAULT_NSLCD.reconnect_retrytime + 3, timings
    # An account that exists and one that does not fail alike: no "not found" during an outage.
    assert_failed_with_enoent(missing)
    assert_failed_with_enoent(by_uid)


def test_nslcd_stopped_fails_lookups_with_enoent_at_once(directory_lab: DirectoryLab) -> None:
    lab = directory_lab.nslcd(directory_lab.slapd(USERS, GROUPS))
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    lab.stop()

    for result in (
        lab.probe("getpwnam", WEB.name),
        lab.probe("getpwnam", MISSING),
        lab.probe("getpwuid", WEB.uid),
    ):
        assert_failed_with_enoent(result)
        assert result.seconds < 1, result
    lab.start()
    assert_found(lab.probe("getpwnam", WEB.name), WEB)


@pytest.mark.parametrize(
    ("timings", "seconds"),
    [(DEFAULT_NSLCD, DEFAULT_NSLCD.bind_timelimit), (FAST_NSLCD, FAST_NSLCD.bind_timelimit)],
    ids=["defaults", "short-timings"],
)
def test_nslcd_with_slapd_hung_fails_lookups_with_enoent_after_bind_timelimit(
    directory_lab: DirectoryLab, timings: NslcdTimings, seconds: int
) -> None:
    """A SIGSTOPped slapd still completes TCP handshakes and never answers.  nslcd gives up
    after bind_timelimit (10 s by default; ``timelimit`` 0, "searches wait for ever", does not
    make it wait longer).  A bind_timelimit shorter than reconnect_retrytime is retried until
    that passes instead (measured: bind_timelimit 3 alone gives 11 s).  nslcd's retry loop (it
    keeps trying until reconnect_retrytime has passed) sometimes makes a second attempt: one or
    two bind_timelimits (seen in CI: 20.0 s with the defaults).  What matters is the ENOENT."""
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.nslcd(server, timings)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    server.hang()
    hung = lab.probe("getpwnam", WEB.name)
    server.resume()

    assert_failed_with_enoent(hung)
    assert seconds - 0.5 <= hung.seconds <= 2 * seconds + 2, hung
    assert_found(lab.probe("getpwnam", WEB.name), WEB)


def test_nslcd_keeps_failing_until_its_retry_time_passes_after_slapd_returns(
    directory_lab: DirectoryLab,
) -> None:
    """nslcd's defaults: once it counts slapd down it tries again only every
    reconnect_retrytime (10 s), so lookups fail for up to 10 s after slapd is back."""
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.nslcd(server)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)
    server.stop()
    until_nslcd_counts_slapd_down(lab)

    server.start()
    back = time.monotonic()
    first = lab.probe("getpwnam", WEB.name)
    while not (result := lab.probe("getpwnam", WEB.name)).found:
        assert_failed_with_enoent(result)
        assert time.monotonic() - back < DEFAULT_NSLCD.reconnect_retrytime + 5, result
        time.sleep(0.25)
    window = time.monotonic() - back
    print(f"lookups through nslcd failed for {window:.1f} s after slapd was back")

    assert_failed_with_enoent(first)
    assert_found(result, WEB)
    assert 1 < window <= DEFAULT_NSLCD.reconnect_retrytime + 2, window


# SSSD and libnss-sss: passwd: files sss


def test_sssd_finds_directory_accounts_and_reports_itself_online(
    directory_lab: DirectoryLab,
) -> None:
    lab = directory_lab.sssd(directory_lab.slapd(USERS, GROUPS), FAST_SSSD)

    for user in USERS:
        assert_found(lab.probe("getpwnam", user.name), user)
    assert_found(lab.probe("getpwuid", DOMID7.uid), DOMID7)
    assert_not_found(lab.probe("getpwnam", MISSING))
    assert is_online(lab)
    assert lab.sssctl("domain-status", DOMAIN, "-o").stdout.strip() == "Online status: Online"


def test_sssd_with_ldap_down_answers_not_found_for_an_uncached_account(
    directory_lab: DirectoryLab,
) -> None:
    """The silent downgrade's cause: offline, an existing account SSSD never cached answers
    exactly like a name that exists nowhere; only the online status tells them apart."""
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.sssd(server, FAST_SSSD)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    server.stop()
    uncached = lab.probe("getpwnam", SHARED.name)
    uncached_uid = lab.probe("getpwuid", RANGE_BASE.uid)
    missing = lab.probe("getpwnam", MISSING)
    cached = lab.probe("getpwnam", WEB.name)

    assert_not_found(uncached)
    assert_not_found(uncached_uid)
    assert_not_found(missing)
    assert uncached.seconds < 1, uncached
    assert_found(cached, WEB)
    assert not is_online(lab)
    assert lab.sssctl("domain-status", DOMAIN, "-o").stdout.strip() == "Online status: Offline"


def test_sssd_with_slapd_hung_answers_not_found_after_its_ldap_timeouts(
    directory_lab: DirectoryLab,
) -> None:
    """SSSD's defaults: a hung server costs the first lookup about 6 s (ldap_search_timeout,
    ldap_network_timeout); then SSSD is offline and answers "not found" at once."""
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.sssd(server)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    server.hang()
    first = lab.probe("getpwnam", SHARED.name)
    second = lab.probe("getpwnam", DOMID7.name)
    online = is_online(lab)
    server.resume()

    assert_not_found(first)
    assert 5 <= first.seconds <= 9, first
    assert_not_found(second)
    assert second.seconds < 1, second
    assert not online


def test_sssd_stopped_refuses_uncached_lookups_but_serves_its_memory_cache(
    directory_lab: DirectoryLab,
) -> None:
    """With sssd gone libnss-sss cannot connect (ECONNREFUSED: the socket file stays), but
    what the memory cache holds keeps resolving (for memcache_timeout, 300 s by default)."""
    lab = directory_lab.sssd(directory_lab.slapd(USERS, GROUPS), FAST_SSSD)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    lab.stop()
    cached = lab.probe("getpwnam", WEB.name)
    uncached = lab.probe("getpwnam", SHARED.name)
    missing = lab.probe("getpwnam", MISSING)

    assert_found(cached, WEB)
    for result in (uncached, missing):
        assert result.rc in {errno.ECONNREFUSED, errno.ENOENT}, result
        assert result.null, result
        assert result.errno == result.rc, result


def test_sssd_stays_offline_for_offline_timeout_after_ldap_returns(
    directory_lab: DirectoryLab,
) -> None:
    """SSSD's default offline_timeout (60 s; the random offset of up to 30 s is set to 0 to
    bound the test): however soon the server returns, an uncached account reads as "not
    found" until SSSD's next online check, and IsOnline says false all that time."""
    timings = SssdTimings(offline_timeout_random_offset=0)
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.sssd(server, timings)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    server.stop()
    assert_not_found(lab.probe("getpwnam", SHARED.name))
    offline = time.monotonic()
    server.start()
    observed = []
    while not (online := is_online(lab)):
        result = lab.probe("getpwnam", SHARED.name)
        observed.append((round(time.monotonic() - offline, 1), str(result)))
        if not result.null and (online := is_online(lab)):
            break  # SSSD's online check came between the IsOnline call and the probe
        assert_not_found(result)
        assert time.monotonic() - offline < timings.offline_timeout + 15, observed
        time.sleep(2)
    window = time.monotonic() - offline
    print(f"SSSD went back online {window:.1f} s after going offline")

    assert online
    assert timings.offline_timeout - 5 <= window <= timings.offline_timeout + 10, observed
    assert_found(lab.probe("getpwnam", SHARED.name), SHARED)


# SSSD's InfoPipe: the online status over D-Bus


def test_infopipe_lists_the_domain_and_answers_is_online_over_the_system_bus(
    directory_lab: DirectoryLab,
) -> None:
    lab = directory_lab.sssd(directory_lab.slapd(USERS, GROUPS), FAST_SSSD)

    answer = infopipe_status(lab)
    assert answer["domains"] == [
        {
            "path": DOMAIN_PATH,
            "name": DOMAIN,
            "online": True,
            "signature": "b",
            "seconds": answer["domains"][0]["seconds"],
        }
    ]
    assert answer["domains"][0]["seconds"] < 0.5, answer

    listed = lab.namespace.run(
        "dbus-send", "--system", "--print-reply", f"--dest={INFOPIPE}",
        "/org/freedesktop/sssd/infopipe", "org.freedesktop.sssd.infopipe.ListDomains",
    )  # fmt: skip
    assert f'object path "{DOMAIN_PATH}"' in listed.stdout, listed
    found = lab.namespace.run(
        "dbus-send", "--system", "--print-reply", f"--dest={INFOPIPE}",
        "/org/freedesktop/sssd/infopipe", "org.freedesktop.sssd.infopipe.FindDomainByName",
        f"string:{DOMAIN}",
    )  # fmt: skip
    assert f'object path "{DOMAIN_PATH}"' in found.stdout, found
    online = lab.namespace.run(
        "dbus-send", "--system", "--print-reply", f"--dest={INFOPIPE}",
        DOMAIN_PATH, f"{DOMAIN_INTERFACE}.IsOnline",
    )  # fmt: skip
    assert "boolean true" in online.stdout, online
    if busctl():
        called = lab.namespace.run(
            "busctl", "--system", "call", INFOPIPE, DOMAIN_PATH, DOMAIN_INTERFACE, "IsOnline"
        )
        assert called.stdout.strip() == "b true", called


def test_without_the_ifp_responder_the_online_status_cannot_be_read(
    directory_lab: DirectoryLab,
) -> None:
    """``services = nss``: the bus knows no InfoPipe, and sssctl's status goes through it."""
    lab = directory_lab.sssd(directory_lab.slapd(USERS, GROUPS), FAST_SSSD, ifp=False)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    answer = infopipe_status(lab)
    status = lab.sssctl("domain-status", DOMAIN, "-o")

    assert answer["error"] == "org.freedesktop.DBus.Error.ServiceUnknown", answer
    assert status.returncode != 0, status
    assert "InfoPipe" in status.stderr, status


def test_without_a_system_bus_the_online_status_cannot_be_read(
    directory_lab: DirectoryLab,
) -> None:
    lab = directory_lab.sssd(directory_lab.slapd(USERS, GROUPS), FAST_SSSD, ifp=False, bus=False)
    assert_found(lab.probe("getpwnam", WEB.name), WEB)

    answer = infopipe_status(lab)
    status = lab.sssctl("domain-status", DOMAIN, "-o")

    assert answer["error"] in {"FileNotFoundError", "ConnectionRefusedError"}, answer
    assert status.returncode != 0, status
    assert "system bus" in status.stderr, status


# A local account while the directory is down: the raw fact behind the silent downgrade


@pytest.mark.parametrize("backend", ["nslcd", "sssd"])
def test_with_the_directory_down_a_local_shared_account_still_resolves(
    directory_lab: DirectoryLab, backend: str
) -> None:
    """``files`` answers first: the shared account in /etc/passwd is found while the
    per-domain account in LDAP fails (nslcd) or reads as missing (SSSD)."""
    local = DirectoryUser("xen-qemuuser-shared", GID + 200, GID)
    server = directory_lab.slapd([WEB, DOMID7], GROUPS)
    lab: NslcdLab | SssdLab = (
        directory_lab.nslcd(server, FAST_NSLCD, passwd=[local.passwd_line])
        if backend == "nslcd"
        else directory_lab.sssd(server, FAST_SSSD, passwd=[local.passwd_line])
    )

    server.stop()
    per_domain = lab.probe("getpwnam", WEB.name)
    shared = lab.probe("getpwnam", local.name)

    if backend == "nslcd":
        assert_failed_with_enoent(per_domain)
    else:
        assert_not_found(per_domain)
    assert_found(shared, local)


# The lab itself


def test_the_lab_changes_nothing_outside_its_namespaces_and_leaves_nothing_running(
    tmp_path: Path,
) -> None:
    host_files = {path: Path(path).read_bytes() for path in HOST_FILES}
    host_mounts = lab_mounts(tmp_path)
    lab = DirectoryLab(tmp_path / "lab")
    try:
        server = lab.slapd(USERS, GROUPS)
        ldap = lab.nslcd(server)
        sss = lab.sssd(server, FAST_SSSD)
        inside = {
            "ldap": ldap.namespace.run("cat", "/etc/nsswitch.conf").stdout,
            "sss": sss.namespace.run("cat", "/etc/nsswitch.conf").stdout,
        }
        pids = ldap.namespace.pids() | sss.namespace.pids()
        pids |= {server.pid} if server.pid else set()
        pids |= {ldap.namespace.holder_pid, sss.namespace.holder_pid}
        namespaces: list[MountNamespace] = [ldap.namespace, sss.namespace]
    finally:
        problems = lab.close()

    assert not problems
    assert inside["ldap"].startswith("passwd: files ldap\n"), inside
    assert inside["sss"].startswith("passwd: files sss\n"), inside
    assert {path: Path(path).read_bytes() for path in HOST_FILES} == host_files
    assert lab_mounts(tmp_path) == host_mounts
    assert not [line for line in host_mounts if str(tmp_path) in line]
    # slapd, the holders, nslcd, dbus-daemon, sssd and its nss, ifp and backend processes
    assert len(pids) >= 9, pids
    assert [pid for pid in pids if not processes.is_gone(pid)] == []
    assert all(namespace.pids() == set() for namespace in namespaces)


#: What the lab's namespaces cover up, but must never change, on the host.
HOST_FILES = ("/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/nslcd.conf")
#: The host paths that a lab mount leaking out of its namespace would cover.
LAB_TARGETS = {"/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/nslcd.conf", "/run",
               "/etc/sssd", "/var/lib/sss", "/var/log/sssd", "/run/nscd"}  # fmt: skip


def lab_mounts(tmp_path: Path) -> list[str]:
    """Mounts in this (the host's) namespace over a lab target or from the test's tmp dir."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields[4] in LAB_TARGETS or str(tmp_path) in line:
            mounts.append(line)
    return mounts


def test_lab_accounts_stay_in_the_directory_tests_uid_block() -> None:
    with pytest.raises(ValueError, match="outside the directory tests' block"):
        DirectoryUser("xen-qemuuser-web", 131073, GID)
    with pytest.raises(ValueError, match="outside"):
        DirectoryGroup("xen-qemuuser", os.getuid())
