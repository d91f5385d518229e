"""verify(): what /proc shows of a paused QEMU against what the launch planned."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.inspect import ProcStatus, Snapshot
from qemu_depriv.launcher import verify
from qemu_depriv.policy import Decision, Tier

UID, GID = 131079, 131072
CHROOT = Path("/run/qemu-depriv/chroot/7")
FIELDS = ("uids", "gids", "groups", "cap_eff", "root")

RANGE = Decision(
    tier=Tier.RANGE,
    runas=f"{UID}:{GID}",
    uid=UID,
    gid=GID,
    groups=(GID,),
    user=None,
    kill_by_uid=True,
)
ROOT = Decision(tier=Tier.ROOT, runas=None, uid=0, gid=0, groups=(), user=None, kill_by_uid=False)

#: A QEMU that dropped to the range decision's account, as qemu-runas-status.txt shows one.
DROPPED = ProcStatus(
    name="qemu-system-x86",
    state="S (sleeping)",
    uids=(UID, UID, UID, UID),
    gids=(GID, GID, GID, GID),
    groups=(GID,),
    cap_eff=0,
    cap_prm=0,
    no_new_privs=True,
    seccomp=2,
)
#: A QEMU left running as root, with every capability.
AS_ROOT = replace(
    DROPPED,
    uids=(0, 0, 0, 0),
    gids=(0, 0, 0, 0),
    groups=(),
    cap_eff=0x1FFFFFFFFFF,
    cap_prm=0x1FFFFFFFFFF,
    no_new_privs=False,
)


def snap(status: ProcStatus = DROPPED, root: str = str(CHROOT)) -> Snapshot:
    return Snapshot(pid=4242, status=status, root=root)


def named_fields(message: str) -> set[str]:
    """The fields an EnvironmentFailure message from verify() reports as wrong."""
    return {field for field in FIELDS if re.search(rf"\b{field}: expected ", message)}


# -- all matching -----------------------------------------------------------------------------


def test_process_that_matches_the_plan_is_ok() -> None:
    result = verify(snap(), RANGE, CHROOT)
    assert result["ok"] is True
    assert result["pid"] == 4242


def test_result_records_what_proc_showed() -> None:
    observed = verify(snap(), RANGE, CHROOT)["observed"]
    assert observed == {
        "uids": [UID] * 4,
        "gids": [GID] * 4,
        "groups": [GID],
        "cap_eff": "0000000000000000",
        "root": str(CHROOT),
    }


def test_group_order_and_duplicates_in_the_plan_do_not_matter() -> None:
    decision = replace(RANGE, groups=(GID, 27, GID))
    status = replace(DROPPED, groups=(27, GID))
    assert verify(snap(status), decision, CHROOT)["ok"] is True


# -- one field wrong --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "root", "field"),
    [
        (replace(DROPPED, uids=(0, UID, UID, UID)), str(CHROOT), "uids"),
        (replace(DROPPED, uids=(UID, 0, UID, UID)), str(CHROOT), "uids"),
        (replace(DROPPED, uids=(UID, UID, 0, UID)), str(CHROOT), "uids"),
        (replace(DROPPED, uids=(UID, UID, UID, 0)), str(CHROOT), "uids"),
        (replace(DROPPED, gids=(GID, GID, 0, GID)), str(CHROOT), "gids"),
        (replace(DROPPED, gids=(GID, GID, GID, GID + 1)), str(CHROOT), "gids"),
        (replace(DROPPED, groups=(GID, 0)), str(CHROOT), "groups"),
        (replace(DROPPED, groups=(GID, 27)), str(CHROOT), "groups"),
        (replace(DROPPED, groups=()), str(CHROOT), "groups"),
        (replace(DROPPED, cap_eff=1 << 21), str(CHROOT), "cap_eff"),
        (DROPPED, "/", "root"),
        (DROPPED, "/run/qemu-depriv/chroot/8", "root"),
        (DROPPED, "/run/qemu-depriv/chroot/7/", "root"),
    ],
    ids=[
        "real-uid-0",
        "effective-uid-0",
        "saved-uid-0",
        "fs-uid-0",
        "saved-gid-0",
        "fs-gid-other",
        "extra-group-0",
        "extra-group",
        "missing-group",
        "cap-eff-sys-admin",
        "root-not-chrooted",
        "root-other-vm",
        "root-trailing-slash",
    ],
)
def test_single_mismatch_is_an_environment_failure_naming_that_field(
    status: ProcStatus, root: str, field: str
) -> None:
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(status, root), RANGE, CHROOT)
    assert named_fields(info.value.message) == {field}
    assert info.value.exit_code == 4
    assert "QEMU pid 4242" in info.value.message


def test_every_mismatch_is_listed_in_one_message() -> None:
    status = replace(DROPPED, uids=(UID, UID, 0, UID), cap_eff=1)
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(status, "/"), RANGE, CHROOT)
    assert named_fields(info.value.message) == {"uids", "cap_eff", "root"}


def test_message_shows_expected_and_observed_values() -> None:
    status = replace(DROPPED, uids=(UID, UID, 0, UID))
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(status), RANGE, CHROOT)
    expected = f"uids: expected [{UID}, {UID}, {UID}, {UID}], /proc shows [{UID}, {UID}, 0, {UID}]"
    assert expected in info.value.message


def test_a_process_still_running_as_root_fails_a_non_root_plan() -> None:
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(AS_ROOT), RANGE, CHROOT)
    assert named_fields(info.value.message) == {"uids", "gids", "groups", "cap_eff"}


# -- the root tier ----------------------------------------------------------------------------


def test_root_tier_expects_uid_zero_and_allows_capabilities() -> None:
    result = verify(snap(AS_ROOT), ROOT, CHROOT)
    assert result["ok"] is True
    assert result["observed"]["cap_eff"] == "000001ffffffffff"


def test_root_tier_refuses_a_process_that_is_not_root() -> None:
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(DROPPED), ROOT, CHROOT)
    assert named_fields(info.value.message) == {"uids", "gids", "groups"}


def test_root_tier_still_requires_the_chroot() -> None:
    with pytest.raises(EnvironmentFailure) as info:
        verify(snap(AS_ROOT, "/"), ROOT, CHROOT)
    assert named_fields(info.value.message) == {"root"}
