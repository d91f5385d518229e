"""One exception tree for the whole tool, each class mapped to one exit code.

::

    QemuDeprivError                  exit 4 unless a subclass says otherwise     kind "error"
     +-- InvalidInput                exit 2: usage, a bad value, a malformed      "invalid-input"
     |                               config, a VM the state store does not know
     +-- PolicyRefusal               exit 3: no acceptable user, uid 0, a uid     "refused"
     |                               clash, a uid in use, an option that would
     |                               undo the deprivileging
     +-- EnvironmentFailure          exit 4: the host let us down                 "environment"
          +-- AccountLookupError     an NSS source failed, hung, or cannot        "lookup-error"
          |                          vouch for its "not found"; never "no such
          |                          user"
          +-- QemuStartFailure       QEMU exited or did not answer while          "qemu-failed"
          |                          starting: its status, argv, stderr's end
          +-- LayerVerificationFailed                                         "verification-failed"
                                     a planned isolation layer was not seen on
                                     the running process: the failed checks

Every error carries the message the administrator reads (naming the input at fault and, where
one exists, the fix) and a short ``kind`` for machine-readable output.  Errors that happened
while resolving an account also carry the chain's trace (``tried``): they are
:class:`qemu_depriv.accounts.chain.ResolutionFailed`, which extends the refusal and the lookup
error here without this module knowing the chain's types.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class QemuDeprivError(Exception):
    """Root of every error the tool raises on purpose."""

    exit_code: ClassVar[int] = 4
    kind: ClassVar[str] = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> dict[str, Any]:
        """What the JSON error object carries besides ``kind`` and ``message``."""
        return {}


class InvalidInput(QemuDeprivError):
    """The administrator's input is wrong: fix the input and run again."""

    exit_code = 2
    kind = "invalid-input"


class PolicyRefusal(QemuDeprivError):
    """The input is well formed, but running it would break the isolation policy."""

    exit_code = 3
    kind = "refused"


class EnvironmentFailure(QemuDeprivError):
    """Something on the host failed: a lookup backend, QEMU, a permission."""

    exit_code = 4
    kind = "environment"


class AccountLookupError(EnvironmentFailure):
    """An account lookup failed (as opposed to finding nothing).

    Attributes:
        key: what was looked up, such as ``user 'xen-qemuuser-web'`` or ``uid 131079``.
        errno: the error number that libc returned (ETIMEDOUT for a lookup that hung).
    """

    kind = "lookup-error"

    def __init__(self, message: str, *, key: str, errno: int) -> None:
        super().__init__(message)
        self.key = key
        self.errno = errno


class QemuStartFailure(EnvironmentFailure):
    """QEMU exited, or did not answer, before it was verified and running.

    Attributes:
        status: QEMU's exit status (negative: the signal), or None while it still ran.
        argv: the command line it was started with.
        stderr_tail: the last lines QEMU wrote on stderr.
    """

    kind = "qemu-failed"

    def __init__(
        self, what: str, *, status: int | None, argv: Sequence[str], stderr_tail: Sequence[str]
    ) -> None:
        said = " | ".join(stderr_tail) or "(empty)"
        state = "still running" if status is None else f"exit {status}"
        super().__init__(f"{what}: QEMU {state}, stderr: {said}")
        self.status = status
        self.argv = tuple(argv)
        self.stderr_tail = tuple(stderr_tail)

    def details(self) -> dict[str, Any]:
        """The exit status, argv and stderr's end, for ``--json``."""
        return {"status": self.status, "argv": list(self.argv), "stderr": list(self.stderr_tail)}


class LayerVerificationFailed(EnvironmentFailure):
    """A planned layer was not observed on the running QEMU, which was then killed.

    Attributes:
        pid: the QEMU process that was checked.
        failed: each failed check as ``{layer, planned, observed}``.
    """

    kind = "verification-failed"

    def __init__(self, pid: int, failed: Sequence[dict[str, Any]]) -> None:
        detail = "; ".join(
            f"{c['layer']}: planned {c['planned']}, /proc shows {c['observed']}" for c in failed
        )
        super().__init__(f"QEMU pid {pid} lacks planned layers ({detail}): killed it")
        self.pid = pid
        self.failed = tuple(failed)

    def details(self) -> dict[str, Any]:
        """The failed checks, for ``--json``."""
        return {"pid": self.pid, "failed": list(self.failed)}
