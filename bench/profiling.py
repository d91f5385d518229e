"""Profiles of a slow path with pyinstrument (the ``bench`` extra; ``make bench`` installs it).

Each profile is kept as two short texts for the summary: the flat list of the frames with the
most time of their own (library frames included), and the call tree of the project's own code.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import TMP, run

if TYPE_CHECKING:
    from pyinstrument.session import Session

FLAT_LINES = 15
TREE_LINES = 70


def _body(text: str) -> list[str]:
    """The report without pyinstrument's banner (everything up to 'Profile at ...')."""
    lines = [line for line in text.splitlines() if line.strip()]
    heads = ("Profile at", "Program:")
    start = next((i + 1 for i, line in enumerate(lines) if line.startswith(heads)), 0)
    return lines[start:]


def _render(session: Session) -> dict[str, Any]:
    from pyinstrument.renderers import ConsoleRenderer  # noqa: PLC0415 - optional dependency

    flat = ConsoleRenderer(flat=True, show_all=True, unicode=False, color=False)
    tree = ConsoleRenderer(
        show_all=False, unicode=False, color=False,
        processor_options={"filter_threshold": 0.015},
    )  # fmt: skip
    # pyinstrument's flat view lumps the synthetic "[self]" frames of many functions under one
    # file name, and the harness's own frames are not the product's: both are left out.
    flat_lines = [
        line
        for line in _body(flat.render(session))
        if "[self]" not in line and "bench/" not in line
    ]
    tree_lines = _body(tree.render(session))
    return {
        "duration": session.duration,
        "samples": session.sample_count,
        "flat": flat_lines[:FLAT_LINES],
        "tree": tree_lines[:TREE_LINES],
    }


def profile_call(call: Callable[[], object], *, interval: float = 0.0001) -> dict[str, Any]:
    """Profile ``call()`` in this process."""
    try:
        from pyinstrument import Profiler  # noqa: PLC0415 - optional dependency
    except ImportError as exc:
        return {"error": f"pyinstrument is not installed ({exc}): run 'make bench'"}
    profiler = Profiler(interval=interval)
    profiler.start()
    try:
        call()
    finally:
        session = profiler.stop()
    return _render(session)


def pyinstrument_command(args: Sequence[str], out: Path, *, interval: float = 0.0002) -> list[str]:
    """``python -m qemu_depriv ARGS`` under pyinstrument, the session saved to ``out``."""
    return [
        sys.executable, "-m", "pyinstrument", "-i", str(interval), "-r", "pyisession",
        "-o", str(out), "-m", "qemu_depriv", *args,
    ]  # fmt: skip


def render_file(out: Path, args: Sequence[str]) -> dict[str, Any]:
    """The profile a :func:`pyinstrument_command` wrote."""
    if not out.exists():
        return {"error": f"no profile written to {out}"}
    from pyinstrument.session import Session  # noqa: PLC0415 - optional dependency

    profile = _render(Session.load(str(out)))
    profile["command"] = " ".join(["pyinstrument -m qemu_depriv", *args])
    return profile


def profile_cli(
    args: Sequence[str], *, timeout: float = 120.0
) -> tuple[dict[str, Any], subprocess.CompletedProcess[str]]:
    """Run ``python -m qemu_depriv ARGS`` under pyinstrument; return the profile and the run."""
    with tempfile.TemporaryDirectory(prefix="bench-prof-", dir=TMP) as tmp:
        out = Path(tmp) / "profile.pyisession"
        done = run(pyinstrument_command(args, out), timeout=timeout)
        profile = render_file(out, args)
    if "error" in profile:
        profile["error"] += f": {done.stderr.strip()[-400:]}"
    return profile, done
