"""Issue 12's table, from the product's side: every outage of a real directory is exit 4.

Each case runs ``qemu-depriv resolve`` and ``launch`` inside a lab namespace whose
``/etc/nsswitch.conf`` says ``passwd: files ldap`` (nslcd, libnss-ldapd) or ``passwd: files sss``
(SSSD, libnss-sss), against a real slapd that the test stops, hangs and restarts.  An outage
row must give exit 4 (never 0 with a weaker tier, never 3), start nothing and leave nothing; an
up row must give the tier the directory's accounts call for.  The raw NSS facts behind each row
are in test_lab.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.host.procfs import live_pids_of_uid
from tests.directory.accounts import ID_BLOCK, DirectoryGroup, DirectoryUser
from tests.directory.lab import DirectoryLab
from tests.directory.nslcd import FAST_NSLCD, NslcdLab
from tests.directory.slapd import Slapd
from tests.directory.sssd import DEFAULT_SSSD, FAST_SSSD, SssdLab

P = "xen-qemuuser"
GID = ID_BLOCK.start
WEB = DirectoryUser(f"{P}-web", GID + 1, GID)
DOMID7 = DirectoryUser(f"{P}-domid7", GID + 7, GID)
RANGE_BASE = DirectoryUser(f"{P}-range-base", GID + 1000, GID)
USERS = [WEB, DOMID7, RANGE_BASE]
GROUPS = [DirectoryGroup("xen-qemuuser", GID)]
#: Local to the lab's /etc/passwd: the reaper, and the shared account of the downgrade row.
REAPER_LINE = f"{P}-reaper:x:{GID + 900}:{GID + 900}::/nonexistent:/usr/sbin/nologin"
SHARED_LINE = f"{P}-shared:x:{GID + 901}:{GID + 901}::/nonexistent:/usr/sbin/nologin"
LOCAL_GROUPS = [f"{P}-reaper:x:{GID + 900}:", f"{P}-shared:x:{GID + 901}:"]
#: Every uid a VM of this file may run as.
VM_UIDS = [WEB.uid, DOMID7.uid, *range(RANGE_BASE.uid, RANGE_BASE.uid + 32)]
LOOKUP_TIMEOUT = 3


Lab = NslcdLab | SssdLab


@dataclass
class Product:
    """qemu-depriv run inside a lab's namespace, with a state dir and settings of its own."""

    lab: Lab
    root: Path

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state = self.root / "state"
        self.settings = self.root / "qemu-depriv.toml"
        self.settings.write_text(f"lookup_timeout = {LOOKUP_TIMEOUT}\n")

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        command = self.lab.argv(
            sys.executable, "-m", "qemu_depriv", "--config", str(self.settings),
            "--state-dir", str(self.state), *args,
        )  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)

    def json(self, *args: str) -> tuple[int, dict[str, Any], str]:
        done = self.run(*args, "--json")
        data = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
        return done.returncode, data, done.stderr

    def resolve(self, name: str, domid: int = 7) -> tuple[int, dict[str, Any], str]:
        return self.json("resolve", "--domid", str(domid), "--name", name)

    def config(self, name: str) -> Path:
        path = self.root / f"{name}.cfg"
        path.write_text(f'name = "{name}"\ntype = "hvm"\nmemory = 64\nvcpus = 1\n')
        return path

    def launch(self, name: str, domid: int = 7) -> tuple[int, dict[str, Any], str]:
        return self.json("launch", str(self.config(name)), "--domid", str(domid))

    def run_argv(self, name: str, domid: int = 7) -> list[str]:
        """``qemu-depriv run`` of a user's own command line, in the lab's namespace."""
        return self.lab.argv(
            sys.executable, "-m", "qemu_depriv", "--config", str(self.settings),
            "--state-dir", str(self.state), "run", "--domid", str(domid),
            "--json-status", str(self.root / "run.json"), "--", "qemu-system-x86_64",
            "-name", name, "-m", "64", "-nodefaults", "-display", "none",
        )  # fmt: skip

    def run_refused(self, name: str) -> subprocess.CompletedProcess[str]:
        """A ``run`` expected to end before it starts anything."""
        return subprocess.run(
            self.run_argv(name), capture_output=True, text=True, timeout=120, check=False
        )

    def run_supervised(self, name: str, domid: int = 7) -> dict[str, Any]:
        """A ``run`` that comes up: its state when verified, then SIGTERM and a clean exit."""
        status = self.root / "run.json"
        status.unlink(missing_ok=True)
        process = subprocess.Popen(
            self.run_argv(name, domid), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while not (status.exists() and '"running"' in status.read_text()):
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline
                time.sleep(0.1)
            state: dict[str, Any] = json.loads(status.read_text())
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=60) == 0
            return state
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def vms(self) -> list[dict[str, Any]]:
        if not (self.state / "state.db").exists():
            return []
        code, data, stderr = self.json("list")
        assert code == 0, stderr
        return list(data["vms"])

    def stop_all(self) -> None:
        for vm in self.vms():
            done = self.run("stop", vm["name"], "--timeout", "2")
            assert done.returncode == 0, done.stderr

    def assert_nothing_started(self) -> None:
        assert self.vms() == []
        for sub in ("vms", "chroot"):
            directory = self.state / sub
            assert not directory.is_dir() or not any(directory.iterdir()), sub
        assert leftovers() == []


def leftovers() -> list[int]:
    return [pid for uid in VM_UIDS for pid in live_pids_of_uid(uid)]


def one_error(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if line.startswith("qemu-depriv: error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.fixture
def product_of(directory_lab: DirectoryLab) -> Iterator[list[Product]]:
    """Products made by the test; their VMs are stopped (while the lab still runs, which this
    fixture's dependency on it ensures) and checked for leftovers after it."""
    del directory_lab
    made: list[Product] = []
    yield made
    for product in made:
        product.stop_all()
    assert leftovers() == [], "a process of a VM's uid outlived the test"


def nslcd_product(
    lab_of: DirectoryLab, tmp_path: Path, made: list[Product]
) -> tuple[Slapd, NslcdLab, Product]:
    server = lab_of.slapd(USERS, GROUPS)
    lab = lab_of.nslcd(server, FAST_NSLCD, passwd=[REAPER_LINE], group=LOCAL_GROUPS)
    product = Product(lab, tmp_path / "nslcd")
    made.append(product)
    return server, lab, product


def assert_up_tiers(product: Product) -> None:
    """The directory's accounts decide: name, domid and range tier, all from LDAP."""
    cases = [("web", 7, "name", WEB.uid), ("mail", 7, "domid", DOMID7.uid),
             ("mail", 8, "range", RANGE_BASE.uid + 8)]  # fmt: skip
    for name, domid, tier, uid in cases:
        code, decision, stderr = product.resolve(name, domid)
        assert code == 0, stderr
        assert (decision["tier"], decision["uid"]) == (tier, uid), decision


def assert_outage(product: Product, why: str) -> None:
    """resolve and launch both exit 4, naming the cause, and start nothing."""
    code, out, stderr = product.resolve("web")
    assert code == 4, (code, out, stderr)
    assert why in one_error(stderr), stderr
    assert out["error"]["kind"] == "lookup-error"
    code, _, stderr = product.launch("web")
    assert code == 4, stderr
    assert why in one_error(stderr)
    done = product.run_refused("web")
    assert done.returncode == 4, done.stderr
    assert why in one_error(done.stderr)
    product.assert_nothing_started()


# -- nslcd and libnss-ldapd -------------------------------------------------------------------


def test_ldap_up_every_tier_resolves_from_the_directory_and_a_vm_runs_as_its_account(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    _, _, product = nslcd_product(directory_lab, tmp_path, product_of)
    assert_up_tiers(product)
    code, vm, stderr = product.launch("web")
    assert code == 0, stderr
    assert (vm["tier"], vm["uid"], vm["verification"]["ok"]) == ("name", WEB.uid, True)
    assert product.run("stop", "web").returncode == 0
    supervised = product.run_supervised("web")
    assert (supervised["tier"], supervised["uid"]) == ("name", WEB.uid)
    product.assert_nothing_started()


def test_ldap_server_stopped_is_exit_4_not_a_weaker_tier(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    server, _, product = nslcd_product(directory_lab, tmp_path, product_of)
    server.stop()
    assert_outage(product, "errno 2, ENOENT")


def test_nslcd_stopped_is_exit_4(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    _, lab, product = nslcd_product(directory_lab, tmp_path, product_of)
    lab.stop()
    assert_outage(product, "'passwd: files ldap' line of /etc/nsswitch.conf")


def test_a_hung_ldap_server_is_exit_4_within_lookup_timeout(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.nslcd(server, passwd=[REAPER_LINE], group=LOCAL_GROUPS)  # defaults: 10 s
    product = Product(lab, tmp_path / "hung")
    product_of.append(product)
    assert product.resolve("web")[0] == 0
    server.hang()
    try:
        started = time.monotonic()
        code, _, stderr = product.resolve("web")
        took = time.monotonic() - started
        assert code == 4, stderr
        line = one_error(stderr)
        assert f"gave no answer within {LOOKUP_TIMEOUT} s (lookup_timeout)" in line
        assert "ldap: is nslcd running, and its LDAP server reachable?" in line
        assert took < LOOKUP_TIMEOUT + 2, took  # nslcd alone would take its 10 s
        code, _, stderr = product.launch("web")
        assert code == 4, stderr
        product.assert_nothing_started()
    finally:
        server.resume()


def test_during_nslcds_back_off_after_recovery_it_is_exit_4_then_the_right_tier(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    server, _, product = nslcd_product(directory_lab, tmp_path, product_of)
    server.stop()
    assert product.resolve("web")[0] == 4
    server.start()
    outcomes = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        code, decision, _ = product.resolve("web")
        outcomes.append("exit 4" if code == 4 else f"{code} {decision.get('tier')}")
        if code == 0:
            break
        time.sleep(0.2)
    assert outcomes[-1] == "0 name", outcomes
    assert set(outcomes) <= {"exit 4", "0 name"}, outcomes  # never 3, never a weaker tier


def test_ldap_down_with_the_shared_account_in_local_files_is_exit_4_not_shared(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    server = directory_lab.slapd(USERS, GROUPS)
    lab = directory_lab.nslcd(
        server, FAST_NSLCD, passwd=[REAPER_LINE, SHARED_LINE], group=LOCAL_GROUPS
    )
    product = Product(lab, tmp_path / "shared")
    product_of.append(product)
    server.stop()
    assert_outage(product, "an NSS source is failing")


# -- SSSD and libnss-sss ----------------------------------------------------------------------


def sssd_product(
    lab_of: DirectoryLab, tmp_path: Path, made: list[Product], **options: Any
) -> tuple[Slapd, SssdLab, Product]:
    server = lab_of.slapd(USERS, GROUPS)
    options.setdefault("timings", FAST_SSSD)
    lab = lab_of.sssd(server, passwd=[REAPER_LINE], group=LOCAL_GROUPS, **options)
    product = Product(lab, tmp_path / f"sssd{len(made)}")
    made.append(product)
    return server, lab, product


def test_sssd_online_every_tier_resolves_and_a_vm_runs_as_its_account(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    _, _, product = sssd_product(directory_lab, tmp_path, product_of)
    assert_up_tiers(product)
    code, vm, stderr = product.launch("web")
    assert code == 0, stderr
    assert (vm["tier"], vm["uid"]) == ("name", WEB.uid)
    assert product.run("stop", "web").returncode == 0
    supervised = product.run_supervised("mail", domid=8)
    assert (supervised["tier"], supervised["uid"]) == ("range", RANGE_BASE.uid + 8)


def test_ldap_down_behind_sssd_with_an_uncached_account_is_exit_4(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    """SSSD answers "not found" (0 and NULL) here: only its own status tells the outage."""
    server, lab, product = sssd_product(directory_lab, tmp_path, product_of)
    server.stop()
    assert lab.probe("getpwnam", WEB.name).rc == 0  # the disguise itself
    assert_outage(product, "reports domain(s) lab.test offline")


def test_sssd_stopped_is_exit_4(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    _, lab, product = sssd_product(directory_lab, tmp_path, product_of)
    lab.stop()
    assert_outage(product, "an NSS source is failing")


def test_sssd_without_its_infopipe_is_exit_4_with_the_fix_unless_exempted(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    _, _, product = sssd_product(directory_lab, tmp_path, product_of, ifp=False)
    code, _, stderr = product.resolve("mail")  # the name tier finds nothing: a "not found"
    assert code == 4
    line = one_error(stderr)
    assert "cannot say whether it is online" in line
    assert "'services = nss, ifp'" in line
    assert "sssd-dbus" in line
    # An account found needs no word from SSSD.
    assert product.resolve("web")[0] == 0
    # An administrator who keeps no device-model account in SSSD says so, and "not found" holds.
    product.settings.write_text('sources_without_accounts = ["sss"]\n')
    code, decision, stderr = product.resolve("mail", 9)
    assert (code, decision["tier"]) == (0, "range"), stderr


def test_after_recovery_while_sssd_still_says_offline_it_is_exit_4_then_the_right_tier(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    """SSSD's defaults: after the server is back it stays offline until offline_timeout
    (60 s, plus up to 30 s) passes.  Every launch in that window is exit 4; once SSSD says it
    is online (here: told to look again with SIGUSR2, as an administrator would), the tier
    is right again."""
    server, lab, product = sssd_product(directory_lab, tmp_path, product_of, timings=DEFAULT_SSSD)
    server.stop()
    assert product.resolve("mail")[0] == 4
    server.start()
    back = time.monotonic()
    for _ in range(3):
        code, _, stderr = product.launch("mail")
        assert code == 4, stderr
        assert "offline" in one_error(stderr)
        time.sleep(5)
    assert time.monotonic() - back < DEFAULT_SSSD.offline_timeout  # still inside the window
    product.assert_nothing_started()

    pid = lab.sssd_pid
    assert pid is not None
    signal_online(pid)
    deadline = time.monotonic() + 30
    while (code := product.resolve("mail")[0]) != 0 and time.monotonic() < deadline:
        assert code == 4
        time.sleep(0.5)
    code, decision, stderr = product.resolve("mail")
    assert (code, decision["tier"], decision["uid"]) == (0, "domid", DOMID7.uid), stderr


def signal_online(pid: int) -> None:
    """sssd(8): SIGUSR2 tells SSSD to go online at once."""
    os.kill(pid, signal.SIGUSR2)


def test_doctor_names_each_network_source_and_whether_its_status_can_be_read(
    directory_lab: DirectoryLab, tmp_path: Path, product_of: list[Product]
) -> None:
    def sources(product: Product) -> list[dict[str, Any]]:
        _, report, stderr = product.json("doctor")
        assert "findings" in report, stderr
        return [f for f in report["findings"] if f["message"].startswith(("ldap", "sss"))]

    _, _, ldap = nslcd_product(directory_lab, tmp_path, product_of)
    assert [(f["ok"], f["message"]) for f in sources(ldap)] == [
        (True, "ldap: reports its outages as lookup errors")
    ]
    server, _, sss = sssd_product(directory_lab, tmp_path, product_of)
    (online,) = sources(sss)
    assert online["ok"], online
    assert "sss: status readable over InfoPipe (lab.test online)" in online["message"]
    server.stop()
    sss.resolve("mail")  # a lookup makes SSSD notice the outage
    (offline,) = sources(sss)
    assert not offline["ok"]
    assert "lab.test OFFLINE" in offline["message"]
    _, _, blind = sssd_product(directory_lab, tmp_path, product_of, ifp=False)
    (unreadable,) = sources(blind)
    assert not unreadable["ok"]
    assert "sss: status unreadable" in unreadable["message"]
    assert "ifp" in unreadable["fix"]
