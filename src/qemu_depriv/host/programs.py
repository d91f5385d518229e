"""The one place that runs other programs: argv lists, no shell, an explicit environment.

Every command line is logged at debug level before it runs.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence

from qemu_depriv.errors import EnvironmentFailure

log = logging.getLogger(__name__)

#: The whole environment a child gets unless a caller names one: nothing inherited.
BASE_ENV: Mapping[str, str] = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def run_command(
    argv: Sequence[str], *, env: Mapping[str, str] = BASE_ENV, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion and return what it printed; a non-zero exit is returned too.

    Raises:
        EnvironmentFailure: the program is missing, not executable, or ran past ``timeout``.
    """
    log.debug("running %s", shlex.join(argv))
    with _program_errors(argv):
        try:
            return subprocess.run(
                list(argv),
                env=dict(env),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired as exc:
            raise EnvironmentFailure(f"{shlex.join(argv)}: no answer within {timeout} s") from exc


def spawn(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    stderr_fd: int,
    before_exec: Callable[[], None],
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with only stdin, stdout and stderr open.

    stdin and stdout are /dev/null, stderr is ``stderr_fd``; every other inherited descriptor
    is closed but ``pass_fds`` (those a command line names by number, such as libxl's).
    ``before_exec`` runs in the child between fork and exec.

    Raises:
        EnvironmentFailure: the program is missing or not executable, or ``before_exec``
            failed in the child.
    """
    log.debug("starting %s", shlex.join(argv))
    with _program_errors(argv):
        try:
            return subprocess.Popen(
                list(argv),
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr_fd,
                close_fds=True,
                pass_fds=tuple(pass_fds),
                start_new_session=True,
                preexec_fn=before_exec,  # noqa: PLW1509 - the CLI is single-threaded when it spawns
            )
        except subprocess.SubprocessError as exc:
            raise EnvironmentFailure(f"{argv[0]}: the pre-exec restrictions failed: {exc}") from exc


@contextlib.contextmanager
def _program_errors(argv: Sequence[str]) -> Iterator[None]:
    """A program that is missing or not executable, as the one error the caller reports."""
    try:
        yield
    except FileNotFoundError as exc:
        raise EnvironmentFailure(f"{argv[0]}: no such program: install it or fix the path") from exc
    except PermissionError as exc:
        raise EnvironmentFailure(f"{argv[0]}: not executable: {exc.strerror}") from exc
