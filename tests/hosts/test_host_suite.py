"""The host suite (``inside/``), run inside each booted Debian host, and what it saw.

One test per host: it runs the whole inner suite with the guest's own pytest, fails with the
inner failures' output, and writes what each inner test recorded (scope names, limits, the OOM
kill, the probe's choice, ``systemctl status``) to the session's report and to
``host-suite-NAME.json`` in the guest's results directory.
"""

from __future__ import annotations

import json

from tests.conftest import INSIDE_HOST
from tests.hosts import provision
from tests.hosts.machine import Guest
from tests.hosts.pool import HostPool

#: Every inner test, so that a test silently not collected fails the tier.
INNER_TESTS = 10
#: Nested QEMU under a TCG guest is slow; the whole inner suite gets this long.
SUITE_TIMEOUT = 3600


def test_the_host_suite_passes_inside(host: Guest, host_pool: HostPool) -> None:
    inner = provision.run_pytest(
        host,
        ["-v", "-o", "junit_family=legacy", "tests/hosts/inside"],
        timeout=SUITE_TIMEOUT,
        name=f"host-suite-{host.name}",
        env={INSIDE_HOST: "1"},
    )
    saw = inner.properties()
    (host.results / f"host-suite-{host.name}.json").write_text(json.dumps(saw, indent=2))
    host_pool.lines.append(f"{host.name}: the host suite saw ({inner.result.seconds:.0f} s):")
    for test, recorded in saw.items():
        host_pool.lines.append(f"  {test}")
        host_pool.lines += [f"    {what}: {value}" for what, value in recorded.items()]
    assert inner.result.ok, inner.result.stdout[-6000:] + inner.result.stderr[-2000:]
    counts = inner.counts()
    assert counts == {"tests": INNER_TESTS, "failures": 0, "errors": 0, "skipped": 0}, counts
