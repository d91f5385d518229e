"""QEMU options for a domain's emulated devices (pure), as libxl's device model gets them.

Source: ``libxl__build_device_model_args_new`` in Xen's tools/libs/light/libxl_dm.c (4.17),
and the defaults of ``libxl__domain_build_info_setdefault`` (libxl_create.c):

- VNC: ``-vnc LISTEN:DISPLAY[,to=99]`` (listen 127.0.0.1, display 0, ``to=99`` when
  vncunused, which is the default); a listen address with ``:`` is used as it is.
- Graphics: cirrus (8 MiB) by default, ``-device cirrus-vga,vgamem_mb=N``; stdvga (16 MiB),
  ``-device VGA,vgamem_mb=N``; qxl (128 MiB), ``-device qxl-vga,vram_size_mb=N/2,ram_size_mb=N/2``;
  none, nothing.
- Disks (HVM): IDE for indexes 0-3 (``xvda`` and ``hda`` are both index 0), ``-drive
  file=PATH,if=ide,index=N,media=disk,format=F,cache=writeback``; CD-ROMs as ``ide-cd``
  devices named after the full device number; ``sd*`` as ``scsi-hd`` on an ``lsi53c895a``.
  The format is ``raw`` for the phy backend, the real one (``vhd`` is QEMU's ``vpc``) for qdisk.
- NICs: ``-device MODEL,id=nicN,netdev=netN,mac=MAC`` and ``-netdev
  type=tap,id=netN,ifname=vifD.N-emu,br=BRIDGE,script=no,downscript=no``; ``-net none`` when
  there is none.  Where libxl picks a random MAC, a stable one is derived instead.

Values placed inside an option are escaped the QEMU way (a comma doubled).
"""

from __future__ import annotations

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.disks import Disk, disk_number, libxl_backend
from qemu_depriv.xl.domain import DomainConfig
from qemu_depriv.xl.nics import derived_mac

IDE_SLOTS = 4


def escape(value: str) -> str:
    """Escape a value for a QEMU option list: commas are doubled."""
    return value.replace(",", ",,")


def vnc_address(config: DomainConfig) -> str:
    """The ``-vnc`` argument of an enabled VNC display."""
    listen = config.vnclisten or "127.0.0.1"
    address = listen if ":" in listen else f"{listen}:{config.vncdisplay or 0}"
    unused = config.vncunused if config.vncunused is not None else True
    return address + (",to=99" if unused else "")


def vga_args(config: DomainConfig) -> list[str]:
    """The graphics card."""
    kind, memory = config.vga_kind, config.video_memory
    if kind == "stdvga":
        return ["-device", f"VGA,vgamem_mb={memory}"]
    if kind == "cirrus":
        return ["-device", f"cirrus-vga,vgamem_mb={memory}"]
    if kind == "qxl":
        return ["-device", f"qxl-vga,vram_size_mb={memory // 2},ram_size_mb={memory // 2}"]
    return []


def serial_args(config: DomainConfig) -> list[str]:
    """One ``-serial`` per configured serial port."""
    return [arg for port in config.serial for arg in ("-serial", port)]


def disk_format(disk: Disk) -> str:
    """The format QEMU is told: raw for the phy backend, the image's own for qdisk."""
    if disk_backend(disk) != "qdisk":
        return "raw"
    return {"vhd": "vpc"}.get(disk.format, disk.format)


def disk_backend(disk: Disk) -> str:
    """The backend libxl picks (libxl__device_disk_set_backend, disk_try_backend).

    An explicit ``backendtype`` is the only one tried; otherwise phy takes raw images (block
    devices and regular files alike on Linux) and qdisk every other one, an empty CD-ROM
    included.  A deprecated prefix (``phy:``, ``tap:aio:``, ``qcow2:`` ...) chooses no backend
    in Xen 4.17: it sets at most the format or a script.  See :func:`libxl_backend`.

    Raises:
        InvalidInput: libxl would find no backend for the disk, which only a ``Disk`` made
            by hand can hold (``parse_disk`` refuses such disks).
    """
    backend = libxl_backend(disk)
    if backend is None:
        raise InvalidInput(
            f"disk {disk.vdev}: libxl finds no backend for a {disk.format} image"
            f"{' with script ' + disk.script if disk.script else ''}"
            f"{' on backendtype ' + disk.backendtype if disk.backendtype else ''}"
        )
    return backend


def scsi_controller_args(config: DomainConfig) -> list[str]:
    """The SCSI controller that ``sd*`` disks need; libxl adds it before the serial ports."""
    if any(d.vdev.startswith("sd") and not d.cdrom for d in config.disks):
        return ["-device", "lsi53c895a"]
    return []


def disk_args(config: DomainConfig) -> tuple[list[str], list[str]]:
    """The emulated disks of an HVM domain, and a warning for each one libxl would skip.

    Raises:
        InvalidInput: a read-only IDE disk (libxl refuses it).
    """
    args: list[str] = []
    warnings: list[str] = []
    for disk in config.disks:
        number = disk_number(disk.vdev)
        assert number is not None  # noqa: S101 - parse_disk accepted only known vdevs
        devnum, index, _ = number
        fmt = disk_format(disk)
        if disk.vdev.startswith("sd") and not disk.cdrom:
            readonly = "on" if disk.readonly else "off"
            args += [
                "-drive",
                f"file={escape(disk.target)},id=scsi0-hd{index},format={fmt},if=none,"
                f"readonly={readonly},cache=writeback",
                "-device", f"scsi-hd,drive=scsi0-hd{index},scsi-id={index}",
            ]  # fmt: skip
        elif index >= IDE_SLOTS:
            warnings.append(f"disk {disk.vdev}: IDE has 4 slots, index {index} is not emulated")
        elif disk.cdrom:
            media = f",file={escape(disk.target)},format={fmt}" if disk.target else ""
            drive = f"ide-{devnum}"
            args += [
                "-drive", f"if=none,readonly=on,id={drive}{media}",
                "-device", f"ide-cd,id={drive},drive={drive},bus=ide.{index // 2},unit={index % 2}",
            ]  # fmt: skip
        elif disk.readonly:
            raise InvalidInput(
                f"{config.source}: disk {disk.vdev} is read-only, which an emulated IDE disk "
                "cannot be: make it rw, or a cdrom"
            )
        else:
            args += [
                "-drive",
                f"file={escape(disk.target)},if=ide,index={index},media=disk,format={fmt},"
                "cache=writeback",
            ]
    return args, warnings


def nic_args(config: DomainConfig, domid: int) -> list[str]:
    """The emulated NICs of an HVM domain (``type=vif`` ones are PV only), or ``-net none``."""
    args: list[str] = []
    for vif in config.vifs:
        if vif.type != "ioemu":
            continue
        mac = vif.mac or derived_mac(config.name, vif.devid)
        args += [
            "-device", f"{vif.model},id=nic{vif.devid},netdev=net{vif.devid},mac={mac}",
            "-netdev",
            f"type=tap,id=net{vif.devid},ifname=vif{domid}.{vif.devid}-emu,br={vif.bridge},"
            "script=no,downscript=no",
        ]  # fmt: skip
    return args or ["-net", "none"]
