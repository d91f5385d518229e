"""A domain with xl's nested lists (vnuma, vsnd), or with disks written in the styles xl reads
(blanks after commas, deprecated prefixes), gets its device model's argv from a dry run.

The dry run starts nothing and writes nothing: it looks the accounts up through the host's own
NSS (read only) and, with ``--no-restrict``, falls back to root when none exists, so the test
holds on any host.  It needs QEMU's binary for the capability probe (``make test`` installs
qemu-system-x86).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qemu_depriv.xl.config import load_domain

CORPUS = Path(__file__).parent / "corpus"

CONFIG = """\
name = "numa"
type = "hvm"
memory = 2048
vcpus = 4
vnuma = [ [ "pnode=0", "size=1024", "vcpus=0-1", "vdistances=10,20" ],
          [ "pnode=1", "size=1024", "vcpus=2-3", "vdistances=20,10" ] ]
vsnd = [ [ 'card, backend=0, short-name=Main',
           'pcm, name=Main',
           'stream, unique-id=0, type=p' ],
       ]
disk = [ '/srv/numa.img,raw,xvda,w' ]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "numa.cfg"
    path.write_text(CONFIG)
    return path


def dry_run(config: Path, state: Path, *args: str) -> dict[str, object]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8"}
    command = [sys.executable, "-m", "qemu_depriv", "--state-dir", str(state), "launch"]
    done = subprocess.run(
        [*command, str(config), "--dry-run", "--no-restrict", "--json", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    plan: dict[str, object] = json.loads(done.stdout)
    return plan


def test_the_nested_lists_are_read_and_left_to_xl(config: Path) -> None:
    domain = load_domain(config)
    assert (domain.name, domain.type, domain.vcpus, domain.memory) == ("numa", "hvm", 4, 2048)


@pytest.mark.parametrize("mode", ["xen", "standalone"])
def test_launch_dry_run_on_vnuma_and_vsnd_gives_the_argv(
    config: Path, tmp_path: Path, mode: str
) -> None:
    plan = dry_run(config, tmp_path / "state", "--mode", mode, "--domid", "7")
    argv = plan["argv"]
    assert isinstance(argv, list)
    assert argv[argv.index("-smp") + 1].startswith("4")
    assert any("file=/srv/numa.img" in arg for arg in argv)
    if mode == "xen":
        assert argv[argv.index("-xen-domid") + 1] == "7"
    assert not (tmp_path / "state").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    ("name", "drive"),
    [
        ("hvm-windows10.cfg", "file=/dev/vg_vms/win10,if=ide,index=0,media=disk,format=raw"),
        ("hvm-legacy-builder.cfg", "file=/var/xen/legacy-nt.img,if=ide,index=0,media=disk"),
    ],
)
def test_configs_with_xls_disk_styles_launch_in_a_dry_run(
    tmp_path: Path, name: str, drive: str
) -> None:
    """Blanks after commas (``format=raw, vdev=hda``) and ``file:/img,ioemu:hda,w``, both once
    refused, are read as xl reads them."""
    plan = dry_run(CORPUS / name, tmp_path / "state", "--mode", "xen", "--domid", "7")
    argv = plan["argv"]
    assert isinstance(argv, list)
    assert any(arg.startswith(drive) for arg in argv), argv
    assert not (tmp_path / "state").exists()
