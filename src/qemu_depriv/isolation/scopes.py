"""A VM's group as a systemd scope unit, where systemd runs the host.

systemd owns the cgroup tree of a host it boots ("Control Group APIs and Delegation": a program
creates cgroups only inside a subtree delegated to it).  There each VM runs in a transient
scope, ``qemu-depriv-DOMID-NAME.scope`` in ``qemu-depriv.slice``, that systemd creates with the
VM's limits (``MemoryMax``, ``TasksMax``, ``CPUWeight``, ``Delegate=no``); ``systemctl status
qemu-depriv.slice`` lists the VMs.  systemd names slices by their path, so the slice sits in
``qemu.slice``, the cgroup being ``qemu.slice/qemu-depriv.slice/UNIT``.

The scope is made by ``systemd-run --scope``, which the jail execs in QEMU's place: it asks
systemd for a scope holding its own process, waits until systemd has moved it there, then
execs QEMU (or the PID-namespace wrapper), so QEMU never runs outside the scope.  Why not
``StartTransientUnit`` over D-Bus from the launcher: a scope is created with its processes,
so the child would have to wait between fork and exec while the parent talks to systemd, a
handshake ``subprocess`` cannot give (``Popen`` returns only once the child has exec'd); and
``systemd-run``, run by root, speaks to systemd on its private socket, so it needs no
dbus-daemon.  The price is one exec per launch.  The unit's state is read with ``systemctl
show`` for the same reason; systemd's tools are where its interface is stable.

Killing the scope writes ``cgroup.kill`` like any v2 group (the kernel's kill, which nothing
in the group escapes); systemd then sees the group empty, stops the unit and, as it was made
with ``--collect``, forgets it.  Teardown waits for that and stops (and resets) a unit that
lingers, so no unit is left behind.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from qemu_depriv.errors import EnvironmentFailure
from qemu_depriv.host.processes import wait_until
from qemu_depriv.host.programs import BASE_ENV
from qemu_depriv.isolation.cgroups import WANTED, CgroupHost, CgroupPlan, VmCgroup

SLICE = "qemu-depriv.slice"
_TOOL_TIMEOUT = 30.0


def slice_path(name: str) -> str:
    """The cgroup path of slice ``name``: each dash-separated prefix is a parent slice."""
    stem = name.removesuffix(".slice")
    parts = stem.split("-")
    return "/".join("-".join(parts[: i + 1]) + ".slice" for i in range(len(parts)))


def _tool(name: str) -> str:
    found = shutil.which(name, path=BASE_ENV["PATH"])
    if found is None:
        raise EnvironmentFailure(
            f"{name} not found in {BASE_ENV['PATH']}, though systemd runs this host: install "
            'systemd\'s tools, or set [layers] cgroup_manager = "cgroupfs"'
        )
    return found


def _systemctl(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [_tool("systemctl"), *args],
            capture_output=True,
            text=True,
            timeout=_TOOL_TIMEOUT,
            env=BASE_ENV,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise EnvironmentFailure(
            f"systemctl {' '.join(args)} did not answer in {_TOOL_TIMEOUT:.0f} s: is systemd "
            "hung? (systemctl status)"
        ) from exc


def _show(units: list[str], properties: list[str]) -> list[dict[str, str]]:
    """``systemctl show`` of ``properties`` for each unit, in order.

    Raises:
        EnvironmentFailure: systemctl failed.
    """
    done = _systemctl("show", *(f"--property={p}" for p in properties), "--", *units)
    blocks = [
        dict(line.partition("=")[::2] for line in block.splitlines() if "=" in line)
        for block in done.stdout.strip("\n").split("\n\n")
    ]
    if done.returncode != 0 or len(blocks) != len(units):
        raise EnvironmentFailure(
            f"cannot read systemd units {', '.join(units)} (systemctl show: "
            f"{done.stderr.strip() or 'no output'})"
        )
    return blocks


def manager_version() -> str:
    """The running systemd's version, as ``systemctl show`` gives it (e.g. ``252.39-1~deb12u2``).

    Raises:
        EnvironmentFailure: systemctl failed, or printed no version.
    """
    done = _systemctl("show", "--property=Version", "--value")
    if done.returncode != 0 or not done.stdout.strip():
        raise EnvironmentFailure(
            f"cannot read systemd's version (systemctl show: {done.stderr.strip() or 'no output'})"
        )
    return done.stdout.strip()


def unit_state(unit: str) -> tuple[str, str]:
    """``unit``'s (LoadState, ActiveState): ``("not-found", "inactive")`` once it is gone.

    Raises:
        EnvironmentFailure: systemctl failed.
    """
    (shown,) = _show([unit], ["LoadState", "ActiveState"])
    return shown.get("LoadState", ""), shown.get("ActiveState", "")


class VmScope(VmCgroup):
    """One VM's group as the scope unit ``plan.unit``, which systemd makes and removes.

    Its controllers are the unified hierarchy's (systemd places VMs only there), whatever v1
    hierarchy a hybrid host also mounts.
    """

    def __init__(self, host: CgroupHost, plan: CgroupPlan) -> None:
        super().__init__(host, plan.name)
        assert plan.unit is not None  # noqa: S101 - vm_group only makes scopes of scope plans
        self.unit, self.plan = plan.unit, plan
        self.oom_policy = False
        if host.unified is not None:
            self._where = dict.fromkeys(WANTED, ("v2", host.unified))

    def relative(self) -> str:
        """The scope's path below the unified hierarchy's root."""
        return f"{slice_path(SLICE)}/{self.unit}"

    def create(self, plan: CgroupPlan) -> None:  # noqa: ARG002 - the plan is self.plan
        """Check that the unit is free; systemd creates it when QEMU's command runs.

        Raises:
            EnvironmentFailure: the unit exists (another qemu-depriv, with another state
                directory, runs a VM of this domid and name), or systemctl failed.
        """
        init, shown = _show(["init.scope", self.unit], ["LoadState", "ActiveState", "OOMPolicy"])
        # Scopes whose systemd has OOMPolicy= default to stopping the unit on an OOM kill.
        self.oom_policy = bool(init.get("OOMPolicy"))
        load, active = shown.get("LoadState", ""), shown.get("ActiveState", "")
        if load != "not-found" or active not in ("inactive", ""):
            raise EnvironmentFailure(
                f"systemd unit {self.unit} already exists ({load}, {active}): another "
                "qemu-depriv (another state directory) runs a VM of this domid and name; stop "
                f"it first, or 'systemctl stop {self.unit}'"
            )

    def command_prefix(self) -> list[str]:
        """``systemd-run --scope`` with the VM's unit, slice and limits (after :meth:`create`).

        ``OOMPolicy=continue`` where scopes have that setting (whose default, stop, would end
        the VM when the kernel OOM-kills any process of its scope).

        Raises:
            EnvironmentFailure: systemd-run is missing.
        """
        plan = self.plan
        properties = [
            f"MemoryMax={plan.memory_bytes}",
            f"TasksMax={plan.pids_max}",
            f"CPUWeight={plan.cpu_weight}",
            "Delegate=no",
        ]
        if self.oom_policy:
            properties.append("OOMPolicy=continue")
        return [
            _tool("systemd-run"), "--scope", "--quiet", "--collect",
            f"--unit={self.unit}", f"--slice={SLICE}",
            f"--description=qemu-depriv VM {self.name}",
            *(f"--property={p}" for p in properties), "--",
        ]  # fmt: skip

    def procs_files(self) -> list[str]:
        """None: systemd-run puts the process in the scope."""
        return []

    def remove(self, *, timeout: float = 10.0) -> None:
        """Make sure the unit is gone: systemd stops an empty scope and forgets it.

        A unit still there when its group is empty (failed, or abandoned) is stopped and
        reset.

        Raises:
            EnvironmentFailure: the unit is still loaded after ``timeout`` seconds.
        """
        directory = self.directories()[0]
        deadline = time.monotonic() + timeout
        wait_until(lambda: not directory.exists(), timeout)
        state = unit_state(self.unit)
        if state[0] == "not-found":
            return
        _systemctl("stop", "--", self.unit)
        _systemctl("reset-failed", "--", self.unit)
        while (state := unit_state(self.unit))[0] != "not-found":
            if time.monotonic() > deadline:
                raise EnvironmentFailure(
                    f"systemd unit {self.unit} is still {state[1]} after the VM's teardown: "
                    f"'systemctl stop {self.unit}' and 'systemctl reset-failed {self.unit}'"
                )
            time.sleep(0.05)


def vm_group(host: CgroupHost, plan: CgroupPlan) -> VmCgroup:
    """The VM's group as ``plan`` placed it: a systemd scope, or a cgroupfs group."""
    if plan.unit is not None:
        return VmScope(host, plan)
    return VmCgroup(host, plan.name)
