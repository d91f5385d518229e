"""The hosts users run, as values: Debian 12 (bookworm) and Debian 13 (trixie).

Pure data. Each package on the lists below is there for a reason a reader can check:

- the host itself: the distribution's own kernel (``linux-image-amd64``, whose initrd
  initramfs-tools makes), systemd as PID 1 (``systemd-sysv``), ``udev`` (device units, and the
  guest agent is started by a udev rule), ``dbus`` (systemd's bus API that ``systemd-run`` and
  ``StartTransientUnit`` use), ``kmod`` (the initrd and 9p need modules), ``e2fsprogs`` (fsck of
  the root filesystem);
- the channel: ``qemu-guest-agent`` runs the harness's commands;
- the product's test suite: the same system packages ``make deps`` installs on a developer's
  machine (the Makefile's ``APT_PACKAGES``; ``test_harness`` checks the two lists agree), plus
  ``iproute2`` (bridges, taps) and ``procps`` (``ps``, ``pgrep``).

Cgroup v2 only and systemd's defaults are left alone on purpose: the point is the host as Debian
ships it.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where every package comes from; the only network the image build needs.
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"

HOST_PACKAGES = (
    "linux-image-amd64",
    "systemd-sysv",
    "udev",
    "dbus",
    "kmod",
    "e2fsprogs",
    "qemu-guest-agent",
)
PRODUCT_PACKAGES = (
    "qemu-system-x86",
    "qemu-utils",
    "libnss-wrapper",
    "util-linux",
    "passwd",
    "gcc",
    "libc6-dev",
    "python3",
    "python3-venv",
    "libxen-dev",
    "iproute2",
    "procps",
)


@dataclass(frozen=True)
class Distro:
    """One Debian release as a host: how to build it and what it must turn out to contain.

    ``qemu_series``, ``python_version`` and ``glibc`` are what the release ships; the smoke tests
    hold the booted guest to them, so that a mirror moving on (or a wrong suite) shows up as a
    failure, and the wheels are chosen for that Python and glibc.
    """

    name: str
    version_id: str
    qemu_series: str
    python_version: str
    glibc: str
    packages: tuple[str, ...] = HOST_PACKAGES + PRODUCT_PACKAGES

    def sources(self) -> tuple[str, ...]:
        """One-line apt sources for mmdebstrap: the release, its updates and security updates.

        That is what an administrator's host runs; the main component is all the hosts need.
        """
        return (
            f"deb {MIRROR} {self.name} main",
            f"deb {MIRROR} {self.name}-updates main",
            f"deb {SECURITY_MIRROR} {self.name}-security main",
        )


BOOKWORM = Distro(
    "bookworm", version_id="12", qemu_series="7.2", python_version="3.11", glibc="2.36"
)
TRIXIE = Distro("trixie", version_id="13", qemu_series="10.0", python_version="3.13", glibc="2.41")
DISTROS = {distro.name: distro for distro in (BOOKWORM, TRIXIE)}
