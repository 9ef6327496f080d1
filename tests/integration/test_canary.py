"""canary-guard end to end in a real Envoy (--concurrency 2): routing, analysis, rollback,
promotion, affinity, match rules, config refusal, exact tallies, singleton and leader modes.

Every wait is on readiness or on stats (never a bare sleep); timing figures are printed for
the record (`-s`), never asserted: timing goals belong to `make bench`."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml

from tests.integration import harness

PHASES = harness.PHASES
PROGRESSING, SUCCEEDED, FAILED = 1, 3, 4


def canary_cfg(**analysis) -> dict:
    """The envoy/envoy.yaml canary with a fast analysis (tests override fields)."""
    cfg = harness.default_plugin_config()
    cfg["analysis"] = {
        "interval": "500ms",
        "threshold": 2,
        "stepWeights": [10, 20, 30],
        "minRequests": 5,
        "metrics": [
            {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "2s"},
            {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "2s"},
        ],
    }
    cfg["analysis"].update(analysis)
    return cfg


def stat(proxy, name: str, default=None):
    return proxy.wasm_stat(f"canary_guard.web.{name}", default)


def wait_phase(proxy, phase: int, timeout: float = 20.0) -> None:
    proxy.wait_for(lambda: stat(proxy, "phase") == phase, timeout,
                   lambda: f"phase {PHASES[phase]} (now {PHASES.get(stat(proxy, 'phase'))}, "
                           f"weight {stat(proxy, 'weight')})")


def decision_lines(proxy) -> list[str]:
    return [l.split("wasm log canary-guard canary-guard: ", 1)[1]
            for l in proxy.log_text().splitlines() if "wasm log canary-guard canary-guard: canary web" in l]


def canary_upstream_requests(proxy) -> int:
    return proxy.stat("cluster.web-canary.upstream_rq_total", 0)


# ---- analysis outcomes --------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["singleton", "leader"])
def test_healthy_canary_walks_every_step_and_is_promoted(launcher, backends, mode):
    # A 500 ms check at weight 10 sees ~6 canary requests at 120 req/s: minRequests 2 and
    # threshold 3 keep a slow load generator on a busy machine from looking like "no traffic"
    # (that rule has a test of its own).
    proxy = launcher.proxy(backends, canary_cfg(minRequests=2, threshold=3), mode=mode)
    with proxy.load(rate=120, connections=4) as load:
        wait_phase(proxy, SUCCEEDED)
        assert stat(proxy, "weight") == 100
        assert stat(proxy, "promotions") == 1
        assert stat(proxy, "rollbacks") == 0
        # After promotion every request goes to the canary.
        t = time.monotonic()
        proxy.wait_for(lambda: len(load.records(since=t)) >= 50, 10, "50 requests after promotion")
    after = load.records(since=t + 0.2)
    assert after and all(served == "canary" and status == 200 for _, status, served in after), \
        harness.summarize(after)
    lines = decision_lines(proxy)
    for expected in ["starting analysis, phase Progressing, weight 0 -> 10",
                     "advance weight 10 -> 20", "advance weight 20 -> 30",
                     "promotion completed, weight -> 100, phase Succeeded"]:
        assert any(expected in l for l in lines), f"missing {expected!r} in {lines}"
    who = "singleton" if mode == "singleton" else "worker (leader election)"
    assert f"canary web: acquired the analyser lease as {who}" in proxy.log_text()


def test_erroring_canary_is_rolled_back_and_then_gets_no_traffic(launcher, backends):
    backends.set_canary_fault(abort_percent=30)
    proxy = launcher.proxy(backends, canary_cfg())
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, FAILED)
        assert stat(proxy, "weight") == 0
        assert stat(proxy, "rollbacks") == 1
        assert stat(proxy, "failed_checks") == 2
        # Let in-flight requests land, then prove the canary gets nothing more.
        time.sleep(0.3)
        before = canary_upstream_requests(proxy)
        proxy.wait_more_requests(100, "after the rollback")
    assert canary_upstream_requests(proxy) == before, "a request reached the rolled-back canary"
    rollback = [l for l in decision_lines(proxy) if "rolling back" in l]
    assert len(rollback) == 1, rollback
    assert "request-success-rate" in rollback[0] and "< 99%" in rollback[0] and "(failed checks 2/2)" in rollback[0]


def test_slow_canary_is_rolled_back_on_request_duration(launcher, backends):
    backends.set_canary_fault(delay_ms=300)
    # 1s checks and enough connections that slow canary responses still fill each window.
    cfg = canary_cfg(interval="1s", metrics=[
        {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "2s"},
        {"name": "request-duration", "thresholdRange": {"max": 200}, "interval": "2s"},
    ])
    proxy = launcher.proxy(backends, cfg)
    with proxy.load(rate=200, connections=16):
        wait_phase(proxy, FAILED)
    rollback = [l for l in decision_lines(proxy) if "rolling back" in l]
    assert len(rollback) == 1 and "request-duration p99" in rollback[0] and "> 200ms" in rollback[0], rollback
    assert "request-success-rate" not in rollback[0], "only the latency breached"


def test_canary_without_traffic_fails(launcher, backends):
    proxy = launcher.proxy(backends, canary_cfg(threshold=3, minRequests=20))
    wait_phase(proxy, FAILED)
    lines = decision_lines(proxy)
    no_traffic = [l for l in lines if "no traffic: 0 requests < minRequests 20" in l]
    assert len(no_traffic) == 3, lines
    assert "(failed checks 1/3)" in no_traffic[0] and "(failed checks 3/3)" in no_traffic[2]
    assert "rolling back" in no_traffic[2]


def test_skip_analysis_promotes_at_once_and_suspend_freezes(launcher, backends):
    cfg = canary_cfg()
    cfg["skipAnalysis"] = True
    proxy = launcher.proxy(backends, cfg)
    wait_phase(proxy, SUCCEEDED, timeout=10)
    assert stat(proxy, "weight") == 100
    proxy.stop()

    cfg = canary_cfg()
    cfg["suspend"] = True
    proxy = launcher.proxy(backends, cfg, name="suspended")
    with proxy.load(rate=100):
        proxy.wait_for(lambda: "suspended, weight held at 10" in proxy.log_text(), 10, "suspend log")
        checks_at = stat(proxy, "checks")
        proxy.wait_for(lambda: stat(proxy, "canary_requests", 0) >= 20, 10, "canary traffic while suspended")
    assert stat(proxy, "checks") == checks_at == 0
    assert stat(proxy, "weight") == 10 and stat(proxy, "phase") == PROGRESSING


# ---- routing -------------------------------------------------------------------------------

def ab_cfg() -> dict:
    """A/B testing: weight stays 0, only match-rule traffic reaches the canary."""
    cfg = canary_cfg(iterations=1000, match=[{"headers": {"x-canary": {"exact": "insider"}}}])
    del cfg["analysis"]["stepWeights"]
    return cfg


def without_early_header_removal(config: dict) -> dict:
    """The proxy config with the early header mutation removed, so the module alone defends."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                f["typed_config"].pop("early_header_mutation_extensions", None)
    return config


@pytest.mark.parametrize("defence", ["full-config", "module-only"])
def test_client_cannot_force_the_canary_with_the_routing_header(launcher, backends, wasm, defence):
    proxy = harness.Proxy(launcher.tmp_path, backends, ab_cfg(), name=f"proxy-{defence}")
    if defence == "module-only":
        without_early_header_removal(proxy.config)
    launcher._track(proxy).start()
    wait_phase(proxy, PROGRESSING)
    for forged in ["web-canary", "Web-Canary", "web-canary, web-canary", "web-stable"]:
        results = proxy.send(40, headers={"x-canary-upstream": forged})
        assert harness.summarize(results) == {"stable/200": 40}, (forged, harness.summarize(results))


def test_match_rule_sends_matching_requests_to_the_canary(launcher, backends):
    proxy = launcher.proxy(backends, ab_cfg())
    wait_phase(proxy, PROGRESSING)
    assert stat(proxy, "weight") == 0
    assert harness.summarize(proxy.send(40, headers={"x-canary": "insider"})) == {"canary/200": 40}
    assert harness.summarize(proxy.send(40, headers={"x-canary": "outsider"})) == {"stable/200": 40}
    assert harness.summarize(proxy.send(40)) == {"stable/200": 40}


def test_session_affinity_keeps_each_user_on_one_side_while_weight_rises(launcher, backends):
    # Slow steps (2s) so every user is asked several times at each weight.
    cfg = canary_cfg(interval="2s", stepWeights=[10, 30, 60, 90], minRequests=1, metrics=[],
                     promoteWithoutMetrics=True)
    proxy = launcher.proxy(backends, cfg)
    wait_phase(proxy, PROGRESSING)
    users = [f"user-{i}" for i in range(60)]
    seen: dict[str, list[tuple[int, str]]] = {u: [] for u in users}
    deadline = time.monotonic() + 30
    while stat(proxy, "phase") == PROGRESSING and time.monotonic() < deadline:
        w_before = stat(proxy, "weight")
        results = proxy.send(len(users), headers=lambda i: {"x-user-id": users[i]}, concurrency=4)
        w_after = stat(proxy, "weight")
        if w_before != w_after or w_before >= 100:
            # The weight moved mid-round, or the canary was promoted between the phase check
            # and the first read: that round says nothing about affinity.
            continue
        for u, (status, served) in zip(users, results):
            assert status == 200
            seen[u].append((w_before, served))
    weights = sorted({w for obs in seen.values() for w, _ in obs})
    assert len(weights) >= 3, f"observed too few weights: {weights}"
    for u, obs in seen.items():
        by_weight: dict[int, set] = {}
        for w, served in obs:
            by_weight.setdefault(w, set()).add(served)
        assert all(len(s) == 1 for s in by_weight.values()), f"{u} flipped at one weight: {by_weight}"
        sides = [by_weight[w].copy().pop() for w in sorted(by_weight)]
        first_canary = sides.index("canary") if "canary" in sides else len(sides)
        assert all(s == "canary" for s in sides[first_canary:]), f"{u} left the canary: {sides}"
    on_canary_at_top = sum(1 for obs in seen.values() if obs and obs[-1][1] == "canary")
    assert 0 < on_canary_at_top < len(users), "the split is neither empty nor everyone"


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("bad, field, value", [
    ('{"name": "web", ', "", "EOF"),
    ({"analysis": {"stepWeights": [10, 5]}}, "analysis.stepWeights", "[10, 5]"),
    ({"analysis": {"threshold": 0}}, "analysis.threshold", "0"),
    ({"analysis": {"stepWieght": 10}}, "analysis.stepWieght", "unknown field"),
    ({"upstreams": {"canary": "web-stable"}}, "upstreams.canary", "web-stable"),
    ({"analysis": {"metrics": [{"name": "error-rate", "thresholdRange": {"max": 1}}]}},
     "analysis.metrics[0].name", "error-rate"),
    ({"upstreams": {"canary": "web-canary\r\n"}}, "upstreams.canary", "visible ASCII"),
    ({"revision": "v2\u200b"}, "revision", "printable ASCII"),
    ({"analysis": {"match": [{"headers": {"X-Canary": {"exact": "a"}, "x-canary": {"exact": "a"}}}]}},
     "analysis.match[0].headers.x-canary", "case-insensitive"),
    ({"analysis": {"metrics": []}}, "analysis.metrics", "no evidence"),
])
def test_bad_config_is_refused_naming_the_field(launcher, backends, bad, field, value):
    if isinstance(bad, str):
        override = bad
    else:
        override = canary_cfg()
        for k, v in bad.items():
            if isinstance(v, dict):
                override[k] = {**override[k], **v}
            else:
                override[k] = v
    proxy = harness.Proxy(launcher.tmp_path, backends, canary_cfg(), filter_config_override=override)
    code, log = launcher.expect_failure(proxy.config)
    assert code != 0
    errors = [l for l in log.splitlines() if "invalid canary-guard configuration" in l]
    assert errors, log[-3000:]
    assert f"configuration: {field}:" in errors[0] if field else True, errors[0]
    assert value in errors[0], errors[0]


def test_envoy_validate_mode_refuses_an_invalid_static_config(launcher, backends):
    # envoy/envoy.yaml sets CANARY_GUARD_INVALID_CONFIG=refuse: `envoy --mode validate` runs
    # on_configure and must fail on what the module would not apply.
    bad = canary_cfg(stepWeights=[30, 10, 50])
    proxy = harness.Proxy(launcher.tmp_path, backends, canary_cfg(), filter_config_override=bad)
    path = launcher.tmp_path / "validate.yaml"
    path.write_text(yaml.safe_dump(proxy.config, sort_keys=False))
    run = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, cwd=launcher.tmp_path, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode != 0, out[-3000:]
    assert ("analysis.stepWeights: [30, 10, 50] must be strictly increasing; "
            "refused (CANARY_GUARD_INVALID_CONFIG=refuse)") in out, out[-3000:]
    good = harness.Proxy(launcher.tmp_path, backends, canary_cfg(), name="valid")
    path.write_text(yaml.safe_dump(good.config, sort_keys=False))
    run = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(path)],
                         capture_output=True, text=True, cwd=launcher.tmp_path, timeout=60)
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]


def test_without_the_refuse_policy_an_invalid_static_config_runs_inert(launcher, backends):
    # The default policy cannot tell a static configuration from a first xDS delivery: Envoy
    # starts, every request goes to stable, and the error shows in the log and the stats.
    bad = canary_cfg(stepWeights=[30, 10, 50])
    proxy = harness.auto_invalid_config_policy(
        harness.Proxy(launcher.tmp_path, backends, canary_cfg(), filter_config_override=bad))
    launcher._track(proxy).start()
    proxy.wait_for(lambda: stat(proxy, "config_invalid") == 1, 10, "config_invalid == 1")
    results = proxy.send(40) + proxy.send(40, headers={"x-canary": "insider"})
    assert harness.summarize(results) == {"stable/200": 80}
    errors = [l for l in proxy.log_text().splitlines() if "invalid canary-guard configuration" in l]
    assert errors and all("[error]" in l and "running inert" in l for l in errors), errors


# ---- tallies ---------------------------------------------------------------------------------

def test_tallies_are_exact_across_workers(launcher, backends):
    # A/B mode with insiders: a deterministic mix of stable and canary traffic.
    proxy = launcher.proxy(backends, ab_cfg())
    wait_phase(proxy, PROGRESSING)
    n_canary, n_stable = 300, 500
    proxy.send(n_canary, headers={"x-canary": "insider"}, concurrency=8)
    proxy.send(n_stable, concurrency=8)
    workers = [proxy.stat(f"listener.0.0.0.0_{proxy.listener_port}.worker_{i}.downstream_cx_total", 0)
               for i in range(2)]
    assert all(w > 0 for w in workers), f"both workers must take connections: {workers}"

    def tallied():
        return (stat(proxy, "tallied_canary_requests"), stat(proxy, "tallied_stable_requests"))

    proxy.wait_for(lambda: tallied() == (n_canary, n_stable), 10, lambda: f"tallies {tallied()}")
    assert proxy.stat("cluster.web-canary.upstream_rq_completed") == n_canary
    assert proxy.stat("cluster.web-stable.upstream_rq_completed") == n_stable
    assert (stat(proxy, "canary_requests"), stat(proxy, "stable_requests")) == (n_canary, n_stable)
    # Nothing is counted twice later: totals hold over further publication ticks.
    checks = stat(proxy, "checks")
    proxy.wait_for(lambda: stat(proxy, "checks") >= checks + 3, 10, "three more checks")
    assert tallied() == (n_canary, n_stable)
    assert (stat(proxy, "tallied_canary_5xx"), stat(proxy, "tallied_stable_5xx")) == (0, 0)
    print(f"\ntallies: workers served {workers}; tallied canary {n_canary}, stable {n_stable}")


def test_local_replies_count_as_canary_errors(launcher, backends):
    backends.stop()  # nothing listens: every upstream connection is refused -> local 503s
    proxy = launcher.proxy(backends, ab_cfg())
    wait_phase(proxy, PROGRESSING)
    results = proxy.send(20, headers={"x-canary": "insider"})
    assert {s for s, _ in results} == {503}
    proxy.wait_for(lambda: stat(proxy, "tallied_canary_5xx") == 20, 10,
                   lambda: f"tallied canary 5xx {stat(proxy, 'tallied_canary_5xx')}")


# ---- stats -----------------------------------------------------------------------------------

def test_stats_are_exported_per_canary_in_prometheus(launcher, backends):
    proxy = launcher.proxy(backends, canary_cfg())
    wait_phase(proxy, PROGRESSING)
    text = proxy.prometheus()
    for name in ["weight", "phase", "failed_checks", "canary_requests", "canary_5xx",
                 "stable_requests", "stable_5xx", "rollbacks", "promotions"]:
        assert f'canary_guard_{name}{{canary="web"}}' in text, name


# ---- reaction time (figures for the record) ----------------------------------------------------

def test_rollback_reaction_at_one_second_interval(launcher, backends, record_property):
    """A healthy canary at weight 10 starts failing every request: how long until weight 0, and
    how many failing responses reach clients. Reported, not asserted (see make bench)."""
    # Small steps so the canary sits near weight 10 with healthy history in its 10s window.
    cfg = canary_cfg(interval="1s", threshold=1, stepWeights=list(range(10, 21)), minRequests=5,
                     metrics=[{"name": "request-success-rate", "thresholdRange": {"min": 99},
                               "interval": "10s"}])
    proxy = launcher.proxy(backends, cfg)
    with proxy.load(rate=300, connections=6) as load:
        proxy.wait_for(lambda: stat(proxy, "weight", 0) >= 12, 15, "two healthy steps")
        backends.set_canary_fault(abort_percent=100)
        proxy.wait_for(lambda: stat(proxy, "weight") == 0, 15, lambda: f"weight 0 (now {stat(proxy, 'weight')})",
                       interval=0.01)
        zero_at = time.monotonic()
        time.sleep(0.5)
    records = load.records()
    failing = [t for t, status, served in records if served == "canary" and status >= 500]
    assert failing, "the canary failed"
    reaction = zero_at - failing[0]
    rate = len(records) / (records[-1][0] - records[0][0])
    print(f"\nreaction: weight 0 {reaction:.2f}s after the first failing response; "
          f"{len(failing)} failing responses reached clients at {rate:.0f} req/s")
    record_property("reaction_s", round(reaction, 3))
    record_property("failing_responses", len(failing))
    assert stat(proxy, "phase") == FAILED
