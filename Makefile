# The two commands of the README's quick start, for a fresh Debian 12 machine, as root:
#   make demo    install what is missing, then run the main job
#   make test    install what is missing, then run linters and the whole test suite
# Every system package the project needs is named here and installed here, never by hand.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := qemu-system-x86 qemu-utils libnss-wrapper util-linux passwd gcc libc6-dev python3-venv libxen-dev
# mmdebstrap builds the Debian 12 and 13 root filesystems that tests/hosts boots under QEMU.
HOSTS_APT_PACKAGES := mmdebstrap
# The directory-service lab of tests/directory (OpenLDAP, nslcd, SSSD and its InfoPipe), run only
# inside the tests' private mount namespaces. sssd-common depends on libpam-sss (and it on
# libpam-pwquality), whose PAM profiles the install disables again (pam-auth-update --disable, so
# that later runs keep them off); libpam-ldapd is only recommended by nslcd: not installed.
DIRECTORY_APT_PACKAGES := slapd ldap-utils nslcd libnss-ldapd sssd-common sssd-ldap sssd-dbus \
	sssd-tools libnss-sss dbus-daemon
# Where those daemons write their pids: one that an install starts all the same is stopped.
DIRECTORY_PIDFILES := /run/slapd/slapd.pid /run/nslcd/nslcd.pid /run/sssd.pid /run/dbus/pid
SYSTEM_STAMP := $(VENV)/.system-packages
VENV_STAMP := $(VENV)/.installed
# The example domain configs Xen ships (xen-utils-common): unpacked for the tests, not installed.
XEN_EXAMPLES := $(VENV)/xen-examples/etc/xen/xlexample.hvm

.PHONY: help demo test quick faults lint unit golden deps clean

help:
	@echo "make demo   install what is missing, then run the demo (as root)"
	@echo "make test   install what is missing, then run ruff, mypy and pytest (as root)"
	@echo "make quick  the same without the faults suite and the real-host tier (make faults, make hosts)"

# Re-checked whenever the Makefile (and so a package list) changes.
# Installing leaves the host's name service and PAM set-up as they were: maintainer scripts add
# sss/ldap to nsswitch.conf and enable new PAM profiles in /etc/pam.d/common-*, so both are saved
# first and put back afterwards (on a failed install too), then compared; every PAM profile the
# install brought is disabled; a policy-rc.d keeps daemons from starting.
$(SYSTEM_STAMP): Makefile
	@if [ "$$(id -u)" != 0 ]; then echo "make: run as root (it installs Debian packages and uses namespaces)" >&2; exit 1; fi
	@missing=$$(for p in $(APT_PACKAGES) $(HOSTS_APT_PACKAGES) $(DIRECTORY_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq; \
		saved=$$(mktemp -d); cp -a /etc/nsswitch.conf /etc/pam.d "$$saved"/; \
		profiles=$$(ls /usr/share/pam-configs 2>/dev/null || true); \
		policy=; [ -e /usr/sbin/policy-rc.d ] || { policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >$$policy; chmod 755 $$policy; }; \
		running=" $$(cat $(DIRECTORY_PIDFILES) 2>/dev/null | tr '\n' ' ' || true) "; \
		restore() { \
			for f in nsswitch.conf $$(cd "$$saved" && echo pam.d/*); do \
				cmp -s "$$saved/$$f" /etc/$$f || { echo "make: putting back /etc/$$f as it was before the install"; cp -p "$$saved/$$f" /etc/$$f; }; \
			done; \
			[ -z "$$policy" ] || rm -f $$policy; \
		}; \
		trap restore EXIT; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		new=$$(ls /usr/share/pam-configs 2>/dev/null | grep -vxF "$$profiles" || true); \
		[ -z "$$new" ] || DEBIAN_FRONTEND=noninteractive pam-auth-update --disable $$new; \
		trap - EXIT; restore; \
		for f in nsswitch.conf $$(cd "$$saved" && echo pam.d/*); do \
			cmp "$$saved/$$f" /etc/$$f || { echo "make: the install changed /etc/$$f; the copy from before it is in $$saved" >&2; exit 1; }; \
		done; \
		rm -rf "$$saved"; \
		for f in $(DIRECTORY_PIDFILES); do \
			pid=$$(cat $$f 2>/dev/null) || continue; \
			case "$$running" in *" $$pid "*) continue;; esac; \
			! kill -0 "$$pid" 2>/dev/null || { echo "make: stopping pid $$pid ($$f), started by the install"; kill "$$pid"; }; \
		done; \
	fi
	@mkdir -p $(VENV) && touch $@

$(VENV_STAMP): pyproject.toml $(SYSTEM_STAMP)
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

$(XEN_EXAMPLES): | $(SYSTEM_STAMP)
	@rm -rf $(VENV)/xen-deb && mkdir -p $(VENV)/xen-deb
	cd $(VENV)/xen-deb && { apt-get download -q -o APT::Sandbox::User=root xen-utils-common \
		|| { apt-get update -qq && apt-get download -q -o APT::Sandbox::User=root xen-utils-common; }; }
	dpkg-deb -x $(VENV)/xen-deb/xen-utils-common_*.deb $(VENV)/xen-examples
	@rm -rf $(VENV)/xen-deb
	@test -f $@

deps: $(VENV_STAMP) $(XEN_EXAMPLES)

demo: deps
	$(BIN)/qemu-depriv demo

LINT_PATHS := src tests $(wildcard bench)

lint: deps
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/ruff format --check $(LINT_PATHS)
	$(BIN)/mypy

# pytest exits 5 when it collects no test: make treats that as a failure, as it should.
# make test runs everything, the faults suite included (a few minutes): it is what CI runs.
test: lint
	$(BIN)/pytest

# Everything but the faults suite and the real-host tier, for quick iterations.
quick: lint
	$(BIN)/pytest -m "not faults and not hosts"

# Crashes, races, NSS outages, escapes, hostile input and endurance (tests/faults).
faults: deps
	$(BIN)/pytest tests/faults

# Real Debian 12 and 13 hosts booted under QEMU (tests/hosts): systemd as PID 1, cgroup v2 only.
# The first run builds their root filesystems with mmdebstrap from deb.debian.org (several
# minutes, cached in /var/cache/qemu-depriv/hosts); later runs boot the cached images.
.PHONY: hosts
hosts: deps
	$(BIN)/pytest tests/hosts

unit: deps
	$(BIN)/pytest tests/unit

# Rewrite the golden argv files after an intended change to qemu/argv.py; review the diff.
golden: deps
	QEMU_DEPRIV_REGEN_GOLDEN=1 $(BIN)/pytest -q tests/unit/test_argv.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Benchmarks (as root; bench/README.md): installs libvirt (the baseline of two of them) and the
# bench extra of pyproject.toml, runs every benchmark and writes bench/results/.
BENCH_APT_PACKAGES := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
BENCH_APT_LOG := bench/results/logs/apt.log

# A failed libvirt install does not stop the run: the libvirt benchmark reports it (apt's
# output is kept in $(BENCH_APT_LOG)) and the others still run.
.PHONY: bench
bench: $(VENV_STAMP)
	@mkdir -p $(dir $(BENCH_APT_LOG)) && rm -f $(BENCH_APT_LOG)
	@missing=$$(for p in $(BENCH_APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed$$' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; } 2>&1 | tee $(BENCH_APT_LOG) \
			|| echo "make bench: could not install $$missing (see $(BENCH_APT_LOG)); the libvirt benchmark will say so"; \
	fi
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench
