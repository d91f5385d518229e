"""The accounts a lab's directory holds, as values, and their LDIF (pure).

Every uid and gid stays in the block 524288-589823: other test groups own other blocks, and a
process of a lab uid left behind must never be mistaken for one of theirs (or theirs for ours).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: The uids and gids this test group may use (2^19 .. 2^19 + 2^16 - 1).
ID_BLOCK = range(524288, 589824)
#: The directory's naming context.
SUFFIX = "dc=qemu-depriv,dc=test"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"


def _in_block(kind: str, value: int) -> None:
    if value not in ID_BLOCK:
        raise ValueError(
            f"{kind} {value} is outside the directory tests' block "
            f"{ID_BLOCK.start}-{ID_BLOCK.stop - 1}"
        )


@dataclass(frozen=True)
class DirectoryUser:
    """A posixAccount in ``ou=people``.

    Raises:
        ValueError: a uid or gid outside :data:`ID_BLOCK`.
    """

    name: str
    uid: int
    gid: int
    gecos: str = ""
    home: str = "/nonexistent"
    shell: str = "/usr/sbin/nologin"

    def __post_init__(self) -> None:
        _in_block("uid", self.uid)
        _in_block("gid", self.gid)

    @property
    def dn(self) -> str:
        """The entry's distinguished name."""
        return f"uid={self.name},{PEOPLE}"

    @property
    def passwd_line(self) -> str:
        """The same account as a line of /etc/passwd (for a local copy of it)."""
        return f"{self.name}:x:{self.uid}:{self.gid}:{self.gecos}:{self.home}:{self.shell}"


@dataclass(frozen=True)
class DirectoryGroup:
    """A posixGroup in ``ou=groups``.

    Raises:
        ValueError: a gid outside :data:`ID_BLOCK`.
    """

    name: str
    gid: int
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _in_block("gid", self.gid)

    @property
    def dn(self) -> str:
        """The entry's distinguished name."""
        return f"cn={self.name},{GROUPS}"


def base_ldif() -> str:
    """The suffix entry and the two organisational units the accounts live in."""
    return (
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
        "dc: qemu-depriv\no: qemu-depriv directory tests\n\n"
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n\n"
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups\n\n"
    )


def accounts_ldif(
    users: Iterable[DirectoryUser] = (), groups: Iterable[DirectoryGroup] = ()
) -> str:
    """LDIF entries for ``users`` and ``groups`` (RFC 2307 attributes, as nslcd and SSSD read)."""
    chunks = []
    for user in users:
        # ``account`` is the structural class: posixAccount is auxiliary in nis.schema.
        chunks.append(
            f"dn: {user.dn}\nobjectClass: account\nobjectClass: posixAccount\n"
            f"uid: {user.name}\ncn: {user.name}\nuidNumber: {user.uid}\n"
            f"gidNumber: {user.gid}\nhomeDirectory: {user.home}\nloginShell: {user.shell}\n"
            + (f"gecos: {user.gecos}\n" if user.gecos else "")
            + "\n"
        )
    for group in groups:
        members = "".join(f"memberUid: {member}\n" for member in group.members)
        chunks.append(
            f"dn: {group.dn}\nobjectClass: posixGroup\ncn: {group.name}\n"
            f"gidNumber: {group.gid}\n{members}\n"
        )
    return "".join(chunks)
