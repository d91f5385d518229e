"""The isolation layers of a device model: the plan (pure) and its verification (pure).

Each layer has a planned value, worked out from the policy, the settings and the domain, and
an observed value read from /proc (:mod:`qemu_depriv.host.procfs`).  The launcher resumes a VM only
when every planned layer is observed; a layer switched off in the settings is not planned and
not checked.  The layers:

=============== ====================================================== ==========================
layer           planned                                                observed in
=============== ====================================================== ==========================
uid, gid        the decision's, in all four fields                     status Uid, Gid
groups          the decision's groups                                  status Groups
caps            none (but for the root tier)                           status CapEff, CapPrm
no_new_privs    set                                                    status NoNewPrivs
seccomp         filter mode (QEMU's -sandbox)                          status Seccomp
chroot          the VM's empty directory                               root
namespaces      mount, ipc, pid; net when the VM has no network        ns/*
rlimits         core, msgqueue, locks, memlock 0; nofile; fsize 256    limits
                KiB for a Xen device model, unlimited standalone
cgroup          the VM's group in every hierarchy used (a systemd      cgroup (and the group files)
                scope where systemd runs the host), and its limits
fds             only descriptors on the allowlist; where the launcher  fd/*, and fdinfo/* of
                hands QEMU its taps, /dev/net/tun only as those taps   /dev/net/tun
=============== ====================================================== ==========================
"""

from __future__ import annotations

import fnmatch
import resource
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qemu_depriv.errors import LayerVerificationFailed
from qemu_depriv.host.procfs import UNLIMITED, Snapshot
from qemu_depriv.isolation.cgroups import CgroupPlan, controller_path, group_name, unit_name

if TYPE_CHECKING:  # the store reads plans back: it need not import resolution and configs
    from qemu_depriv.accounts.chain import Decision
    from qemu_depriv.settings import LayerSettings
    from qemu_depriv.xl.domain import DomainConfig

MIB = 1 << 20
#: libxl's RLIMIT_FSIZE for a device model: Xen device models write no files.
XEN_FSIZE = 256 * 1024
#: resource's constants by the names the plan uses (RLIMIT_LOCKS is 10 on Linux; resource
#: does not export it).
RLIMITS = {
    "core": resource.RLIMIT_CORE,
    "msgqueue": resource.RLIMIT_MSGQUEUE,
    "locks": 10,
    "memlock": resource.RLIMIT_MEMLOCK,
    "nofile": resource.RLIMIT_NOFILE,
    "fsize": resource.RLIMIT_FSIZE,
}
#: Descriptors a device model may hold, besides its disk images and its log.  QEMU looks its
#: account up itself for -runas NAME; through SSSD, libnss_sss then keeps SSSD's memory cache
#: open (/var/lib/sss/mc/*: read-only, and readable by every user anyway).
FD_ALLOWLIST = (
    "/dev/null", "socket:[*", "pipe:[*", "anon_inode:*", "/dev/kvm", "/dev/ptmx", "/dev/pts/*",
    "/dev/urandom", "/dev/random", "/dev/xen/*", "/proc/xen/*", "/dev/dri/*",
    "/var/lib/sss/mc/*",
)  # fmt: skip
#: A tun descriptor: QEMU's own (a Xen device model opens its taps itself), or one handed over.
TUN_PATTERN = "/dev/net/tun"


@dataclass(frozen=True)
class LayerPlan:
    """The planned value of every layer; None (or empty) for a layer that is off."""

    uid: int
    gid: int
    groups: tuple[int, ...]
    no_caps: bool
    no_new_privs: bool
    seccomp: bool
    chroot: str | None
    namespaces: tuple[str, ...]
    rlimits: dict[str, tuple[int, int]] = field(default_factory=dict)
    cgroup: CgroupPlan | None = None
    fds: tuple[str, ...] | None = None
    #: The taps the launcher hands QEMU; None where QEMU may open /dev/net/tun itself.
    taps: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form that ``launch --json`` prints as ``layers``."""
        return {
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "caps": "none" if self.no_caps else "any",
            "no_new_privs": self.no_new_privs,
            "seccomp": self.seccomp,
            "chroot": self.chroot,
            "namespaces": list(self.namespaces),
            "rlimits": {name: list(pair) for name, pair in self.rlimits.items()},
            "cgroup": self.cgroup.as_dict() if self.cgroup else None,
            "fds": list(self.fds) if self.fds is not None else None,
            "taps": list(self.taps) if self.taps is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerPlan:
        """Read :meth:`as_dict`'s form back (from the state store)."""
        return cls(
            uid=int(data["uid"]),
            gid=int(data["gid"]),
            groups=tuple(int(g) for g in data["groups"]),
            no_caps=data["caps"] == "none",
            no_new_privs=bool(data["no_new_privs"]),
            seccomp=bool(data["seccomp"]),
            chroot=data["chroot"],
            namespaces=tuple(data["namespaces"]),
            rlimits={name: (int(lo), int(hi)) for name, (lo, hi) in data["rlimits"].items()},
            cgroup=CgroupPlan.from_dict(data["cgroup"]) if data["cgroup"] else None,
            fds=tuple(data["fds"]) if data["fds"] is not None else None,
            taps=tuple(data["taps"]) if data.get("taps") is not None else None,
        )


@dataclass(frozen=True)
class VmShape:
    """What the layers depend on, from a config file or a command line alike.

    Its name, its RAM, whether QEMU talks to the network, the host files it holds open, and
    the taps the launcher hands it (None: QEMU may open its own, as a Xen device model does).
    """

    name: str
    memory_mib: int
    network: bool
    files: tuple[str, ...] = ()
    taps: tuple[str, ...] | None = None

    @classmethod
    def of(cls, config: DomainConfig, mode: str, taps: tuple[str, ...] | None = None) -> VmShape:
        """The shape of a domain's device model in ``mode``, handed ``taps``."""
        return cls(
            config.name,
            config.memory,
            needs_network(config, mode) or bool(taps),
            tuple(d.target for d in config.disks if d.target),
            taps,
        )


def needs_network(config: DomainConfig, mode: str) -> bool:
    """Whether the device model talks to the network: a NIC, VNC, or a network serial port."""
    if any(c.startswith(("tcp:", "udp:", "telnet:", "websocket:")) for c in config.serial):
        return True
    if mode == "xen":
        vnc_on = config.vnc if config.vnc is not None else config.type == "hvm"
        return vnc_on or bool(config.vfbs) or any(v.type == "ioemu" for v in config.vifs)
    return bool(config.vnc)


def plan_layers(
    settings: LayerSettings,
    shape: VmShape,
    decision: Decision,
    *,
    mode: str,
    domid: int,
    log: Path,
    chroot: Path,
    scope: bool = False,
) -> LayerPlan:
    """Work out every layer for one device model (pure).

    ``log`` is QEMU's log (a descriptor it holds); ``chroot`` its empty root, when that layer
    is on; ``scope`` whether systemd places the VM's group (a scope unit) rather than cgroupfs.
    """
    from qemu_depriv.accounts.chain import Tier  # noqa: PLC0415 - see the imports

    namespaces: tuple[str, ...] = ()
    if settings.namespaces:
        namespaces = ("mnt", "ipc", "pid")
        if not shape.network:
            namespaces += ("net",)
    rlimits: dict[str, tuple[int, int]] = {}
    if settings.rlimits:
        rlimits = dict.fromkeys(("core", "msgqueue", "locks", "memlock"), (0, 0))
        rlimits["nofile"] = (settings.nofile, settings.nofile)
        fsize = XEN_FSIZE if mode == "xen" else UNLIMITED
        rlimits["fsize"] = (fsize, fsize)
    cgroup = None
    if settings.cgroup:
        name = group_name(domid, shape.name)
        cgroup = CgroupPlan(
            name=name,
            memory_bytes=(shape.memory_mib + settings.memory_overhead_mib) * MIB,
            pids_max=settings.pids_max,
            cpu_weight=settings.cpu_weight,
            unit=unit_name(name) if scope else None,
        )
    fds = None
    if settings.fds:
        tun = (TUN_PATTERN,) if shape.taps is None else ()
        fds = (*FD_ALLOWLIST, *tun, *(_literal(f) for f in (str(log), *shape.files)))
    return LayerPlan(
        uid=decision.uid,
        gid=decision.gid,
        groups=tuple(sorted(set(decision.groups))),
        no_caps=decision.tier != Tier.ROOT,
        no_new_privs=settings.no_new_privs,
        seccomp=settings.seccomp,
        chroot=str(chroot) if settings.chroot else None,
        namespaces=namespaces,
        rlimits=rlimits,
        cgroup=cgroup,
        fds=fds,
        taps=shape.taps if settings.fds else None,
    )


@dataclass(frozen=True)
class LayerCheck:
    """One layer: what was planned, what /proc showed, and whether they agree."""

    layer: str
    planned: Any
    observed: Any
    ok: bool


def check_layers(
    plan: LayerPlan,
    snap: Snapshot,
    *,
    host_namespaces: dict[str, str],
    cgroup_paths: dict[str, str] | None = None,
    cgroup_limits: dict[str, int] | None = None,
) -> list[LayerCheck]:
    """Compare every planned layer with the snapshot (pure).

    ``host_namespaces`` are the launcher's own; ``cgroup_paths`` the path each controller
    should show; ``cgroup_limits`` the limits read back from the group's files.
    """
    status = snap.status
    checks = [
        LayerCheck("uid", [plan.uid] * 4, list(status.uids), list(status.uids) == [plan.uid] * 4),
        LayerCheck("gid", [plan.gid] * 4, list(status.gids), list(status.gids) == [plan.gid] * 4),
        LayerCheck(
            "groups", list(plan.groups), sorted(set(status.groups)),
            sorted(set(status.groups)) == list(plan.groups),
        ),
    ]  # fmt: skip
    if plan.no_caps:
        caps = {"effective": f"{status.cap_eff:016x}", "permitted": f"{status.cap_prm:016x}"}
        checks.append(LayerCheck("caps", "none", caps, status.cap_eff == status.cap_prm == 0))
    if plan.no_new_privs:
        checks.append(LayerCheck("no_new_privs", True, status.no_new_privs, status.no_new_privs))
    if plan.seccomp:
        checks.append(LayerCheck("seccomp", "filter", status.seccomp, status.seccomp == 2))
    if plan.chroot is not None:
        checks.append(LayerCheck("chroot", plan.chroot, snap.root, snap.root == plan.chroot))
    for name in plan.namespaces:
        own, host = snap.namespaces.get(name), host_namespaces.get(name)
        checks.append(
            LayerCheck(f"{name}_namespace", f"not {host}", own, own is not None and own != host)
        )
    if plan.rlimits:
        observed = {n: list(snap.limits.get(n, (None, None))) for n in plan.rlimits}
        planned = {n: list(pair) for n, pair in plan.rlimits.items()}
        checks.append(LayerCheck("rlimits", planned, observed, observed == planned))
    if plan.cgroup is not None:
        checks.append(_cgroup_check(plan.cgroup, snap, cgroup_paths or {}, cgroup_limits or {}))
    if plan.fds is not None:
        patterns = plan.fds
        handed = plan.taps is not None  # its tun descriptors are checked as taps below
        stray = [
            fd
            for fd in snap.fds
            if not (handed and fd == TUN_PATTERN)
            and not any(fnmatch.fnmatchcase(fd, p) for p in patterns)
        ]
        checks.append(
            LayerCheck("fds", "allowlist", {"stray": stray, "count": len(snap.fds)}, not stray)
        )
    if plan.taps is not None:
        held = sorted(snap.taps.values())
        checks.append(LayerCheck("taps", sorted(plan.taps), held, held == sorted(plan.taps)))
    return checks


def _cgroup_check(
    plan: CgroupPlan, snap: Snapshot, paths: dict[str, str], limits: dict[str, int]
) -> LayerCheck:
    member = {controller: controller_path(snap.cgroups, controller) for controller in paths}
    page = resource.getpagesize()
    wanted = {
        "memory": plan.memory_bytes // page * page,
        "pids": plan.pids_max,
        "cpu": plan.cpu_weight,
    }
    return LayerCheck(
        "cgroup",
        {"paths": paths, "limits": wanted},
        {"paths": member, "limits": limits},
        member == paths and limits == wanted,
    )


def verification(checks: list[LayerCheck], pid: int) -> dict[str, Any]:
    """The record kept for ``list --json``; raises when any layer is missing.

    Raises:
        LayerVerificationFailed: a planned layer was not observed; it names each one.
    """
    failed = [c for c in checks if not c.ok]
    if failed:
        raise LayerVerificationFailed(
            pid, [{"layer": c.layer, "planned": c.planned, "observed": c.observed} for c in failed]
        )
    return {
        "pid": pid,
        "ok": True,
        "layers": {c.layer: {"planned": c.planned, "observed": c.observed} for c in checks},
    }


def _literal(path: str) -> str:
    """A path as an fnmatch pattern that matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in path)
