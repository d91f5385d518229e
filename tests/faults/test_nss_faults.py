"""An NSS backend failing at each position of the chain, and flapping between calls.

The backend is a real NSS module (tests/system/nss_failing.c, built as ``qdsel``) listed after
``files``: it fails for the names in $QDNSS_FAIL and the uids in $QDNSS_FAIL_UID, or on every
other call with $QDNSS_FLAP.  No decision may ever fall to a weaker tier or to root; launch
refuses with exit 4 and starts nothing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from tests.system.vmhost import PASSWD, RANGE_BASE, VmHost, leftovers

P = "xen-qemuuser"
NSSWITCH = "passwd: files qdsel\ngroup: files\n"
SHARED = f"{P}-shared:x:250300:250300::/nonexistent:/usr/sbin/nologin"
RANGE = PASSWD[0]


def use(vmhost: VmHost, modules: Path, passwd: tuple[str, ...], **env: str) -> None:
    vmhost.accounts(passwd, nsswitch=NSSWITCH)
    vmhost.env = {"LD_LIBRARY_PATH": str(modules), **env}


@pytest.mark.parametrize(
    ("position", "passwd", "env", "args"),
    [
        ("explicit", (RANGE, SHARED), {"QDNSS_FAIL": "alice"}, ["--user", "alice"]),
        ("name", (RANGE, SHARED), {"QDNSS_FAIL": f"{P}-web"}, []),
        ("domid", (RANGE, SHARED), {"QDNSS_FAIL": f"{P}-domid5"}, []),
        ("range-base", (SHARED,), {"QDNSS_FAIL": f"{P}-range-base"}, []),
        ("seed base", (SHARED,), {"QDNSS_FAIL": f"{P}-base"}, []),
        ("range uid", (RANGE, SHARED), {"QDNSS_FAIL_UID": str(RANGE_BASE + 5)}, []),
        ("shared", (), {"QDNSS_FAIL": f"{P}-shared"}, ["--no-restrict"]),
    ],
)
def test_a_failure_at_any_position_aborts_resolution_and_launch(
    vmhost: VmHost,
    failing_nss_modules: Path,
    *,
    position: str,
    passwd: tuple[str, ...],
    env: dict[str, str],
    args: list[str],
) -> None:
    use(vmhost, failing_nss_modules, passwd, **env)
    code, out, stderr = vmhost.json("resolve", "--domid", "5", "--name", "web", *args)
    assert code == 4, (position, out)
    assert "Input/output error" in stderr
    assert out["error"]["tried"][-1]["outcome"] == "error"
    assert all(t["outcome"] != "found" or t["tier"] == "range" for t in out["error"]["tried"])
    config = vmhost.config(
        "web", **({"device_model_user": "alice"} if position == "explicit" else {})
    )
    done = vmhost.run(
        "launch",
        str(config),
        "--domid",
        "5",
        *(["--no-restrict"] if "--no-restrict" in args else []),
    )
    assert done.returncode == 4, done.stderr
    assert vmhost.vms() == []
    assert leftovers() == []


def test_a_flapping_backend_never_gives_a_weaker_tier_or_root(
    vmhost: VmHost, failing_nss_modules: Path
) -> None:
    use(vmhost, failing_nss_modules, (SHARED,), QDNSS_FLAP="1")
    outcomes: Counter[str] = Counter()
    for _ in range(40):
        code, out, _ = vmhost.json("resolve", "--domid", "5", "--name", "web", "--no-restrict")
        outcomes["exit 4" if code == 4 else out["tier"]] += 1
    # Without faults the answer is the shared account; with them, that or a refusal.
    assert set(outcomes) <= {"shared", "exit 4"}, outcomes
    assert outcomes["exit 4"] > 0


def test_a_flapping_backend_during_launch_refuses_or_runs_the_right_account(
    vmhost: VmHost, failing_nss_modules: Path
) -> None:
    use(vmhost, failing_nss_modules, (RANGE,), QDNSS_FLAP="1")
    config = str(vmhost.config("web"))
    codes: Counter[int] = Counter()
    for _ in range(10):
        code, vm, _ = vmhost.json("launch", config, "--domid", "5")
        codes[code] += 1
        if code == 0:
            assert (vm["tier"], vm["uid"]) == ("range", RANGE_BASE + 5)
            assert vmhost.run("stop", "web").returncode == 0
        assert leftovers() == []
    assert set(codes) <= {0, 4}
    assert codes[4] > 0
