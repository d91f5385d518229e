"""The one place the harness runs host programs: argv lists, an explicit environment, a log.

Long builds (mmdebstrap, mke2fs, pip) write their whole output to a log file, so that a failure
can point at it and quote its tail instead of flooding pytest's report.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

#: PATH for every program the harness runs; sbin holds mke2fs and chroot.
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def host_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A minimal, explicit environment: nothing of the developer's shell leaks into a build.

    pip's settings (``PIP_*``) are kept: they say which package indexes this machine may use.
    """
    env = {"PATH": PATH, "LC_ALL": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    env.update({key: value for key, value in os.environ.items() if key.startswith("PIP_")})
    env.update(extra or {})
    return env


def run_logged(
    argv: list[str], log_path: Path, timeout: float, env: Mapping[str, str] | None = None
) -> int:
    """Run ``argv``, appending its output to ``log_path``; return the exit status.

    Raises ``subprocess.TimeoutExpired`` (after killing the program) when it ran too long.
    """
    log.info("running %s (output in %s)", shlex.join(argv), log_path)
    with log_path.open("ab") as out:
        out.write(f"\n$ {shlex.join(argv)}\n".encode())
        out.flush()
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else host_env(),
            timeout=timeout,
            check=False,
        )
    return done.returncode


def run_captured(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a short query (``git ls-files``, ``qemu-system-x86_64 --version``) and capture it."""
    log.debug("running %s", shlex.join(argv))
    return subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=host_env(),
        timeout=timeout,
        check=False,
    )


def tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log, for an error message; empty if there is none yet."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
