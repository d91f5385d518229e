"""``qemu-depriv resolve`` against real glibc NSS, in private mount namespaces.

Account files are scratch files bind-mounted over /etc/passwd and /etc/group for the one
command; a failing backend is a real NSS module compiled by the test setup.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.system.conftest import Cli

P = "xen-qemuuser"
BASE = 131072
NOLOGIN = "::/nonexistent:/usr/sbin/nologin"


def user(name: str, uid: int, gid: int | None = None, gecos: str = "") -> str:
    return f"{name}:x:{uid}:{uid if gid is None else gid}:{gecos}:/nonexistent:/usr/sbin/nologin"


def group(name: str, gid: int, members: str = "") -> str:
    return f"{name}:x:{gid}:{members}"


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("qemu-depriv: error: ")
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "passwd", "tier", "runas"),
    [
        (
            ["--user", "alice"],
            [user("alice", 5000), user(f"{P}-web", 6000)],
            "explicit",
            "alice",
        ),
        ([], [user(f"{P}-web", 6000), user(f"{P}-domid7", 6007)], "name", f"{P}-web"),
        ([], [user(f"{P}-domid7", 6007), user(f"{P}-range-base", BASE)], "domid", f"{P}-domid7"),
        ([], [user(f"{P}-range-base", BASE, 4242), user(f"{P}-shared", 6000)], "range",
         f"{BASE + 7}:4242"),
        ([], [user(f"{P}-base", BASE), user(f"{P}-base7", BASE + 7)], "range", f"{P}-base7"),
        ([], [user(f"{P}-shared", 6000)], "shared", f"{P}-shared"),
        (["--no-restrict"], [], "root", None),
    ],
)  # fmt: skip
def test_each_tier_is_chosen_from_real_account_files(
    cli: Cli, args: list[str], passwd: list[str], tier: str, runas: str | None
) -> None:
    cli.accounts(passwd)
    code, decision, _ = cli.json("resolve", "--domid", "7", "--name", "web", *args)
    assert code == 0
    assert (decision["tier"], decision["runas"]) == (tier, runas)


def test_a_5000_byte_gecos_is_resolved_by_growing_the_buffer(cli: Cli) -> None:
    cli.accounts([user(f"{P}-domid3", 6003, gecos="G" * 5000)])
    done = cli.run("resolve", "--domid", "3", "--json", "--debug")
    assert done.returncode == 0, done.stderr
    assert '"user": "xen-qemuuser-domid3"' in done.stdout
    assert "ERANGE" in done.stderr  # the retry path really ran


def test_supplementary_groups_come_from_the_group_file(cli: Cli) -> None:
    cli.accounts([user(f"{P}-domid3", 6003)], [group("kvm", 104, f"{P}-domid3")])
    code, decision, _ = cli.json("resolve", "--domid", "3")
    assert code == 0
    assert sorted(decision["groups"]) == [104, 6003]


@pytest.mark.parametrize(
    ("module", "strerror"),
    [("qdunavail", "Input/output error"), ("qdagain", "Resource temporarily unavailable")],
)
def test_a_failing_backend_aborts_even_though_the_shared_account_exists(
    cli: Cli, failing_nss_modules: Path, module: str, strerror: str
) -> None:
    cli.accounts(
        [user(f"{P}-shared", 6000)],
        nsswitch=f"passwd: files {module}\ngroup: files\n",
    )
    cli.env["LD_LIBRARY_PATH"] = str(failing_nss_modules)
    code, out, stderr = cli.json("resolve", "--domid", "3", "--name", "web")
    assert code == 4
    assert strerror in one_error_line(stderr)  # the module itself answered
    assert out["error"]["kind"] == "lookup-error"
    tried = out["error"]["tried"]
    assert tried[-1] == {"tier": "name", "name": f"{P}-web", "outcome": "error"}
    assert all(t["outcome"] != "found" for t in tried)


def test_a_failing_backend_after_files_does_not_hide_an_account_in_the_files(
    cli: Cli, failing_nss_modules: Path
) -> None:
    cli.accounts([user(f"{P}-web", 6001)], nsswitch="passwd: files qdunavail\ngroup: files\n")
    cli.env["LD_LIBRARY_PATH"] = str(failing_nss_modules)
    code, decision, _ = cli.json("resolve", "--domid", "3", "--name", "web")
    assert (code, decision["tier"]) == (0, "name")


@pytest.mark.parametrize(
    ("passwd", "groups", "message"),
    [
        ([user(f"{P}-domid3", 0, 6003)], [], "has uid 0"),
        ([user(f"{P}-domid3", 6003, 0)], [], "primary gid 0"),
        ([user(f"{P}-domid3", 6003)], [group("wheel0", 0, f"{P}-domid3")], "member of group 0"),
        ([user(f"{P}-range-base", BASE), user("bob", BASE + 3)], [], "belongs to 'bob'"),
        ([user(f"{P}-range-base", 0, 100)], [], "has uid 0"),
        ([], [], "no device-model account"),
    ],
)
def test_refusals_exit_3_with_one_line_that_says_what_to_fix(
    cli: Cli, passwd: list[str], groups: list[str], message: str
) -> None:
    cli.accounts(passwd, groups)
    done = cli.run("resolve", "--domid", "3")
    assert done.returncode == 3
    assert message in one_error_line(done.stderr)
    assert done.stdout == ""


def test_gid_zero_is_allowed_with_a_warning_without_restrict(cli: Cli) -> None:
    cli.accounts([user(f"{P}-domid3", 6003, 0)])
    code, decision, _ = cli.json("resolve", "--domid", "3", "--no-restrict")
    assert code == 0
    assert decision["gid"] == 0
    assert any("group root" in w for w in decision["warnings"])


def test_an_explicit_user_that_does_not_exist_is_refused(cli: Cli) -> None:
    cli.accounts([user(f"{P}-shared", 6000)])
    code, out, stderr = cli.json("resolve", "--domid", "3", "--user", "ghost")
    assert code == 3
    assert "'ghost' does not exist" in one_error_line(stderr)
    assert out["error"]["kind"] == "refused"


@pytest.mark.parametrize(
    "args",
    [
        ["--domid", "0"],
        ["--domid", "32752"],
        ["--domid", "-3"],
        ["--domid", "abc"],
        ["--domid", ""],
        ["--domid", "3", "--name", "1234"],
        ["--domid", "3", "--name", "-web"],
        ["--domid", "3", "--name", "a\nb"],
        ["--domid", "3", "--name", "x" * 4001],
        ["--domid", "3", "--user", "Root Kit"],
        ["--domid", "3", "--prefix", "Bad Prefix"],
        ["--name", "web"],
        ["--domid", "3", "--frobnicate"],
    ],
)
def test_bad_input_exits_2_with_one_line(cli: Cli, args: list[str]) -> None:
    done = cli.run("resolve", *args)
    assert done.returncode == 2
    one_error_line(done.stderr)


def test_bad_input_with_json_also_prints_the_error_object(cli: Cli) -> None:
    code, out, _ = cli.json("resolve", "--domid", "0")
    assert code == 2
    assert out["error"]["kind"] == "invalid-input"
    assert "domid 0" in out["error"]["message"]


@pytest.mark.parametrize("where", ["before", "after"])
def test_global_options_go_before_or_after_the_subcommand(cli: Cli, where: str) -> None:
    cli.accounts([user("xen-qemudepriv-shared", 6000)])
    options = ["--prefix", "xen-qemudepriv", "--json"]
    args = ["resolve", "--domid", "3"]
    done = cli.run(*(options + args if where == "before" else args + options))
    assert done.returncode == 0, done.stderr
    assert '"user": "xen-qemudepriv-shared"' in done.stdout


def test_the_config_file_sets_the_policy(cli: Cli, tmp_path: Path) -> None:
    config = tmp_path / "qemu-depriv.toml"
    config.write_text('prefix = "xen-qemudepriv"\nrestrict = false\n')
    code, decision, _ = cli.json("--config", str(config), "resolve", "--domid", "3")
    assert (code, decision["tier"]) == (0, "root")


@pytest.mark.parametrize(
    "content",
    ["prefix = ", "restirct = false\n", "restrict = 'no'\n", 'prefix = "Bad Prefix"\n', "\xff"],
)
def test_a_malformed_config_is_invalid_input(cli: Cli, tmp_path: Path, content: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_bytes(content.encode("latin-1"))
    done = cli.run("--config", str(config), "resolve", "--domid", "3")
    assert done.returncode == 2
    one_error_line(done.stderr)


def test_a_missing_config_file_is_invalid_input(cli: Cli, tmp_path: Path) -> None:
    done = cli.run("--config", str(tmp_path / "nope.toml"), "resolve", "--domid", "3")
    assert done.returncode == 2
    assert "no such file" in one_error_line(done.stderr)


def test_a_preloaded_nss_shim_is_honoured(tmp_path: Path) -> None:
    """nss_wrapper, preloaded, answers instead of the host's files: libc is CDLL(None)."""
    passwd, group_file = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(user(f"{P}-wrapped", 7777) + "\n")
    group_file.write_text(group(f"{P}-wrapped", 7777) + "\n")
    assert f"{P}-wrapped" not in Path("/etc/passwd").read_text()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LD_PRELOAD": "libnss_wrapper.so",
        "NSS_WRAPPER_PASSWD": str(passwd),
        "NSS_WRAPPER_GROUP": str(group_file),
    }
    done = subprocess.run(
        [sys.executable, "-m", "qemu_depriv", "resolve", "--domid", "3", "--name", "wrapped"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"-runas {P}-wrapped (uid 7777" in done.stdout


def test_the_demo_resolves_every_tier_and_runs_three_vms_as_three_uids() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "qemu_depriv", "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    scenarios = out["scenarios"]
    assert {s["got"] for s in scenarios} >= {
        "explicit", "name", "domid", "range", "shared", "root", "exit 3",
    }  # fmt: skip
    assert all(s["got"] == s["expect"] for s in scenarios)
    shown = [e for e in out["vms"] if e["event"] == "VmShown"]
    assert len(shown) == 3
    assert len({e["uids"][0] for e in shown}) == 3
    assert all(len(set(e["uids"])) == 1 and e["cap_eff"] == 0 for e in shown)
    assert all(
        {"seccomp", "chroot", "pid_namespace", "cgroup", "fds"} <= set(e["verified"]) for e in shown
    )
    assert [e["exit_code"] for e in out["vms"] if e["event"] == "Refused"] == [3]
    stopped = [e for e in out["vms"] if e["event"] == "Stopped"]
    assert [e["name"] for e in stopped] == ["web", "build", "db"]
    assert all(e["left"] == [] for e in stopped)
    (supervised,) = [e for e in out["vms"] if e["event"] == "Supervised"]
    assert supervised["command"][0] == "qemu-system-x86_64"
    assert (supervised["tier"], supervised["exit_code"], supervised["left"]) == ("range", 0, [])
    assert {"seccomp", "chroot", "pid_namespace", "cgroup"} <= set(supervised["verified"])
    # Every QEMU the demo started is gone (zombies awaiting PID 1 aside).
    for event in shown:
        status = Path(f"/proc/{event['pid']}/status")
        assert not status.exists() or "zombie" in status.read_text()


@pytest.mark.parametrize("name", ["web.example.org", "Win10", "example.hvm"])
def test_the_name_tier_finds_dotted_and_upper_case_accounts_as_the_seed_does(
    cli: Cli, name: str
) -> None:
    cli.accounts([user(f"{P}-{name}", 6100), user(f"{P}-domid7", 6007)])
    code, decision, stderr = cli.json("resolve", "--domid", "7", "--name", name)
    assert code == 0, stderr
    assert (decision["tier"], decision["user"]) == ("name", f"{P}-{name}")
    assert decision["tried"] == [{"tier": "name", "name": f"{P}-{name}", "outcome": "found"}]


def test_a_skipped_name_tier_and_the_shared_tier_are_warned_on_stderr_too(cli: Cli) -> None:
    cli.accounts([user(f"{P}-shared", 6000)])
    code, decision, stderr = cli.json("resolve", "--domid", "7", "--name", "my vm")
    assert (code, decision["tier"]) == (0, "shared")
    warnings = [line for line in stderr.splitlines() if line.startswith("qemu-depriv: warning: ")]
    assert len(warnings) == 2 == len(decision["warnings"])
    assert "name tier skipped" in warnings[0]
    assert "shared tier" in warnings[1]
