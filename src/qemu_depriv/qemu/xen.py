"""Device models of Xen domains (pure): the argv libxl would build, and whether one is needed.

Sources, Xen 4.17: ``libxl__build_device_model_args_new`` (tools/libs/light/libxl_dm.c) for
the argv and its order; ``libxl__need_xenpv_qemu`` (libxl_dm.c) and the ``dm_needed`` hooks of
libxl_disk.c and libxl_usb.c for PV and PVH domains; xl's parse_config_data
(tools/xl/xl_parse.c) for how top-level ``vnc`` gives a PV domain a framebuffer.

Where qemu-depriv differs from libxl, on purpose: QMP is one control socket in the VM's run
directory (libxl also opens one for xenstat); ``-S`` always (libxl only under dm_restrict),
because the launcher verifies before it resumes; ``-sandbox`` always; ``-runas`` and the
chroot for PV device models too (libxl drops privileges for HVM only).
"""

from __future__ import annotations

from pathlib import Path

from qemu_depriv.accounts.chain import Decision
from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.qemu.argv import guard_extra_args, runas_args, sandbox_args
from qemu_depriv.qemu.caps import QemuCaps
from qemu_depriv.qemu.devices import (
    disk_args,
    disk_backend,
    escape,
    nic_args,
    scsi_controller_args,
    serial_args,
    vga_args,
    vnc_address,
)
from qemu_depriv.xl.domain import DomainConfig


def _head(caps: QemuCaps, qmp: Path, domid: int) -> list[str]:
    """What every Xen device model starts with.

    The domain, QMP (libxl's control chardev and monitor), paused, no default devices, no user
    configuration.
    """
    return [
        caps.binary,
        "-xen-domid", str(domid),
        "-no-shutdown",
        "-chardev", f"socket,id=libxl-cmd,path={qmp},server=on,wait=off",
        "-mon", "chardev=libxl-cmd,mode=control",
        "-S",
        "-nodefaults",
        "-no-user-config",
    ]  # fmt: skip


def _restrict_args(caps: QemuCaps, *, restrict: bool) -> list[str]:
    if not restrict:
        return []
    if not caps.xen_domid_restrict:
        raise EnvironmentFailure(
            f"QEMU {caps.binary} has no -xen-domid-restrict, which restrict needs: "
            "install QEMU 2.10 or later built with Xen support"
        )
    return ["-xen-domid-restrict"]


def xen_argv(
    caps: QemuCaps,
    config: DomainConfig,
    decision: Decision,
    *,
    domid: int,
    qmp: Path,
    chroot: Path | None,
    restrict: bool,
    seccomp: bool = True,
) -> list[str]:
    """The device model of a Xen HVM domain, in libxl's order.

    Raises:
        EnvironmentFailure: see :func:`~qemu_depriv.qemu.argv.runas_args`; or restrict is on
            and the binary lacks ``-xen-domid-restrict``.
        InvalidInput: a read-only IDE disk.
        PolicyRefusal: ``device_model_args`` would undo the isolation under restrict.
    """
    guard_extra_args(config, restrict=restrict)
    vnc_on = config.vnc if config.vnc is not None else True
    disks, _ = disk_args(config)
    smp = ["-smp", f"{config.vcpus},maxcpus={config.max_vcpus}"] if config.max_vcpus > 1 else []
    return [
        *_head(caps, qmp, domid),
        "-name", escape(config.name),
        "-vnc", vnc_address(config) if vnc_on else "none",
        "-display", "none",
        *(["-display", "sdl"] if config.sdl else []),
        *scsi_controller_args(config),
        *serial_args(config),
        *vga_args(config),
        "-boot", f"order={config.boot or 'cda'}",
        *smp,
        *nic_args(config, domid),
        *_restrict_args(caps, restrict=restrict),
        *config.device_model_args,
        "-machine", "xenfv,suppress-vmdesc=on",
        *config.device_model_args_hvm,
        "-m", str(config.max_memory - config.video_memory),
        *disks,
        *(sandbox_args(caps, decision) if seccomp else []),
        *runas_args(caps, decision, chroot),
    ]  # fmt: skip


def _pv_vnc(config: DomainConfig) -> str | None:
    """The first framebuffer's VNC address, or None when it has no VNC."""
    if config.vfbs:
        settings = dict(
            item.partition("=")[::2] for item in config.vfbs[0].split(",") if "=" in item
        )
        if settings.get("vnc", "0") in ("0", ""):
            return None
        display = settings.get("vncdisplay", "0")
        listen = settings.get("vnclisten", "127.0.0.1")
        return (listen if ":" in listen else f"{listen}:{display}") + ",to=99"
    return vnc_address(config) if config.vnc else None


def xen_pv_argv(
    caps: QemuCaps,
    config: DomainConfig,
    decision: Decision,
    *,
    domid: int,
    qmp: Path,
    chroot: Path | None,
    restrict: bool,
    seccomp: bool = True,
) -> list[str]:
    """The device model of a PV or PVH domain that needs one (a qdisk, vfb, 9pfs ... backend).

    Raises:
        EnvironmentFailure, PolicyRefusal: as :func:`xen_argv`.
    """
    guard_extra_args(config, restrict=restrict)
    vnc = _pv_vnc(config)
    display = ["-vnc", vnc] if vnc else ([] if config.sdl else ["-nographic"])
    return [
        *_head(caps, qmp, domid),
        "-xen-attach",
        "-name", escape(config.name),
        *display,
        *(["-display", "sdl"] if config.sdl else []),
        *_restrict_args(caps, restrict=restrict),
        *config.device_model_args,
        "-machine", "xenpv",
        "-m", str(config.max_memory),
        *(sandbox_args(caps, decision) if seccomp else []),
        *runas_args(caps, decision, chroot),
    ]  # fmt: skip


def device_model_need(config: DomainConfig) -> tuple[bool, str]:
    """Whether the domain needs a device model, and why (or why not).

    HVM domains always do.  A PV or PVH domain does when it has a virtual framebuffer (a
    ``vfb``, or a PV domain's top-level ``vnc``/``sdl``), 9pfs shares, channels, a QEMU USB
    controller, or a disk on the qdisk backend (any format but raw, or ``backendtype=qdisk``).
    """
    if config.type == "hvm":
        return True, "an HVM domain's devices are emulated by QEMU"
    reasons = []
    if config.vfbs or (config.type == "pv" and (config.vnc or config.sdl)):
        reasons.append("a virtual framebuffer")
    if config.p9s:
        reasons.append("9pfs shares (p9)")
    if config.channels:
        reasons.append("channels")
    if any("type=qusb" in usb for usb in config.usbctrls):
        reasons.append("a QEMU USB controller")
    reasons += [
        f"disk {d.vdev} on the qdisk backend ({d.format})"
        for d in config.disks
        if disk_backend(d) == "qdisk"
    ]
    if reasons:
        return True, f"a {config.type.upper()} domain with {', '.join(reasons)}"
    return False, (
        f"a {config.type.upper()} domain whose disks all use the phy backend and that has no "
        "framebuffer, 9pfs share, channel or QEMU USB controller needs no device model "
        "(as libxl__need_xenpv_qemu decides)"
    )
