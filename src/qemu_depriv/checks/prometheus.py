"""The audit as Prometheus metrics, in node-exporter's textfile format.

Every finding code is exported, zeros included, so that alerts can test for each one
(``qemu_depriv_findings{severity="critical"} > 0``).  prometheus_client writes the file
atomically.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

from qemu_depriv.checks.audit import CODES, Audited
from qemu_depriv.errors import EnvironmentFailure


def write_metrics(path: Path, audited: list[Audited], report: dict[str, object]) -> None:
    """Write the node-exporter textfile, atomically (a temporary file, then a rename).

    Raises:
        EnvironmentFailure: the file cannot be written.
    """
    registry = CollectorRegistry()
    models = Gauge(
        "qemu_depriv_device_models", "QEMU processes on the host", ["ours"], registry=registry
    )
    models.labels(ours="true").set(sum(a.ours for a in audited))
    models.labels(ours="false").set(sum(not a.ours for a in audited))
    findings = Gauge(
        "qemu_depriv_findings", "Audit findings by code", ["code", "severity"], registry=registry
    )
    for code, (severity, _) in CODES.items():
        count = sum(f.code == code for a in audited for f in a.findings)
        findings.labels(code=code, severity=str(severity)).set(count)
    root = Gauge(
        "qemu_depriv_device_models_as_root", "QEMU processes with a uid of 0", registry=registry
    )
    root.set(sum(0 in a.observed.snap.status.uids for a in audited))
    ok = Gauge("qemu_depriv_audit_ok", "1 when no finding is a warning or worse", registry=registry)
    ok.set(1 if report["ok"] else 0)
    when = Gauge("qemu_depriv_audit_timestamp_seconds", "When the audit ran", registry=registry)
    when.set_to_current_time()
    try:
        write_to_textfile(str(path), registry)
    except OSError as exc:
        raise EnvironmentFailure(
            f"--prometheus {path}: cannot write it: {exc.strerror}: check the directory's "
            "permissions and free space"
        ) from exc
