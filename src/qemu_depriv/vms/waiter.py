"""What stays of ``run``'s supervisor while its VM runs: a bare interpreter that waits.

The supervisor needs the whole package to start a VM and to tear it down, and none of it in
between; kept loaded, it held about 12 MiB of private memory per supervised VM (issue 18:
at most 8 MiB per VM with its PID-namespace wrapper). So once QEMU runs verified, the
supervisor execs this file in the same process (libxl's recorded pid stays valid), as
``python -I -S waiter.py DOMID CHILD -- COMMAND...``: nothing is imported beyond ``os``,
``signal`` and ``sys``, and it must stay that way (the file is run as a script, not as part of
the package).

The stop signals and SIGCHLD were blocked before the exec, so none is lost in between; the
waiter takes them with ``sigwaitinfo``, reaps CHILD (QEMU's wrapper, or QEMU) when it ends,
and execs COMMAND (the supervisor's own command line) again with ``QEMU_DEPRIV_SUPERVISED``
set to ``DOMID:CHILD:EVENT``, EVENT being ``signal:N``, ``exit:CODE`` (negative: killed by
that signal) or ``lost`` (CHILD was no child of this process). The supervisor, started again,
finds it there and tears the VM down as it would have without the exec.
"""

import os
import signal
import sys

VARIABLE = "QEMU_DEPRIV_SUPERVISED"
#: The signals that end a supervised VM, as libxl (SIGHUP) and service managers send them.
STOP_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
#: What the waiter waits for: a stop signal, or SIGCHLD for the end of QEMU's wrapper.
WAITED = (*STOP_SIGNALS, signal.SIGCHLD)


def wait_for(child: int) -> str:
    """Wait until ``child`` ends or a stop signal comes; say which."""
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            return "lost"
        if pid == child:
            return f"exit:{os.waitstatus_to_exitcode(status)}"
        info = signal.sigwaitinfo(WAITED)
        if info.si_signo != signal.SIGCHLD:
            return f"signal:{info.si_signo}"


def main(argv: list[str]) -> int:
    """``waiter.py DOMID CHILD -- COMMAND...``; returns only when the arguments are wrong."""
    if len(argv) < 5 or argv[3] != "--" or not (argv[1].isdigit() and argv[2].isdigit()):
        print(f"usage: {argv[0]} DOMID CHILD -- COMMAND...", file=sys.stderr)
        return 2
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
    event = wait_for(int(argv[2]))
    os.environ[VARIABLE] = f"{argv[1]}:{argv[2]}:{event}"
    command = argv[4:]
    os.execv(command[0], command)  # noqa: S606 - the supervisor's own command line, no shell
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
