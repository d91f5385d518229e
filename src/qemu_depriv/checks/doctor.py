"""Host checks: is this machine ready to run deprivileged device models, and if not, what to fix.

Each check gives :class:`Finding` values; ``ok`` findings are reported too, so that the output
shows what was checked.  Account safety reuses the provisioning plans' rules, so ``doctor`` and
``provision`` never disagree about what an unsafe account is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.accounts.nss import AccountLookup
from qemu_depriv.accounts.nsswitch import NsSwitch, SourceKind, source_kind
from qemu_depriv.accounts.provision import (
    AccountFiles,
    plan_range,
    read_account_files,
    unsafe_account,
)
from qemu_depriv.accounts.sssd import FIX, domain_statuses
from qemu_depriv.errors import AccountLookupError, EnvironmentFailure, QemuDeprivError
from qemu_depriv.host import syscalls
from qemu_depriv.host.procfs import live_pids_of_uid
from qemu_depriv.isolation.cgroups import CgroupHost
from qemu_depriv.isolation.scopes import SLICE, manager_version, slice_path
from qemu_depriv.qemu.caps import CapsProbe


@dataclass(frozen=True)
class Finding:
    """One check's result: ``ok``, or a problem and the command or step that fixes it."""

    area: str
    ok: bool
    message: str
    fix: str = ""


def check_qemu(probe: CapsProbe, binary: str) -> Iterator[Finding]:
    """The QEMU binary and the deprivileging options it offers."""
    try:
        caps = probe.probe(binary)
    except QemuDeprivError as exc:
        yield Finding("qemu", False, exc.message, "apt-get install qemu-system-x86")
        return
    yield Finding("qemu", True, f"{binary}: {caps.version}")
    if caps.runas_method is None:
        yield Finding(
            "qemu", False, "no -runas and no -run-with user=", "install QEMU 2.11 or later"
        )
    elif not (caps.runas_numeric or caps.run_with_user):
        yield Finding(
            "qemu",
            False,
            "-runas takes no uid:gid (range tier unusable)",
            "install QEMU 2.11 or later",
        )
    if not (caps.chroot or caps.run_with_chroot):
        yield Finding(
            "qemu", False, "no -chroot and no -run-with chroot=", "install a QEMU that can chroot"
        )
    if not caps.sandbox:
        yield Finding(
            "qemu", False, "no -sandbox (seccomp)", "install a QEMU built with libseccomp"
        )


def check_accounts(lookup: AccountLookup, prefix: str, root: Path) -> Iterator[Finding]:
    """The device-model accounts: present, safe, and the reaper idle."""
    files = read_account_files(root)
    range_base = files.user(f"{prefix}-range-base") or files.user(f"{prefix}-base")
    if range_base is None and files.user(f"{prefix}-shared") is None:
        yield Finding(
            "accounts",
            False,
            f"no {prefix}-range-base: domains without their own account are refused",
            "qemu-depriv provision range",
        )
    findings = list(
        plan_range(files, prefix, root, name=range_base.name).findings if range_base else ()
    )
    # Every other device-model account once, linearly: a host with the seed's layout has
    # 65,536 of them.
    for user in files.users:
        if user.name.startswith(f"{prefix}-") and (range_base is None or user != range_base):
            findings += unsafe_account(user)
    for problem in findings:
        message, _, fix = problem.partition(": ")
        yield Finding("accounts", False, message, fix)
    try:
        reaper = _reaper_uid(lookup, files, f"{prefix}-reaper", root)
    except AccountLookupError as exc:
        yield Finding("accounts", False, exc.message, "fix the NSS source it names")
        return
    if reaper is None:
        yield Finding(
            "accounts",
            False,
            f"no {prefix}-reaper: kill-by-uid falls back to the range base uid",
            "qemu-depriv provision reaper",
        )
    elif pids := live_pids_of_uid(reaper):
        yield Finding(
            "accounts",
            False,
            f"{prefix}-reaper (uid {reaper}) owns processes {pids[:5]}",
            "the reaper must own none: end them, and use the account for nothing else",
        )
    if not findings and range_base is not None:
        yield Finding("accounts", True, f"{range_base.name} at uid {range_base.id}")


def _reaper_uid(lookup: AccountLookup, files: AccountFiles, name: str, root: Path) -> int | None:
    """The reaper's uid, or None when there is no reaper.

    Through NSS for this host (it may live in a directory), else in the alternate root's files.
    """
    if root != Path("/"):
        entry = files.user(name)
        return entry.id if entry is not None else None
    account = lookup.user_by_name(name)
    return account.uid if account is not None else None


def check_sources(nsswitch: NsSwitch, exempt: frozenset[str], timeout: float) -> Iterator[Finding]:
    """Each network source of accounts, and whether its "not found" can be believed."""
    line = nsswitch.line("passwd")
    remote = nsswitch.network_sources("passwd")
    if not remote:
        yield Finding("accounts", True, f"'{line}': local sources only")
    for source in remote:
        kind = source_kind(source)
        if source in exempt:
            yield Finding(
                "accounts", True, f"{source}: listed in sources_without_accounts, not asked"
            )
        elif kind == SourceKind.REPORTS_ERRORS:
            yield Finding("accounts", True, f"{source}: reports its outages as lookup errors")
        elif kind == SourceKind.ONLINE_CHECK:
            yield from _check_sssd(timeout)
        else:
            yield Finding(
                "accounts",
                False,
                f"{source} (on '{line}'): cannot say whether it is online, so every 'not "
                "found' from it is refused",
                f"if {source} holds no device-model accounts, list it in "
                "sources_without_accounts; otherwise use sss or ldap (nslcd)",
            )


def _check_sssd(timeout: float) -> Iterator[Finding]:
    try:
        statuses = domain_statuses(timeout)
    except QemuDeprivError as exc:
        yield Finding("accounts", False, f"sss: status unreadable: {exc.message}", FIX)
        return
    offline = [s.name for s in statuses if not s.online]
    names = ", ".join(f"{s.name} {'online' if s.online else 'OFFLINE'}" for s in statuses)
    if offline or not statuses:
        yield Finding(
            "accounts",
            False,
            f"sss: status readable over InfoPipe, but {names or 'no domain'}: launches are "
            "refused (exit 4) until it is online",
            "bring the directory back; 'sssctl domain-status DOMAIN' shows why",
        )
    else:
        yield Finding("accounts", True, f"sss: status readable over InfoPipe ({names})")


def _unshare_works() -> bool:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS | syscalls.CLONE_NEWIPC)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


def check_cgroups(cgroups: CgroupHost, manager: str = "auto") -> Iterator[Finding]:
    """The cgroup controllers, and who makes the VMs' groups: systemd, or cgroupfs.

    ``manager`` is ``[layers] cgroup_manager``.
    """
    placement = cgroups.placement()
    where = ", ".join(f"{c} on {v} ({root})" for c, (v, root) in sorted(placement.items()))
    if missing := cgroups.missing():
        yield Finding(
            "cgroups",
            False,
            f"cgroup controllers missing: {', '.join(missing)} (found: {where or 'none'}); "
            "every launch with the cgroup layer on would fail",
            "enable them (systemd.unified_cgroup_hierarchy, or mount cgroup v1), or turn the "
            "cgroup layer off ([layers] cgroup = false)",
        )
    else:
        yield Finding("cgroups", True, f"controllers: {where}")
    try:
        chosen = cgroups.manager(manager)
        if chosen == "systemd":
            version = manager_version()
    except EnvironmentFailure as exc:
        yield Finding("cgroups", False, exc.message, "see the message")
        return
    if chosen == "systemd":
        yield Finding(
            "cgroups",
            True,
            f"systemd {version} places each VM in a scope, qemu-depriv-DOMID-NAME.scope in "
            f"{SLICE} (cgroup {slice_path(SLICE)}); 'systemctl status {SLICE}' lists them",
        )
    elif cgroups.systemd and manager == "auto":
        yield Finding(
            "cgroups",
            False,
            "systemd runs this host on a legacy or hybrid cgroup hierarchy: the VMs' groups "
            "are made in cgroupfs, outside systemd's delegation, and no unit shows them",
            "boot with systemd.unified_cgroup_hierarchy=1 (cgroup v2 only), so that each VM "
            "runs as a systemd scope",
        )
    else:
        why = "set by [layers] cgroup_manager" if cgroups.systemd else "systemd is not PID 1"
        yield Finding("cgroups", True, f"qemu-depriv makes the VMs' groups in cgroupfs ({why})")


def check_kernel(proc: Path = Path("/proc")) -> Iterator[Finding]:
    """The kernel features the launcher uses, found as the launcher finds them."""
    if _unshare_works():
        yield Finding("kernel", True, "mount and IPC namespaces")
    else:
        yield Finding(
            "kernel",
            False,
            "unshare(CLONE_NEWNS|CLONE_NEWIPC) refused",
            "run as root, outside a restricted container",
        )
    if (proc / "sys/kernel/seccomp/actions_avail").exists():
        yield Finding("kernel", True, "seccomp filters")
    else:
        yield Finding(
            "kernel",
            False,
            "seccomp filters unavailable",
            "use a kernel built with CONFIG_SECCOMP_FILTER",
        )


def check_state_dir(state_dir: Path) -> Iterator[Finding]:
    """The state directory: root's alone, or not yet created."""
    try:
        info = state_dir.stat()
    except FileNotFoundError:
        yield Finding("state", True, f"{state_dir} will be created (0700) on the first launch")
        return
    if info.st_uid != 0 or info.st_mode & 0o077:
        yield Finding(
            "state",
            False,
            f"{state_dir} is owned by uid {info.st_uid} with mode {info.st_mode & 0o777:o}",
            f"chown root:root {state_dir} && chmod 0700 {state_dir}",
        )
    else:
        yield Finding("state", True, f"{state_dir} is root's alone")
