"""Validation of the values that name a domain: its domid, its name, and account names.

Pure functions; each raises :class:`~qemu_depriv.errors.InvalidInput` with a message that
names the bad value and says what would be accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qemu_depriv.errors import InvalidInput

#: Domid 0 is the host (dom0); Xen reserves 32752 (DOMID_FIRST_RESERVED) and above.
DOMID_MIN = 1
DOMID_MAX = 32751

DOMAIN_NAME_MAX = 64
_DOMAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")

#: shadow's default rule for a user name (useradd without --badname), and its length limit.
USER_NAME_MAX = 32
_USER_NAME = re.compile(r"[a-z_][a-z0-9_-]*\$?\Z")

#: The longest suffix the resolution chain appends to the prefix ("-domid32751").
_LONGEST_SUFFIX = len(f"-domid{DOMID_MAX}")


def validate_domid(value: int | str) -> int:
    """Return the domid as an int, or raise InvalidInput when it is not 1-32751."""
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text):
        raise InvalidInput(
            f"domid {value!r} is not a number: give a whole number from {DOMID_MIN} to {DOMID_MAX}"
        )
    domid = int(text)
    if not DOMID_MIN <= domid <= DOMID_MAX:
        why = "0 is the host (dom0)" if domid == 0 else "Xen reserves 32752 and above"
        raise InvalidInput(f"domid {domid} is out of range ({why}): use {DOMID_MIN}-{DOMID_MAX}")
    return domid


def validate_domain_name(name: str) -> str:
    """Return the domain name, or raise InvalidInput.

    A name is 1-64 characters from ``A-Z a-z 0-9 _ . -``, does not start with ``-`` or ``.``,
    and is not all digits (it would be taken for a domid wherever a name or a domid is accepted).
    """
    if not name:
        raise InvalidInput("domain name is empty: give 1-64 characters from A-Z a-z 0-9 _ . -")
    if len(name) > DOMAIN_NAME_MAX:
        raise InvalidInput(
            f"domain name {name[:20]!r}... is {len(name)} characters long: "
            f"the limit is {DOMAIN_NAME_MAX}"
        )
    if name[0] in "-.":
        raise InvalidInput(f"domain name {name!r} starts with {name[0]!r}: start with a letter")
    if not _DOMAIN_NAME.match(name):
        raise InvalidInput(
            f"domain name {name!r} has a character outside A-Z a-z 0-9 _ . -: rename the domain"
        )
    if name.isdigit():
        raise InvalidInput(
            f"domain name {name!r} is all digits and would be taken for a domid: add a letter to it"
        )
    return name


def is_valid_user_name(name: str) -> bool:
    """Whether shadow's useradd would accept ``name`` without --badname."""
    return len(name.encode()) <= USER_NAME_MAX and bool(_USER_NAME.match(name))


def validate_user_name(name: str, *, what: str = "user") -> str:
    """Return an account name, or raise InvalidInput when useradd would refuse it."""
    if not is_valid_user_name(name):
        raise InvalidInput(
            f"{what} {name!r} is not a valid user name: use at most {USER_NAME_MAX} characters "
            "from a-z 0-9 _ -, starting with a letter or _"
        )
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


DOMAIN_TYPES = ("hvm", "pv", "pvh")
MEMORY_MIN_MIB = 1
MEMORY_MAX_MIB = 16 * 1024 * 1024
VCPUS_MAX = 512
ACCELERATORS = ("tcg", "kvm")


@dataclass(frozen=True)
class DomainConfig:
    """One domain, as its config file describes it (validated on construction).

    ``memory`` is in MiB.  ``device_model_user`` is the explicit tier; ``dm_restrict`` is the
    restrict setting when the file gives one.  ``accel`` asks a standalone VM for KVM.
    """

    name: str
    type: str = "hvm"
    memory: int = 128
    vcpus: int = 1
    device_model_user: str | None = None
    dm_restrict: bool | None = None
    accel: str | None = None
    source: str = "<config>"

    def __post_init__(self) -> None:
        where = f"{self.source}: "
        try:
            validate_domain_name(self.name)
            if self.device_model_user is not None:
                validate_user_name(self.device_model_user, what="device_model_user")
        except InvalidInput as exc:
            raise InvalidInput(where + exc.message) from exc
        if self.type not in DOMAIN_TYPES:
            raise InvalidInput(
                f"{where}type {self.type!r} is unknown: use one of {', '.join(DOMAIN_TYPES)}"
            )
        if not MEMORY_MIN_MIB <= self.memory <= MEMORY_MAX_MIB:
            raise InvalidInput(
                f"{where}memory {self.memory} MiB is out of range: use "
                f"{MEMORY_MIN_MIB} to {MEMORY_MAX_MIB} (16 TiB)"
            )
        if not 1 <= self.vcpus <= VCPUS_MAX:
            raise InvalidInput(f"{where}vcpus {self.vcpus} is out of range: use 1 to {VCPUS_MAX}")
        if self.accel is not None and self.accel not in ACCELERATORS:
            raise InvalidInput(
                f"{where}accel {self.accel!r} is unknown: use one of {', '.join(ACCELERATORS)}"
            )
