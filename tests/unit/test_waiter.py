"""The hand-over between ``run``'s supervisor and its waiter (vms/waiter.py), as processes.

The waiter is run as the supervisor runs it (``python -I -S waiter.py DOMID CHILD -- CMD``),
with a real child to wait for; CMD is a small script that prints what the supervisor, started
again, would read from ``QEMU_DEPRIV_SUPERVISED``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qemu_depriv.errors import InvalidInput
from qemu_depriv.vms.supervisor import WAITER, _handed_over, _Handover
from qemu_depriv.vms.waiter import VARIABLE

#: The supervisor's part, played by a script: start the child, exec the waiter with it.
PARENT = """
import os, signal, subprocess, sys
signal.pthread_sigmask(signal.SIG_BLOCK, (signal.SIGHUP, signal.SIGTERM, signal.SIGINT,
                                          signal.SIGCHLD))
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=subprocess.DEVNULL)
report = [sys.executable, "-c", "import os; print(os.environ['QEMU_DEPRIV_SUPERVISED'])"]
os.execv(sys.executable, [sys.executable, "-I", "-S", sys.argv[1], "7", str(child.pid), "--",
                          *report])
"""


def waiter(child_code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PARENT, str(WAITER), child_code],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_the_end_of_the_child_is_handed_over_with_its_status() -> None:
    process = waiter("import sys; sys.exit(3)")
    out, _ = process.communicate(timeout=30)
    domid, child, event = out.strip().split(":", 2)
    assert (domid, event) == ("7", "exit:3")
    assert int(child) > 0


def test_a_killed_child_reads_as_minus_its_signal() -> None:
    process = waiter("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    out, _ = process.communicate(timeout=30)
    assert out.strip().endswith(":exit:-9")


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_is_handed_over_and_the_child_is_left_to_the_teardown(signum: int) -> None:
    process = waiter("import time; time.sleep(60)")
    try:
        deadline = time.monotonic() + 30
        while b"\0-I\0-S\0" not in Path(f"/proc/{process.pid}/cmdline").read_bytes():
            assert time.monotonic() < deadline  # the waiter's own command line, after the exec
            time.sleep(0.01)
        os.kill(process.pid, signum)
        out, _ = process.communicate(timeout=30)
        assert out.strip().endswith(f":signal:{signum}")
    finally:
        process.kill()
        process.wait(timeout=30)
    child = int(out.split(":")[1])
    os.kill(child, signal.SIGKILL)  # the report command did not reap it: PID 1 will


def test_the_supervisor_reads_each_event_and_takes_the_variable_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cases = {
        "5:100:exit:0": _Handover(5, 100, code=0),
        "5:100:exit:-9": _Handover(5, 100, code=-9),
        "5:100:signal:1": _Handover(5, 100, signum=1),
        "5:100:lost": _Handover(5, 100, code=1),
    }
    for value, expected in cases.items():
        monkeypatch.setenv(VARIABLE, value)
        assert _handed_over() == expected
        assert VARIABLE not in os.environ
    assert _handed_over() is None


@pytest.mark.parametrize("value", ["", "5", "5:100", "5:100:exit", "x:100:exit:0", "5:1:boom:2"])
def test_a_value_the_waiter_does_not_write_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv(VARIABLE, value)
    with pytest.raises(InvalidInput, match="is not what the waiter writes"):
        _handed_over()
