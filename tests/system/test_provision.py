"""``provision`` and ``doctor`` against alternate roots, with the real groupadd and useradd."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qemu_depriv.accounts.provision import undo
from tests.system.conftest import NSEXEC

P = "xen-qemuuser"
NOLOGIN = "::/nonexistent:/usr/sbin/nologin"


def make_root(
    path: Path,
    passwd: tuple[str, ...] = (),
    group: tuple[str, ...] = (),
    subuid: str = "",
) -> Path:
    etc = path / "etc"
    etc.mkdir(parents=True)
    users = (
        "root:x:0:0:root:/root:/bin/bash",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
        *passwd,
    )
    groups = ("root:x:0:", "nogroup:x:65534:", *group)
    (etc / "passwd").write_text("\n".join(users) + "\n")
    (etc / "group").write_text("\n".join(groups) + "\n")
    (etc / "shadow").write_text("".join(f"{u.split(':')[0]}:*:19000:0:99999:7:::\n" for u in users))
    (etc / "gshadow").write_text("".join(f"{g.split(':')[0]}:*::\n" for g in groups))
    (etc / "subuid").write_text(subuid)
    (etc / "nsswitch.conf").write_text("passwd: files\ngroup: files\n")
    for name in ("shadow", "gshadow"):
        (etc / name).chmod(0o640)
    return path


def digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted((root / "etc").iterdir()):
        sha.update(path.name.encode() + path.read_bytes())
    return sha.hexdigest()


def cli(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "qemu_depriv", *args]
    if root is not None:  # see the alternate root's accounts through NSS as well
        command = [sys.executable, str(NSEXEC), str(root / "etc"), "--", *command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def provision(root: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    done = cli("provision", *args, "--root", str(root), "--json")
    return (
        done.returncode,
        json.loads(done.stdout) if done.stdout.strip().startswith("{") else {},
        done.stderr,
    )


def entry(root: Path, name: str, file: str = "passwd") -> list[str]:
    for line in (root / "etc" / file).read_text().splitlines():
        if line.split(":")[0] == name:
            return line.split(":")
    raise AssertionError(f"{name} not in {file}")


def test_range_takes_the_first_aligned_block_that_is_wholly_free(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        passwd=(f"alice:x:{65536 + 5}:100::/home/alice:/bin/bash",),
        group=(f"builders:x:{131072 + 100}:",),
        subuid="alice:196608:65536\n",
    )
    code, out, stderr = provision(root, "range")
    assert code == 0, stderr
    assert out["applied"]
    user = entry(root, f"{P}-range-base")
    assert (user[2], user[3], user[6]) == ("262144", "262144", "/usr/sbin/nologin")
    assert entry(root, f"{P}-range-base", "group")[2] == "262144"


def test_the_provisioned_range_is_what_resolve_then_uses(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert provision(root, "range")[0] == 0
    done = cli("resolve", "--domid", "9", "--json", root=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["runas"] == f"{65536 + 9}:65536"


def test_a_second_run_changes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    for kind in (["range"], ["shared"], ["reaper"], ["user", "web"]):
        assert provision(root, *kind)[0] == 0
    before = digest(root)
    for kind in (["range"], ["shared"], ["reaper"], ["user", "web"]):
        code, out, stderr = provision(root, *kind)
        assert code == 0, stderr
        assert out["present"]
        assert not out["applied"]
    assert digest(root) == before


def test_single_accounts_get_distinct_system_ids_outside_the_range(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    for kind in (["range"], ["shared"], ["reaper"], ["user", "web"]):
        assert provision(root, *kind)[0] == 0
    ids = [int(entry(root, f"{P}-{n}")[2]) for n in ("shared", "reaper", "web")]
    assert len(set(ids)) == 3
    assert all(100 <= i <= 999 for i in ids)
    assert all(
        entry(root, f"{P}-{n}")[6] == "/usr/sbin/nologin" for n in ("shared", "reaper", "web")
    )


def test_dry_run_prints_the_exact_commands_and_writes_nothing(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    before = digest(root)
    done = cli("provision", "range", "--root", str(root), "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == f"groupadd --prefix {root} --system --gid 65536 {P}-range-base"
    assert lines[1].startswith(f"useradd --prefix {root} --system --no-create-home")
    assert digest(root) == before


@pytest.mark.parametrize(
    ("kind", "passwd", "words"),
    [
        (["shared"], (f"{P}-shared:x:500:500::/home/s:/bin/bash",), "login shell"),
        (["reaper"], (f"{P}-reaper:x:0:500{NOLOGIN}",), "uid 0"),
        (["user", "web"], (f"{P}-web:x:501:0{NOLOGIN}",), "gid 0"),
        (
            ["range"],
            (f"{P}-range-base:x:131072:131072{NOLOGIN}", f"bob:x:131080:100{NOLOGIN}"),
            "overlaps user bob",
        ),
    ],
)
def test_unsafe_existing_accounts_are_reported_and_left_alone(
    tmp_path: Path, kind: list[str], passwd: tuple[str, ...], words: str
) -> None:
    root = make_root(tmp_path, passwd=passwd)
    before = digest(root)
    done = cli("provision", *kind, "--root", str(root))
    assert done.returncode == 3
    assert words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert digest(root) == before


def test_seed_layout_accounts_inside_the_range_are_not_an_overlap(tmp_path: Path) -> None:
    root = make_root(
        tmp_path,
        passwd=(f"{P}-range-base:x:131072:131072{NOLOGIN}", f"{P}-base7:x:131079:131072{NOLOGIN}"),
    )
    code, out, stderr = provision(root, "range")
    assert (code, out["present"]) == (0, True), stderr


@pytest.mark.parametrize(("base", "code"), [("1000", 2), ("0", 2), ("65536", 3)])
def test_a_bad_or_taken_base_is_refused(tmp_path: Path, base: str, code: int) -> None:
    root = make_root(tmp_path, passwd=(f"carol:x:65600:100{NOLOGIN}",))
    before = digest(root)
    done = cli("provision", "range", "--base", base, "--root", str(root))
    assert done.returncode == code
    assert digest(root) == before


def test_doctor_is_happy_with_a_provisioned_root_and_names_each_problem(tmp_path: Path) -> None:
    good = make_root(tmp_path / "good")
    for kind in (["range"], ["reaper"]):
        assert provision(good, *kind)[0] == 0
    state = ["--state-dir", str(tmp_path / "state")]
    done = cli("doctor", "--root", str(good), *state, "--json", root=good)
    report = json.loads(done.stdout)
    assert done.returncode == 0, [f for f in report["findings"] if not f["ok"]]
    assert report["ready"]

    bad = make_root(tmp_path / "bad", passwd=(f"{P}-shared:x:500:0::/home/s:/bin/bash",))
    done = cli("doctor", "--root", str(bad), *state, root=bad)
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.startswith("FIX")]
    assert any("login shell" in line and "usermod --shell" in line for line in problems)
    assert any("gid 0" in line for line in problems)
    assert any("provision reaper" in line for line in problems)


@pytest.mark.parametrize("name", ["web.example.org", "Win10", "example.hvm"])
def test_provision_user_creates_what_the_hosts_useradd_accepts(tmp_path: Path, name: str) -> None:
    root = make_root(tmp_path)
    code, out, stderr = provision(root, "user", name)
    assert code == 0, stderr
    assert out["applied"]
    assert entry(root, f"{P}-{name}")[6] == "/usr/sbin/nologin"
    # ... and it is the account that the name tier then finds.
    done = cli("resolve", "--domid", "7", "--name", name, "--json", root=root)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["user"] == f"{P}-{name}"


def test_a_name_the_hosts_useradd_refuses_is_reported_and_nothing_is_left(
    tmp_path: Path,
) -> None:
    root = make_root(tmp_path)
    before = digest(root)
    long_name = "a-rather-long-domain-name"  # 38 characters with the prefix: past useradd's 32
    code, out, stderr = provision(root, "user", long_name)
    assert code == 2
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("qemu-depriv: error: this host's groupadd refuses the name")
    assert "not a valid group name" in line
    assert out["error"]["kind"] == "invalid-input"
    assert digest(root) == before  # no group left without its user


@pytest.mark.parametrize("name", ["my vm", "a:b", "a/b"])
def test_a_name_no_passwd_database_holds_is_refused_before_anything_runs(
    tmp_path: Path, name: str
) -> None:
    root = make_root(tmp_path)
    before = digest(root)
    code, _, stderr = provision(root, "user", name)
    assert code == 2
    assert "cannot be an account name" in stderr
    assert digest(root) == before


def test_an_id_a_user_holds_as_primary_gid_is_not_free(tmp_path: Path) -> None:
    """No group line names gid 100 or 65536, but svc and web hold them: the new accounts'
    groups would be theirs, and a VM would run in another user's primary group."""
    root = make_root(
        tmp_path, passwd=(f"svc:x:150:100{NOLOGIN}", f"web:x:151:{65536 + 3}{NOLOGIN}")
    )
    assert provision(root, "reaper")[0] == 0
    assert entry(root, f"{P}-reaper")[2:4] == ["101", "101"]
    assert provision(root, "range")[0] == 0
    assert entry(root, f"{P}-range-base")[2:4] == ["131072", "131072"]


def test_nis_compat_lines_take_their_ids(tmp_path: Path) -> None:
    """shadow's useradd counts '+name:x:100:100' as taken: so does the plan, and it succeeds."""
    root = make_root(tmp_path, passwd=("+nisuser:x:100:100::/home/nisuser:/bin/bash", "+::::::"))
    (root / "etc" / "group").write_text((root / "etc" / "group").read_text() + "+:::\n")
    code, out, stderr = provision(root, "reaper")
    assert code == 0, stderr
    assert out["applied"]
    assert entry(root, f"{P}-reaper")[2] == "101"


def test_a_refusal_with_json_prints_one_document(tmp_path: Path) -> None:
    root = make_root(tmp_path, passwd=(f"{P}-shared:x:500:500::/home/s:/bin/bash",))
    done = cli("provision", "shared", "--root", str(root), "--json")
    assert done.returncode == 3
    assert json.loads(done.stdout)["error"]["kind"] == "refused"


def test_the_range_account_is_named_as_it_is_created(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    code, out, _ = provision(root, "range")
    assert (code, out["account"]) == (0, f"{P}-range-base")
    before = digest(root)
    done = cli("provision", "range", "--base", "196608", "--root", str(root))
    assert done.returncode == 3
    assert f"{P}-range-base is at uid 65536, not --base 196608" in done.stderr
    assert digest(root) == before


def test_doctor_checks_the_seeds_range_and_the_alternate_roots_reaper(tmp_path: Path) -> None:
    """The seed's PREFIX-base is the range base when no PREFIX-range-base exists: its block
    must be free as well.  With --root, the reaper is the root's, not this host's."""
    root = make_root(
        tmp_path,
        passwd=(f"{P}-base:x:131072:131072{NOLOGIN}", "bob:x:131079:131079::/home/bob:/bin/bash"),
        group=(f"{P}-base:x:131072:", "bob:x:131079:"),
    )
    assert provision(root, "reaper")[0] == 0
    state = ["--state-dir", str(tmp_path / "state")]
    done = cli("doctor", "--root", str(root), *state)  # the host's NSS: no such reaper there
    assert done.returncode == 1
    problems = [line for line in done.stdout.splitlines() if line.startswith("FIX")]
    assert any(f"of {P}-base overlaps user bob" in line for line in problems), problems
    assert not any("provision reaper" in line for line in problems), problems


@pytest.mark.parametrize("command", ["provision", "doctor"])
def test_a_relative_root_is_refused(tmp_path: Path, command: str) -> None:
    args = ["range"] if command == "provision" else []
    done = cli(command, *args, "--root", "etc", "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 2
    assert "--root etc: give" in done.stderr


def test_subordinate_ids_in_another_encoding_are_read(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "etc" / "subuid").write_bytes(b"jos\xe9:65536:65536\n")
    code, _, stderr = provision(root, "range")
    assert code == 0, stderr
    assert entry(root, f"{P}-range-base")[2] == "131072"


def test_an_undo_that_fails_says_what_is_left(tmp_path: Path) -> None:
    """groupdel of a group that is not there fails for real: the report names it."""
    root = make_root(tmp_path)
    left = undo(("groupadd", "--prefix", str(root), "--system", "--gid", "100", "nosuch"))
    assert left is not None
    assert left.startswith(f"group nosuch is left (groupdel --prefix {root} nosuch: ")
    assert left.endswith("): remove it by hand")


def test_doctor_names_an_unsafe_seed_range_base_once(tmp_path: Path) -> None:
    root = make_root(tmp_path, passwd=(f"{P}-base:x:131072:131072::/home/b:/bin/bash",))
    done = cli("doctor", "--root", str(root), "--state-dir", str(tmp_path / "state"))
    shells = [line for line in done.stdout.splitlines() if "login shell" in line]
    assert len(shells) == 1, done.stdout
