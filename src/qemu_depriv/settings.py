"""Settings from the TOML configuration file, merged under the command-line flags.

The file (``--config FILE``, else ``/etc/qemu-depriv.toml`` when it exists) holds::

    prefix = "xen-qemuuser"        # account-name prefix
    restrict = true                # fail closed: never root, never gid 0
    state_dir = "/run/qemu-depriv" # runtime state; dies with the host, as the VMs do
    lock_timeout = 30.0            # seconds to wait for the state store before exit 4
    lookup_timeout = 10.0          # seconds an account lookup may take before exit 4
    sources_without_accounts = []  # NSS sources (e.g. "sss") that hold no device-model account
    xen_qemu = "/usr/bin/qemu-system-i386"  # the QEMU qemu-depriv-dm runs for libxl

    [layers]                       # every layer is on unless switched off here
    chroot = true
    seccomp = true
    no_new_privs = true
    namespaces = true              # mount, ipc, pid; net when the VM has no network
    rlimits = true
    cgroup = true
    cgroup_manager = "auto"        # systemd (a scope per VM) where it runs the host, else cgroupfs
    fds = true
    memory_overhead_mib = 256      # the cgroup's memory limit is guest RAM plus this
    pids_max = 256
    cpu_weight = 100               # 1-10000, as cgroup v2's cpu.weight
    nofile = 4096

An unknown key is an error rather than a silent default: a typo such as ``restirct = false``
must not leave the administrator believing a setting took effect.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from qemu_depriv.accounts.names import DEFAULT_PREFIX, validate_prefix
from qemu_depriv.errors import InvalidInput

#: ``[layers] cgroup_manager``'s values (the isolation package reads the same names).
MANAGERS = ("auto", "systemd", "cgroupfs")

DEFAULT_CONFIG = Path("/etc/qemu-depriv.toml")
DEFAULT_STATE_DIR = Path("/run/qemu-depriv")


@dataclass(frozen=True)
class LayerSettings:
    """Which layers to apply, and their limits (the ``[layers]`` table of the config)."""

    chroot: bool = True
    seccomp: bool = True
    no_new_privs: bool = True
    namespaces: bool = True
    rlimits: bool = True
    cgroup: bool = True
    cgroup_manager: str = "auto"
    fds: bool = True
    memory_overhead_mib: int = 256
    pids_max: int = 256
    cpu_weight: int = 100
    nofile: int = 4096

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Settings:
    """The policy and paths every command runs with."""

    prefix: str = DEFAULT_PREFIX
    restrict: bool = True
    state_dir: Path = DEFAULT_STATE_DIR
    lock_timeout: float = 30.0
    lookup_timeout: float = 10.0
    sources_without_accounts: tuple[str, ...] = ()
    xen_qemu: str = "/usr/bin/qemu-system-i386"
    layers: LayerSettings = field(default_factory=LayerSettings)

    def __post_init__(self) -> None:
        validate_state_dir(self.state_dir)

    def with_overrides(
        self,
        *,
        prefix: str | None = None,
        restrict: bool | None = None,
        state_dir: str | Path | None = None,
    ) -> Settings:
        """Return these settings with each non-None argument taking precedence."""
        changes: dict[str, Any] = {}
        if prefix is not None:
            changes["prefix"] = validate_prefix(prefix)
        if restrict is not None:
            changes["restrict"] = restrict
        if state_dir is not None:
            changes["state_dir"] = validate_state_dir(state_dir)
        return replace(self, **changes)


def validate_state_dir(path: str | Path) -> Path:
    """``path`` as the state directory: absolute.

    QEMU's command line names paths in it, and the launch compares them with what /proc shows,
    which is absolute; an empty value (an unset shell variable) would be the working directory.

    Raises:
        InvalidInput: ``path`` is empty or relative.
    """
    text = str(path)
    if not text or not text.startswith("/"):
        raise InvalidInput(
            f"state directory {text!r} is not an absolute path: give --state-dir (or state_dir "
            "in the config) as one, such as /run/qemu-depriv"
        )
    return Path(text)


def load_settings(path: Path | None) -> Settings:
    """Read ``path``, or the default file when ``path`` is None and the default exists.

    Raises:
        InvalidInput: the file is missing (when named), unreadable, not TOML, or holds an
            unknown key or a value of the wrong type.
    """
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Settings()
        path = DEFAULT_CONFIG
    import tomllib  # noqa: PLC0415 - only when there is a file: every command starts here

    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise InvalidInput(f"config {path}: no such file: check the --config path") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"config {path}: cannot read it: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config {path}: not valid TOML: {exc}") from exc
    return _settings_from(path, data)


def _settings_from(path: Path, data: dict[str, Any]) -> Settings:
    known = {
        "prefix": str, "restrict": bool, "state_dir": str, "lock_timeout": float,
        "lookup_timeout": float, "sources_without_accounts": list, "xen_qemu": str,
        "layers": dict,
    }  # fmt: skip
    _check_keys(path, data, known)
    settings = Settings()
    if "layers" in data:
        layer_types: dict[str, type] = {f.name: type(f.default) for f in fields(LayerSettings)}
        _check_keys(path, data["layers"], layer_types, table="layers.")
        manager = data["layers"].get("cgroup_manager", "auto")
        if manager not in MANAGERS:
            raise InvalidInput(
                f"config {path}: layers.cgroup_manager = {manager!r}: use "
                + ", ".join(f'"{m}"' for m in MANAGERS)
            )
        limits = {k: v for k, v in data["layers"].items() if layer_types[k] is int}
        for key, value in limits.items():
            if not 1 <= value <= (10000 if key == "cpu_weight" else 1 << 40):
                raise InvalidInput(f"config {path}: layers.{key} = {value} is out of range")
        settings = replace(settings, layers=LayerSettings(**data["layers"]))
    timeouts: dict[str, Any] = {}
    for key in ("lock_timeout", "lookup_timeout"):
        if key in data:
            if not 0 < data[key] <= 3600:
                raise InvalidInput(f"config {path}: {key} must be 0-3600 seconds")
            timeouts[key] = float(data[key])
    settings = replace(settings, **timeouts)
    if "sources_without_accounts" in data:
        sources = data["sources_without_accounts"]
        if not all(isinstance(s, str) and s.isidentifier() for s in sources):
            raise InvalidInput(
                f"config {path}: sources_without_accounts must be a list of NSS source names "
                f'as /etc/nsswitch.conf spells them, such as ["sss"]'
            )
        settings = replace(settings, sources_without_accounts=tuple(sources))
    if "xen_qemu" in data:
        if not data["xen_qemu"].startswith("/"):
            raise InvalidInput(f"config {path}: xen_qemu must be an absolute path to QEMU")
        settings = replace(settings, xen_qemu=data["xen_qemu"])
    try:
        return settings.with_overrides(
            prefix=data.get("prefix"),
            restrict=data.get("restrict"),
            state_dir=data.get("state_dir"),
        )
    except InvalidInput as exc:
        raise InvalidInput(f"config {path}: {exc.message}") from exc


_KINDS = {
    str: "a quoted string", bool: "true or false", int: "a whole number", float: "a number",
    dict: "a table", list: "a list",
}  # fmt: skip


def _check_keys(path: Path, data: dict[str, Any], known: dict[str, type], table: str = "") -> None:
    for key, value in data.items():
        if key not in known:
            raise InvalidInput(
                f"config {path}: unknown key {table}{key}: the keys are {', '.join(sorted(known))}"
            )
        kind = known[key]
        allowed = (int, float) if kind is float else kind
        if not isinstance(value, allowed) or (kind in (int, float) and isinstance(value, bool)):
            raise InvalidInput(f"config {path}: {table}{key} must be {_KINDS[kind]}, not {value!r}")
