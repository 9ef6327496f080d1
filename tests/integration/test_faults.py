"""Faults with the real Envoy (--concurrency 2 or 3): a canary that becomes unreachable, a canary
that hangs past the route timeout, and the analyser writing the state dozens of times under
concurrent load across several workers.

Waits are on stats and logs; timing figures (reaction, counts) are printed for the record (`-s`)
and kept as junit properties, never asserted."""

from __future__ import annotations

import time

import pytest

from tests.integration import harness
from tests.integration.test_canary import canary_cfg, decision_lines, stat, wait_phase

PROGRESSING, SUCCEEDED, FAILED = 1, 3, 4


# A worker may route a request on its copy of the state read just before the rollback (a copy
# lives a few ms at most); requests that start this long after weight 0 was seen must all succeed.
ROUTING_COPY_S = 0.01


def failed_after(records, since: float) -> list:
    """The requests that STARTED at or after `since` (+ ROUTING_COPY_S) and did not get a 200."""
    return [r for r in records if r[0] >= since + ROUTING_COPY_S and r[2] != 200]


def failing_canary(records) -> list:
    """Requests that reached the canary side and failed: a 5xx that did not come from stable
    (local replies from the proxy carry no x-served-by)."""
    return [r for r in records if r[3] != "stable" and r[2] >= 500]


def assert_stable_always_ok(records) -> None:
    stable = [r for r in records if r[3] == "stable"]
    assert stable and all(r[2] == 200 for r in stable), harness.summarize(r[1:] for r in stable)
    no_response = [r for r in records if r[2] == 0]
    assert not no_response, f"{len(no_response)} requests got no response at all"


def wait_weight_zero(proxy) -> float:
    """Polls the weight gauge every 10 ms; returns when 0 was first seen."""
    proxy.wait_for(lambda: stat(proxy, "weight") == 0, 20,
                   lambda: f"weight 0 (now {stat(proxy, 'weight')}, phase {stat(proxy, 'phase')})",
                   interval=0.01)
    return time.monotonic()


def rollback_figures(records, fault_at: float, zero_at: float, failed_before: int,
                     record_property, label: str) -> float:
    failing = failing_canary(records)
    assert failing, "the canary failed"
    reaction = zero_at - failing[0][1]
    print(f"\n{label}: weight 0 {reaction:.2f}s after the first failing canary response "
          f"({zero_at - fault_at:.2f}s after the fault; failed checks before it: {failed_before}); "
          f"{len(failing)} failing canary responses of {len(records)} requests")
    record_property("reaction_s", round(reaction, 3))
    record_property("fault_to_weight_0_s", round(zero_at - fault_at, 3))
    record_property("failing_responses", len(failing))
    return reaction


def client_tallies(records) -> dict:
    """Per-side requests and 5xx as the clients saw them (backends tag every response)."""
    clients = harness.summarize(records)
    assert not [k for k in clients if k not in ("stable/200", "canary/200", "canary/500")], clients
    return {
        "canary_requests": clients.get("canary/200", 0) + clients.get("canary/500", 0),
        "canary_5xx": clients.get("canary/500", 0),
        "stable_requests": clients.get("stable/200", 0),
        "stable_5xx": 0,
    }


def tallied(proxy) -> dict:
    """What the analyser summed from every worker's slot."""
    return {k: stat(proxy, f"tallied_{k}") for k in ("canary_requests", "canary_5xx",
                                                     "stable_requests", "stable_5xx")}


def steps(first: int, last: int, by: int) -> list[int]:
    return list(range(first, last + 1, by))


# ---- 1. the canary becomes unreachable --------------------------------------------------------

def test_unreachable_canary_is_rolled_back_and_stable_is_unaffected(launcher, backends,
                                                                    record_property):
    # The canary cluster points at its own backend Envoy, which the test stops while the
    # canary has weight: every new canary connection is refused and the proxy answers 503.
    canary_backend = launcher.backends(name="canary-backend")
    cfg = canary_cfg(interval="500ms", threshold=2, stepWeights=steps(10, 50, 5), minRequests=1,
                     metrics=[{"name": "request-success-rate", "thresholdRange": {"min": 99},
                               "interval": "2s"}])
    proxy = launcher.proxy(backends, cfg, canary_port=canary_backend.canary_port)
    with proxy.load(rate=150, connections=4) as load:
        proxy.wait_for(lambda: stat(proxy, "weight", 0) >= 15 and stat(proxy, "canary_requests", 0) > 0,
                       20, lambda: f"canary weight >= 15 (now {stat(proxy, 'weight')})")
        assert stat(proxy, "canary_5xx") == 0, "healthy until stopped"
        failed_before = stat(proxy, "failed_checks")
        fault_at = time.monotonic()
        canary_backend.stop()
        zero_at = wait_weight_zero(proxy)
        # The canary gets no connection attempt after the rollback (requests in flight landed).
        time.sleep(0.3)
        attempts = proxy.stat("cluster.web-canary.upstream_cx_total")
        proxy.wait_more_requests(100, "after the rollback")
    records = load.timed_records()
    assert proxy.stat("cluster.web-canary.upstream_cx_total") == attempts, "the rolled-back canary was tried"
    assert proxy.stat("cluster.web-canary.upstream_cx_connect_fail") > 0, "connections were refused"

    assert_stable_always_ok(records)
    failing = failing_canary(records)
    assert failing and {r[2] for r in failing} == {503}, harness.summarize(r[1:] for r in failing)
    assert not failed_after(records, zero_at), harness.summarize(r[1:] for r in failed_after(records, zero_at))
    # Every local 503 was counted as a canary failure, exactly once.
    proxy.wait_for(lambda: stat(proxy, "canary_5xx") == len(failing), 10,
                   lambda: f"canary_5xx {stat(proxy, 'canary_5xx')} == {len(failing)} failing responses")
    assert (stat(proxy, "phase"), stat(proxy, "weight"), stat(proxy, "rollbacks")) == (FAILED, 0, 1)
    rollback = [l for l in decision_lines(proxy) if "rolling back" in l]
    assert len(rollback) == 1 and "request-success-rate" in rollback[0], rollback
    rollback_figures(records, fault_at, zero_at, failed_before, record_property, "unreachable canary")


# ---- 2. the canary hangs past the route timeout ---------------------------------------------------

def test_hanging_canary_times_out_counts_as_failure_and_latency_and_is_rolled_back(
        launcher, backends, record_property):
    cfg = canary_cfg(interval="500ms", threshold=2, stepWeights=steps(10, 50, 5), minRequests=1,
                     metrics=[
                         {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "2s"},
                         {"name": "request-duration", "thresholdRange": {"max": 200}, "interval": "2s"},
                     ])
    proxy = launcher.proxy(backends, cfg, canary_route_timeout="0.3s")
    # Enough connections that clients stuck 300 ms on the canary still keep traffic flowing.
    with proxy.load(rate=150, connections=8) as load:
        proxy.wait_for(lambda: stat(proxy, "weight", 0) >= 15, 20,
                       lambda: f"canary weight >= 15 (now {stat(proxy, 'weight')})")
        # The canary accepts and never answers in time: the proxy's route timeout (300 ms) fires.
        failed_before = stat(proxy, "failed_checks")
        fault_at = time.monotonic()
        backends.set_canary_fault(delay_ms=600_000)
        zero_at = wait_weight_zero(proxy)
        time.sleep(0.5)  # let requests in flight land (each takes at most the route timeout)
        canary_rq = proxy.stat("cluster.web-canary.upstream_rq_total")
        proxy.wait_more_requests(100, "after the rollback")
    records = load.timed_records()
    assert proxy.stat("cluster.web-canary.upstream_rq_total") == canary_rq, "the rolled-back canary got requests"

    assert_stable_always_ok(records)
    failing = failing_canary(records)
    assert failing and {r[2] for r in failing} == {504}, harness.summarize(r[1:] for r in failing)
    assert proxy.stat("cluster.web-canary.upstream_rq_timeout") == len(failing)
    assert not failed_after(records, zero_at), harness.summarize(r[1:] for r in failed_after(records, zero_at))
    proxy.wait_for(lambda: stat(proxy, "canary_5xx") == len(failing), 10,
                   lambda: f"canary_5xx {stat(proxy, 'canary_5xx')} == {len(failing)} timeouts")
    assert (stat(proxy, "phase"), stat(proxy, "weight"), stat(proxy, "rollbacks")) == (FAILED, 0, 1)
    # Both checks saw the timeouts: as errors, and as a p99 near the route timeout.
    failed_checks = [l for l in decision_lines(proxy) if "halt advancement" in l or "rolling back" in l]
    assert any("request-success-rate" in l and "< 99%" in l for l in failed_checks), failed_checks
    assert any("request-duration p99" in l and "> 200ms" in l for l in failed_checks), failed_checks
    assert "rolling back" in failed_checks[-1]
    rollback_figures(records, fault_at, zero_at, failed_before, record_property, "hanging canary")


# ---- 5. load while the analyser writes the state ----------------------------------------------------

@pytest.mark.parametrize("mode", ["singleton", "leader"])
def test_exact_tallies_and_readable_state_under_load_while_the_weight_changes(
        launcher, backends, mode, record_property):
    # 5% of canary requests fail, so the 5xx tallies are not trivially zero; the success-rate
    # bound and the threshold keep the analysis going whatever a small window shows.
    backends.set_canary_fault(abort_percent=5)
    cfg = canary_cfg(interval="100ms", threshold=1000, stepWeights=steps(2, 60, 2), minRequests=1,
                     metrics=[{"name": "request-success-rate", "thresholdRange": {"min": 50},
                               "interval": "1s"}])
    proxy = launcher.proxy(backends, cfg, mode=mode, concurrency=3)
    proxy.wait_for(lambda: "starting analysis" in proxy.log_text(), 10, "the analysis to start")
    checks_before = stat(proxy, "checks", 0)
    with proxy.load(rate=600, connections=6) as load:
        wait_phase(proxy, SUCCEEDED, timeout=40)
        checks_during = stat(proxy, "checks") - checks_before
    records = load.records()
    workers = [proxy.stat(f"listener.0.0.0.0_{proxy.listener_port}.worker_{i}.downstream_cx_total", 0)
               for i in range(3)]
    assert all(w > 0 for w in workers), f"every worker takes connections: {workers}"

    assert stat(proxy, "state_unreadable") == 0, "a request found an undecodable state"
    assert checks_during >= 24, f"only {checks_during} state writes during the load"
    expected = client_tallies(records)
    assert expected["canary_5xx"] > 0 and expected["canary_requests"] > 0
    proxy.wait_for(lambda: tallied(proxy) == expected, 10,
                   lambda: f"tallies {tallied(proxy)} == clients {expected}")
    envoy = {
        "canary_requests": proxy.stat("cluster.web-canary.upstream_rq_completed"),
        "canary_5xx": proxy.stat("cluster.web-canary.upstream_rq_5xx", 0),
        "stable_requests": proxy.stat("cluster.web-stable.upstream_rq_completed"),
        "stable_5xx": proxy.stat("cluster.web-stable.upstream_rq_5xx", 0),
    }
    assert envoy == expected, f"Envoy's upstream counters {envoy} != clients {expected}"
    assert {k: stat(proxy, k) for k in expected} == expected, "per-side counters"
    # Nothing is counted twice later: the totals hold over further ticks.
    time.sleep(0.6)  # the analyser refreshes the totals every 250 ms
    assert tallied(proxy) == expected
    print(f"\nunder load ({mode}): {checks_during} checks (state writes) during {len(records)} requests "
          f"({expected['canary_requests']} canary, {expected['canary_5xx']} canary 5xx) over workers {workers}")
    record_property("state_writes", checks_during)
    record_property("requests", len(records))
