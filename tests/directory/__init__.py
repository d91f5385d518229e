"""A real directory-service lab: OpenLDAP (slapd), nslcd with libnss-ldapd, SSSD with its InfoPipe.

Issue 12 asks that a lookup error from a real directory never reads as "no such user".  These
fixtures run the real daemons Debian ships, each instance private to one test:

- ``slapd.py``: an OpenLDAP server on 127.0.0.1 and an ldapi:// socket, its config and mdb
  database under the test's tmp dir, loaded with posixAccount/posixGroup entries;
- ``namespace.py``: a mount namespace held open by a holder process, in which scratch files
  stand for /etc/passwd, /etc/group and /etc/nsswitch.conf (the product's own
  ``qemu_depriv.accounts.scratch``) and lab directories for the daemons' fixed paths;
- ``nslcd.py`` and ``sssd.py``: the NSS daemons (and SSSD's private system bus) inside such a
  namespace, with the timings of their reconnect logic as tunables;
- ``probe.py``: a script that calls glibc's ``getpwnam_r``/``getpwuid_r`` once and prints the
  raw outcome, run inside a namespace.

Nothing here writes the host's account files, nsswitch.conf, nslcd.conf or /etc/sssd: every
path a daemon insists on is a bind mount inside the lab's namespace.  The Makefile installs the
packages (``DIRECTORY_APT_PACKAGES``) and puts back what their maintainer scripts change.
"""
