"""The harness's errors: each names the host, what the harness was doing, and where to look.

::

    HostsError
     +-- HostsUnavailable    this machine cannot build or boot the hosts (a tool, the mirror, root)
     +-- ImageBuildError     mmdebstrap or mke2fs failed; carries the build log's path
     +-- GuestError          a booted guest misbehaved; carries the serial log's path
          +-- GuestTimeout   the guest did not answer in time (it is killed)
          +-- CommandFailed  a command in the guest exited non-zero where success was needed

Two more live beside the code that raises them: ``wheels.WheelsError`` (pip could not provide
the wheels) and ``qga.AgentError`` (the agent's own failures, which ``machine`` turns into a
``GuestError`` naming the guest and what it was doing).
"""

from __future__ import annotations

from pathlib import Path


class HostsError(Exception):
    """Root of every error the harness raises."""


class HostsUnavailable(HostsError):
    """This machine lacks something the host tier needs; ``missing`` names each thing."""

    def __init__(self, missing: list[str]) -> None:
        self.missing = missing
        super().__init__(
            "the host tier (tests/hosts) cannot run on this machine: "
            + "; ".join(missing)
            + " (make hosts installs the Debian packages; the images need deb.debian.org)"
        )


class ImageBuildError(HostsError):
    """Building a host image failed at ``step``; the tool's output is in ``log``."""

    def __init__(self, distro: str, step: str, log: Path, tail: str) -> None:
        self.distro = distro
        self.step = step
        self.log = log
        super().__init__(f"building the {distro} image: {step} failed (log: {log}):\n{tail}")


class GuestError(HostsError):
    """A guest failed while the harness was ``doing`` something; see its console, ``serial_log``."""

    def __init__(self, distro: str, doing: str, problem: str, serial_log: Path, tail: str) -> None:
        self.distro = distro
        self.doing = doing
        self.serial_log = serial_log
        super().__init__(
            f"{distro} guest, while {doing}: {problem}\n"
            f"serial console log: {serial_log}; its last lines:\n{tail}"
        )


class GuestTimeout(GuestError):
    """The guest did not answer in time; the harness kills its QEMU."""


class CommandFailed(GuestError):
    """A command the harness needed to succeed in the guest exited non-zero."""
