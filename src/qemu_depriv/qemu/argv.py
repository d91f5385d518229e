"""Command lines for QEMU (pure): a standalone VM, or a Xen HVM domain's device model.

Both start QEMU paused (``-S``) with QMP on a unix socket in the VM's run directory, drop to
the decision's account with the option the binary supports (``-run-with user=`` on QEMU >= 9.1,
else ``-runas``), chroot into an empty per-VM directory, and enable seccomp.

Under ``-runas`` QEMU itself calls setgid/setuid after installing its seccomp filter, and QEMU
7.2 kills itself ("Bad system call") if that filter denies privilege changes; so
``elevateprivileges=allow`` whenever QEMU drops privileges, ``deny`` only when it does not.

Golden files in tests/unit/golden/ fix the output; regenerate them with
``make golden`` after an intended change, and review the diff.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.domain import DomainConfig
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.policy import Decision
from qemu_depriv.qemu.caps import QemuCaps


@dataclass(frozen=True)
class VmPaths:
    """Where one VM's files live: its run directory, QMP socket, QEMU log and chroot."""

    run_dir: Path
    chroot: Path

    @property
    def qmp(self) -> Path:
        """The QMP socket QEMU listens on."""
        return self.run_dir / "qmp.sock"

    @property
    def log(self) -> Path:
        """QEMU's stderr."""
        return self.run_dir / "qemu.log"


def sandbox_args(caps: QemuCaps, decision: Decision) -> list[str]:
    """Return the ``-sandbox`` option: the strictest that lets QEMU drop its own privileges."""
    if not caps.sandbox:
        return []
    elevate = "allow" if decision.runas is not None else "deny"
    wanted = {
        "obsolete": "deny",
        "elevateprivileges": elevate,
        "spawn": "deny",
        "resourcecontrol": "deny",
    }
    options = [f"{key}={value}" for key, value in wanted.items() if key in caps.sandbox_options]
    return ["-sandbox", ",".join(["on", *options])]


def runas_args(caps: QemuCaps, decision: Decision, chroot: Path) -> list[str]:
    """Return the options that chroot QEMU and make it drop to the decision's account.

    Each half takes the form the binary offers: ``-run-with chroot=`` else ``-chroot`` (QEMU 9.0
    has the first and ``-runas`` but no longer ``-chroot``); ``-run-with user=`` else ``-runas``.

    Raises:
        EnvironmentFailure: the binary cannot chroot, cannot drop privileges, or cannot take
            the numeric ``uid:gid`` form a range decision needs.
    """
    run_with: list[str] = []
    args: list[str] = []
    if caps.run_with_chroot:
        run_with.append(f"chroot={chroot}")
    elif caps.chroot:
        args += ["-chroot", str(chroot)]
    else:
        raise EnvironmentFailure(
            f"QEMU {caps.binary} ({caps.version}) has neither -run-with chroot= nor -chroot: "
            "it cannot be confined to an empty root; install a QEMU that can"
        )
    if decision.runas is not None:
        if caps.run_with_user:
            run_with.append(f"user={decision.runas}")
        elif not caps.runas:
            raise EnvironmentFailure(
                f"QEMU {caps.binary} ({caps.version}) has neither -run-with user= nor -runas: "
                "it cannot drop privileges; install a QEMU that can"
            )
        elif ":" in decision.runas and not caps.runas_numeric:
            raise EnvironmentFailure(
                f"QEMU {caps.binary} ({caps.version}) cannot run as the numeric "
                f"{decision.runas} (-runas uid:gid needs QEMU 2.11 or later): upgrade QEMU, or "
                "create a per-domain account so that the range tier is not used"
            )
        else:
            args += ["-runas", decision.runas]
    return (["-run-with", ",".join(run_with)] if run_with else []) + args


def _qmp(paths: VmPaths) -> list[str]:
    return ["-qmp", f"unix:{paths.qmp},server=on,wait=off"]


def standalone_argv(
    caps: QemuCaps,
    config: DomainConfig,
    decision: Decision,
    paths: VmPaths,
    *,
    accel: str = "tcg",
) -> list[str]:
    """QEMU runs the VM itself: a PC with TCG (or KVM), no default devices, no display.

    Raises:
        EnvironmentFailure: see :func:`runas_args`.
    """
    return [
        caps.binary,
        "-name", config.name,
        "-machine", "pc",
        "-accel", accel,
        "-m", str(config.memory),
        "-smp", str(config.vcpus),
        "-nodefaults",
        "-no-user-config",
        "-display", "none",
        "-S",
        *_qmp(paths),
        *sandbox_args(caps, decision),
        *runas_args(caps, decision, paths.chroot),
    ]  # fmt: skip


def xen_argv(
    caps: QemuCaps,
    config: DomainConfig,
    decision: Decision,
    paths: VmPaths,
    *,
    domid: int,
    restrict: bool,
) -> list[str]:
    """The device model of a Xen HVM domain, as libxl starts it.

    Raises:
        EnvironmentFailure: see :func:`runas_args`; or restrict is on and the binary lacks
            ``-xen-domid-restrict``.
    """
    if restrict and not caps.xen_domid_restrict:
        raise EnvironmentFailure(
            f"QEMU {caps.binary} has no -xen-domid-restrict, which restrict needs: "
            "install QEMU 2.10 or later built with Xen support"
        )
    return [
        caps.binary,
        "-xen-domid", str(domid),
        "-no-shutdown",
        "-name", config.name,
        "-nodefaults",
        "-no-user-config",
        *_qmp(paths),
        "-display", "none",
        "-machine", "xenfv",
        "-m", str(config.memory),
        "-smp", f"{config.vcpus},maxcpus={config.vcpus}",
        "-S",
        *(["-xen-domid-restrict"] if restrict else []),
        *sandbox_args(caps, decision),
        *runas_args(caps, decision, paths.chroot),
    ]  # fmt: skip
