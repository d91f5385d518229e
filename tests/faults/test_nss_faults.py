"""An NSS backend failing at each position of the chain, and flapping between calls: a
compiled module that fails on demand, and a real LDAP server stopped and started under a loop
of launches (the directory lab of tests/directory).

The backend is a real NSS module (tests/system/nss_failing.c, built as ``qdsel``) listed after
``files``: it fails for the names in $QDNSS_FAIL and the uids in $QDNSS_FAIL_UID, or on every
other call with $QDNSS_FLAP.  No decision may ever fall to a weaker tier or to root; launch
refuses with exit 4 and starts nothing.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from tests.directory.conftest import directory_lab
from tests.directory.lab import DirectoryLab
from tests.directory.test_outages import WEB, Product, nslcd_product, product_of
from tests.directory.test_outages import leftovers as lab_leftovers
from tests.system.vmhost import PASSWD, RANGE_BASE, VmHost, leftovers

__all__ = ["directory_lab", "product_of"]
P = "xen-qemuuser"
NSSWITCH = "passwd: files qdsel\ngroup: files\n"
SHARED = f"{P}-shared:x:250300:250300::/nonexistent:/usr/sbin/nologin"
RANGE = PASSWD[0]


def use(vmhost: VmHost, modules: Path, passwd: tuple[str, ...], **env: str) -> None:
    vmhost.accounts(passwd, nsswitch=NSSWITCH)
    vmhost.env = {"LD_LIBRARY_PATH": str(modules), **env}
    # The test module cannot say whether it is online; these tests are about its failures, so
    # its "not found" is believed, as the settings let an administrator say.
    vmhost.settings = 'sources_without_accounts = ["qdsel"]\n'


def test_a_source_that_cannot_vouch_for_not_found_is_an_error_unless_exempted(
    vmhost: VmHost, failing_nss_modules: Path
) -> None:
    use(vmhost, failing_nss_modules, (SHARED,))
    vmhost.settings = None
    code, out, stderr = vmhost.json("resolve", "--domid", "5", "--name", "web")
    assert code == 4, out
    assert "cannot say whether its directory is reachable" in stderr
    vmhost.settings = 'sources_without_accounts = ["qdsel"]\n'
    code, out, _ = vmhost.json("resolve", "--domid", "5", "--name", "web")
    assert (code, out["tier"]) == (0, "shared")


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


def test_a_flapping_ldap_server_gives_the_right_tier_or_exit_4_never_a_weaker_one(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    server, _, product = nslcd_product(directory_lab, tmp_path, product_of)
    stop = threading.Event()

    def flap() -> None:
        # Down long enough for nslcd to give up retrying (FAST_NSLCD: 2 s), up for a launch.
        while not stop.wait(2.0):
            server.stop()
            if stop.wait(3.5):
                break
            server.start()

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    outcomes: Counter[str] = Counter()
    try:
        for _ in range(16):
            code, vm, stderr = product.launch("web")
            if code == 0:
                assert (vm["tier"], vm["uid"]) == ("name", WEB.uid), vm
                assert product.run("stop", "web").returncode == 0
            outcomes[f"exit {code}"] += 1
            assert code in (0, 4), stderr
            assert lab_leftovers() == []
    finally:
        stop.set()
        flapper.join()
        if not server.answers():
            server.start()
    print(f"launches under a flapping slapd: {dict(outcomes)}")
    assert outcomes["exit 4"] > 0, outcomes
