"""The host tier's own smoke tests: the guests are the hosts users run, and the harness holds.

The first group needs no guest (the recipe, the prerequisites, a hung guest simulated); the
second runs inside each booted Debian host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.hosts import cache, images, prereqs, provision
from tests.hosts.distros import BOOKWORM, DISTROS, PRODUCT_PACKAGES
from tests.hosts.errors import GuestError, GuestTimeout, HostsUnavailable, ImageBuildError
from tests.hosts.machine import (
    GUEST_MARKER,
    Guest,
    MachineConfig,
    Runstate,
    qemu_argv,
    stop,
)
from tests.hosts.payload import REPOSITORY, checkout_files
from tests.hosts.qga import GuestAgent

# --- the harness itself, no guest needed -----------------------------------------------------


def test_guests_have_every_package_make_deps_installs() -> None:
    makefile = (REPOSITORY / "Makefile").read_text()
    match = re.search(r"^APT_PACKAGES\s*:=\s*(.*)$", makefile, re.MULTILINE)
    assert match, "the Makefile no longer sets APT_PACKAGES"
    for distro in DISTROS.values():
        assert set(match.group(1).split()) <= set(distro.packages), distro.name
    assert set(PRODUCT_PACKAGES) <= set(BOOKWORM.packages)


def test_the_cache_key_follows_the_package_list_and_the_hook() -> None:
    hook = images.CUSTOMIZE_HOOK.read_text()
    key = images.cache_key(BOOKWORM, hook)
    assert images.cache_key(BOOKWORM, hook) == key
    more = dataclasses.replace(BOOKWORM, packages=(*BOOKWORM.packages, "strace"))
    assert images.cache_key(more, hook) != key
    assert images.cache_key(BOOKWORM, hook + "\ntrue\n") != key
    assert images.cache_key(DISTROS["trixie"], hook) != key


def test_a_failed_build_leaves_no_cache_entry_and_the_next_one_starts_clean(
    tmp_path: Path,
) -> None:
    def broken(directory: Path) -> None:
        (directory / "half").write_text("half an image")
        raise ImageBuildError("bookworm", "mmdebstrap (exit status 1)", tmp_path, "")

    with pytest.raises(ImageBuildError):
        cache.entry(tmp_path, "bookworm-k1", broken)
    assert not (tmp_path / "bookworm-k1").exists()
    (tmp_path / ".building-bookworm-k1-99999").mkdir()  # a build whose process died
    built: list[Path] = []
    entry, seconds = cache.entry(tmp_path, "bookworm-k1", built.append)
    assert entry == tmp_path / "bookworm-k1"
    assert seconds is not None
    assert [path.name for path in tmp_path.glob(".building-*")] == []
    assert cache.entry(tmp_path, "bookworm-k1", built.append) == (entry, None)
    assert len(built) == 1, "a cached entry was built again"


def test_only_the_newest_images_of_a_distribution_are_kept(tmp_path: Path) -> None:
    for age, name in enumerate(("bookworm-new", "bookworm-mid", "bookworm-old", "trixie-x")):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1_000_000 - age, 1_000_000 - age))
    cache.prune(tmp_path, "bookworm-", keep=tmp_path / "bookworm-old", count=2)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "bookworm-new",
        "bookworm-old",
        "trixie-x",
    ]


def test_a_machine_without_the_tools_fails_the_tier_naming_them(tmp_path: Path) -> None:
    problems = prereqs.missing(
        BOOKWORM, building=True, path=str(tmp_path), mirror="http://127.0.0.1:9/debian"
    )
    text = str(HostsUnavailable(problems))
    for needed in ("mmdebstrap", "mke2fs", "qemu-system-x86_64", "git", "Debian mirror"):
        assert needed in text
    assert not [p for p in prereqs.missing(BOOKWORM, building=False) if "mmdebstrap" in p]


def test_guest_qemus_carry_the_marker(tmp_path: Path) -> None:
    image = images.Image("trixie", tmp_path, {})
    config = MachineConfig("trixie", image, "tcg", tmp_path, tmp_path / "p", tmp_path / "r")
    argv = qemu_argv(config)
    assert argv[argv.index("-name") + 1].startswith(f"{GUEST_MARKER}-trixie")
    assert f"file={image.rootfs},format=raw,if=virtio,snapshot=on,cache=unsafe" in argv


def test_the_payload_is_the_working_tree_without_ignored_files() -> None:
    files = checkout_files(REPOSITORY)
    assert "pyproject.toml" in files
    assert "tests/hosts/test_harness.py" in files
    assert not [name for name in files if name.startswith((".venv/", ".git/"))]


def test_a_hung_guest_is_killed_and_the_failure_says_what_it_was_doing(tmp_path: Path) -> None:
    # An agent socket nobody answers on, and a process standing in for QEMU.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "qga.sock"))
    listener.listen()
    stand_in = subprocess.Popen(["sleep", "600"])
    try:
        agent = GuestAgent(tmp_path / "qga.sock", reply_timeout=1.0)
        agent.connect()
        image = images.Image("bookworm", tmp_path, {})
        config = MachineConfig("bookworm", image, "tcg", tmp_path, tmp_path, tmp_path)
        guest = Guest(config, stand_in, agent, state=Runstate.RUNNING, grace=1.0)
        with pytest.raises(GuestTimeout, match="while installing the world"):
            guest.run(["true"], timeout=1, doing="installing the world")
        assert stand_in.poll() is not None, "the hung guest's QEMU was not killed"
        with pytest.raises(GuestError, match="hung while installing the world"):
            guest.run(["true"], timeout=1)
    finally:
        stop(stand_in)
        listener.close()


# --- inside each booted host -------------------------------------------------------------------


def test_pid1_is_systemd(host: Guest) -> None:
    assert host.check(["readlink", "/proc/1/exe"], timeout=30, doing="reading PID 1's exe").stdout
    comm = host.check(["cat", "/proc/1/comm"], timeout=30, doing="reading PID 1's name")
    assert comm.stdout.strip() == "systemd"
    assert host.system_state in ("running", "degraded"), host.system_state


def test_the_guest_is_the_debian_release_it_claims(host: Guest) -> None:
    release = host.check(["cat", "/etc/os-release"], timeout=30, doing="reading os-release")
    assert f'VERSION_ID="{DISTROS[host.name].version_id}"' in release.stdout
    assert f"VERSION_CODENAME={host.name}" in release.stdout


def test_cgroup_v2_is_the_only_hierarchy(host: Guest) -> None:
    fs = host.check(["stat", "-fc", "%T", "/sys/fs/cgroup"], timeout=30, doing="stat cgroupfs")
    assert fs.stdout.strip() == "cgroup2fs"
    mounts = host.check(["cat", "/proc/mounts"], timeout=30, doing="reading mounts").stdout
    types = {line.split()[2] for line in mounts.splitlines()}
    assert "cgroup" not in types, "a cgroup v1 hierarchy is mounted"
    own = host.check(["cat", "/proc/self/cgroup"], timeout=30, doing="reading own cgroup").stdout
    assert own.startswith("0::/"), own
    assert len(own.splitlines()) == 1, own


def test_systemd_run_scope_places_a_command_in_a_limited_scope(host: Guest) -> None:
    script = "cat /sys/fs/cgroup$(cut -d: -f3 /proc/self/cgroup)/memory.max; cat /proc/self/cgroup"
    done = host.check(
        [
            *("systemd-run", "--scope", "--quiet", "--unit=qdh-smoke", "--property=MemoryMax=64M"),
            *("sh", "-c", script),
        ],
        timeout=60,
        doing="running a command in a transient scope",
    )
    memory_max, cgroup = done.stdout.split()
    assert memory_max == str(64 * 1024 * 1024)
    assert cgroup.endswith("/qdh-smoke.scope"), cgroup


def test_qemu_is_the_release_version(host: Guest) -> None:
    version = host.check(
        ["qemu-system-x86_64", "--version"], timeout=60, doing="asking QEMU its version"
    )
    series = DISTROS[host.name].qemu_series
    assert version.stdout.startswith(f"QEMU emulator version {series}."), version.stdout


def test_the_checkout_is_installed_in_a_venv(host: Guest) -> None:
    venv_python = f"{provision.VENV}/bin/python"
    cli = host.check(
        [venv_python, "-m", "qemu_depriv", "--version"], timeout=120, doing="qemu-depriv --version"
    )
    assert cli.stdout.startswith("qemu-depriv "), cli.stdout
    where = host.check(
        [
            venv_python,
            "-c",
            "import sys, qemu_depriv; print(sys.version); print(qemu_depriv.__file__)",
        ],
        timeout=60,
        doing="locating the installed package",
    ).stdout.splitlines()
    assert where[0].startswith(DISTROS[host.name].python_version + ".")
    assert where[1].startswith(f"{provision.CHECKOUT}/src/qemu_depriv/")


def test_a_nested_qemu_starts_and_answers_qmp(host: Guest) -> None:
    probe = (
        "import json\n"
        "from qemu.qmp.legacy import QEMUMonitorProtocol\n"
        "qmp = QEMUMonitorProtocol('/tmp/q.sock')\n"
        "qmp.connect()\n"
        "answer = {'version': qmp.cmd('query-version'), 'status': qmp.cmd('query-status')}\n"
        "print(json.dumps(answer))\n"
        "qmp.close()\n"
    )
    script = f"""
        qemu-system-x86_64 -machine pc -accel tcg -nodefaults -display none -S \\
            -qmp unix:/tmp/q.sock,server=on,wait=off &
        qemu=$!
        trap 'kill $qemu 2>/dev/null || true' EXIT
        for _ in $(seq 100); do [ -S /tmp/q.sock ] && break; sleep 0.1; done
        sleep 1
        kill -0 $qemu
        {provision.VENV}/bin/python -c "$PROBE"
    """
    done = host.check(
        ["/bin/sh", "-euc", script],
        timeout=120,
        env={"PROBE": probe},
        doing="starting a nested QEMU (TCG) and asking it over QMP",
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    major, minor = (int(part) for part in DISTROS[host.name].qemu_series.split("."))
    assert answer["version"]["qemu"]["major"] == major
    assert answer["version"]["qemu"]["minor"] == minor
    assert answer["status"]["status"] == "prelaunch"


def test_results_written_in_the_guest_reach_the_host(host: Guest) -> None:
    report = {"host": host.name, "junit": "<testsuite/>"}
    host.check(
        ["sh", "-c", f"cat > {provision.RESULTS}/{host.name}-probe.json"],
        timeout=30,
        stdin=json.dumps(report).encode(),
        doing="writing a result file",
    )
    assert json.loads((host.results / f"{host.name}-probe.json").read_text()) == report


def test_pytest_runs_in_the_guest_and_its_report_reaches_the_host(host: Guest) -> None:
    probe = (
        "import os\n\n\n"
        "def test_runs_as_root_in_the_guest():\n"
        "    assert os.geteuid() == 0\n\n\n"
        "def test_sees_systemd():\n"
        "    assert open('/proc/1/comm').read().strip() == 'systemd'\n"
    )
    host.check(
        ["sh", "-c", "mkdir -p /tmp/probe && cat > /tmp/probe/test_probe.py"],
        timeout=30,
        stdin=probe.encode(),
        doing="writing a probe test",
    )
    inner = provision.run_pytest(host, ["-q", "/tmp/probe"], timeout=300, name="probe")
    assert inner.result.ok, inner.result.stdout + inner.result.stderr
    assert inner.counts() == {"tests": 2, "failures": 0, "errors": 0, "skipped": 0}


def test_a_command_over_its_timeout_is_stopped_and_the_guest_lives_on(host: Guest) -> None:
    slow = host.run(["sleep", "60"], timeout=2)
    assert slow.timed_out
    assert slow.seconds < 30
    assert host.check(["true"], timeout=30, doing="checking the guest survived").ok


def test_the_guest_qemu_is_marked_while_it_runs(host: Guest) -> None:
    cmdline = Path(f"/proc/{host.process.pid}/cmdline").read_bytes()
    assert GUEST_MARKER.encode() in cmdline
