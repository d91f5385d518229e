"""A compromised device model trying to outlive its VM, simulated by processes of its uid."""

from __future__ import annotations

import os
import signal
import socket
import time

from qemu_depriv.host.procfs import live_pids_of_uid
from tests.system.vmhost import VmHost, start_escapee, wait_for


def _hold_qmp_socket(path: str, uid: int, gid: int) -> int:
    """Connect to the VM's QMP socket, then hand the connection to a process of the VM's
    uid in a session of its own, as a device model that reached its own socket might."""
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)
        finally:
            os._exit(0)
    client.close()
    return pid


def test_nothing_of_the_vm_survives_stop_however_it_hides(vmhost: VmHost) -> None:
    vm = vmhost.launch("web")
    uid, gid = vm["uid"], vm["gid"]
    start_escapee(uid, gid)  # double fork, setsid, ignores SIGTERM and SIGHUP
    holder = _hold_qmp_socket(vm["qmp"], uid, gid)  # and one holding the QMP connection
    assert wait_for(lambda: len(live_pids_of_uid(uid)) >= 4)
    started = time.monotonic()
    done = vmhost.run("stop", "web", "--timeout", "3")
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30
    assert live_pids_of_uid(uid) == []
    os.waitpid(holder, 0)  # our own child: reap it


def test_a_uid_whose_processes_outlive_their_vm_is_not_handed_on(vmhost: VmHost) -> None:
    vm = vmhost.launch("web", "--domid", "6")
    assert vmhost.run("stop", "web").returncode == 0
    start_escapee(vm["uid"], vm["gid"])  # appears after the stop, as if it raced it
    assert wait_for(lambda: bool(live_pids_of_uid(vm["uid"])))
    done = vmhost.run("launch", str(vmhost.config("db")), "--domid", "6")
    assert done.returncode == 3
    assert f"processes of uid {vm['uid']}" in done.stderr
    for pid in live_pids_of_uid(vm["uid"]):
        os.kill(pid, signal.SIGKILL)
    assert vmhost.vms() == []
