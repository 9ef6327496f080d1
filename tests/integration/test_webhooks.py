"""Flagger's webhooks against a real Envoy: the shipped filter and singleton, calling a stand-in
of Flagger's load tester (tests/integration/loadtester.py: its gate API and an event sink)
through an Envoy cluster, as a user's `flagger-loadtester` would be called. Every wait is on
stats or logs."""

from __future__ import annotations

import time

import pytest

from tests.integration import harness
from tests.integration.fleet import Etcd, add_etcd_cluster, fleet_plugin_config
from tests.integration.loadtester import LoadTester, add_cluster

PROGRESSING, SUCCEEDED, FAILED, WAITING, WAITING_PROMOTION = 1, 3, 4, 5, 6
LT = "http://flagger-loadtester.test"


def canary_cfg(webhooks: list, **analysis) -> dict:
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg["analysis"] = {
        "interval": "1s",
        "threshold": 2,
        "stepWeights": [20, 40],
        "minRequests": 5,
        "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "4s"}],
        "webhooks": webhooks,
        **analysis,
    }
    return cfg


stat = harness.canary_stat


wait_phase = harness.wait_phase


@pytest.fixture
def lt():
    tester = LoadTester().start()
    yield tester
    tester.stop()


def proxy_with(launcher, backends, lt, cfg, clusters=("flagger-loadtester.test",)) -> harness.Proxy:
    p = harness.Proxy(launcher.tmp_path, backends, cfg, mode="singleton", name="proxy")
    for c in clusters:
        add_cluster(p, c, lt.port)
    launcher._track(p)
    return p.start()


def canary_requests(p) -> int:
    return p.stat("cluster.web-canary.upstream_rq_total", 0)


def test_confirm_promotion_holds_at_the_last_step_until_the_gate_opens(launcher, backends, lt):
    cfg = canary_cfg([{"name": "promotion-gate", "type": "confirm-promotion", "url": f"{LT}/gate/check"},
                      {"name": "events", "type": "event", "url": f"{LT}/events"}])
    p = proxy_with(launcher, backends, lt, cfg)
    with harness.LoadGenerator(p.url, rate=40, connections=2):
        wait_phase(p, WAITING_PROMOTION)
        assert stat(p, "weight") == 40
        checks = stat(p, "checks", 0)
        p.wait_for(lambda: stat(p, "checks", 0) >= checks + 2, 10, "checks go on while it waits")
        assert stat(p, "phase") == WAITING_PROMOTION
        assert lt.post("/gate/open") == 202
        wait_phase(p, SUCCEEDED, timeout=10)
    log = p.log_text()
    assert log.count("waiting for promotion approval: confirm-promotion webhook promotion-gate") == 1
    assert "confirm-promotion webhook promotion-gate passed" in log
    # The audit trail: every decision line reached the event sink with Flagger's payload.
    p.wait_for(lambda: any("promotion completed" in m for m in lt.event_messages()), 5, "last event")
    messages = lt.event_messages()
    decisions = [l.split("wasm log ", 1)[1].split(": ", 1)[1] for l in log.splitlines()
                 if "canary web rev v2: " in l and any(k in l for k in (
                     "starting analysis", "advance weight", "waiting for promotion", "promotion completed"))]
    assert [m for m in messages if any(k in m for k in (
        "starting analysis", "advance weight", "waiting for promotion", "promotion completed"))] == decisions
    e = lt.events[-1]
    assert (e["name"], e["namespace"], e["checksum"], e["phase"], e["type"]) == (
        "web", "default", "v2", "Succeeded", "event")
    assert e["metadata"]["eventType"] == "Normal" and e["metadata"]["timestamp"].isdigit()


def test_manual_rollback_through_the_load_testers_rollback_gate(launcher, backends, lt):
    cfg = canary_cfg([{"name": "rollback-gate", "type": "rollback", "url": f"{LT}/rollback/check"},
                      {"name": "after", "type": "post-rollout", "url": f"{LT}/"}],
                     stepWeights=[10, 20, 30, 40, 50, 60, 70, 80])
    p = proxy_with(launcher, backends, lt, cfg)
    with harness.LoadGenerator(p.url, rate=40, connections=2):
        p.wait_for(lambda: (stat(p, "weight") or 0) >= 20, 15, "weight 20")
        assert lt.post("/rollback/open") == 202
        opened = time.monotonic()
        wait_phase(p, FAILED, timeout=5)
        print(f"\nmanual rollback: weight 0 {time.monotonic() - opened:.2f}s after /rollback/open")
        assert stat(p, "weight") == 0
        settled = canary_requests(p)
        p.wait_more_requests(30, "after the rollback")
        assert canary_requests(p) == settled, "nothing to the canary after the manual rollback"
    assert "rolling back, manual webhook invoked: rollback webhook rollback-gate" in p.log_text()
    p.wait_for(lambda: lt.calls_to("/"), 5, "post-rollout called")
    (post,) = lt.calls_to("/")
    assert (post[1]["phase"], post[1]["type"]) == ("Failed", "post-rollout")


def test_confirm_rollout_waits_at_weight_0_until_approved(launcher, backends, lt):
    cfg = canary_cfg([{"name": "go", "type": "confirm-rollout", "url": f"{LT}/gate/check"}])
    p = proxy_with(launcher, backends, lt, cfg)
    with harness.LoadGenerator(p.url, rate=30, connections=2):
        p.wait_for(lambda: len(lt.calls_to("/gate/check")) >= 3, 10, "asked every interval")
        assert stat(p, "phase") == WAITING and stat(p, "weight") == 0
        assert canary_requests(p) == 0
        assert lt.post("/gate/open") == 202
        p.wait_for(lambda: stat(p, "weight") == 20, 10, "started at the first step")
    assert p.log_text().count("waiting for approval: confirm-rollout webhook go") == 1


def test_a_failing_load_test_hook_rolls_back_at_the_threshold(launcher, backends, lt):
    cfg = canary_cfg([{"name": "load-test", "url": f"{LT}/", "timeout": "2s",
                       "metadata": {"cmd": "hey -z 1m -q 10 http://web-canary/"}}],
                     stepWeights=[10, 20, 30, 40, 50, 60])
    p = proxy_with(launcher, backends, lt, cfg)
    with harness.LoadGenerator(p.url, rate=60, connections=2):
        p.wait_for(lambda: (stat(p, "weight") or 0) >= 20, 15, "weight 20")
        lt.behave("/", status=500)
        wait_phase(p, FAILED, timeout=10)
    rollback = [l for l in p.log_text().splitlines() if "rolling back" in l]
    assert len(rollback) == 1 and "rollout webhook load-test failed: HTTP 500" in rollback[0], rollback
    calls = lt.calls_to("/")
    assert calls[0][1]["metadata"] == {"cmd": "hey -z 1m -q 10 http://web-canary/"}


def test_unreachable_and_undefined_webhook_clusters_fail_the_check_safely(launcher, backends, lt):
    # One cluster that points at a closed port, one that Envoy does not have at all.
    closed = harness.free_port()
    cfg = canary_cfg([{"name": "gone", "url": "http://nobody.test/", "cluster": "nobody"}],
                     threshold=3)
    p = harness.Proxy(launcher.tmp_path, backends, cfg, mode="singleton", name="proxy")
    add_cluster(p, "nobody", closed)
    launcher._track(p)
    p.start()
    with harness.LoadGenerator(p.url, rate=40, connections=2) as load:
        wait_phase(p, FAILED, timeout=20)
    # Envoy answers a call to a cluster with no reachable host itself (503, "upstream connect
    # error"): a failure, as Flagger's connection error is.
    assert "rollout webhook gone failed: HTTP 503: upstream connect error" in p.log_text()
    assert {s for _, s, _ in load.records()} == {200}, "no client request fails because of a webhook"
    cfg2 = canary_cfg([{"name": "typo", "url": "http://lt/", "cluster": "no-such-cluster"}], threshold=3)
    cfg2["revision"] = "v3"
    p2 = harness.Proxy(launcher.tmp_path, backends, cfg2, mode="singleton", name="proxy2")
    launcher._track(p2)
    p2.start()
    with harness.LoadGenerator(p2.url, rate=40, connections=2):
        wait_phase(p2, FAILED, timeout=20)
    assert "the host refused the call (is the cluster defined?)" in p2.log_text()


def test_a_slow_webhook_past_its_timeout_stalls_no_request(launcher, backends, lt):
    cfg = canary_cfg([{"name": "slow", "url": f"{LT}/", "timeout": "500ms"}], threshold=2)
    lt.behave("/", delay=3.0)
    p = proxy_with(launcher, backends, lt, cfg)
    with harness.LoadGenerator(p.url, rate=40, connections=2) as load:
        wait_phase(p, FAILED, timeout=20)
    timed = load.timed_records()
    worst = max(done - start for start, done, _, _ in timed)
    print(f"\nslowest client request while the webhook hung: {worst * 1000:.0f} ms")
    assert {s for _, _, s, _ in timed} == {200}
    assert worst < 3.0, "a request that waited for the webhook would take its 3 s delay"
    # Envoy ends the call at its timeout with its own 504.
    assert "rollout webhook slow failed: HTTP 504: upstream request timeout" in p.log_text()


def test_fleet_mode_the_judge_asks_the_gates_and_every_replica_follows(launcher, backends, lt):
    etcd = Etcd(launcher.tmp_path).start()
    try:
        cfg = fleet_plugin_config(canary_cfg([
            {"name": "promotion-gate", "type": "confirm-promotion", "url": f"{LT}/gate/check"},
            {"name": "rollback-gate", "type": "rollback", "url": f"{LT}/rollback/check"},
            {"name": "events", "type": "event", "url": f"{LT}/events"}]))
        proxies = []
        for i in range(2):
            p = harness.Proxy(launcher.tmp_path, backends, cfg, mode="singleton", name=f"replica-{i}")
            add_cluster(p, "flagger-loadtester.test", lt.port)
            proxies.append(p)
        for p in proxies:
            add_etcd_cluster(p, etcd.port, p.name)
            launcher._track(p)
            p.start()
        loads = [harness.LoadGenerator(p.url, rate=r, connections=2).start() for p, r in zip(proxies, (30, 10))]
        try:
            for p in proxies:
                wait_phase(p, WAITING_PROMOTION, timeout=30)
            assert lt.post("/rollback/open") == 202
            for p in proxies:
                wait_phase(p, FAILED, timeout=10)
        finally:
            for l in loads:
                l.stop()
        judges = [p for p in proxies if stat(p, "fleet.judge", 0) == 1]
        assert len(judges) == 1
        assert "manual webhook invoked" in judges[0].log_text()
        messages = lt.event_messages()
        assert sum("manual webhook invoked" in m for m in messages) == 1, "one event for the fleet"
    finally:
        etcd.stop()
