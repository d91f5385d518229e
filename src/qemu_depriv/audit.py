"""Host-wide audit: every QEMU process, ours or not, and what isolation each lacks.

Processes are found by their executable (``/proc/PID/exe`` named ``qemu-system-*``,
``qemu-kvm`` or ``qemu-dm``), not by a name a process can choose.  Each is read with the
launcher's own snapshot (:func:`qemu_depriv.inspect.snapshot`), matched to the state store,
and given findings, each with a stable code, a severity and a fix.  The findings are a pure
function of the snapshots, the accounts and the records (:func:`findings_for`).

A process is *ours* when its command line names a run directory of the state directory; it
must then match its record (pid, start time, uid), or the finding is ``lease-mismatch``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.errors import AccountLookupError
from qemu_depriv.inspect import NAMESPACES, Snapshot, own_namespaces, snapshot, start_time
from qemu_depriv.layers import controller_path
from qemu_depriv.nss import AccountLookup
from qemu_depriv.provision import NOLOGIN_SHELLS

if TYPE_CHECKING:
    from qemu_depriv.state import VmRecord

_QEMU_EXE = re.compile(r"qemu-system-[\w.-]+|qemu-kvm|qemu-dm")


class Severity(IntEnum):
    """How bad a finding is; the exit code is 1 from ``warning`` up."""

    INFO = 0
    WARNING = 1
    CRITICAL = 2

    def __str__(self) -> str:
        return self.name.lower()


#: Every finding: its severity and the fix its message ends with.
CODES: dict[str, tuple[Severity, str]] = {
    "uid-root": (Severity.CRITICAL, "run it with -runas (qemu-depriv launch does)"),
    "caps": (Severity.CRITICAL, "drop its capabilities: run it as an unprivileged account"),
    "uid-human": (
        Severity.CRITICAL,
        "run it as a device-model account with a nologin shell (qemu-depriv provision range)",
    ),
    "lease-mismatch": (
        Severity.CRITICAL,
        "the state store and the process disagree: stop it, then run qemu-depriv list",
    ),
    "uid-shared": (
        Severity.WARNING,
        "give each device model its own uid (the range tier does so with one account)",
    ),
    "no-seccomp": (Severity.WARNING, "start it with -sandbox on"),
    "no-chroot": (Severity.WARNING, "start it with -chroot EMPTYDIR (or -run-with chroot=)"),
    "no-namespaces": (Severity.WARNING, "start it in its own mount, IPC and PID namespaces"),
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
            "findings": [f.as_dict() for f in self.findings],
        }


def _finding(code: str, what: str) -> Finding:
    return Finding(code, f"{what}: {CODES[code][1]}")


def _own_record(
    observed: Observed, records: Iterable[VmRecord], state_dir: Path
) -> tuple[VmRecord | None, str | None]:
    """The record whose run directory the command line names, and that domid (or None)."""
    marker = f"{state_dir}/vms/"
    for arg in observed.cmdline:
        if marker in arg:
            domid = arg.split(marker, 1)[1].split("/", 1)[0]
            record = next((r for r in records if str(r.domid) == domid), None)
            return record, domid
    return None, None


def findings_for(
    processes: list[Observed],
    records: list[VmRecord],
    *,
    state_dir: Path,
    host_namespaces: dict[str, str],
) -> list[Audited]:
    """Judge every process (pure): the findings, worst processes first."""
    by_uid = Counter(p.snap.status.uids[1] for p in processes)
    audited = []
    for observed in processes:
        status, snap = observed.snap.status, observed.snap
        found: list[Finding] = []
        uid = status.uids[1]
        if 0 in status.uids:
            found.append(
                _finding("uid-root", f"pid {snap.pid} runs as root (uids {list(status.uids)})")
            )
        if status.cap_eff:
            found.append(_finding("caps", f"pid {snap.pid} holds capabilities {status.cap_eff:#x}"))
        if observed.shell is not None and observed.shell not in NOLOGIN_SHELLS and uid != 0:
            found.append(
                _finding(
                    "uid-human", f"uid {uid} ({observed.user}) has the login shell {observed.shell}"
                )
            )
        if by_uid[uid] > 1 and uid != 0:
            found.append(_finding("uid-shared", f"{by_uid[uid]} device models run as uid {uid}"))
        if status.seccomp != 2:
            found.append(_finding("no-seccomp", f"pid {snap.pid} has no seccomp filter"))
        if snap.root == "/":
            found.append(_finding("no-chroot", f"pid {snap.pid} sees the host's whole filesystem"))
        shared = [
            n for n in ("mnt", "ipc", "pid") if snap.namespaces.get(n) == host_namespaces.get(n)
        ]
        if shared:
            found.append(
                _finding(
                    "no-namespaces",
                    f"pid {snap.pid} shares the host's {', '.join(shared)} namespaces",
                )
            )
        core = snap.limits.get("core", (0, 0))
        if not (observed.memory_limited and observed.pids_limited) or core != (0, 0):
            found.append(
                _finding("no-limits", f"pid {snap.pid} has no memory, task or core-dump limit")
            )
        record, domid = _own_record(observed, records, state_dir)
        if domid is None:
            found.append(_finding("not-ours", f"pid {snap.pid}"))
        elif record is None or (record.pid, record.start_time, record.uid) != (
            snap.pid, observed.start, uid,
        ):  # fmt: skip
            held = (
                "no lease"
                if record is None
                else f"the lease says pid {record.pid} uid {record.uid}"
            )
            found.append(
                _finding(
                    "lease-mismatch", f"pid {snap.pid} (uid {uid}) claims domid {domid}, {held}"
                )
            )
        audited.append(
            Audited(observed, record.name if record else None, domid is not None, tuple(found))
        )
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


def qemu_pids(proc: Path = Path("/proc")) -> list[int]:
    """Every live process whose executable is a QEMU binary (zombies have none)."""
    pids = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            exe = (entry / "exe").readlink().name
        except OSError:
            continue
        if _QEMU_EXE.fullmatch(exe.removesuffix(" (deleted)")):
            pids.append(int(entry.name))
    return sorted(pids)


def _limited(snap: Snapshot, controller: str, cgroup_root: Callable[[str], Path | None]) -> bool:
    path, root = controller_path(snap.cgroups, controller), cgroup_root(controller)
    if path is None or root is None:
        return False
    files = {"memory": ("memory.max", "memory.limit_in_bytes"), "pids": ("pids.max", "pids.max")}
    for name in files[controller]:
        limit = root / path.lstrip("/") / name
        try:
            text = limit.read_text().strip()
        except OSError:
            continue
        return text != "max" and int(text) < (1 << 62)
    return False


def observe(
    pid: int, lookup: AccountLookup, cgroup_root: Callable[[str], Path | None]
) -> Observed | None:
    """Read one QEMU process; None when it exited meanwhile."""
    snap = snapshot(pid)
    started = start_time(pid)
    if snap is None or started is None:
        return None
    try:
        cmdline = tuple(
            Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        )
    except OSError:
        return None
    user = shell = None
    try:
        account = lookup.user_by_uid(snap.status.uids[1])
    except AccountLookupError:
        account = None
    if account is not None:
        user, shell = account.name, account.shell
    return Observed(
        snap, started, cmdline, user, shell,
        memory_limited=_limited(snap, "memory", cgroup_root),
        pids_limited=_limited(snap, "pids", cgroup_root),
    )  # fmt: skip


def host_namespaces() -> dict[str, str]:
    """The host's namespaces: PID 1's where readable, else the auditor's own.

    Containers often hide PID 1's; the auditor's own IPC and PID namespaces are the host's
    there too (only its mount namespace may be private).
    """
    try:
        return {n: str(Path(f"/proc/1/ns/{n}").readlink()) for n in NAMESPACES}
    except OSError:
        return own_namespaces()


def audit_host(state_dir: Path, lookup: AccountLookup) -> list[Audited]:
    """Find, read and judge every QEMU process on this host, against ``state_dir``'s leases."""
    from qemu_depriv.cgroups import CgroupHost  # noqa: PLC0415 - keeps this module's import light
    from qemu_depriv.state import StateStore  # noqa: PLC0415

    store = StateStore(state_dir)
    records = store.all() if store.exists() else []
    placement = CgroupHost.detect().placement()

    def cgroup_root(controller: str) -> Path | None:
        return placement[controller][1] if controller in placement else None

    observed = [o for pid in qemu_pids() if (o := observe(pid, lookup, cgroup_root)) is not None]
    return findings_for(observed, records, state_dir=state_dir, host_namespaces=host_namespaces())
