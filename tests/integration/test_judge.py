"""The statistical judge (`error-rate-vs-stable`) in a real Envoy: the workers' tallies, the
singleton's per-tick sequential test against stable, its rollback. A shared outage (stable and
canary both failing 5%) is not a rollback, where `request-success-rate` min 99 would be one;
a canary at 3x stable's error rate is rolled back, between checks, with its evidence logged."""

from __future__ import annotations

import re

from tests.integration import harness
from tests.integration.test_canary import canary_cfg

FAILED, SUCCEEDED = 4, 3


def judged_cfg() -> dict:
    # Checks every 4s over 20% to 80%: ~20 s of evidence before the promotion. A high
    # threshold: a rollback can only come from the judge's own rejection.
    return canary_cfg(interval="4s", threshold=10, stepWeights=[20, 40, 60, 80], minRequests=20,
                      metrics=[{"name": "error-rate-vs-stable", "maxRatio": 1.5, "alpha": 0.01,
                                "interval": "10s"}])


def stat(proxy, name):
    return harness.canary_stat(proxy, name)


def test_a_shared_outage_is_not_a_rollback(launcher, backends):
    backends.set_stable_fault(abort_percent=5)
    backends.set_canary_fault(abort_percent=5)
    proxy = launcher.proxy(backends, judged_cfg())
    with harness.LoadGenerator(proxy.url, rate=200, connections=6) as load:
        harness.wait_phase(proxy, SUCCEEDED, timeout=60)
    assert stat(proxy, "rollbacks") in (0, None)
    # Both sides really failed ~5% (what a fixed min 99 would have rolled back).
    canary = stat(proxy, "canary_requests")
    errors = stat(proxy, "canary_5xx")
    assert canary > 200 and errors / canary > 0.02, (errors, canary)
    assert stat(proxy, "stable_5xx") / stat(proxy, "stable_requests") > 0.02
    assert "rolling back" not in proxy.log_text()
    passed = [l for l in proxy.log_text().splitlines() if "checks passed" in l and "error-rate-vs-stable" in l]
    assert passed and "e-value" in passed[-1], passed[-3:]


def test_a_canary_at_three_times_stables_error_rate_is_rolled_back_with_its_evidence(launcher, backends):
    backends.set_stable_fault(abort_percent=5)
    backends.set_canary_fault(abort_percent=15)
    proxy = launcher.proxy(backends, judged_cfg())
    with harness.LoadGenerator(proxy.url, rate=200, connections=6):
        harness.wait_phase(proxy, FAILED, timeout=60)
    lines = [l for l in proxy.log_text().splitlines() if "rolling back" in l]
    assert len(lines) == 1, lines
    line = lines[0]
    assert "error-rate-vs-stable: canary worse than 1.5x stable at alpha 0.01" in line, line
    assert "rejected at once" in line and "e-value" in line, line
    ratio = float(re.search(r"ratio ([\d.]+)", line).group(1))
    assert ratio > 1.5, line
    assert stat(proxy, "weight") == 0
    # A failed check that rolls back at once: one failed check, not `threshold` of them.
    assert stat(proxy, "failed_checks") == 1
