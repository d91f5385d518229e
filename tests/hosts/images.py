"""Host images: a Debian root filesystem on an ext4 disk, and the kernel and initrd it ships.

How an image is made, and why that way:

1. ``mmdebstrap --mode=root --format=directory`` installs the distribution's packages from
   deb.debian.org into a directory. Root mode chroots and mounts ``/proc``, ``/sys`` and ``/dev``
   in it, so it needs CAP_SYS_ADMIN: the tier runs as root anyway (``unshare`` mode would need
   subuid ranges this machine does not set up). Maintainer scripts run as on a real install, so
   initramfs-tools writes the initrd the distribution would boot with.
2. The kernel and initrd are copied out of ``/boot``: QEMU boots them with ``-kernel/-initrd``,
   so the image needs no boot loader, partition table or firmware.
3. ``mke2fs -d`` turns the directory into an ext4 filesystem image without mounting anything (no
   loop device, nothing to unmount when a build dies). The image is sparse.

The cache: ``CACHE_ROOT/<distro>-<key>/`` where the key hashes the recipe (every mmdebstrap
option, the package list, the customize hook's text, the filesystem options and
``RECIPE_VERSION``), so changing any of them builds a new image. A build happens in a hidden
directory renamed into place only once complete, under a lock (``cache``), so a half-built image
is never used and two sessions never build the same key at once. The newest
``KEEP_PER_DISTRO`` images of a distribution are kept, older ones removed.

The mirror moves on (point releases, security updates) without changing the key: an image is as
old as its build. ``manifest.json`` records when it was built and what versions it holds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.hosts import cache
from tests.hosts.commands import run_logged, tail
from tests.hosts.distros import Distro
from tests.hosts.errors import ImageBuildError

log = logging.getLogger(__name__)

#: Bump when the build changes in a way the recipe below does not show.
RECIPE_VERSION = 1
#: The disk the guest sees; sparse, so only what is written takes space.
DISK_SIZE = "8G"
CUSTOMIZE_HOOK = Path(__file__).with_name("customize.sh")
DEFAULT_CACHE_ROOT = Path("/var/cache/qemu-depriv/hosts")
#: An environment variable that moves the cache (CI with a persistent volume elsewhere).
CACHE_ENV = "QEMU_DEPRIV_HOSTS_CACHE"
KEEP_PER_DISTRO = 2
BUILD_TIMEOUT = 3600.0
#: Kept small: no manual pages, documentation (but copyright files) or translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
)
APT_OPTIONS = ('Acquire::Retries "3"', 'Acquire::Languages "none"')
MKFS_OPTIONS = ("-t", "ext4", "-L", "qdh-root", "-q", "-F")
#: Packages whose versions the manifest records, for the report and the smoke tests.
KEY_PACKAGES = ("qemu-system-x86", "systemd", "python3", "linux-image-amd64", "qemu-guest-agent")


@dataclass(frozen=True)
class Image:
    """A complete cached image: boot it with ``kernel``, ``initrd`` and ``rootfs`` (read-only)."""

    distro: str
    directory: Path
    manifest: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        """The ext4 disk image, opened by QEMU with ``snapshot=on``: it is never written."""
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        """The distribution's own kernel, copied from the image's ``/boot``."""
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        """The initrd initramfs-tools made for that kernel inside the image."""
        return self.directory / "initrd.img"


@dataclass(frozen=True)
class Provided:
    """An image and how it came: ``built`` (taking ``seconds``) or found in the cache."""

    image: Image
    built: bool
    seconds: float


def cache_root() -> Path:
    """Where images live: ``$QEMU_DEPRIV_HOSTS_CACHE`` or ``/var/cache/qemu-depriv/hosts``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE_ROOT)


def recipe(distro: Distro, customize_text: str) -> dict[str, Any]:
    """Everything that decides an image's content, as one JSON-able value (the key's input)."""
    return {
        "recipe_version": RECIPE_VERSION,
        "suite": distro.name,
        "sources": list(distro.sources()),
        "variant": "apt",
        "packages": sorted(distro.packages),
        "dpkg_options": list(DPKG_OPTIONS),
        "apt_options": list(APT_OPTIONS),
        "customize_sha256": hashlib.sha256(customize_text.encode()).hexdigest(),
        "mkfs": [*MKFS_OPTIONS, DISK_SIZE],
    }


def cache_key(distro: Distro, customize_text: str) -> str:
    """A short hash of the recipe: equal keys mean interchangeable images."""
    canonical = json.dumps(recipe(distro, customize_text), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def mmdebstrap_argv(distro: Distro, target: Path, customize_hook: Path) -> list[str]:
    """The mmdebstrap command line for ``distro`` into the directory ``target``."""
    hook = f'sh {shlex.quote(str(customize_hook))} "$1" {shlex.quote(distro.name)}'
    return [
        "mmdebstrap",
        "--mode=root",
        "--format=directory",
        "--variant=apt",
        "--include=" + ",".join(sorted(distro.packages)),
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        *(f"--aptopt={option}" for option in APT_OPTIONS),
        f"--customize-hook={hook}",
        distro.name,
        str(target),
        *distro.sources(),
    ]


def parse_dpkg_status(text: str) -> dict[str, str]:
    """Installed package name to version, from ``/var/lib/dpkg/status``."""
    versions: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key] = value.strip()
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            versions[fields["Package"]] = fields.get("Version", "")
    return versions


def lookup(distro: Distro, root: Path | None = None) -> Image | None:
    """The cached image for ``distro``'s current recipe, or None when it would be built."""
    directory = (
        root or cache_root()
    ) / f"{distro.name}-{cache_key(distro, CUSTOMIZE_HOOK.read_text())}"
    manifest = directory / "manifest.json"
    if not manifest.is_file():
        return None
    return Image(distro.name, directory, json.loads(manifest.read_text()))


def provide(distro: Distro, root: Path | None = None) -> Provided:
    """The cached image for ``distro``, built first when the cache has none for its key.

    Raises ``ImageBuildError`` (naming the step and the log) when a build fails.
    """
    root = root or cache_root()
    key = cache_key(distro, CUSTOMIZE_HOOK.read_text())
    directory, seconds = cache.entry(
        root, f"{distro.name}-{key}", lambda building: _build(distro, key, building)
    )
    if seconds is not None:
        cache.prune(root, f"{distro.name}-", keep=directory, count=KEEP_PER_DISTRO)
    cache.touch(directory)
    image = Image(distro.name, directory, json.loads((directory / "manifest.json").read_text()))
    return Provided(image, built=seconds is not None, seconds=seconds or 0.0)


def _build(distro: Distro, key: str, building: Path) -> None:
    # Beside the entry, not in it: a failed build's directory is removed, its log must stay.
    build_log = building.parent / f"{distro.name}-{key}.build.log"
    build_log.unlink(missing_ok=True)
    rootdir = building / "rootfs.d"
    started = time.monotonic()
    _step(distro, "mmdebstrap", mmdebstrap_argv(distro, rootdir, CUSTOMIZE_HOOK), build_log)
    boot = rootdir / "boot"
    kernels = sorted(boot.glob("vmlinuz-*"))
    if len(kernels) != 1:
        names = [path.name for path in kernels]
        raise ImageBuildError(distro.name, f"finding one kernel in /boot ({names})", build_log, "")
    release = kernels[0].name.removeprefix("vmlinuz-")
    initrd = boot / f"initrd.img-{release}"
    if not initrd.is_file():
        raise ImageBuildError(distro.name, f"finding {initrd.name} in /boot", build_log, "")
    shutil.copyfile(kernels[0], building / "vmlinuz")
    shutil.copyfile(initrd, building / "initrd.img")
    versions = parse_dpkg_status((rootdir / "var/lib/dpkg/status").read_text())
    (building / "packages.txt").write_text(
        "".join(f"{name}\t{version}\n" for name, version in sorted(versions.items()))
    )
    mkfs = ["mke2fs", *MKFS_OPTIONS, "-d", str(rootdir), str(building / "rootfs.img"), DISK_SIZE]
    _step(distro, "mke2fs", mkfs, build_log)
    cache.remove_tree(rootdir)
    manifest = {
        "distro": distro.name,
        "key": key,
        "recipe": recipe(distro, CUSTOMIZE_HOOK.read_text()),
        "kernel_release": release,
        "versions": {name: versions.get(name) for name in KEY_PACKAGES},
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.monotonic() - started, 1),
    }
    for name in ("rootfs.img", "vmlinuz", "initrd.img", "packages.txt"):
        (building / name).chmod(0o444)
    build_log.rename(building / "build.log")
    # Written last, for a reader of the build directory: the rename is what publishes it.
    (building / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _step(distro: Distro, step: str, argv: list[str], build_log: Path) -> None:
    try:
        status = run_logged(argv, build_log, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        raise ImageBuildError(
            distro.name, f"{step} (over {BUILD_TIMEOUT:.0f} s)", build_log, tail(build_log)
        ) from exc
    except OSError as exc:
        raise ImageBuildError(distro.name, f"{step}: {exc}", build_log, "") from exc
    if status != 0:
        raise ImageBuildError(
            distro.name, f"{step} (exit status {status})", build_log, tail(build_log)
        )
