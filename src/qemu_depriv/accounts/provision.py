"""Account plans (pure) and their application with the system's own groupadd and useradd.

The plan reads ``ROOT/etc/passwd``, ``ROOT/etc/group``, ``ROOT/etc/subuid`` and
``ROOT/etc/subgid`` (ROOT is ``/`` or ``--root DIR``) and says which commands would create the
accounts, or what is wrong with the ones that exist.  The files are read, never written: every
change goes through ``groupadd --prefix ROOT`` and ``useradd --prefix ROOT``, which lock and
update the files (and their shadow counterparts) as the system expects.

Ids taken by accounts that only a network directory knows (LDAP without enumeration) are not
seen here: check a new range with ``getent passwd`` before trusting it on such a host.

- ``range``: group and user ``PREFIX-range-base`` at a base uid B that is a non-zero multiple of
  65,536, such that no account, group or subordinate-id range has an id in B..B+65535.
- ``shared``, ``reaper``, ``user NAME``: one account each (``PREFIX-shared``,
  ``PREFIX-reaper``, ``PREFIX-NAME``) with a nologin shell and no home, at the smallest system
  id (100-999) free as both uid and gid, so that it is outside every range and never 0.

A second run finds the accounts in place and plans nothing.  An existing account with unsafe
properties (a login shell, uid or gid 0, a range that overlaps another account) is reported
and left alone.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qemu_depriv.accounts.names import validate_user_name
from qemu_depriv.accounts.nss import UID_LIMIT
from qemu_depriv.errors import EnvironmentFailure, InvalidInput, PolicyRefusal
from qemu_depriv.host.programs import run_command

BLOCK = 65536
NOLOGIN = "/usr/sbin/nologin"
NOLOGIN_SHELLS = frozenset({"/usr/sbin/nologin", "/sbin/nologin", "/bin/false", "/usr/bin/false"})
SYSTEM_IDS = range(100, 1000)
HOME = "/nonexistent"


@dataclass(frozen=True)
class Entry:
    """One line of passwd (name, uid, gid, shell) or group (name, gid)."""

    name: str
    id: int
    gid: int | None = None
    shell: str | None = None


def _nothing(_name: str) -> bool:
    return False


@dataclass(frozen=True)
class AccountFiles:
    """What the account files under one root hold."""

    users: tuple[Entry, ...]
    groups: tuple[Entry, ...]
    subordinate: tuple[range, ...] = ()

    def user(self, name: str) -> Entry | None:
        """The user called ``name``, or None."""
        return next((u for u in self.users if u.name == name), None)

    def group(self, name: str) -> Entry | None:
        """The group called ``name``, or None."""
        return next((g for g in self.groups if g.name == name), None)

    def ids(self) -> set[int]:
        """Every id taken as a uid or a gid: users' own, their primary groups', groups'."""
        return (
            {u.id for u in self.users}
            | {u.gid for u in self.users if u.gid is not None}
            | {g.id for g in self.groups}
        )

    def ids_in(self, block: range, *, ignore: Callable[[str], bool] = _nothing) -> list[str]:
        """Describe every account, group or subordinate range with an id in ``block``.

        Accounts and groups whose name ``ignore`` accepts are left out.
        """
        found = [
            f"user {u.name} ({u.id})" for u in self.users if u.id in block and not ignore(u.name)
        ]
        found += [  # a user's primary gid is taken even where no group line names it
            f"user {u.name}'s gid ({u.gid})"
            for u in self.users
            if u.gid is not None and u.gid in block and u.id not in block and not ignore(u.name)
        ]
        found += [
            f"group {g.name} ({g.id})" for g in self.groups if g.id in block and not ignore(g.name)
        ]
        found += [
            f"subordinate ids {r.start}-{r.stop - 1}"
            for r in self.subordinate
            if r.start < block.stop and block.start < r.stop
        ]
        return found


@dataclass(frozen=True)
class ProvisionPlan:
    """The commands to run, and what was found wrong (then nothing is run)."""

    commands: tuple[tuple[str, ...], ...] = ()
    findings: tuple[str, ...] = ()
    present: tuple[str, ...] = field(default=())

    def shell(self) -> list[str]:
        """The commands as an administrator would type them."""
        return [shlex.join(command) for command in self.commands]


def _parse(path: Path, *, users: bool) -> tuple[Entry, ...]:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise EnvironmentFailure(f"{path}: cannot read it: {exc.strerror}") from exc
    entries = []
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split(":")
        if line.startswith(("+", "-")):
            # NIS compat: '+name:x:109:109:...' takes its ids as shadow's tools count them;
            # '+::::::' and '-name' take none.  The name keeps its sign: it is no local account.
            entries += _compat_entry(fields, users=users)
            continue
        try:
            if users:
                entries.append(Entry(fields[0], int(fields[2]), int(fields[3]), fields[6]))
            else:
                entries.append(Entry(fields[0], int(fields[2])))
        except (IndexError, ValueError) as exc:
            raise EnvironmentFailure(f"{path}:{number}: malformed entry: fix the file") from exc
    return tuple(entries)


def _compat_entry(fields: list[str], *, users: bool) -> list[Entry]:
    wanted = (2, 3) if users else (2,)
    if len(fields) <= max(wanted) or not all(fields[i].isdigit() for i in wanted):
        return []
    return [Entry(fields[0], int(fields[2]), int(fields[3]) if users else None)]


def _subordinate(path: Path) -> tuple[range, ...]:
    try:
        lines = path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise EnvironmentFailure(f"{path}: cannot read it: {exc.strerror}") from exc
    ranges = []
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) == 3 and fields[1].isdigit() and fields[2].isdigit():
            ranges.append(range(int(fields[1]), int(fields[1]) + int(fields[2])))
    return tuple(ranges)


def check_root(root: Path) -> None:
    """Refuse a ``--root`` that is not an absolute directory (``useradd --prefix`` takes one).

    Raises:
        InvalidInput: it is relative, missing or not a directory.
    """
    if not root.is_absolute() or not root.is_dir():
        raise InvalidInput(
            f"--root {root}: give the absolute path of a directory (useradd --prefix takes one)"
        )


def read_account_files(root: Path) -> AccountFiles:
    """Read the account files under ``root``.

    Raises:
        EnvironmentFailure: a file exists but cannot be read or parsed.
    """
    etc = root / "etc"
    return AccountFiles(
        users=_parse(etc / "passwd", users=True),
        groups=_parse(etc / "group", users=False),
        subordinate=_subordinate(etc / "subuid") + _subordinate(etc / "subgid"),
    )


def _prefix_args(root: Path) -> tuple[str, ...]:
    return () if root == Path("/") else ("--prefix", str(root))


def _create(name: str, uid: int, root: Path) -> tuple[tuple[str, ...], ...]:
    prefix = _prefix_args(root)
    return (
        ("groupadd", *prefix, "--system", "--gid", str(uid), name),
        (
            "useradd", *prefix, "--system", "--no-create-home", "--home-dir", HOME,
            "--shell", NOLOGIN, "--uid", str(uid), "--gid", str(uid), name,
        ),
    )  # fmt: skip


def _orphan_group(name: str) -> str:
    return f"group {name} exists without its user: remove it (groupdel {name}) or add the user"


def unsafe_account(user: Entry) -> list[str]:
    """What is wrong with an existing account: uid or gid 0, a login shell."""
    problems = []
    if user.id == 0:
        problems.append(f"account {user.name} has uid 0: give it its own uid (usermod --uid)")
    if user.gid == 0:
        problems.append(f"account {user.name} has gid 0: give it its own group (usermod --gid)")
    if user.shell not in NOLOGIN_SHELLS:
        problems.append(
            f"account {user.name} has the login shell {user.shell!r}: "
            f"usermod --shell {NOLOGIN} {user.name}"
        )
    return problems


def plan_range(
    files: AccountFiles, prefix: str, root: Path, base: int | None = None, *, name: str = ""
) -> ProvisionPlan:
    """Plan ``PREFIX-range-base`` (pure), or check ``name``, an existing range base.

    ``name`` is the seed's ``PREFIX-base`` where that is the host's range base.

    Raises:
        InvalidInput: ``base`` is not a non-zero multiple of 65,536 below the uid limit.
        PolicyRefusal: no free block exists.
    """
    name = name or f"{prefix}-range-base"
    existing = files.user(name)
    if existing is not None:
        block = range(existing.id, existing.id + BLOCK)
        # The range's own account and group, and the seed's per-domid accounts, belong in it.
        own = re.compile(rf"{re.escape(prefix)}-(range-base|base[0-9]*|domid[0-9]+)\Z")
        problems = unsafe_account(existing)
        if base is not None and base != existing.id:
            problems.append(
                f"{name} is at uid {existing.id}, not --base {base}: leave --base out, or move "
                "the account (usermod --uid, groupmod --gid) while no VM runs"
            )
        overlap = files.ids_in(block, ignore=lambda n: bool(own.match(n)))
        if overlap:
            problems.append(
                f"range {existing.id}-{existing.id + BLOCK - 1} of {name} overlaps "
                f"{', '.join(overlap[:5])}{' ...' if len(overlap) > 5 else ''}: move the range "
                "base to a free block (qemu-depriv provision range --dry-run shows one) "
                "or move those accounts"
            )
        return ProvisionPlan(findings=tuple(problems), present=(name,))
    if files.group(name) is not None:
        return ProvisionPlan(findings=(_orphan_group(name),))
    if base is not None:
        if base <= 0 or base % BLOCK or base + BLOCK > UID_LIMIT:
            raise InvalidInput(
                f"--base {base} is not a non-zero multiple of {BLOCK} below {UID_LIMIT - BLOCK}"
            )
        taken = files.ids_in(range(base, base + BLOCK))
        if taken:
            raise PolicyRefusal(
                f"--base {base}: ids {base}-{base + BLOCK - 1} are not free "
                f"({', '.join(taken[:5])}): leave --base out to get a free block"
            )
        chosen = base
    else:
        chosen = next(
            (
                b
                for b in range(BLOCK, UID_LIMIT - BLOCK, BLOCK)
                if not files.ids_in(range(b, b + BLOCK))
            ),
            0,
        )
        if not chosen:
            raise PolicyRefusal("no block of 65536 free ids exists for the range")
    return ProvisionPlan(commands=_create(name, chosen, root))


def plan_single(files: AccountFiles, name: str, root: Path) -> ProvisionPlan:
    """Plan one account (shared, reaper, or a per-domain user) at a free system id (pure).

    Raises:
        PolicyRefusal: no system id from 100 to 999 is free as both uid and gid.
    """
    existing = files.user(name)
    if existing is not None:
        return ProvisionPlan(findings=tuple(unsafe_account(existing)), present=(name,))
    if files.group(name) is not None:
        return ProvisionPlan(findings=(_orphan_group(name),))
    used = files.ids()
    free = next((i for i in SYSTEM_IDS if i not in used), None)
    if free is None:
        raise PolicyRefusal(
            f"no system id from {SYSTEM_IDS.start} to {SYSTEM_IDS.stop - 1} is free as both "
            f"uid and gid for {name}: free one, or create the account by hand"
        )
    return ProvisionPlan(commands=_create(name, free, root))


def account_name(kind: str, prefix: str, name: str | None) -> str:
    """The account a ``provision`` kind creates.

    The name tier looks up ``PREFIX-NAME`` for any domain name; whether this host's
    ``useradd`` can create it is for ``useradd`` to say (Debian 12's takes dots and upper case,
    not more than 32 characters): :func:`apply_plan` reports its refusal.

    Raises:
        InvalidInput: ``user`` without a name, or a name no passwd database holds.
    """
    if kind == "user":
        if name is None:
            raise InvalidInput("provision user needs the domain's NAME")
        return validate_user_name(f"{prefix}-{name}", what="account")
    return f"{prefix}-range-base" if kind == "range" else f"{prefix}-{kind}"


#: useradd(8) and groupadd(8): "invalid argument to option", which a refused name gives.
_INVALID_ARGUMENT = 3
#: How shadow's tools word a refused name ("invalid user name", "not a valid group name").
_BAD_NAME = re.compile(r"(invalid|not a valid) (user|group) name")


def apply_plan(plan: ProvisionPlan) -> None:
    """Run the plan's commands in order; on a failure, undo the groups it created.

    Raises:
        InvalidInput: the host's groupadd or useradd refuses the account's name; its own
            message is quoted.
        EnvironmentFailure: a command failed otherwise; its own message is quoted.
    """
    created: list[tuple[str, ...]] = []
    for command in plan.commands:
        done = run_command(command)
        if done.returncode == 0:
            created.append(command)
            continue
        left = [problem for earlier in reversed(created) if (problem := undo(earlier))]
        message = done.stderr.strip() or "no message"
        if left:
            raise EnvironmentFailure(
                f"{shlex.join(command)} failed (exit {done.returncode}): {message}; and "
                f"undoing what it did before failed: {'; '.join(left)}"
            )
        if done.returncode == _INVALID_ARGUMENT and _BAD_NAME.search(message):
            raise InvalidInput(
                f"this host's {command[0]} refuses the name {command[-1]!r} ({message}): "
                "rename the domain, or create the account in your directory service (the "
                "name tier finds it there too)"
            )
        raise EnvironmentFailure(
            f"{shlex.join(command)} failed (exit {done.returncode}): {message}"
        )


def undo(command: tuple[str, ...]) -> str | None:
    """Remove what a successful groupadd or useradd of the same plan created.

    Returns what is left and how to remove it, when the removal failed.
    """
    undo = [{"groupadd": "groupdel", "useradd": "userdel"}[command[0]]]
    undo += [*command[1:3]] if command[1] == "--prefix" else []
    undo.append(command[-1])
    done = run_command(undo)
    if done.returncode == 0:
        return None
    what = "group" if command[0] == "groupadd" else "user"
    return (
        f"{what} {command[-1]} is left ({shlex.join(undo)}: {done.stderr.strip() or 'no message'}"
        f"): remove it by hand"
    )
