"""Parsing /proc/PID/status and /proc/PID/stat.

Samples in tests/unit/samples/: ``qemu-runas-status.txt`` and ``qemu-runas-stat.txt`` come from
a real QEMU 7.2 started with ``-sandbox on,... -runas 131073:131072``; ``root-status.txt`` is
the status of PID 1, running as root with every capability.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from qemu_depriv.host import procfs
from qemu_depriv.host.procfs import (
    ProcStatus,
    identity,
    live_pids_of_uid,
    parse_start_time,
    parse_stat,
    parse_status,
    read_process,
    read_status,
    snapshot,
    start_time,
)

SAMPLES = Path(__file__).parent / "samples"
QEMU_STATUS = (SAMPLES / "qemu-runas-status.txt").read_bytes()
QEMU_STAT = (SAMPLES / "qemu-runas-stat.txt").read_bytes()
ROOT_STATUS = (SAMPLES / "root-status.txt").read_bytes()


def edited(raw: bytes, field: str, value: str | None) -> bytes:
    """Return ``raw`` with the line of ``field`` given ``value``, or removed when None."""
    prefix = f"{field}:".encode()
    lines = raw.splitlines(keepends=True)
    assert sum(line.startswith(prefix) for line in lines) == 1, f"no single {field} line"
    return b"".join(
        line
        if not line.startswith(prefix)
        else (b"" if value is None else prefix + b"\t" + value.encode() + b"\n")
        for line in lines
    )


# -- the QEMU sample --------------------------------------------------------------------------


def test_qemu_sample_has_all_four_uids_and_gids_of_the_runas_account() -> None:
    status = parse_status(QEMU_STATUS)
    assert status.uids == (131073, 131073, 131073, 131073)
    assert status.gids == (131072, 131072, 131072, 131072)


def test_qemu_sample_holds_only_the_runas_group() -> None:
    assert parse_status(QEMU_STATUS).groups == (131072,)


def test_qemu_sample_has_no_capabilities() -> None:
    status = parse_status(QEMU_STATUS)
    assert status.cap_eff == 0
    assert status.cap_prm == 0


def test_qemu_sample_runs_under_a_seccomp_filter_with_no_new_privs() -> None:
    status = parse_status(QEMU_STATUS)
    assert status.seccomp == 2
    assert status.no_new_privs is True


def test_qemu_sample_name_and_state() -> None:
    status = parse_status(QEMU_STATUS)
    assert status.name == "qemu-system-x86"
    assert status.state == "S (sleeping)"
    assert not status.zombie


# -- the root sample --------------------------------------------------------------------------


def test_root_sample_is_uid_and_gid_zero_with_every_capability() -> None:
    status = parse_status(ROOT_STATUS)
    assert status.uids == (0, 0, 0, 0)
    assert status.gids == (0, 0, 0, 0)
    assert status.cap_eff == 0x1FFFFFFFFFF
    assert status.cap_prm == 0x1FFFFFFFFFF


def test_root_sample_with_an_empty_groups_line_has_no_groups() -> None:
    assert parse_status(ROOT_STATUS).groups == ()


def test_root_sample_has_no_seccomp_and_no_no_new_privs() -> None:
    status = parse_status(ROOT_STATUS)
    assert status.seccomp == 0
    assert status.no_new_privs is False


# -- variations -------------------------------------------------------------------------------


def test_uids_are_read_in_real_effective_saved_filesystem_order() -> None:
    status = parse_status(edited(QEMU_STATUS, "Uid", "1\t2\t3\t4"))
    assert status.uids == (1, 2, 3, 4)
    status = parse_status(edited(QEMU_STATUS, "Gid", "5\t6\t7\t8"))
    assert status.gids == (5, 6, 7, 8)


def test_several_supplementary_groups_are_read_in_order() -> None:
    status = parse_status(edited(QEMU_STATUS, "Groups", "27 131072 4 "))
    assert status.groups == (27, 131072, 4)


def test_missing_groups_nonewprivs_and_seccomp_lines_read_as_none() -> None:
    raw = edited(edited(edited(QEMU_STATUS, "Groups", None), "NoNewPrivs", None), "Seccomp", None)
    status = parse_status(raw)
    assert status.groups == ()
    assert status.no_new_privs is False
    assert status.seccomp == 0


@pytest.mark.parametrize(
    ("state", "zombie"),
    [
        ("Z (zombie)", True),
        ("X (dead)", True),
        ("S (sleeping)", False),
        ("R (running)", False),
        ("D (disk sleep)", False),
        ("T (stopped)", False),
        ("t (tracing stop)", False),
        ("I (idle)", False),
    ],
)
def test_only_zombie_and_dead_states_count_as_gone(state: str, *, zombie: bool) -> None:
    status = parse_status(edited(QEMU_STATUS, "State", state))
    assert status.state == state
    assert status.zombie is zombie


# -- malformed status -------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["Name", "State", "Uid", "Gid", "CapEff", "CapPrm"])
def test_missing_required_field_is_a_value_error_naming_it(field: str) -> None:
    with pytest.raises(ValueError, match=f"malformed /proc status: '{field}'"):
        parse_status(edited(QEMU_STATUS, field, None))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Uid", "131073\tx\t131073\t131073"),
        ("Uid", "131073\t131073\t131073"),
        ("Gid", "131072\t131072\t131072\t131072\t131072"),
        ("Groups", "131072 wheel"),
        ("CapEff", "not-hex"),
        ("CapPrm", ""),
        ("Seccomp", "filter"),
    ],
)
def test_malformed_field_is_a_value_error(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="malformed /proc status"):
        parse_status(edited(QEMU_STATUS, field, value))


def test_empty_status_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="malformed /proc status"):
        parse_status(b"")


# -- /proc/PID/stat ---------------------------------------------------------------------------


def test_start_time_of_the_qemu_sample() -> None:
    assert parse_start_time(QEMU_STAT) == 74887


def stat_line(comm: bytes, start: int) -> bytes:
    """A stat line: field 3 is S, fields 4-21 are 4..21, field 22 is ``start``, 30 more follow."""
    before = [b"S", *(str(n).encode() for n in range(4, 22))]
    after = [str(n).encode() for n in range(100, 130)]
    return b"123 (" + comm + b") " + b" ".join([*before, str(start).encode(), *after]) + b"\n"


@pytest.mark.parametrize(
    "comm",
    [b"qemu", b"a) b) c", b"x) S 1 2 3 4 5", b"(", b")", b"a b", b""],
    ids=["plain", "parens", "fake-fields", "open-paren", "close-paren", "space", "empty"],
)
def test_start_time_survives_spaces_and_parentheses_in_the_command_name(comm: bytes) -> None:
    assert parse_start_time(stat_line(comm, 987654)) == 987654


def test_start_time_of_a_line_without_a_command_name_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="malformed /proc stat line"):
        parse_start_time(b"123 qemu S 1 2 3")


def test_non_numeric_start_time_is_a_value_error() -> None:
    line = stat_line(b"qemu", 0).replace(b" 0 100 ", b" later 100 ")
    with pytest.raises(ValueError, match="later"):
        parse_start_time(line)


def test_truncated_stat_line_is_a_value_error() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the point is the exception type alone
        parse_start_time(b"123 (qemu) S 1 2 3")


def test_state_and_start_time_of_a_stat_line() -> None:
    assert parse_stat(stat_line(b"a) Z b", 4242)) == ("S", 4242)
    assert parse_stat(stat_line(b"q", 7).replace(b") S ", b") Z ", 1)) == ("Z", 7)


# -- the scan for a uid's processes ---------------------------------------------------------


def fake_proc(root: Path, processes: dict[str, bytes]) -> Path:
    """A /proc-like tree: one directory per entry, holding its status file."""
    for name, status in processes.items():
        (root / name).mkdir()
        (root / name / "status").write_bytes(status)
    return root


def test_the_scan_finds_a_uid_in_any_of_the_four_places(tmp_path: Path) -> None:
    proc = fake_proc(
        tmp_path,
        {
            "10": edited(QEMU_STATUS, "Uid", "5000\t5000\t5000\t5000"),
            "11": edited(QEMU_STATUS, "Uid", "1\t2\t5000\t3"),
            "12": edited(QEMU_STATUS, "Uid", "1\t2\t3\t5000"),
            "13": edited(QEMU_STATUS, "Uid", "1\t2\t3\t4"),
            "14": edited(
                edited(QEMU_STATUS, "Uid", "5000\t5000\t5000\t5000"), "State", "Z (zombie)"
            ),
            "15": edited(QEMU_STATUS, "Uid", "five"),
            "16": b"",
            "self": edited(QEMU_STATUS, "Uid", "5000\t5000\t5000\t5000"),
        },
    )
    assert sorted(live_pids_of_uid(5000, proc)) == [10, 11, 12]
    assert live_pids_of_uid(4, proc) == [13]


def test_the_scan_agrees_with_the_full_parser_on_this_host() -> None:
    by_parser: dict[int, set[int]] = {}
    for entry in Path("/proc").iterdir():
        status = read_status(int(entry.name)) if entry.name.isdigit() else None
        if status is not None and not status.zombie:
            for uid in set(status.uids):
                by_parser.setdefault(uid, set()).add(int(entry.name))
    assert by_parser
    for uid, pids in by_parser.items():
        found = set(live_pids_of_uid(uid))
        # A process may exit meanwhile: those still there must have been found.
        still = {p for p in pids if (s := read_status(p)) is not None and not s.zombie}
        assert still <= found, uid


# -- reading one process through one handle ---------------------------------------------------


def fake_process(directory: Path, words: list[str], start: int) -> None:
    """A /proc/PID-like directory: the QEMU sample's status and every file a snapshot reads."""
    directory.mkdir()
    (directory / "status").write_bytes(QEMU_STATUS)
    (directory / "ns").mkdir()
    for name in ("mnt", "ipc", "net", "pid", "uts", "user"):
        (directory / "ns" / name).symlink_to(f"{name}:[{start}]")
    (directory / "fd").mkdir()
    (directory / "fd" / "0").symlink_to("/dev/null")
    (directory / "root").symlink_to("/")
    (directory / "limits").write_text(
        "Limit                     Soft Limit           Hard Limit           Units\n"
        "Max core file size        0                    0                    bytes\n"
    )
    (directory / "cgroup").write_text("0::/qemu\n")
    fields = QEMU_STAT.rstrip(b"\n").split(b" ")
    fields[21] = str(start).encode()  # field 22, the start time
    (directory / "stat").write_bytes(b" ".join(fields) + b"\n")
    (directory / "cmdline").write_bytes(b"".join(w.encode() + b"\0" for w in words))


def test_read_process_reads_the_snapshot_start_time_and_command_line(tmp_path: Path) -> None:
    fake_process(tmp_path / "123", ["qemu-system-x86_64", "-name", "a"], 4242)
    read = read_process(123, tmp_path)
    assert read is not None
    snap, started, words = read
    assert (snap.pid, snap.status.uids, snap.root) == (123, (131073,) * 4, "/")
    assert snap.namespaces["mnt"] == "mnt:[4242]"
    assert snap.limits == {"core": (0, 0)}
    assert (snap.cgroups, snap.fds) == ({"": "/qemu"}, ("/dev/null",))
    assert (started, words) == (4242, ("qemu-system-x86_64", "-name", "a"))
    assert read_process(124, tmp_path) is None


def test_a_pid_taken_by_another_process_midway_never_mixes_into_the_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first process exits after its first file is read, and a new one gets its pid.

    On a fake tree, whose directories outlive a rename, every later file still comes from the
    first: they are read through the handle opened on its directory, not by a path that now
    names the second.  (On /proc the later reads fail instead: the next test.)
    """
    fake_process(tmp_path / "123", ["qemu-system-x86_64", "-name", "first"], 1000)
    real_read_all = procfs._read_all

    def exit_and_reuse(path: str, directory: int | None = None) -> bytes:
        raw = real_read_all(path, directory)
        if not (tmp_path / "gone").exists():
            (tmp_path / "123").rename(tmp_path / "gone")
            fake_process(tmp_path / "123", ["qemu-system-x86_64", "-name", "second"], 2000)
        return raw

    monkeypatch.setattr(procfs, "_read_all", exit_and_reuse)
    read = read_process(123, tmp_path)
    assert read is not None
    snap, started, words = read
    assert (snap.namespaces["net"], started, words[-1]) == ("net:[1000]", 1000, "first")


@pytest.mark.parametrize("reader", [read_process, identity, snapshot])
def test_a_process_reaped_midway_reads_as_gone(
    monkeypatch: pytest.MonkeyPatch, reader: Callable[[int], object]
) -> None:
    """Killed and reaped once its status is read: the rest fails through the handle, None."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    real_parse = procfs.parse_status

    def reap_first(raw: bytes) -> ProcStatus:
        child.kill()
        child.wait()
        return real_parse(raw)

    monkeypatch.setattr(procfs, "parse_status", reap_first)
    try:
        assert reader(child.pid) is None
    finally:
        child.kill()
        child.wait()


def test_read_process_of_a_live_child_then_of_it_reaped() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)", "x y"]
    child = subprocess.Popen(argv)
    try:
        read = read_process(child.pid)
        assert read is not None
        snap, started, words = read
        assert (snap.pid, started) == (child.pid, start_time(child.pid))
        assert words == tuple(argv)
        assert snap.namespaces == {
            n: str(Path(f"/proc/self/ns/{n}").readlink()) for n in procfs.NAMESPACES
        }
    finally:
        child.kill()
        child.wait()
    assert read_process(child.pid) is None
    assert snapshot(child.pid) is None
    assert identity(child.pid) is None


def test_identity_of_a_live_child_is_its_status_start_time_and_command_line() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    child = subprocess.Popen(argv)
    try:
        assert identity(child.pid) == (read_status(child.pid), start_time(child.pid), tuple(argv))
    finally:
        child.kill()
        child.wait()
