"""Real Debian 12 and 13 hosts booted under QEMU, for the host suite (issue 16).

The development machine has no systemd and a cgroup v1 hybrid; the hosts users run have systemd as
PID 1 and cgroup v2 only. This package builds such hosts from Debian's own packages and boots them:

- ``distros``: what each host is (suite, package list, the QEMU and Python it must have); pure.
- ``images``: the root filesystem, kernel and initrd, built with mmdebstrap and cached by key.
- ``wheels``: the Python wheels the checkout needs, downloaded on the host for the guest's Python.
- ``cache``: cache entries that appear whole or not at all (images and wheels).
- ``payload``: the checkout's working tree and the wheels, laid out for the guest to read.
- ``qga``: a client for the QEMU guest agent, the channel commands and results travel on.
- ``machine``: the QEMU command line (pure), booting (KVM if it works, else TCG), a running guest.
- ``provision``: shares mounted and the checkout installed in the guest; pytest run inside it.
- ``pool``: the runner API, one call from nothing to a ready guest, and the session's report.
- ``prereqs``: what a machine needs to build and boot the hosts; a failure names what is not.
- ``commands``: the one place host programs run; ``errors``: the one error tree.
- ``inside/``: the host suite itself, run in each guest by ``test_host_suite``.

The harness's modules import the product (``qemu_depriv``) nowhere: the harness must work even
when the product is broken, so that the host suite (which does use it) can say how.
"""
