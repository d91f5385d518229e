"""Host-wide audit: every QEMU process, ours or not, and what isolation each lacks.

Processes are found by their executable (``/proc/PID/exe`` named ``qemu-system-*``,
``qemu-kvm`` or ``qemu-dm``), not by a name a process can choose.  Each is read with the
launcher's own snapshot, with its start time and command line, all through one handle on its
/proc directory (:func:`qemu_depriv.host.procfs.read_process`); then matched to the state
store and given findings, each with a stable code, a severity and a fix, from one small check
per code (:data:`CHECKS`) whose message names only what it saw missing.  The findings are a
pure function of the snapshots, the accounts and the records (:func:`findings_for`).

A process is *ours* when its command line names a run directory of the state directory; it
must then match its record (pid, start time, uid), or the finding is ``lease-mismatch``.

One audit asks each question once: the account of each uid (:func:`users_by_uid`: on one
thread, each lookup still bounded by ``lookup_timeout``) and the limits of each cgroup, however
many device models share them.  The answers live for that audit only, since accounts and
limits change between audits.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from qemu_depriv.accounts.nss import Account, AccountLookup, users_by_uid
from qemu_depriv.accounts.provision import NOLOGIN_SHELLS
from qemu_depriv.host.procfs import (
    NAMESPACES,
    UNLIMITED,
    Snapshot,
    own_namespaces,
    qemu_pids,
    read_process,
)
from qemu_depriv.isolation.cgroups import CgroupHost, controller_path
from qemu_depriv.qemu.cmdline import network_facing, rough_options
from qemu_depriv.vms.paths import claimed_domid
from qemu_depriv.vms.store import Lease, StateStore, VmRecord


class Severity(IntEnum):
    """How bad a finding is; the exit code is 1 from ``warning`` up."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    def __str__(self) -> str:
        return self.name.lower()


#: Every finding: its severity and the fix its message ends with.
CODES: dict[str, tuple[Severity, str]] = {
    "uid-root": (
        Severity.CRITICAL,
        "run it with -runas as an account of its own group (qemu-depriv does)",
    ),
    "caps": (Severity.CRITICAL, "drop its capabilities: run it as an unprivileged account"),
    "uid-human": (
        Severity.CRITICAL,
        "run it as a device-model account with a nologin shell (qemu-depriv provision range)",
    ),
    "lease-mismatch": (
        Severity.CRITICAL,
        "the state store and the process disagree: stop it, then run qemu-depriv list",
    ),
    "lookup-error": (
        Severity.WARNING,
        "its account could not be looked up, so whether it is a login account is unknown: "
        "check the passwd sources (qemu-depriv doctor), then audit again",
    ),
    "uid-shared": (
        Severity.WARNING,
        "give each device model its own uid (the range tier does so with one account)",
    ),
    "no-seccomp": (Severity.WARNING, "start it with -sandbox on"),
    "no-chroot": (Severity.WARNING, "start it with -chroot EMPTYDIR (or -run-with chroot=)"),
    "no-namespaces": (
        Severity.WARNING,
        "start it in its own mount, IPC and PID namespaces, and network namespace when it has "
        "no network",
    ),
    "no-limits": (
        Severity.WARNING,
        "limit its memory and tasks with a cgroup and set RLIMIT_CORE to 0",
    ),
    "not-ours": (Severity.INFO, "not started by qemu-depriv; launch it with qemu-depriv"),
}


@dataclass(frozen=True)
class Finding:
    """One problem of one process."""

    code: str
    message: str

    @property
    def severity(self) -> Severity:
        """The code's severity."""
        return CODES[self.code][0]

    def as_dict(self) -> dict[str, str]:
        """The JSON form."""
        return {"code": self.code, "severity": str(self.severity), "message": self.message}


@dataclass(frozen=True)
class Observed:
    """A QEMU process as the audit sees it: its snapshot and what surrounds it."""

    snap: Snapshot
    start: int
    cmdline: tuple[str, ...]
    user: str | None = None
    shell: str | None = None
    memory_limited: bool = False
    pids_limited: bool = False
    #: Why its uid's account lookup failed or hung (None: it answered, found or not).
    lookup_error: str | None = None


@dataclass(frozen=True)
class Audited:
    """One process with its match in the store and its findings."""

    observed: Observed
    vm: str | None
    ours: bool
    findings: tuple[Finding, ...] = field(default=())

    @property
    def worst(self) -> Severity:
        """The most severe finding (INFO when none)."""
        return max((f.severity for f in self.findings), default=Severity.INFO)

    def layers(self) -> dict[str, Any]:
        """The observed layers, for the JSON report."""
        snap = self.observed.snap
        status = snap.status
        return {
            "uids": list(status.uids),
            "gids": list(status.gids),
            "groups": list(status.groups),
            "cap_eff": f"{status.cap_eff:016x}",
            "no_new_privs": status.no_new_privs,
            "seccomp": status.seccomp,
            "root": snap.root,
            "namespaces": snap.namespaces,
            "rlimit_core": list(snap.limits.get("core", (None, None))),
            "cgroups": snap.cgroups,
            "memory_limited": self.observed.memory_limited,
            "pids_limited": self.observed.pids_limited,
        }

    def as_dict(self) -> dict[str, Any]:
        """The JSON form of one process."""
        status = self.observed.snap.status
        return {
            "pid": self.observed.snap.pid,
            "uid": status.uids[1],
            "gid": status.gids[1],
            "user": self.observed.user,
            "vm": self.vm,
            "ours": self.ours,
            "layers": self.layers(),
            # The interfaces of the tun descriptors it holds: its taps, as /proc shows them.
            "taps": sorted(name for name in self.observed.snap.taps.values() if name),
            "findings": [f.as_dict() for f in self.findings],
        }


def _finding(code: str, what: str) -> Finding:
    return Finding(code, f"{what}: {CODES[code][1]}")


@dataclass(frozen=True)
class _Context:
    """What a check may know besides the process itself."""

    by_uid: Counter[int]
    records: dict[str, Lease | VmRecord]
    state_dir: Path
    host_namespaces: dict[str, str]


def _uid_root(o: Observed, _c: _Context) -> Finding | None:
    """Uid 0, or gid 0: root's group reaches what the host leaves readable or writable to it."""
    uids, gids = o.snap.status.uids, o.snap.status.gids
    if 0 in uids:
        return _finding("uid-root", f"pid {o.snap.pid} runs with uid 0 (uids {list(uids)})")
    if 0 in gids:
        return _finding("uid-root", f"pid {o.snap.pid} runs with gid 0 (gids {list(gids)})")
    return None


def _caps(o: Observed, c: _Context) -> Finding | None:
    """Capabilities over the host.

    Those held in a user namespace of its own are over that namespace alone (an unprivileged
    uid mapped to root in it, as rootless containers run).
    """
    caps = o.snap.status.cap_eff
    if not caps or o.snap.namespaces.get("user") != c.host_namespaces.get("user"):
        return None
    return _finding("caps", f"pid {o.snap.pid} holds capabilities {caps:#x}")


def _uid_human(o: Observed, _c: _Context) -> Finding | None:
    uid = o.snap.status.uids[1]
    if o.shell is None or o.shell in NOLOGIN_SHELLS or uid == 0:
        return None
    return _finding("uid-human", f"uid {uid} ({o.user}) has the login shell {o.shell}")


def _lookup_error(o: Observed, _c: _Context) -> Finding | None:
    if o.lookup_error is None:
        return None
    uid = o.snap.status.uids[1]
    return _finding("lookup-error", f"uid {uid} of pid {o.snap.pid}: {o.lookup_error}")


def _uid_shared(o: Observed, c: _Context) -> Finding | None:
    uid = o.snap.status.uids[1]
    if uid == 0 or c.by_uid[uid] < 2:
        return None
    return _finding("uid-shared", f"{c.by_uid[uid]} device models run as uid {uid}")


def _no_seccomp(o: Observed, _c: _Context) -> Finding | None:
    if o.snap.status.seccomp == 2:
        return None
    return _finding("no-seccomp", f"pid {o.snap.pid} has no seccomp filter")


def _no_chroot(o: Observed, _c: _Context) -> Finding | None:
    if o.snap.root != "/":
        return None
    return _finding("no-chroot", f"pid {o.snap.pid} sees the host's whole filesystem")


def _no_namespaces(o: Observed, c: _Context) -> Finding | None:
    """Mount, IPC and PID namespaces; the network one too when QEMU has no network.

    The launcher plans a network namespace by the same rule.
    """
    wanted = ["mnt", "ipc", "pid"]
    if not network_facing(rough_options(o.cmdline)):
        wanted.append("net")
    own = o.snap.namespaces
    shared = [n for n in wanted if own.get(n) == c.host_namespaces.get(n)]
    if not shared:
        return None
    return _finding(
        "no-namespaces", f"pid {o.snap.pid} shares the host's {', '.join(shared)} namespaces"
    )


def _no_limits(o: Observed, _c: _Context) -> Finding | None:
    """Each missing limit by name, and only those."""
    missing = []
    if not o.memory_limited:
        missing.append("no cgroup memory limit")
    if not o.pids_limited:
        missing.append("no cgroup task limit")
    core = o.snap.limits.get("core", (0, 0))
    if core != (0, 0):
        soft, hard = ("unlimited" if n == UNLIMITED else f"{n} bytes" for n in core)
        missing.append(f"core dumps allowed (RLIMIT_CORE soft {soft}, hard {hard})")
    if not missing:
        return None
    return _finding("no-limits", f"pid {o.snap.pid} has {', '.join(missing)}")


def _lease(o: Observed, c: _Context) -> Finding | None:
    """``not-ours`` for a QEMU of no lease; ``lease-mismatch`` for one with a false claim.

    A false claim names a run directory whose lease holds another pid, start time or uid.
    """
    domid = claimed_domid(c.state_dir, o.cmdline)
    if domid is None:
        return _finding("not-ours", f"pid {o.snap.pid}")
    record = _record(c, domid)
    uid = o.snap.status.uids[1]
    if record is not None and (record.pid, record.start_time, record.uid) == (
        o.snap.pid, o.start, uid,
    ):  # fmt: skip
        return None
    held = "no lease" if record is None else f"the lease says pid {record.pid} uid {record.uid}"
    return _finding("lease-mismatch", f"pid {o.snap.pid} (uid {uid}) claims domid {domid}, {held}")


def _record(c: _Context, domid: str | None) -> Lease | VmRecord | None:
    return c.records.get(domid) if domid is not None else None


#: One small check per finding code (``not-ours`` and ``lease-mismatch`` share the lease's).
CHECKS: tuple[Callable[[Observed, _Context], Finding | None], ...] = (
    _uid_root, _caps, _uid_human, _lookup_error, _uid_shared, _no_seccomp, _no_chroot,
    _no_namespaces, _no_limits, _lease,
)  # fmt: skip


def findings_for(
    processes: list[Observed],
    records: Sequence[Lease | VmRecord],
    *,
    state_dir: Path,
    host_namespaces: dict[str, str],
) -> list[Audited]:
    """Judge every process (pure): the findings, worst processes first."""
    context = _Context(
        Counter(p.snap.status.uids[1] for p in processes), {str(r.domid): r for r in records},
        state_dir,
        host_namespaces,
    )  # fmt: skip
    audited = []
    for observed in processes:
        found = tuple(f for check in CHECKS if (f := check(observed, context)) is not None)
        domid = claimed_domid(state_dir, observed.cmdline)
        record = _record(context, domid)
        audited.append(Audited(observed, record.name if record else None, domid is not None, found))
    return sorted(audited, key=lambda a: (-a.worst, a.observed.snap.pid))


def summary(audited: list[Audited]) -> dict[str, Any]:
    """Counts for the report and the exit code."""
    findings = Counter((f.code, str(f.severity)) for a in audited for f in a.findings)
    worst = max((a.worst for a in audited), default=Severity.INFO)
    return {
        "device_models": len(audited),
        "ours": sum(a.ours for a in audited),
        "findings": [
            {"code": c, "severity": s, "count": n} for (c, s), n in sorted(findings.items())
        ],
        "worst": str(worst),
        "ok": worst < Severity.WARNING,
    }


# -- reading the host -------------------------------------------------------------------------


class _Limits:
    """Whether each cgroup limits memory and tasks, each file read once per audit."""

    def __init__(self, cgroup_root: Callable[[str], Path | None]) -> None:
        self._cgroup_root = cgroup_root
        self._known: dict[tuple[str, str], bool] = {}

    def limited(self, snap: Snapshot, controller: str) -> bool:
        """Whether ``snap``'s group of ``controller``, or a group above it, sets a limit.

        The kernel holds a group to its parents' limits too: libvirt puts QEMU in an
        ``emulator`` group below the one it limits, systemd a service's processes below its
        unit's.
        """
        path, root = controller_path(snap.cgroups, controller), self._cgroup_root(controller)
        if path is None or root is None:
            return False
        return self._group_limited(root, path.rstrip("/") or "/", controller)

    def _group_limited(self, root: Path, path: str, controller: str) -> bool:
        if (controller, path) not in self._known:
            limited = _limit_set(f"{root}/{path.lstrip('/')}", controller)
            if not limited and path != "/":
                limited = self._group_limited(root, path.rsplit("/", 1)[0] or "/", controller)
            self._known[controller, path] = limited
        return self._known[controller, path]


def _limit_set(group: str, controller: str) -> bool:
    files = {"memory": ("memory.max", "memory.limit_in_bytes"), "pids": ("pids.max", "pids.max")}
    for name in files[controller]:
        try:
            descriptor = os.open(f"{group}/{name}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            text = os.read(descriptor, 64).decode("ascii", "replace").strip()
        finally:
            os.close(descriptor)
        return text != "max" and int(text) < (1 << 62)
    return False


def observe(
    pids: list[int], lookup: AccountLookup, cgroup_root: Callable[[str], Path | None]
) -> list[Observed]:
    """Read each QEMU process, those that exited meanwhile left out, and what surrounds it.

    Each uid's account is looked up once and each cgroup's limits read once.  A uid whose
    lookup fails has no user or shell, and the failure, never read as "no such account".
    """
    read = [found for pid in pids if (found := read_process(pid)) is not None]
    accounts = users_by_uid(lookup, (snap.status.uids[1] for snap, _, _ in read))
    limits = _Limits(cgroup_root)
    observed = []
    for snap, started, words in read:
        account = accounts[snap.status.uids[1]]
        user = shell = failed = None
        if isinstance(account, Account):
            user, shell = account.name, account.shell
        elif account is not None:  # the lookup failed or hung: not "no such account"
            failed = str(account)
        memory, tasks = limits.limited(snap, "memory"), limits.limited(snap, "pids")
        observed.append(Observed(snap, started, words, user, shell, memory, tasks, failed))
    return observed


def host_namespaces() -> dict[str, str]:
    """The host's namespaces: PID 1's where readable, else the auditor's own.

    Containers often hide PID 1's; the auditor's own IPC and PID namespaces are the host's
    there too (only its mount namespace may be private).
    """
    try:
        return {n: os.readlink(f"/proc/1/ns/{n}") for n in NAMESPACES}  # noqa: PTH115
    except OSError:
        return own_namespaces()


def audit_host(state_dir: Path, lookup: AccountLookup) -> list[Audited]:
    """Find, read and judge every QEMU process on this host, against ``state_dir``'s leases."""
    store = StateStore(state_dir)
    records = store.leases() if store.exists() else []
    placement = CgroupHost.detect().placement()

    def cgroup_root(controller: str) -> Path | None:
        return placement[controller][1] if controller in placement else None

    observed = observe(qemu_pids(), lookup, cgroup_root)
    return findings_for(observed, records, state_dir=state_dir, host_namespaces=host_namespaces())
