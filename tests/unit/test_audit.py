"""Audit findings, a pure function of snapshots, accounts and records."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.checks.audit import CODES, Observed, Severity, findings_for, summary
from qemu_depriv.host.procfs import Snapshot, parse_cgroup, parse_limits, parse_status
from qemu_depriv.vms.paths import claimed_domid
from qemu_depriv.vms.store import LeaseState, Mode, VmRecord

SAMPLES = Path(__file__).parent / "samples"
STATE = Path("/run/qemu-depriv")
HOST_NS = {"mnt": "mnt:[1]", "ipc": "ipc:[2]", "pid": "pid:[3]", "net": "net:[4]"}
JAILED = parse_status((SAMPLES / "qemu-jailed-status.txt").read_bytes())
UID = JAILED.uids[1]


def observed(pid: int = 100, *, ours: int | None = 1, **status: Any) -> Observed:
    snap = Snapshot(
        pid=pid,
        status=replace(JAILED, **status),
        root="/run/qemu-depriv/chroot/1",
        namespaces={"mnt": "mnt:[11]", "ipc": "ipc:[12]", "pid": "pid:[13]", "net": "net:[14]"},
        limits=parse_limits((SAMPLES / "qemu-jailed-limits.txt").read_bytes()),
        cgroups=parse_cgroup((SAMPLES / "qemu-jailed-cgroup.txt").read_bytes()),
    )
    qmp = f"unix:{STATE}/vms/{ours}/qmp.sock,server=on,wait=off" if ours else "unix:/x.sock"
    return Observed(snap, 555, ("qemu-system-x86_64", "-qmp", qmp), None, None, True, True)


def record(domid: int = 1, pid: int = 100, uid: int = UID) -> VmRecord:
    return VmRecord(
        domid=domid, name=f"vm{domid}", mode=Mode.STANDALONE, state=LeaseState.RUNNING, owner_pid=1,
        owner_start=1, uid=uid, gid=JAILED.gids[1], tier="range", runas=None, kill_by_uid=True,
        decision=None, pid=pid, start_time=555, verification=None, layers=None,
        created=time.time(),
    )  # fmt: skip


def codes(processes: list[Observed], records: list[VmRecord]) -> list[list[str]]:
    audited = findings_for(processes, records, state_dir=STATE, host_namespaces=HOST_NS)
    return [sorted(f.code for f in entry.findings) for entry in audited]


def test_a_fully_jailed_device_model_of_ours_has_no_finding() -> None:
    audited = findings_for([observed()], [record()], state_dir=STATE, host_namespaces=HOST_NS)
    assert [a.findings for a in audited] == [()]
    assert audited[0].ours
    assert audited[0].vm == "vm1"
    assert summary(audited)["ok"]


def test_a_root_qemu_is_critical_twice() -> None:
    root = observed(uids=(0, 0, 0, 0), gids=(0, 0, 0, 0), cap_eff=0x1FF, cap_prm=0x1FF, ours=None)
    assert codes([root], []) == [["caps", "not-ours", "uid-root"]]
    assert not summary(findings_for([root], [], state_dir=STATE, host_namespaces=HOST_NS))["ok"]


def test_two_device_models_with_one_uid_are_shared() -> None:
    assert codes([observed(1, ours=None), observed(2, ours=None)], []) == [
        ["not-ours", "uid-shared"], ["not-ours", "uid-shared"],
    ]  # fmt: skip


def test_an_account_with_a_login_shell_is_human() -> None:
    human = replace(observed(ours=None), user="alice", shell="/bin/bash")  # noqa: S604 - passwd field
    assert "uid-human" in codes([human], [])[0]
    service = replace(observed(ours=None), user="qemu", shell="/usr/sbin/nologin")  # noqa: S604
    assert "uid-human" not in codes([service], [])[0]


def test_a_failed_account_lookup_is_a_warning_never_no_such_account() -> None:
    failed = replace(observed(), lookup_error="looking up uid 131072: timed out after 10 s")
    audited = findings_for([failed], [record()], state_dir=STATE, host_namespaces=HOST_NS)
    [finding] = audited[0].findings
    assert (finding.code, finding.severity) == ("lookup-error", Severity.WARNING)
    assert finding.message.startswith(f"uid {UID} of pid 100: looking up uid 131072: timed out")
    assert not summary(audited)["ok"]  # the audit cannot vouch for the uid: exit 1
    assert codes([observed()], [record()]) == [[]]  # an account that answers "none" is fine


def test_missing_layers_are_warnings() -> None:
    bare = observed(ours=None, seccomp=0)
    bare = replace(
        bare,
        snap=replace(bare.snap, root="/", namespaces=HOST_NS, limits={"core": (-1, -1)}),
        memory_limited=False,
    )
    assert codes([bare], []) == [
        ["no-chroot", "no-limits", "no-namespaces", "no-seccomp", "not-ours"]
    ]


def test_ours_but_not_as_recorded_is_a_lease_mismatch() -> None:
    assert codes([observed()], [record(uid=UID + 1)]) == [["lease-mismatch"]]
    assert codes([observed()], [record(pid=999)]) == [["lease-mismatch"]]
    assert codes([observed(ours=7)], [record()]) == [["lease-mismatch"]]  # no lease at all


def test_worst_processes_come_first_and_every_code_has_a_fix() -> None:
    root = observed(5, ours=None, uids=(0, 0, 0, 0), cap_eff=1)
    audited = findings_for([observed(), root], [record()], state_dir=STATE, host_namespaces=HOST_NS)
    assert [a.observed.snap.pid for a in audited] == [5, 100]
    assert audited[0].worst == Severity.CRITICAL
    assert all(fix for _, fix in CODES.values())


def message(entry: Observed, code: str) -> str:
    (audited,) = findings_for([entry], [record()], state_dir=STATE, host_namespaces=HOST_NS)
    return next(f.message for f in audited.findings if f.code == code)


def test_no_limits_names_only_the_limit_that_is_missing() -> None:
    """libvirt's QEMUs: core dumps off and memory capped, but no task limit."""
    libvirt_like = replace(observed(), memory_limited=True, pids_limited=False)
    assert message(libvirt_like, "no-limits").startswith("pid 100 has no cgroup task limit:")
    both = replace(observed(), memory_limited=False, pids_limited=False)
    assert "no cgroup memory limit, no cgroup task limit:" in message(both, "no-limits")
    cores = replace(observed(), snap=replace(observed().snap, limits={"core": (-1, -1)}))
    text = message(cores, "no-limits")
    assert "core dumps allowed (RLIMIT_CORE soft unlimited, hard unlimited)" in text
    assert "memory" not in text.split(":")[0]
    raisable = replace(observed(), snap=replace(observed().snap, limits={"core": (0, -1)}))
    assert "(RLIMIT_CORE soft 0 bytes, hard unlimited)" in message(raisable, "no-limits")


def test_capabilities_in_a_user_namespace_of_its_own_are_not_over_the_host() -> None:
    """An unprivileged uid mapped to root in its own user namespace, as rootless containers."""
    host = {**HOST_NS, "user": "user:[5]"}
    caps = observed(cap_eff=0x1FFFFFFFFFF, ours=None)
    own = replace(
        caps, snap=replace(caps.snap, namespaces={**caps.snap.namespaces, "user": "user:[15]"})
    )
    shared = replace(
        caps, snap=replace(caps.snap, namespaces={**caps.snap.namespaces, "user": "user:[5]"})
    )
    judged = findings_for([own, shared], [], state_dir=STATE, host_namespaces=host)
    codes = {a.observed.snap.namespaces["user"]: {f.code for f in a.findings} for a in judged}
    assert "caps" not in codes["user:[15]"]
    assert "caps" in codes["user:[5]"]


@pytest.mark.parametrize(
    ("words", "domid"),
    [
        (["-qmp", f"unix:{STATE}/vms/3/qmp.sock,server=on,wait=off"], "3"),
        (["-chardev", f"socket,id=m,path={STATE}/vms/4/qmp.sock"], "4"),
        ([f"{STATE}/vms/5/qemu.log"], "5"),
        (["-qmp", f"unix:/tmp/other{STATE}/vms/3/qmp.sock,server=on"], None),
        (["-qmp", f"unix:{STATE}x/vms/3/qmp.sock"], None),
    ],
)
def test_a_run_directory_is_claimed_only_where_a_path_starts(
    words: list[str], domid: str | None
) -> None:
    """A directory elsewhere whose path merely ends like the state directory's is not ours."""
    assert claimed_domid(STATE, words) == domid


def test_a_qemu_without_a_network_device_should_have_its_own_network_namespace() -> None:
    snap = replace(observed().snap, namespaces={**observed().snap.namespaces, "net": "net:[4]"})
    offline = replace(observed(), snap=snap)
    assert "shares the host's net namespaces" in message(offline, "no-namespaces")
    online = replace(offline, cmdline=(*offline.cmdline, "-netdev", "tap,id=n0,fd=3"))
    (audited,) = findings_for([online], [record()], state_dir=STATE, host_namespaces=HOST_NS)
    assert "no-namespaces" not in [f.code for f in audited.findings]


def test_each_check_names_what_it_saw() -> None:
    root = observed(uids=(0, 0, 0, 0), seccomp=0, ours=None)
    bare = replace(root, snap=replace(root.snap, root="/", namespaces=HOST_NS))
    (audited,) = findings_for([bare], [], state_dir=STATE, host_namespaces=HOST_NS)
    messages = {f.code: f.message for f in audited.findings}
    assert messages["uid-root"].startswith("pid 100 runs with uid 0 (uids [0, 0, 0, 0])")
    assert messages["no-seccomp"].startswith("pid 100 has no seccomp filter")
    assert messages["no-chroot"].startswith("pid 100 sees the host's whole filesystem")
    assert "shares the host's mnt, ipc, pid, net namespaces" in messages["no-namespaces"]


def test_gid_0_is_root_enough() -> None:
    """setpriv --reuid=N --regid=0: no uid 0, but root's group."""
    grouped = observed(gids=(0, 0, 0, 0), ours=None)
    assert message(grouped, "uid-root").startswith("pid 100 runs with gid 0 (gids [0, 0, 0, 0])")
