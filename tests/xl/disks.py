"""What libxlutil's xlu_disk_parse makes of a diskspec (through xldisk_dump), against parse_disk.

``compare_disk`` is the whole differential test for one spec: both accept it or both refuse it,
and an accepted one has the same target, vdev, format, access, CD-ROM flag, backendtype and
script.  We may refuse a spec that xl accepts only where a row of the admin guide's table
explains it; the refusal names the row's phrase from ``DISK_DIFFERENCES``, and the row is
checked against libxlutil's own fields, so that a row cannot hide a misreading.  Any other
disagreement fails, naming the spec, the field and both values.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu_depriv.errors import InvalidInput
from qemu_depriv.xl.disks import DISK_DIFFERENCES, Disk, disk_number, libxl_backend, parse_disk


@dataclass(frozen=True)
class XlDisk:
    """One spec as xldisk_dump printed it: ``accepted``, and the libxl_device_disk fields."""

    accepted: bool
    error: str
    fields: dict[str, Any]

    def as_disk(self) -> Disk:
        """The fields in parse_disk's terms (NULL target is "", backend unknown is None)."""
        backend = self.fields["backend"]
        return Disk(
            target=self.fields["pdev_path"] or "",
            format=self.fields["format"],
            vdev=self.fields["vdev"],
            readonly=not self.fields["readwrite"],
            cdrom=bool(self.fields["is_cdrom"]),
            backendtype=None if backend == "unknown" else backend,
            script=self.fields["script"],
        )


def _latin1(value: Any) -> Any:
    return (
        value.encode("latin-1").decode("utf-8", "surrogateescape")
        if isinstance(value, str)
        else value
    )


def run_disk_dumper(dumper: Path, specs: list[str]) -> list[XlDisk]:
    """xlu_disk_parse on each spec; specs are str as our reader holds them (surrogateescape)."""
    data = b"".join(spec.encode("utf-8", "surrogateescape") + b"\0" for spec in specs)
    done = subprocess.run([str(dumper)], input=data, capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode("utf-8", "replace")
    lines = done.stdout.decode("ascii").splitlines()
    assert len(lines) == len(specs), (len(lines), len(specs))
    out = []
    for line in lines:
        printed = {key: _latin1(value) for key, value in json.loads(line).items()}
        out.append(XlDisk(printed.pop("rc") == 0, printed.pop("error").strip(), printed))
    return out


class DiskDisagreement(AssertionError):
    """parse_disk and xlu_disk_parse disagree outside the admin guide's table."""


def _row_holds(row: str, xl: XlDisk) -> bool:
    """Whether libxlutil's own reading of the spec shows what the row says."""
    disk = xl.as_disk()
    if row == "disk-unsupported":
        return bool(xl.fields["colo"] > 0 or xl.fields["specification"] == "virtio")
    if row == "disk-vdev":
        return disk_number(disk.vdev) is None
    return (  # disk-libxl-refuses
        (not disk.target and not disk.cdrom)
        or (disk.format == "empty" and not (disk.cdrom and not disk.target))
        or libxl_backend(disk) is None
    )


def compare_disk(spec: str, xl: XlDisk) -> str | None:
    """Compare parse_disk with xlu_disk_parse on one spec.

    Returns None when they agree, or the table row that explains our refusal.

    Raises:
        DiskDisagreement: any other difference, naming the spec, the field and both values.
    """
    try:
        ours = parse_disk(spec, "spec")
    except InvalidInput as exc:
        if not xl.accepted:
            return None
        row = next((r for r, phrase in DISK_DIFFERENCES.items() if phrase in exc.message), None)
        if row is None:
            raise DiskDisagreement(
                f"disk {spec!r}: xl accepts it ({xl.fields}), we refuse it: {exc.message}"
            ) from exc
        if not _row_holds(row, xl):
            raise DiskDisagreement(
                f"disk {spec!r}: we refuse it as {row} ({exc.message}), which xl's reading "
                f"does not show: {xl.fields}"
            ) from exc
        return row
    if not xl.accepted:
        raise DiskDisagreement(f"disk {spec!r}: xl refuses it ({xl.error}), we accept {ours}")
    theirs = xl.as_disk()
    for field in ("target", "vdev", "format", "readonly", "cdrom", "backendtype", "script"):
        if getattr(ours, field) != getattr(theirs, field):
            raise DiskDisagreement(
                f"disk {spec!r}: field {field}: ours {getattr(ours, field)!r}, "
                f"xl's {getattr(theirs, field)!r}"
            )
    return None
