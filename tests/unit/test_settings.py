"""The TOML configuration file: known keys only, the right types and ranges."""

from __future__ import annotations

from pathlib import Path

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.settings import Settings, load_settings


def test_every_key_is_read(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, 'prefix = "xen-qemudepriv"\nrestrict = false\n'
                                    'state_dir = "/srv/qd"\nlock_timeout = 5\n'
                                    'lookup_timeout = 2.5\nsources_without_accounts = ["nis"]\n'
                                    "[layers]\ncgroup = false\npids_max = 64\n"))  # fmt: skip
    assert (settings.prefix, settings.restrict, str(settings.state_dir)) == (
        "xen-qemudepriv", False, "/srv/qd",
    )  # fmt: skip
    assert settings.lock_timeout == 5
    assert settings.lookup_timeout == 2.5
    assert settings.sources_without_accounts == ("nis",)
    assert not settings.layers.cgroup
    assert settings.layers.pids_max == 64
    assert settings.layers.seccomp  # untouched layers stay on


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qemu-depriv.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lock_timeout = true\n", "lock_timeout must be"),
        ("lock_timeout = 0\n", "lock_timeout must be 0-3600"),
        ("lock_timeout = 99999.5\n", "lock_timeout must be 0-3600"),
        ("lookup_timeout = -1\n", "lookup_timeout must be 0-3600"),
        ('sources_without_accounts = "sss"\n', "sources_without_accounts must be a list"),
        ('sources_without_accounts = ["s s"]\n', "list of NSS source names"),
        ("sources_without_accounts = [1]\n", "list of NSS source names"),
        ("[layers]\ncgroups = true\n", "unknown key layers.cgroups"),
        ("[layers]\npids_max = 0\n", "layers.pids_max = 0 is out of range"),
        ("[layers]\ncpu_weight = 20000\n", "layers.cpu_weight = 20000 is out of range"),
        ("[layers]\nseccomp = 1\n", "layers.seccomp must be true or false"),
        ("[layers]\nnofile = true\n", "layers.nofile must be a whole number"),
        ('state_dir = "run/qd"\n', "state directory 'run/qd' is not an absolute path"),
        ('state_dir = ""\n', "state directory '' is not an absolute path"),
    ],
)
def test_bad_values_are_invalid_input(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(InvalidInput, match=words.replace(".", r"\.")):
        load_settings(_write(tmp_path, text))


def test_a_relative_state_dir_is_refused_from_the_library_too() -> None:
    with pytest.raises(InvalidInput, match="'qd' is not an absolute path"):
        Settings(state_dir=Path("qd"))
