"""One exception tree for the whole tool, each class mapped to one exit code.

::

    QemuDeprivError                exit 4 unless a subclass says otherwise
     +-- InvalidInput              exit 2: usage, a bad value, a malformed config
     +-- PolicyRefusal             exit 3: no acceptable user, uid 0, a uid clash, a uid in use
     +-- EnvironmentFailure        exit 4: the host let us down
          +-- AccountLookupError   an NSS backend failed; never read as "no such user"

Every error carries the message the administrator reads (naming the input at fault and, where
one exists, the fix) and a short ``kind`` for machine-readable output.  Refusals and lookup
errors raised by the resolution chain also carry the names tried so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from qemu_depriv.policy import Attempt


class QemuDeprivError(Exception):
    """Root of every error the tool raises on purpose."""

    exit_code: ClassVar[int] = 4
    kind: ClassVar[str] = "error"

    def __init__(self, message: str, *, tried: Sequence[Attempt] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.tried: tuple[Attempt, ...] = tuple(tried)


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
        errno: the error number that libc returned.
    """

    kind = "lookup-error"

    def __init__(self, message: str, *, key: str, errno: int) -> None:
        super().__init__(message)
        self.key = key
        self.errno = errno
