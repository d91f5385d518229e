"""Make a booted guest ready for the host suite, and run pytest in it.

Inside the guest, after this:

- ``/mnt/payload`` (read-only 9p): ``checkout.tar`` and ``wheels/`` as ``payload.stage`` made them;
- ``/mnt/results`` (9p, written by the guest): read by the host at ``Guest.results``;
- ``/root/qemu-depriv``: the checkout, unpacked on the guest's own disk (tests create sockets,
  namespaces and scratch files; 9p is no place for that);
- ``/root/venv``: a venv with the checkout installed editable with its test extra, from the wheels
  alone (``--no-index``), as ``make deps`` does on a developer's machine.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from tests.hosts.machine import Guest, GuestResult

PAYLOAD = "/mnt/payload"
RESULTS = "/mnt/results"
CHECKOUT = "/root/qemu-depriv"
VENV = "/root/venv"
#: Where Debian's python3-pip-whl (a dependency of python3-venv) keeps its pip wheel.
DEBIAN_WHEELS = "/usr/share/python-wheels"
#: 9p's default message size is small; larger messages make reading the payload quicker.
_9P_OPTIONS = "trans=virtio,version=9p2000.L,msize=262144"


def mount_shares(guest: Guest) -> None:
    """Mount the payload (read-only) and results shares. Raises ``CommandFailed``."""
    guest.shell(
        f"""
        mkdir -p {PAYLOAD} {RESULTS}
        mount -t 9p -o {_9P_OPTIONS},ro payload {PAYLOAD}
        mount -t 9p -o {_9P_OPTIONS} results {RESULTS}
        """,
        timeout=60,
        doing="mounting the 9p shares (payload, results)",
    )


def install_checkout(guest: Guest, build_requirements: list[str]) -> None:
    """Unpack the checkout onto the guest's disk and install it into a venv, offline.

    ``build_requirements`` is what building the project needs (``wheels.build_requirements``).

    Raises ``CommandFailed`` naming the step: unpacking, the venv, or pip (whose output says
    which wheel was missing, if one was).

    Under TCG everything the guest's CPU does is slow, so this avoids work a developer's
    machine would not notice: the venv is made without pip (``ensurepip`` byte-compiles all of
    pip, over a minute), pip then runs from Debian's own pip wheel (``python3-pip-whl``) and
    installs itself, the build backend and the project with ``--no-compile`` (modules compile
    when first imported), and the editable build reuses the installed backend
    (``--no-build-isolation``) instead of making a second venv for it.
    """
    guest.check(["mkdir", "-p", CHECKOUT], timeout=60, doing="making the checkout's directory")
    guest.check(
        ["tar", "-xf", f"{PAYLOAD}/checkout.tar", "-C", CHECKOUT],
        timeout=300,
        doing="unpacking the checkout from the payload share",
    )
    guest.check(
        ["python3", "-m", "venv", "--without-pip", VENV],
        timeout=300,
        doing="creating the venv with python3 -m venv",
    )
    pip = [
        "--no-index", "--find-links", f"{PAYLOAD}/wheels", "--find-links", DEBIAN_WHEELS,
        "--disable-pip-version-check", "--no-input", "--progress-bar", "off", "--quiet",
        "--no-compile",
    ]  # fmt: skip
    guest.shell(
        f"""
        set -- {DEBIAN_WHEELS}/pip-*.whl
        {VENV}/bin/python "$1/pip" install {shlex.join([*pip, "pip", *build_requirements])}
        """,
        timeout=600,
        doing="installing pip and the build backend into the venv (Debian's pip wheel)",
    )
    guest.check(
        [
            f"{VENV}/bin/python", "-m", "pip", "install", *pip, "--no-build-isolation",
            "--editable", f"{CHECKOUT}[test]",
        ],
        timeout=900,
        doing="installing the checkout and its test extra from the wheels (pip --no-index)",
    )  # fmt: skip


@dataclass(frozen=True)
class InnerRun:
    """A pytest run inside the guest: its outcome and, on the host, its JUnit XML report."""

    result: GuestResult
    junit: Path

    def properties(self) -> dict[str, dict[str, str]]:
        """What each test recorded (``record_property``), by test name."""
        if not self.junit.is_file():
            return {}
        root = ElementTree.parse(self.junit).getroot()  # noqa: S314 - our own guest's report
        found: dict[str, dict[str, str]] = {}
        for case in root.iter("testcase"):
            recorded = {p.get("name", ""): p.get("value", "") for p in case.iter("property")}
            if recorded:
                found[case.get("name", "")] = recorded
        return found

    def counts(self) -> dict[str, int]:
        """Tests, failures, errors and skips as the JUnit report counts them (all suites)."""
        totals = dict.fromkeys(("tests", "failures", "errors", "skipped"), 0)
        if not self.junit.is_file():
            return totals
        root = ElementTree.parse(self.junit).getroot()  # noqa: S314 - our own guest's report
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            for key in totals:
                totals[key] += int(suite.get(key, "0"))
        return totals


def run_pytest(
    guest: Guest,
    args: list[str],
    *,
    timeout: float,
    name: str,
    env: dict[str, str] | None = None,
) -> InnerRun:
    """Run the venv's pytest in the guest's checkout, its report written to the results share.

    ``name`` names the report (``RESULTS/NAME.xml``, ``Guest.results / "NAME.xml"`` on the
    host). A non-zero exit is returned, not raised: the caller shows the output and the
    counts. Raises ``GuestTimeout`` when the guest stops answering.
    """
    result = guest.run(
        [
            f"{VENV}/bin/python", "-m", "pytest", "-p", "no:cacheprovider",
            f"--junitxml={RESULTS}/{name}.xml", *args,
        ],
        timeout=timeout,
        cwd=CHECKOUT,
        env=env,
        doing=f"running pytest {shlex.join(args)} in the guest",
    )  # fmt: skip
    return InnerRun(result, guest.results / f"{name}.xml")
