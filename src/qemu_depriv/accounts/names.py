"""Account names: what a passwd entry can hold, and the prefix every chain name starts with.

Pure functions; each raises :class:`~qemu_depriv.errors.InvalidInput` with a message that names
the bad value and says what would be accepted.
"""

from __future__ import annotations

import re

from qemu_depriv.errors import InvalidInput

DEFAULT_PREFIX = "xen-qemuuser"
#: shadow's default rule for a user name (useradd without --badname), and its length limit:
#: the prefix, which every chain name starts with, keeps to it.
USER_NAME_MAX = 32
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?\Z")
#: Control characters: in no account name, and in no domain name either.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The longest suffix the resolution chain appends to the prefix (Xen's last domid, 32751).
_LONGEST_SUFFIX = len("-domid32751")


def passwd_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an account's name in any passwd database, or None.

    The passwd format gives ``:`` and the newline their meaning, ``/`` cannot be in a name
    that files and directories alike key on, and whitespace or control characters are refused
    by every account tool and directory schema.  Anything else (dots, upper case, length past
    32) is a name some host's useradd or some directory holds.
    """
    if not name:
        return "it is empty"
    if ":" in name:
        return "it holds ':', the passwd field separator"
    if "/" in name:
        return "it holds '/'"
    if any(char.isspace() for char in name):
        return "it holds whitespace"
    if CONTROL.search(name):
        return "it holds a control character"
    return None


def validate_user_name(name: str, *, what: str = "user") -> str:
    """Return an account name, or raise InvalidInput when no passwd database could hold it."""
    problem = passwd_name_problem(name)
    if problem is not None:
        raise InvalidInput(f"{what} {name!r} cannot be an account name: {problem}")
    return name


def validate_prefix(prefix: str) -> str:
    """Return the account-name prefix, or raise InvalidInput.

    Every name the chain forms from it (``PREFIX-domid32751`` is the longest) must be a valid
    user name, so the prefix itself follows the user-name rule with room for the suffix.
    """
    limit = USER_NAME_MAX - _LONGEST_SUFFIX
    if len(prefix) > limit or not _USER_NAME.match(prefix) or prefix.endswith("$"):
        raise InvalidInput(
            f"prefix {prefix!r} is not usable: use at most {limit} characters from a-z 0-9 _ -, "
            "starting with a letter or _ (the default is xen-qemuuser)"
        )
    return prefix
