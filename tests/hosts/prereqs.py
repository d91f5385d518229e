"""What this machine must have for the host tier, checked up front so a failure names it all.

Never a skip: a machine that cannot build or boot the hosts fails the tier with the list of what
is missing (a tool, the mirror, root), because a skipped tier looks green in CI.
"""

from __future__ import annotations

import os
import shutil
import urllib.error
import urllib.request

from tests.hosts.commands import PATH
from tests.hosts.distros import MIRROR, Distro
from tests.hosts.errors import HostsUnavailable

#: Debian package that provides each program the tier runs on the host.
PROGRAMS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "git": "git",
}
BUILD_PROGRAMS = {
    "mmdebstrap": "mmdebstrap",
    "mke2fs": "e2fsprogs",
}


def missing(distro: Distro, building: bool, path: str = PATH, mirror: str = MIRROR) -> list[str]:
    """What stops ``distro`` from being built (if ``building``) and booted here; empty if nothing.

    ``path`` and ``mirror`` are where to look for the programs and the packages.
    """
    found = []
    if os.geteuid() != 0:
        found.append("root (mmdebstrap's root mode mounts; QEMU's 9p shares map ownership)")
    programs = {**PROGRAMS, **(BUILD_PROGRAMS if building else {})}
    for program, package in programs.items():
        if shutil.which(program, path=path) is None:
            found.append(f"{program} (Debian package {package})")
    if building:
        problem = _mirror_problem(distro, mirror)
        if problem:
            found.append(problem)
    return found


def require(distro: Distro, building: bool) -> None:
    """Raise ``HostsUnavailable`` naming everything ``missing`` reports."""
    problems = missing(distro, building)
    if problems:
        raise HostsUnavailable(problems)


def _mirror_problem(distro: Distro, mirror: str) -> str:
    url = f"{mirror}/dists/{distro.name}/InRelease"
    try:
        with urllib.request.urlopen(url, timeout=20) as response:  # noqa: S310 - http on purpose
            response.read(1)
    except (urllib.error.URLError, OSError) as exc:
        return f"the Debian mirror ({url}: {exc})"
    return ""
