"""A cgroup per device model: memory, pids and cpu weight limits, and a kill that misses nothing.

Where systemd runs the host, the group is a scope unit that systemd makes
(:mod:`qemu_depriv.isolation.scopes`); elsewhere this module makes it in cgroupfs.  Each
controller is used from cgroup v2 when the unified hierarchy has it, else from its v1
hierarchy (hybrid hosts, such as this project's CI, keep memory, pids and cpu on v1).  The
VM's group is ``qemu-depriv/DOMID-NAME`` in each hierarchy used.  The spawned child joins it
before exec, so QEMU never runs outside it.

Killing a group reaches every process in it, whatever its uid: root-owned helpers such as the
PID-namespace wrapper or QEMU's async-teardown process included, and no process of the VM can
leave the group (the cgroup files are root's).  v2 writes ``cgroup.kill``; v1 freezes the
group, SIGKILLs every member, and thaws it, so that nothing forks in between.

Mounts are read from /proc/self/mountinfo; the cgroup root is injectable for tests.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import signal
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host.processes import wait_until

log = logging.getLogger(__name__)

WANTED = ("memory", "pids", "cpu")
PARENT = "qemu-depriv"
#: The directory that exists when systemd is PID 1 (sd_booted(3)).
SYSTEMD_RUNTIME = Path("/run/systemd/system")


#: Room for a group's name: a directory name (255 bytes) and, later, a systemd unit name.
GROUP_NAME_MAX = 200
_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:")


def unit_escape(text: str) -> str:
    r"""Escape ``text`` as systemd-escape(1) does for one unit-name component.

    ``/`` becomes ``-``; ASCII letters, digits, ``_``, ``.`` (but not a leading one) and ``:``
    stay; every other byte, ``-`` included, becomes ``\xHH``.  The result is a valid
    directory name and a valid part of a unit name, whatever the domain is called.
    """
    out = []
    for index, char in enumerate(text):
        if char == "/":
            out.append("-")
        elif char in _PLAIN and not (index == 0 and char == "."):
            out.append(char)
        else:
            out += [f"\\x{byte:02x}" for byte in char.encode("utf-8", "surrogateescape")]
    return "".join(out)


def unit_name(group: str) -> str:
    """The scope unit of the group ``group`` (:func:`group_name`'s escaped form)."""
    return f"{PARENT}-{group}.scope"


def group_name(domid: int, name: str) -> str:
    """The VM's group: ``DOMID-NAME``, escaped, and cut with a digest when too long."""
    full = f"{domid}-{unit_escape(name)}"
    if len(full) <= GROUP_NAME_MAX:
        return full
    import hashlib  # noqa: PLC0415 - only for domain names of 190 characters and more

    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return f"{full[: GROUP_NAME_MAX - 17]}_{digest}"


@dataclass(frozen=True)
class CgroupPlan:
    """The limits of one VM's group: bytes of memory, tasks, and cpu weight (1-10000).

    ``unit`` is the systemd scope that holds the group, None when the group is made in
    cgroupfs.
    """

    name: str
    memory_bytes: int
    pids_max: int
    cpu_weight: int
    unit: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "name": self.name,
            "memory_bytes": self.memory_bytes,
            "pids_max": self.pids_max,
            "cpu_weight": self.cpu_weight,
            "unit": self.unit,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CgroupPlan:
        """Read :meth:`as_dict`'s form back (from the state store)."""
        unit = data.get("unit")
        return cls(
            str(data["name"]),
            int(data["memory_bytes"]),
            int(data["pids_max"]),
            int(data["cpu_weight"]),
            str(unit) if unit is not None else None,
        )


@dataclass(frozen=True)
class CgroupHost:
    """Where each controller lives: ``unified`` (v2) and the v1 hierarchies by controller.

    ``systemd`` is whether systemd runs the host (and so owns its cgroup tree).
    """

    unified: Path | None
    unified_controllers: frozenset[str]
    v1: dict[str, Path]
    systemd: bool = False

    @classmethod
    def detect(
        cls,
        mountinfo: Path = Path("/proc/self/mountinfo"),
        systemd_runtime: Path = SYSTEMD_RUNTIME,
    ) -> CgroupHost:
        """Read the cgroup mounts of this host, and whether systemd is PID 1."""
        unified: Path | None = None
        v1: dict[str, Path] = {}
        for line in mountinfo.read_text().splitlines():
            fields = line.split()
            dash = fields.index("-")
            fstype, options = fields[dash + 1], fields[dash + 3].split(",")
            point = Path(fields[4])
            if fstype == "cgroup2" and unified is None:
                unified = point
            elif fstype == "cgroup":
                for option in options:
                    v1.setdefault(option, point)
        controllers: frozenset[str] = frozenset()
        if unified is not None:
            with contextlib.suppress(OSError):
                controllers = frozenset((unified / "cgroup.controllers").read_text().split())
        return cls(unified, controllers, v1, systemd_runtime.is_dir())

    def placement(self) -> dict[str, tuple[str, Path]]:
        """For each wanted controller (and v1's freezer): (``v2`` or ``v1``, hierarchy root)."""
        where: dict[str, tuple[str, Path]] = {}
        for controller in (*WANTED, "freezer"):
            if self.unified is not None and controller in self.unified_controllers:
                where[controller] = ("v2", self.unified)
            elif controller in self.v1:
                where[controller] = ("v1", self.v1[controller])
        return where

    def manager(self, setting: str = "auto") -> str:
        """Who makes the VMs' groups: ``systemd`` (a scope unit each) or ``cgroupfs``.

        ``auto`` picks systemd when it runs the host and the unified hierarchy holds every
        wanted controller (systemd's ``MemoryMax``, ``TasksMax`` and ``CPUWeight`` are v2's);
        a systemd host on a legacy or hybrid hierarchy gets cgroupfs, as a host without
        systemd does.

        Raises:
            EnvironmentFailure: ``systemd`` is asked for where it cannot place the VMs.
        """
        usable = self.systemd and not (set(WANTED) - self.unified_controllers)
        if setting == "cgroupfs" or (setting == "auto" and not usable):
            return "cgroupfs"
        if not usable:
            why = (
                "systemd is not PID 1 here"
                if not self.systemd
                else "the unified cgroup hierarchy lacks "
                + ", ".join(sorted(set(WANTED) - self.unified_controllers))
            )
            raise EnvironmentFailure(
                f'[layers] cgroup_manager = "systemd" but {why}: set it to "auto" or "cgroupfs"'
            )
        return "systemd"

    def missing(self) -> list[str]:
        """Wanted controllers that no hierarchy offers."""
        where = self.placement()
        gone = [c for c in WANTED if c not in where]
        uses_v1 = any(version == "v1" for version, _ in where.values())
        if uses_v1 and "freezer" not in where:
            gone.append("freezer (to kill a v1 group)")
        return gone


#: What reading or writing a group's file gives once the group is gone (ENOENT) or is being
#: removed (ENODEV): systemd removes a scope's group the moment it empties, so a teardown
#: racing it sees either (both seen on Debian 12 and 13).
GONE = (errno.ENOENT, errno.ENODEV)


def remove_empty_group(directory: Path) -> bool:
    """Remove an empty group's directory; False while the kernel still holds it busy."""
    try:
        directory.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _write(path: Path, value: str, *, missing_ok: bool = False) -> None:
    """Write a group's file.

    ``missing_ok``: a group that is gone or going (:data:`GONE`) is no error.
    """
    try:
        path.write_text(value)
    except OSError as exc:
        if missing_ok and exc.errno in GONE:
            return
        raise EnvironmentFailure(
            f"cgroup: cannot write {value!r} to {path}: {exc.strerror}"
        ) from exc


class VmCgroup:
    """One VM's group in every hierarchy that holds a wanted controller."""

    def __init__(self, host: CgroupHost, name: str) -> None:
        self.host = host
        self.name = name
        self._where = host.placement()

    def relative(self) -> str:
        """The group's path below each hierarchy's root."""
        return f"{PARENT}/{self.name}"

    def directories(self) -> list[Path]:
        """The group's directory in each hierarchy used, each once."""
        roots = {root for _, root in self._where.values()}
        return sorted(root / self.relative() for root in roots)

    def paths_by_controller(self) -> dict[str, str]:
        """The path /proc/PID/cgroup shows for a member, by controller."""
        return dict.fromkeys(self._where, f"/{self.relative()}")

    def command_prefix(self) -> list[str]:
        """What QEMU's command is run under to join the group: nothing, it joins by itself."""
        return []

    def create(self, plan: CgroupPlan) -> None:
        """Create the group and set its limits.

        Raises:
            EnvironmentFailure: a controller is missing or the kernel refused a write.
        """
        if missing := self.host.missing():
            raise EnvironmentFailure(
                f"cgroup controllers unavailable: {', '.join(missing)}; enable them, or turn "
                "the cgroup layer off in the config"
            )
        for directory in self.directories():
            parent = directory.parent
            if not parent.exists():
                parent.mkdir(mode=0o755)
            if self._is_v2(directory):
                self._enable_v2_controllers(parent)
            directory.mkdir(mode=0o755, exist_ok=True)
        if busy := self.members():
            raise EnvironmentFailure(
                f"cgroup {PARENT}/{self.name} already holds processes {sorted(busy)[:5]}: "
                "another qemu-depriv (another state directory) runs a VM of this domid and "
                "name; stop it first"
            )
        self._limit("memory", "memory.max", "memory.limit_in_bytes", str(plan.memory_bytes))
        self._limit("pids", "pids.max", "pids.max", str(plan.pids_max))
        shares = max(2, plan.cpu_weight * 1024 // 100)
        self._limit("cpu", "cpu.weight", "cpu.shares", str(plan.cpu_weight), str(shares))

    def _is_v2(self, directory: Path) -> bool:
        return self.host.unified is not None and directory.is_relative_to(self.host.unified)

    def _enable_v2_controllers(self, parent: Path) -> None:
        assert self.host.unified is not None  # noqa: S101 - only called for v2 directories
        wanted = [c for c, (version, _) in self._where.items() if version == "v2" and c in WANTED]
        for level in (self.host.unified, parent):
            _write(level / "cgroup.subtree_control", " ".join(f"+{c}" for c in wanted))

    def _limit(
        self, controller: str, v2_file: str, v1_file: str, value: str, v1_value: str | None = None
    ) -> None:
        version, root = self._where[controller]
        directory = root / self.relative()
        if version == "v2":
            _write(directory / v2_file, value)
        else:
            _write(directory / v1_file, v1_value or value)

    def procs_files(self) -> list[str]:
        """The files a process writes its pid to, to join the group (before exec)."""
        return [str(d / "cgroup.procs") for d in self.directories()]

    def limits_read_back(self) -> dict[str, int]:
        """The limits as the kernel holds them (v1's cpu shares as a weight)."""
        values: dict[str, int] = {}
        for controller, v2_file, v1_file in (
            ("memory", "memory.max", "memory.limit_in_bytes"),
            ("pids", "pids.max", "pids.max"),
            ("cpu", "cpu.weight", "cpu.shares"),
        ):
            version, root = self._where[controller]
            text = (root / self.relative() / (v2_file if version == "v2" else v1_file)).read_text()
            number = -1 if text.strip() == "max" else int(text)
            values[controller] = (
                number * 100 // 1024 if controller == "cpu" and version == "v1" else number
            )
        return values

    def members(self) -> set[int]:
        """Every process in the group, in any hierarchy."""
        pids: set[int] = set()
        for directory in self.directories():
            try:
                pids |= {int(p) for p in (directory / "cgroup.procs").read_text().split()}
            except OSError as exc:
                if exc.errno not in GONE:
                    raise
        return pids

    def kill(self, *, timeout: float = 5.0) -> None:
        """Kill every member and wait until none is left.

        Raises:
            EnvironmentFailure: members survived ``timeout`` seconds.
        """
        v1 = []
        for directory in self.directories():
            if self._is_v2(directory) and (directory / "cgroup.kill").exists():
                # A group that vanished meanwhile has no member left (see GONE).
                _write(directory / "cgroup.kill", "1", missing_ok=True)
            elif directory.exists():
                v1.append(directory)
        if v1:
            self._freeze_and_kill()
        # Polled from 1 ms up: the members are usually gone within a few milliseconds.
        if not wait_until(lambda: not self.members(), timeout):
            raise EnvironmentFailure(
                f"cgroup {self.relative()}: processes {sorted(self.members())[:10]} "
                f"survived SIGKILL for {timeout} s"
            )

    def _freeze_and_kill(self) -> None:
        """Freeze the group once, SIGKILL every member of every hierarchy, thaw it."""
        freezer = self._where.get("freezer")
        state = None
        if freezer is not None and freezer[0] == "v1":
            state = freezer[1] / self.relative() / "freezer.state"
        frozen = state is not None and state.parent.exists()
        if frozen and state is not None:
            _write(state, "FROZEN")
        try:
            _kill_all(self.members())
        finally:
            if frozen and state is not None:
                _write(state, "THAWED")

    def remove(self) -> None:
        """Remove the group's directories (empty groups only); missing ones are fine.

        Raises:
            EnvironmentFailure: a directory stayed busy.
        """
        for directory in self.directories():
            if not wait_until(functools.partial(remove_empty_group, directory), 1.0):
                raise EnvironmentFailure(f"cgroup {directory} stays busy: remove it by hand")


def _kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def controller_path(cgroups: dict[str, str], controller: str) -> str | None:
    """The path /proc/PID/cgroup shows for ``controller``: its v1 line, else the v2 line."""
    for controllers, path in cgroups.items():
        if controller in controllers.split(","):
            return path
    return cgroups.get("")
