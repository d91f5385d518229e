"""Settings from the TOML configuration file, merged under the command-line flags.

The file (``--config FILE``, else ``/etc/qemu-depriv.toml`` when it exists) holds::

    prefix = "xen-qemuuser"        # account-name prefix
    restrict = true                # fail closed: never root, never gid 0
    state_dir = "/run/qemu-depriv" # runtime state; dies with the host, as the VMs do

An unknown key is an error rather than a silent default: a typo such as ``restirct = false``
must not leave the administrator believing a setting took effect.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qemu_depriv.domain import validate_prefix
from qemu_depriv.errors import InvalidInput
from qemu_depriv.policy import DEFAULT_PREFIX

DEFAULT_CONFIG = Path("/etc/qemu-depriv.toml")
DEFAULT_STATE_DIR = Path("/run/qemu-depriv")


@dataclass(frozen=True)
class Settings:
    """The policy and paths every command runs with."""

    prefix: str = DEFAULT_PREFIX
    restrict: bool = True
    state_dir: Path = DEFAULT_STATE_DIR

    def with_overrides(
        self,
        *,
        prefix: str | None = None,
        restrict: bool | None = None,
        state_dir: Path | None = None,
    ) -> Settings:
        """Return these settings with each non-None argument taking precedence."""
        changes: dict[str, Any] = {}
        if prefix is not None:
            changes["prefix"] = validate_prefix(prefix)
        if restrict is not None:
            changes["restrict"] = restrict
        if state_dir is not None:
            changes["state_dir"] = state_dir
        return replace(self, **changes)


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
    known = {"prefix": str, "restrict": bool, "state_dir": str}
    for key, value in data.items():
        if key not in known:
            raise InvalidInput(
                f"config {path}: unknown key {key!r}: the keys are {', '.join(sorted(known))}"
            )
        if not isinstance(value, known[key]):
            raise InvalidInput(
                f"config {path}: {key} must be a {known[key].__name__}, not {value!r}"
            )
    settings = Settings()
    return settings.with_overrides(
        prefix=data.get("prefix"),
        restrict=data.get("restrict"),
        state_dir=Path(data["state_dir"]) if "state_dir" in data else None,
    )
