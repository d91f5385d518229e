"""What the guest reads at boot: the checkout's working tree and the wheels, in one directory.

The directory is shared read-only over 9p (``machine``), so the guest gets exactly the host's
files, including uncommitted and untracked ones (``git ls-files -co --exclude-standard``: what
``git status`` would show, without ``.venv`` or caches), and can never write back into them.
It is a copy under pytest's temporary directory, not the repository itself: a test, or a
developer editing files meanwhile, cannot change what a running guest installs.
"""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

from tests.hosts.commands import run_captured
from tests.hosts.errors import HostsError

#: The repository this package lives in: the checkout the guests install.
REPOSITORY = Path(__file__).resolve().parents[2]


def checkout_files(repository: Path) -> list[str]:
    """The working tree's files, relative paths: tracked (as on disk) and untracked, not ignored.

    Raises ``HostsError`` when git cannot list them (not a checkout, git missing).
    """
    listed = run_captured(
        [
            "git",
            "-C",
            str(repository),
            "ls-files",
            "-z",
            "--cached",
            "--others",
            "--exclude-standard",
        ],
        timeout=60,
    )
    if listed.returncode != 0:
        raise HostsError(f"git ls-files in {repository} failed: {listed.stderr.strip()}")
    names = sorted({name for name in listed.stdout.split("\0") if name})
    # A tracked file deleted in the working tree is still listed; the guest gets the tree as is.
    return [name for name in names if (repository / name).is_file()]


def stage(repository: Path, wheels: Path, dest: Path) -> Path:
    """Lay out ``dest/checkout.tar`` (the working tree) and ``dest/wheels``; return ``dest``.

    One tar file, not a tree: under TCG every 9p operation is slow, and copying a few hundred
    small files one by one took 20 seconds where reading one archive takes one or two.
    """
    (dest / "wheels").mkdir(parents=True)
    with tarfile.open(dest / "checkout.tar", "w") as archive:
        for name in checkout_files(repository):
            archive.add(repository / name, arcname=name, recursive=False)
    for wheel in wheels.iterdir():
        target = dest / "wheels" / wheel.name
        try:
            os.link(wheel, target)
        except OSError:
            shutil.copy2(wheel, target)
    return dest
