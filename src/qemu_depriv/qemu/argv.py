"""Command lines for QEMU (pure): what every device model gets, and a standalone VM.

Xen device models are built in :mod:`qemu_depriv.qemu.xen`.  Both kinds start QEMU paused
(``-S``) with QMP on a unix socket in the VM's run directory, drop to the decision's account
with the option the binary supports (``-run-with user=`` on QEMU >= 9.1, else ``-runas``),
chroot into an empty per-VM directory, and enable seccomp.  Under restrict,
``device_model_args`` may not carry an option that would undo that (:func:`guard_extra_args`).

Under ``-runas`` QEMU itself calls setgid/setuid after installing its seccomp filter, and QEMU
7.2 kills itself ("Bad system call") if that filter denies privilege changes; so
``elevateprivileges=allow`` whenever QEMU drops privileges, ``deny`` only when it does not.

Golden files in tests/unit/golden/ fix the output; regenerate them with
``make golden`` after an intended change, and review the diff.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from qemu_depriv.accounts.chain import Decision
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.qemu.caps import QemuCaps
from qemu_depriv.qemu.devices import (
    disk_args,
    escape,
    scsi_controller_args,
    serial_args,
    vga_args,
    vnc_address,
)
from qemu_depriv.xl.domain import DomainConfig


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


def runas_args(caps: QemuCaps, decision: Decision, chroot: Path | None) -> list[str]:
    """Return the options that chroot QEMU and make it drop to the decision's account.

    Each half takes the form the binary offers: ``-run-with chroot=`` else ``-chroot`` (QEMU 9.0
    has the first and ``-runas`` but no longer ``-chroot``); ``-run-with user=`` else ``-runas``.
    ``chroot`` None means the chroot layer is off.

    Raises:
        EnvironmentFailure: the binary cannot chroot, cannot drop privileges, or cannot take
            the numeric ``uid:gid`` form a range decision needs.
    """
    run_with: list[str] = []
    args: list[str] = []
    if chroot is None:
        pass
    elif caps.run_with_chroot:
        run_with.append(f"chroot={chroot}")
    elif caps.chroot:
        args += ["-chroot", str(chroot)]
    else:
        raise EnvironmentFailure(
            f"QEMU {caps.binary} ({caps.version}) has neither -run-with chroot= nor -chroot: "
            "it cannot be confined to an empty root; install a QEMU that can, or turn the "
            "chroot layer off"
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


def qmp_args(socket: Path) -> list[str]:
    """QMP on a unix socket that QEMU makes and listens on, without waiting for a client."""
    return ["-qmp", f"unix:{socket},server=on,wait=off"]


#: Options that would undo the deprivileging if device_model_args could add them.
PROTECTED_OPTIONS = frozenset({"-runas", "-run-with", "-chroot", "-sandbox", "-daemonize"})


def guard_extra_args(config: DomainConfig, *, restrict: bool) -> None:
    """Refuse ``device_model_args`` that would undo the isolation, under restrict.

    Raises:
        PolicyRefusal: such an option is present and restrict is on.
    """
    if not restrict:
        return
    for arg in (*config.device_model_args, *config.device_model_args_hvm):
        if arg.split("=")[0] in PROTECTED_OPTIONS:
            raise PolicyRefusal(
                f"{config.source}: device_model_args holds {arg!r}, which would undo the "
                "deprivileging; remove it (restrict is on)"
            )


def display_args(config: DomainConfig) -> list[str]:
    """A standalone VM's display: VNC or SDL when the config asks, else none."""
    if config.vnc:
        return ["-vnc", vnc_address(config)]
    return ["-display", "sdl" if config.sdl else "none"]


def standalone_argv(
    caps: QemuCaps,
    config: DomainConfig,
    decision: Decision,
    *,
    qmp: Path,
    chroot: Path | None,
    accel: str = "tcg",
    restrict: bool = True,
    seccomp: bool = True,
    nics: Sequence[str] = (),
) -> list[str]:
    """QEMU runs the VM itself: a PC with TCG (or KVM), no default devices, no display.

    ``qmp`` is the socket QEMU listens on; ``chroot`` its empty root (None: the layer is off);
    ``nics`` the options of its NICs (:func:`qemu_depriv.qemu.taps.standalone_taps`).

    The config's display, graphics, serial ports, boot order and disks are emulated as in
    Xen mode.

    Raises:
        EnvironmentFailure: see :func:`runas_args`.
        InvalidInput: the domain is PV or PVH (they need Xen), or a read-only IDE disk.
        PolicyRefusal: ``device_model_args`` would undo the isolation under restrict.
    """
    if config.type != "hvm":
        raise InvalidInput(
            f"{config.source}: a {config.type.upper()} domain needs Xen and cannot run "
            "standalone: use --mode xen"
        )
    guard_extra_args(config, restrict=restrict)
    smp = (
        f"{config.vcpus},maxcpus={config.max_vcpus}"
        if config.max_vcpus > config.vcpus
        else str(config.vcpus)
    )
    disks, _ = disk_args(config)
    return [
        caps.binary,
        "-name", escape(config.name),
        "-machine", "pc",
        "-accel", accel,
        "-m", str(config.memory),
        "-smp", smp,
        "-nodefaults",
        "-no-user-config",
        *display_args(config),
        *scsi_controller_args(config),
        *serial_args(config),
        *(vga_args(config) if config.vga is not None else []),
        *(["-boot", f"order={config.boot}"] if config.boot else []),
        *disks,
        *nics,
        "-S",
        *qmp_args(qmp),
        *config.device_model_args,
        *config.device_model_args_hvm,
        *(sandbox_args(caps, decision) if seccomp else []),
        *runas_args(caps, decision, chroot),
    ]  # fmt: skip


def standalone_warnings(config: DomainConfig) -> list[str]:
    """What a standalone VM leaves out of its config."""
    _, warnings = disk_args(config)
    return warnings
