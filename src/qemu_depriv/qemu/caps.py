"""What a QEMU binary can do, read from its own ``-help`` and ``-version`` output.

Options are detected by probing, never guessed from the version number (QEMU is backported
and patched by distributions):

- ``-runas`` and whether it takes the numeric ``uid:gid`` form (QEMU >= 2.11 says so in its
  help: "user can be numeric uid:gid instead");
- ``-run-with`` with ``user=`` and ``chroot=`` (QEMU >= 9.1 deprecates ``-runas`` for it;
  10.0 removes ``-runas``);
- ``-chroot``, ``-sandbox`` and its sub-options, ``-xen-domid``, ``-xen-domid-restrict``.

The help text of every QEMU from 2.11 to 10.x names these options, so QMP's
``query-command-line-options`` is not needed.  Results are cached per binary path, keyed by
the file's mtime and size, in memory and (for the command line, which is a new process each
time) in a JSON file in the state directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host.programs import run_command
from qemu_depriv.qemu.cmdline import option_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QemuCaps:
    """The deprivileging options one QEMU binary accepts."""

    binary: str
    version: str
    runas: bool
    runas_numeric: bool
    run_with_user: bool
    run_with_chroot: bool
    chroot: bool
    sandbox: bool
    sandbox_options: tuple[str, ...]
    xen: bool
    xen_domid_restrict: bool
    #: Every option the binary lists, and whether it takes an argument: how ``run`` reads a
    #: command line written for it.
    options: dict[str, bool] = field(default_factory=dict)

    @property
    def runas_method(self) -> str | None:
        """``run-with`` where present (QEMU >= 9.1), else ``runas``, else None."""
        if self.run_with_user:
            return "run-with"
        return "runas" if self.runas else None


def _option_block(help_text: str, option: str) -> str | None:
    """Return the help lines of ``option``: its own line and the indented lines after it."""
    match = re.search(rf"^{re.escape(option)}(?=[\s\[]|$).*(?:\n[ \t]+.*)*", help_text, re.M)
    return match.group(0) if match else None


def parse_caps(binary: str, help_text: str, version_text: str) -> QemuCaps:
    """Read a binary's capabilities from its ``-help`` and ``-version`` output (pure)."""
    runas = _option_block(help_text, "-runas")
    run_with = _option_block(help_text, "-run-with") or ""
    sandbox = _option_block(help_text, "-sandbox")
    return QemuCaps(
        binary=binary,
        version=(version_text.strip().splitlines() or ["unknown"])[0],
        runas=runas is not None,
        runas_numeric=runas is not None and "uid:gid" in runas,
        run_with_user="user=" in run_with,
        run_with_chroot="chroot=" in run_with,
        chroot=_option_block(help_text, "-chroot") is not None,
        sandbox=sandbox is not None,
        sandbox_options=tuple(sorted(set(re.findall(r"\[,?(\w+)=", sandbox or "")))),
        xen=_option_block(help_text, "-xen-domid") is not None,
        xen_domid_restrict=_option_block(help_text, "-xen-domid-restrict") is not None,
        options=option_table(help_text),
    )


class CapsProbe:
    """Probes binaries, caching per path and (mtime, size).

    Args:
        cache_file: where to keep results between processes; None keeps them in memory only.
    """

    def __init__(self, cache_file: Path | None = None) -> None:
        self._cache_file = cache_file
        self._memory: dict[str, tuple[list[int], QemuCaps]] = {}

    def probe(self, binary: str) -> QemuCaps:
        """Return the capabilities of ``binary`` (a path).

        Raises:
            EnvironmentFailure: the binary is missing, not executable, or fails ``-help``.
        """
        try:
            info = Path(binary).stat()
        except OSError as exc:
            raise EnvironmentFailure(
                f"QEMU binary {binary}: {exc.strerror}: install qemu-system-x86 or pass --qemu"
            ) from exc
        key = [info.st_mtime_ns, info.st_size]
        cached = self._memory.get(binary) or self._load().get(binary)
        if cached is not None and cached[0] == key:
            return cached[1]
        caps = self._run(binary)
        self._memory[binary] = (key, caps)
        self._store(binary, key, caps)
        return caps

    def _run(self, binary: str) -> QemuCaps:
        help_run = run_command([binary, "-help"])
        version_run = run_command([binary, "-version"])
        if help_run.returncode != 0 or "-machine" not in help_run.stdout:
            raise EnvironmentFailure(
                f"QEMU binary {binary}: '-help' failed (exit {help_run.returncode}): "
                f"{help_run.stderr.strip()[:200] or 'no output'}"
            )
        return parse_caps(binary, help_run.stdout, version_run.stdout)

    def _load(self) -> dict[str, tuple[list[int], QemuCaps]]:
        if self._cache_file is None:
            return {}
        try:
            data = json.loads(self._cache_file.read_text(encoding="utf-8"))
            # An entry written before a field existed is probed again, not half-read.
            fields = {f.name for f in dataclasses.fields(QemuCaps)}
            return {
                path: (entry["key"], _caps_from(entry["caps"]))
                for path, entry in data.items()
                if set(entry["caps"]) == fields
            }
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _store(self, binary: str, key: list[int], caps: QemuCaps) -> None:
        if self._cache_file is None:
            return
        entries = {path: {"key": k, "caps": asdict(c)} for path, (k, c) in self._load().items()}
        entries[binary] = {"key": key, "caps": asdict(caps)}
        temporary = self._cache_file.with_suffix(f".{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(entries), encoding="utf-8")
            temporary.replace(self._cache_file)
        except OSError as exc:
            log.debug("not caching QEMU capabilities in %s: %s", self._cache_file, exc)


def _caps_from(data: dict[str, object]) -> QemuCaps:
    values = dict(data)
    values["sandbox_options"] = tuple(values["sandbox_options"])  # type: ignore[arg-type]
    return QemuCaps(**values)  # type: ignore[arg-type]
