"""What a restarted Envoy does for a revision it had rolled back, in a real Envoy.

Envoy keeps no Wasm state across a restart: shared data, and with it the analysis state, is
gone, and a first load looks the same. With `restartPolicy: hold` (the default) a proxy that
finds no state holds the canary at weight 0 in phase Waiting until the revision changes or
`approvedUntil` is in the future; `restart` (what envoy/envoy.yaml ships for the demo) starts
the analysis over. Every wait is on stats or logs, never a timed assertion."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from tests.integration import harness
from tests.integration.test_canary import FAILED, canary_cfg, canary_upstream_requests, decision_lines, stat, wait_phase

WAITING = 5
assert harness.PHASES[WAITING] == "Waiting"

HOW_TO_PROCEED = "until the revision changes or approvedUntil is a time in the future"


def hold_cfg(approved_until: str | None = None) -> dict:
    """The fast test canary without restartPolicy (so the default, hold)."""
    cfg = canary_cfg()
    del cfg["restartPolicy"]
    if approved_until is not None:
        cfg["approvedUntil"] = approved_until
    return cfg


def rfc3339(at: datetime, hours: int = 0) -> str:
    """`at` as RFC 3339 in UTC ("...Z") or at a numeric offset ("...+02:00")."""
    if hours == 0:
        return at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return at.astimezone(timezone(timedelta(hours=hours))).isoformat(timespec="seconds")


def held_lines(proxy) -> list[str]:
    return [l for l in decision_lines(proxy) if "waiting for approval" in l]


def assert_held_under_load(proxy, requests: int = 150) -> None:
    """Phase Waiting at weight 0 while `requests` requests go through, all to stable."""
    wait_phase(proxy, WAITING)
    with proxy.load(rate=120, connections=4) as load:
        proxy.wait_for(lambda: len(load.records()) >= requests, 20, f"{requests} requests")
    records = load.records()
    assert harness.summarize(records) == {"stable/200": len(records)}, harness.summarize(records)
    assert canary_upstream_requests(proxy) == 0, "a request reached the held canary"
    assert (stat(proxy, "phase"), stat(proxy, "weight"), stat(proxy, "checks", 0)) == (WAITING, 0, 0)


@pytest.mark.parametrize("mode", ["singleton", "leader"])
def test_default_hold_keeps_a_fresh_proxys_canary_waiting_at_weight_zero(launcher, backends, mode):
    proxy = launcher.proxy(backends, hold_cfg(), mode=mode)
    assert_held_under_load(proxy)
    held = held_lines(proxy)
    assert len(held) == 1, decision_lines(proxy)
    assert held[0].startswith("canary web rev v2: halt advancement, waiting for approval: "
                              "no analysis state (first load or proxy restart)"), held[0]
    assert HOW_TO_PROCEED in held[0] and "has passed" not in held[0], held[0]
    assert not any("starting analysis" in l for l in decision_lines(proxy))


def test_rolled_back_revision_gets_no_traffic_after_a_restart_past_its_approval(launcher, backends):
    backends.set_canary_fault(abort_percent=100)
    now = datetime.now(timezone.utc)
    # The pipeline approved the rollout for an hour (written with an offset, as some tools do).
    before = launcher.proxy(backends, hold_cfg(approved_until=rfc3339(now + timedelta(hours=1), hours=2)),
                            name="before-restart")
    with before.load(rate=120, connections=4):
        wait_phase(before, FAILED)
    assert stat(before, "rollbacks") == 1
    assert any("no analysis state (first load or proxy restart), approved until " in l
               for l in decision_lines(before)), decision_lines(before)
    before.stop()

    # The same configuration once the approval window has passed: the restarted proxy has no
    # state, cannot know the revision failed, and holds it.
    expired = rfc3339(now - timedelta(minutes=1))
    after = launcher.proxy(backends, hold_cfg(approved_until=expired), name="after-restart")
    assert_held_under_load(after, requests=200)
    held = held_lines(after)
    assert len(held) == 1 and HOW_TO_PROCEED in held[0], decision_lines(after)
    assert held[0].endswith(f"approvedUntil {expired} has passed"), held[0]
    assert stat(after, "rollbacks", 0) == 0


def test_restart_policy_restart_runs_a_rolled_back_revision_again(launcher, backends):
    """The documented risk of `restart`: the bad revision gets traffic again after a restart."""
    backends.set_canary_fault(abort_percent=100)
    cfg = canary_cfg()
    assert cfg["restartPolicy"] == "restart", "envoy/envoy.yaml ships restart for the demo"
    before = launcher.proxy(backends, cfg, name="before-restart")
    with before.load(rate=120, connections=4):
        wait_phase(before, FAILED)
    before.stop()

    after = launcher.proxy(backends, cfg, name="after-restart")
    with after.load(rate=120, connections=4):
        after.wait_for(lambda: canary_upstream_requests(after) > 0, 20, "requests to the canary again")
        wait_phase(after, FAILED)
    lines = decision_lines(after)
    for expected in ["canary web rev v2: no analysis state (first load or proxy restart), "
                     "restartPolicy restart: starting the analysis",
                     "canary web rev v2: starting analysis, phase Progressing, weight 0 -> 10"]:
        assert expected in lines, f"missing {expected!r} in {lines}"
    assert stat(after, "rollbacks") == 1, "rolled back a second time"
    assert not held_lines(after)

