"""Flagger's strategies and step rules as a pasted `analysis` block gets them, in a real Envoy:
stepWeight walking past maxWeight (20, 40, 60, promotion), Blue/Green (`iterations` without
`match`: weight 0, then every request to the canary, then promotion), and the configuration
notice for a field Flagger ignores."""

from __future__ import annotations

import time

from tests.integration import harness
from tests.integration.test_canary import canary_cfg

SUCCEEDED = 3


def stat(proxy, name):
    return harness.canary_stat(proxy, name)


def weights_seen(proxy) -> list[int]:
    """Every weight the analysis logged a move to, in order."""
    out = []
    for line in proxy.log_text().splitlines():
        if "advance weight" in line:
            out.append(int(line.rsplit("-> ", 1)[1].split()[0]))
        elif "weight 0 -> 100" in line or "promotion completed" in line:
            out.append(100)
    return out


def test_step_weight_walks_past_max_weight_as_flagger(launcher, backends):
    cfg = canary_cfg(stepWeight=20, maxWeight=50)
    del cfg["analysis"]["stepWeights"]
    proxy = launcher.proxy(backends, cfg)
    with harness.LoadGenerator(proxy.url, rate=60, connections=2):
        harness.wait_phase(proxy, SUCCEEDED, timeout=30)
    assert "starting analysis, phase Progressing, weight 0 -> 20" in proxy.log_text()
    assert weights_seen(proxy) == [40, 60, 100], weights_seen(proxy)


def test_blue_green_routes_nothing_then_everything_to_the_canary(launcher, backends):
    cfg = canary_cfg(iterations=3, interval="1s")
    del cfg["analysis"]["stepWeights"]
    cfg.pop("sessionAffinity", None)
    proxy = launcher.proxy(backends, cfg)
    with harness.LoadGenerator(proxy.url, rate=60, connections=2) as load:
        proxy.wait_for(lambda: "iteration 2/3" in proxy.log_text(), 20, "two iterations")
        assert stat(proxy, "weight") == 0
        assert (stat(proxy, "canary_requests") or 0) == 0, "no canary traffic during the iterations"
        proxy.wait_for(lambda: stat(proxy, "weight") == 100, 20, "the switch")
        switched = time.monotonic()
        harness.wait_phase(proxy, SUCCEEDED, timeout=20)
        time.sleep(0.5)
        # Every request from shortly after the switch on went to the canary.
        served = [by for _, _, by in load.records(since=switched + 0.3)]
    assert served and set(served) == {"canary"}, harness.summarize((0, by) for by in served)
    assert stat(proxy, "rollbacks") in (0, None)
    text = proxy.log_text()
    assert "checks passed, iteration 3/3" in text
    assert "routing all traffic to the canary (Blue/Green, 3 iterations passed): weight 0 -> 100" in text
    assert text.index("routing all traffic") < text.index("promotion completed")


def test_a_field_flagger_ignores_is_accepted_with_a_notice(launcher, backends):
    cfg = canary_cfg(maxWeight=20)  # with stepWeights [10, 20, 30]
    proxy = launcher.proxy(backends, cfg)
    proxy.wait_for(lambda: "configuration notice" in proxy.log_text(), 10, "the notice")
    line = next(l for l in proxy.log_text().splitlines() if "configuration notice" in l)
    assert "analysis.maxWeight 20 is ignored: with stepWeights the last entry 30 is the top weight (as Flagger)" in line
    assert "[warning]" in line, line
