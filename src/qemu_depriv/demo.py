"""The demo: every tier of the resolution chain, and refusals, against real NSS.

It writes temporary account files, enters a private mount namespace in which they are the
system's ``/etc/passwd`` and ``/etc/group``, and resolves a set of domains through glibc.  The
host's own account files are never written.  Each scenario states what it must give, so the
demo fails loudly (exit 4) if the chain ever stops behaving as documented.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from qemu_depriv.errors import EnvironmentFailure, QemuDeprivError
from qemu_depriv.nss import LibcLookup
from qemu_depriv.policy import Decision, Request, resolve
from qemu_depriv.scratch import enter_scratch_accounts, write_scratch_accounts

RANGE_BASE = 131072
DEMO_PASSWD = (
    f"xen-qemuuser-range-base:x:{RANGE_BASE}:{RANGE_BASE}::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-web:x:120001:120001::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-domid9:x:120009:120009::/nonexistent:/usr/sbin/nologin",
    "alice-qemu:x:120100:120100::/nonexistent:/usr/sbin/nologin",
    "xen-qemuuser-evil:x:0:120200::/nonexistent:/usr/sbin/nologin",
    f"bob:x:{RANGE_BASE + 12}:{RANGE_BASE + 12}:Bob:/home/bob:/bin/bash",
    "xen-qemudepriv-shared:x:120300:120300::/nonexistent:/usr/sbin/nologin",
)
DEMO_GROUP = (
    f"xen-qemuuser-range-base:x:{RANGE_BASE}:",
    "xen-qemuuser-web:x:120001:",
    "xen-qemuuser-domid9:x:120009:",
    "alice-qemu:x:120100:",
    "xen-qemuuser-evil:x:120200:",
    f"bob:x:{RANGE_BASE + 12}:",
    "xen-qemudepriv-shared:x:120300:",
)


@dataclass(frozen=True)
class Scenario:
    """One domain to resolve and what it must give: a tier, or a refusal's exit code."""

    title: str
    request: Request
    expect: str


SCENARIOS = (
    Scenario("a user named after the domain", Request(1, name="web"), "name"),
    Scenario(
        "name not a valid user name, so per-domid user", Request(9, name="Mail.Server"), "domid"
    ),
    Scenario("device_model_user wins", Request(5, name="db", user="alice-qemu"), "explicit"),
    Scenario("range: uid base+domid, no account needed", Request(3, name="build"), "range"),
    Scenario("the seed's prefix, shared user", Request(6, prefix="xen-qemudepriv"), "shared"),
    Scenario(
        "no account, restrict off: root, loudly",
        Request(8, prefix="qemu-none", restrict=False),
        "root",
    ),
    Scenario("refused: the account has uid 0", Request(4, name="evil"), "exit 3"),
    Scenario("refused: base+domid is a human's uid", Request(12, name="ci"), "exit 3"),
    Scenario("refused: nothing found under restrict", Request(2, prefix="qemu-none"), "exit 3"),
)


@dataclass(frozen=True)
class Result:
    """A scenario and what the chain gave: a decision or an error."""

    scenario: Scenario
    decision: Decision | None
    error: QemuDeprivError | None

    @property
    def got(self) -> str:
        """The tier chosen, or ``exit N`` for an error."""
        if self.decision is not None:
            return self.decision.tier.value
        assert self.error is not None  # noqa: S101 - one of the two is always set
        return f"exit {self.error.exit_code}"


def run_demo() -> Iterator[Result]:
    """Resolve every scenario against temporary accounts seen through real NSS.

    Raises:
        EnvironmentFailure: not root, or the private mount namespace could not be made;
            or a scenario did not give what it must.
    """
    with tempfile.TemporaryDirectory(prefix="qemu-depriv-demo-") as tmp:
        scratch = write_scratch_accounts(Path(tmp), DEMO_PASSWD, DEMO_GROUP)
        try:
            enter_scratch_accounts(scratch)
        except OSError as exc:
            raise EnvironmentFailure(
                f"demo: cannot make a private mount namespace ({exc.strerror}): run it as root"
            ) from exc
        lookup = LibcLookup()
        for scenario in SCENARIOS:
            try:
                result = Result(scenario, resolve(scenario.request, lookup), None)
            except QemuDeprivError as exc:
                result = Result(scenario, None, exc)
            yield result
            if result.got != scenario.expect:
                raise EnvironmentFailure(
                    f"demo: {scenario.title!r} gave {result.got}, expected {scenario.expect}"
                )
