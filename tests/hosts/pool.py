"""The runner API: boot a distribution's host once per session, ready for the host suite.

``HostPool.boot("trixie")`` does everything between "nothing" and "a guest with the checkout
installed": check the machine (``prereqs``), build or reuse the image (``images``), download or
reuse the wheels (``wheels``), copy the working tree (``payload``), boot (``machine``), mount the
shares and install (``provision``). The returned ``Guest`` runs commands; the caller closes it.

``HostPool.report()`` tells what each boot cost and how it came up, for pytest's summary: the
accelerator (and why KVM was not used, when it was not), image built or cached, seconds per step.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tests.hosts import images, machine, payload, prereqs, provision, wheels
from tests.hosts.distros import DISTROS
from tests.hosts.errors import HostsError

log = logging.getLogger(__name__)

#: ``auto`` (KVM if it boots the guest, else TCG), ``kvm`` or ``tcg``.
ACCEL_ENV = "QEMU_DEPRIV_HOSTS_ACCEL"


@dataclass
class HostPool:
    """Boots hosts for one pytest session; ``scratch(name)`` gives a fresh directory for each.

    It remembers a failed KVM boot, so the second distribution goes straight to TCG.
    """

    scratch: Callable[[str], Path]
    accel: str = field(default_factory=lambda: os.environ.get(ACCEL_ENV, "auto"))
    lines: list[str] = field(default_factory=list)
    _kvm_failed: bool = False

    def accelerators(self) -> list[str]:
        """The accelerators to try, in order. Raises ``HostsError`` for an unknown setting."""
        if self.accel in ("kvm", "tcg"):
            return [self.accel]
        if self.accel != "auto":
            raise HostsError(f"{ACCEL_ENV}={self.accel!r}: use auto, kvm or tcg")
        if self._kvm_failed or not machine.kvm_usable():
            return ["tcg"]
        return ["kvm", "tcg"]

    def boot(self, name: str) -> machine.Guest:
        """A booted ``name`` host with the checkout installed in ``/root/venv``.

        Raises ``HostsUnavailable`` naming what this machine lacks, ``ImageBuildError``,
        ``WheelsError``, ``GuestError`` or ``GuestTimeout``, each saying what was being done.
        """
        if name not in DISTROS:
            raise HostsError(f"unknown host {name!r}; the hosts are {', '.join(DISTROS)}")
        distro = DISTROS[name]
        prereqs.require(distro, building=images.lookup(distro) is None)
        provided = images.provide(distro)
        started = time.monotonic()
        wheel_dir = wheels.provide(
            distro, payload.REPOSITORY / "pyproject.toml", images.cache_root()
        )
        workdir = self.scratch(name)
        staged = payload.stage(payload.REPOSITORY, wheel_dir, workdir / "payload")
        results = workdir / "results"
        results.mkdir()
        prepared = time.monotonic() - started
        guest = machine.boot(
            name,
            provided.image,
            accels=self.accelerators(),
            workdir=workdir,
            payload=staged,
            results=results,
        )
        if any(note.startswith("kvm failed") for note in guest.notes):
            self._kvm_failed = True
        try:
            started = time.monotonic()
            provision.mount_shares(guest)
            pyproject = (payload.REPOSITORY / "pyproject.toml").read_text()
            provision.install_checkout(guest, wheels.build_requirements(pyproject))
            guest.timings["provision"] = time.monotonic() - started
        except BaseException:
            guest.close()
            raise
        how = f"built in {provided.seconds:.0f} s" if provided.built else "cached"
        self.lines.append(
            f"{name}: image {how} ({provided.image.directory}); wheels and payload "
            f"{prepared:.0f} s; {'; '.join(guest.notes)}; qemu-ga after "
            f"{guest.timings['agent']:.0f} s, systemd {guest.system_state!r} after "
            f"{guest.timings['running']:.0f} s; checkout installed in "
            f"{guest.timings['provision']:.0f} s; QEMU pid {guest.process.pid}, serial log "
            f"{guest.config.serial_log}"
        )
        return guest

    def report(self) -> list[str]:
        """One line per boot of this session."""
        return list(self.lines)
