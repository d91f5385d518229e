"""The Python wheels a guest needs to install the checkout, fetched on the host.

The guests have no network, so ``pip install`` inside runs with ``--no-index`` over a directory of
wheels the host downloaded with the venv's own pip. Not all of them are pure Python: the test
extra brings mypy (compiled per CPython version), ruff (a platform binary) and hypothesis (which
publishes per-version wheels), so each guest gets wheels for its own interpreter (CPython 3.11 on
bookworm, 3.13 on trixie) and glibc, asked for with pip's ``--python-version``, ``--abi`` and
``--platform``.

What is downloaded: the project's dependencies and its ``test`` extra, read from pyproject.toml,
plus its build backend and what that backend needs for an editable install (the guest builds
one from the checkout), each pinned to the version the host's venv has (``pip freeze``) so that
the guest runs what the developer runs. A pin with no wheel for the guest's Python fails the
download, naming it.

The set is cached like the images (``cache``), keyed by those requirements and pins and the
target interpreter.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import tomllib
from pathlib import Path

from tests.hosts import cache
from tests.hosts.commands import run_captured, run_logged, tail
from tests.hosts.distros import Distro
from tests.hosts.errors import HostsError

DOWNLOAD_TIMEOUT = 900.0
#: What hatchling asks for when pip builds an editable install (pip's
#: ``get_requires_for_build_editable``), which ``build-system.requires`` does not list.
EDITABLE_BUILD = ("editables",)
#: Packages pip itself manages in a venv; never pinned from the host.
_UNPINNED = {"pip", "setuptools", "wheel"}


class WheelsError(HostsError):
    """pip could not provide the wheels for a guest; its output is in ``log``."""


def build_requirements(pyproject_text: str) -> list[str]:
    """What an editable build needs: ``build-system.requires`` and ``EDITABLE_BUILD``."""
    data = tomllib.loads(pyproject_text)
    return sorted({*data.get("build-system", {}).get("requires", []), *EDITABLE_BUILD})


def requirements(pyproject_text: str) -> list[str]:
    """The project's runtime and test requirements and what building it needs."""
    project = tomllib.loads(pyproject_text).get("project", {})
    found = [
        *project.get("dependencies", []),
        *project.get("optional-dependencies", {}).get("test", []),
        *build_requirements(pyproject_text),
    ]
    return sorted(set(found))


def pins(freeze_output: str) -> list[str]:
    """``name==version`` lines from ``pip freeze``, without editables and pip's own packages."""
    found = []
    for line in freeze_output.splitlines():
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
        if match and _normalized(match.group(1)) not in _UNPINNED:
            found.append(f"{match.group(1)}=={match.group(2)}")
    return sorted(found)


def platforms(glibc: str) -> list[str]:
    """Every manylinux tag a guest with this glibc accepts: pip does not expand them itself."""
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{n}_x86_64" for n in range(minor, 4, -1)]
    return [*tags, "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def download_argv(distro: Distro, dest: Path, constraints: Path, wanted: list[str]) -> list[str]:
    """``pip download`` for ``distro``'s interpreter, binary wheels only (the guest builds none)."""
    abi = "cp" + distro.python_version.replace(".", "")
    argv = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest)]
    argv += ["--only-binary=:all:", "--python-version", distro.python_version]
    argv += ["--implementation", "cp", "--abi", abi]
    for tag in platforms(distro.glibc):
        argv += ["--platform", tag]
    return [*argv, "--constraint", str(constraints), *wanted]


def provide(distro: Distro, pyproject: Path, root: Path) -> Path:
    """A directory of wheels for ``distro``'s Python, downloaded unless cached.

    Raises ``WheelsError`` when pip fails (no network to the index, a pin without a wheel).
    """
    wanted = requirements(pyproject.read_text())
    freeze = run_captured([sys.executable, "-m", "pip", "freeze", "--exclude-editable"], 120)
    if freeze.returncode != 0:
        raise WheelsError(f"pip freeze in {sys.prefix} failed: {freeze.stderr.strip()}")
    pinned = pins(freeze.stdout)
    recipe = {"wanted": wanted, "pins": pinned, "python": distro.python_version}
    recipe["glibc"] = distro.glibc
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]
    name = f"wheels-{distro.name}-{key}"

    def download(building: Path) -> None:
        constraints = building / "constraints.txt"
        constraints.write_text("".join(f"{pin}\n" for pin in pinned))
        log_path = root / f"{name}.log"
        log_path.unlink(missing_ok=True)
        argv = download_argv(distro, building / "wheels", constraints, wanted)
        if run_logged(argv, log_path, timeout=DOWNLOAD_TIMEOUT) != 0:
            raise WheelsError(
                f"pip could not download the wheels for {distro.name} (Python "
                f"{distro.python_version}); log: {log_path}:\n{tail(log_path)}"
            )
        log_path.rename(building / "download.log")

    directory, _ = cache.entry(root, name, download)
    cache.prune(root, f"wheels-{distro.name}-", keep=directory, count=2)
    cache.touch(directory)
    return directory / "wheels"


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()
