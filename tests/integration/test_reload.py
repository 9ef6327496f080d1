"""Configuration updates in place with the real Envoy: the proxy's listeners come from a file
through LDS (harness Proxy(lds=True)), and a test pushes a new plugin configuration or removes a
listener while traffic flows. Envoy then creates new filter root contexts and drains the old
ones (--drain-time-s 1); shared data survives (same vm_id).

Waits are on listener-manager stats and logs; figures are printed (`-s`), never asserted."""

from __future__ import annotations

import copy
import re
import time
from datetime import datetime

import pytest

from tests.integration import harness
from tests.integration.test_canary import canary_cfg, canary_upstream_requests, stat, wait_phase
from tests.integration.test_faults import client_tallies, tallied

PROGRESSING, FAILED = 1, 4
STEPS = list(range(10, 61, 2))
GAUGES = ("phase", "weight", "failed_checks", "checks")


def reload_cfg(**analysis) -> dict:
    """A canary that needs only a little traffic: success rate over a 1 s window."""
    fields = dict(interval="500ms", threshold=10, stepWeights=STEPS, minRequests=1,
                  metrics=[{"name": "request-success-rate", "thresholdRange": {"min": 99},
                            "interval": "1s"}])
    fields.update(analysis)
    return canary_cfg(**fields)


def harmless(cfg: dict) -> dict:
    """Same revision, one metric bound changed: a new configuration, not a new release."""
    out = copy.deepcopy(cfg)
    out["analysis"]["metrics"][0]["thresholdRange"]["min"] = 98
    return out


def snapshot(proxy) -> dict:
    """phase, weight, failed_checks and checks, read until two reads in a row agree (a leader on
    a worker thread may be between two gauge updates)."""
    pattern = r"^wasmcustom\.canary_guard\.web\.(" + "|".join(GAUGES) + ")$"

    def read() -> dict:
        s = proxy.stats(filter=pattern)
        return {g: s.get(f"wasmcustom.canary_guard.web.{g}") for g in GAUGES}

    box = [read()]

    def settled() -> bool:
        now = read()
        same, box[0] = now == box[0], now
        return same

    proxy.wait_for(settled, 5, "two equal stat snapshots")
    return box[0]


def adoptions(proxy, mode: str) -> int:
    """How many times an analyser took up a configuration: the singleton logs each one it picks
    up; in leader mode a new context acquires the lease the old ones hand over."""
    needle = ("singleton analyser picked up the configuration" if mode == "singleton"
              else "acquired the analyser lease as worker")
    return proxy.log_text().count(needle)


def reload_same_revision(proxy, cfg: dict, mode: str) -> tuple[float, float]:
    """Pushes `harmless(cfg)` (same revision) and waits until the analyser has taken it up;
    returns when the push started and when Envoy had applied it (monotonic)."""
    adopted = adoptions(proxy, mode)
    started = time.monotonic()
    proxy.update_plugin_config(harmless(cfg))
    applied = time.monotonic()
    proxy.wait_for(lambda: adoptions(proxy, mode) > adopted, 10,
                   "the analyser to take up the new configuration")
    return started, applied


def heal(backends) -> float:
    """Heal the canary backend and wait until it answers 200; returns when it did."""
    backends.set_canary_fault()
    backends.wait_for(lambda: harness.send(backends.canary_url, 1)[0] == (200, "canary"), 10,
                      "the canary to answer 200")
    return time.monotonic()


def started_between(records, t0: float, t1: float) -> list:
    return [r for r in records if t0 <= r[0] <= t1]


def assert_all_ok(records, what: str) -> None:
    assert records, f"no requests {what}"
    bad = [r for r in records if r[2] != 200]
    assert not bad, f"{len(bad)} of {len(records)} requests {what} failed: {harness.summarize(r[1:] for r in bad)}"


# ---- 3a + 3d: same revision, harmless change -----------------------------------------------------

@pytest.mark.parametrize("mode", ["singleton", "leader"])
def test_same_revision_reload_keeps_phase_weight_and_failed_checks(launcher, backends, mode,
                                                                   record_property):
    cfg = reload_cfg()
    backends.set_canary_fault(abort_percent=100)  # a failed check before the reload
    proxy = launcher.proxy(backends, cfg, mode=mode, lds=True)
    with proxy.load(rate=150, connections=4) as load:
        proxy.wait_for(lambda: stat(proxy, "failed_checks", 0) >= 1, 15, "a failed check")
        healed_at = heal(backends)
        proxy.wait_for(lambda: stat(proxy, "weight", 0) > STEPS[0], 15,
                       lambda: f"a passing check after the failure (weight {stat(proxy, 'weight')})")
        before = snapshot(proxy)
        reload_at, reloaded_at = reload_same_revision(proxy, cfg, mode)
        after = snapshot(proxy)
    records = load.timed_records()

    assert before["phase"] == PROGRESSING and before["failed_checks"] >= 1, before
    assert after["phase"] == PROGRESSING, (before, after)
    assert after["failed_checks"] == before["failed_checks"], (before, after)
    # Kept, not restarted: exactly one step per (passing) check run since the snapshot.
    ran = after["checks"] - before["checks"]
    assert after["weight"] == STEPS[STEPS.index(before["weight"]) + ran], (before, after)
    log = proxy.log_text()
    assert log.count("canary web rev v2: starting analysis") == 1
    assert "canary web: revision" not in log
    if mode == "leader":
        assert "rev v2: newer configuration published, handing the analyser lease over" in log
    assert_all_ok(started_between(records, healed_at, float("inf")), "after the canary healed")
    # No outcome lost or counted twice across the drained contexts' slots.
    expected = client_tallies([r[1:] for r in records])
    proxy.wait_for(lambda: tallied(proxy) == expected, 10,
                   lambda: f"tallies {tallied(proxy)} == clients {expected}")
    during = started_between(records, reload_at, reloaded_at)
    assert len(during) >= 20, f"only {len(during)} requests during the reload"
    print(f"\nsame-revision reload ({mode}): {before} -> {after}; {len(during)} requests during the "
          f"reload ({reloaded_at - reload_at:.2f}s incl. the drain), all 200")
    record_property("requests_during_reload", len(during))


# ---- 3b + 3c + 3d: a Failed revision stays failed; a new revision starts over ---------------------

@pytest.mark.parametrize("mode", ["singleton", "leader"])
def test_failed_revision_stays_failed_on_reload_and_a_new_revision_starts_over(
        launcher, backends, mode, record_property):
    cfg = reload_cfg(threshold=1)
    backends.set_canary_fault(abort_percent=100)
    proxy = launcher.proxy(backends, cfg, mode=mode, lds=True)
    with proxy.load(rate=150, connections=4) as load:
        wait_phase(proxy, FAILED)
        healed_at = heal(backends)  # from now on a request reaching the canary would get 200
        canary_rq = canary_upstream_requests(proxy)

        # (b) same revision: still Failed, weight 0, no canary traffic.
        t0, t1 = reload_same_revision(proxy, cfg, mode)
        proxy.wait_more_requests(100, "after the reload")
        failed_after = snapshot(proxy)
        assert canary_upstream_requests(proxy) == canary_rq, "the failed revision got traffic"

        # (c) a new revision: a new analysis from the first step.
        v3 = harmless(cfg)
        v3["revision"] = "v3"
        t2 = time.monotonic()
        proxy.update_plugin_config(v3, drained=False)  # the first step lasts one interval
        fresh = {"phase": PROGRESSING, "weight": STEPS[0], "failed_checks": 0}
        proxy.wait_for(lambda: {k: stat(proxy, k) for k in fresh} == fresh, 15,
                       lambda: f"{fresh} (now {snapshot(proxy)})")
        proxy.wait_drained()
        t3 = time.monotonic()
        proxy.wait_for(lambda: canary_upstream_requests(proxy) > canary_rq, 15,
                       "the new revision to receive canary traffic")
    records = load.timed_records()

    assert (failed_after["phase"], failed_after["weight"]) == (FAILED, 0), failed_after
    assert not [r for r in started_between(records, healed_at, t2) if r[3] == "canary"], \
        "a request reached the failed revision"
    log = proxy.log_text()
    assert log.count("canary web rev v2: rolling back") == 1
    assert log.count("canary web rev v2: starting analysis") == 1
    assert "canary web: revision v2 -> v3, previous phase Failed" in log
    assert f"canary web rev v3: starting analysis, phase Progressing, weight 0 -> {STEPS[0]}" in log
    assert stat(proxy, "rollbacks") == 1
    assert_all_ok(started_between(records, healed_at, float("inf")), "after the canary healed")
    during = len(started_between(records, t0, t1)) + len(started_between(records, t2, t3))
    assert during >= 40, f"only {during} requests during the two reloads"
    print(f"\nfailed-revision reload then new revision ({mode}): {during} requests during the two "
          f"reloads ({t1 - t0:.2f}s, {t3 - t2:.2f}s incl. the drain), all 200")
    record_property("requests_during_reloads", during)


# ---- 4: the analyser goes away --------------------------------------------------------------------

LOG_LINE = re.compile(r"^\[(?P<ts>[\d-]+ [\d:.]+)\]\[(?P<thread>\d+)\]\[\w+\]\[wasm\] \S+ "
                      r"wasm log (?P<plugin>\S+) canary-guard: (?P<msg>.*)$")
CHECK_EVENTS = ("advance weight", "halt advancement", "rolling back", "promoting, phase",
                "promotion completed", "checks passed, iteration")


def wasm_lines(proxy) -> list[tuple[float, str, str]]:
    """(Envoy log time in s, 'plugin/thread' that logged it, message) for every module log line."""
    out = []
    for line in proxy.log_text().splitlines():
        m = LOG_LINE.match(line)
        if m:
            ts = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S.%f").timestamp()
            out.append((ts, f"{m['plugin']}/{m['thread']}", m["msg"]))
    return out


def envoy_lines(proxy) -> list[tuple[float, str]]:
    """(Envoy log time in s, message) for every Envoy log line."""
    out = []
    for line in proxy.log_text().splitlines():
        m = re.match(r"^\[([\d-]+ [\d:.]+)\]\[\d+\]\[\w+\]\[\w+\] \S+ (.*)$", line)
        if m:
            out.append((datetime.strptime(m[1], "%Y-%m-%d %H:%M:%S.%f").timestamp(), m[2]))
    return out


def check_lines(proxy) -> list[tuple[float, str, str]]:
    """One line per analysis check (its decision)."""
    return [l for l in wasm_lines(proxy)
            if l[2].startswith("canary web rev v2: ") and any(e in l[2] for e in CHECK_EVENTS)]


def lease_holders(proxy) -> list[tuple[float, str]]:
    return [(t, who) for t, who, msg in wasm_lines(proxy)
            if msg.startswith("canary web: acquired the analyser lease as worker (leader election)")]


def test_analyser_lease_moves_to_another_listener_when_the_leading_one_is_removed(
        launcher, backends, record_property):
    interval_s = 0.2
    cfg = reload_cfg(interval="200ms", stepWeights=list(range(10, 91)))
    # Two listeners with the same canary filter (leader mode: no singleton). Distinct plugin
    # names and root ids give each its own root contexts, and logs say which listener's leads.
    proxy = harness.Proxy(launcher.tmp_path, backends, cfg, mode="leader", lds=True)
    first = proxy.listener("ingress")
    harness.set_plugin_id(first, "canary-guard-a")
    second = harness.listener_copy(first, "ingress-b", harness.free_port())
    harness.set_plugin_id(second, "canary-guard-b")
    proxy.listeners.append(second)
    launcher._track(proxy).start()
    urls = {"canary-guard-a": ("ingress", proxy.url),
            "canary-guard-b": ("ingress-b", f"http://127.0.0.1:{harness.listener_port(second)}")}
    loads = {p: proxy.load(rate=60, connections=2, url=url).start() for p, (_, url) in urls.items()}
    try:
        proxy.wait_for(lambda: stat(proxy, "checks", 0) >= 5, 15, "five checks")
        leader = lease_holders(proxy)[-1][1].split("/")[0]
        survivor = next(p for p in urls if p != leader)
        loads.pop(leader).stop()
        checks_before = stat(proxy, "checks")
        removed_at = time.monotonic()
        proxy.remove_listener(urls[leader][0])
        proxy.wait_for(lambda: any(who.startswith(survivor + "/") for _, who in lease_holders(proxy)),
                       10, f"a {survivor} context to take the lease")
        takeover_s = time.monotonic() - removed_at
        checks_at_takeover = stat(proxy, "checks")
        weight_at_takeover = stat(proxy, "weight")
        proxy.wait_for(lambda: stat(proxy, "checks") >= checks_at_takeover + 5, 15,
                       "five more checks after the takeover")
        assert stat(proxy, "weight") > weight_at_takeover
    finally:
        for load in loads.values():
            load.stop()
    checks_total = stat(proxy, "checks")
    lines = check_lines(proxy)
    holders = lease_holders(proxy)

    # One lease holder at a time: the checks were run by one context, then by the survivor's,
    # never interleaved.
    runs = [who for i, (_, who, _) in enumerate(lines) if i == 0 or lines[i - 1][1] != who]
    assert len(runs) == len(set(runs)), f"checks interleaved between contexts: {runs}"
    assert runs[0].startswith(leader + "/") and runs[-1].startswith(survivor + "/"), runs
    # Never two checks in one interval.
    assert len(lines) >= checks_total >= checks_before + 5
    span = lines[-1][0] - lines[0][0]
    assert len(lines) <= span / interval_s + 1, f"{len(lines)} checks in {span:.2f}s"
    gaps = [b[0] - a[0] for a, b in zip(lines, lines[1:])]
    assert min(gaps) >= interval_s / 2, f"two checks {min(gaps) * 1000:.0f} ms apart"
    # The weight walked the steps one by one across the takeover: none skipped or repeated.
    moves = [tuple(map(int, re.search(r"advance weight (\d+) -> (\d+)", m).groups()))
             for _, _, m in lines if "advance weight" in m]
    steps = cfg["analysis"]["stepWeights"]
    assert moves and moves[0][0] == steps[0], moves[:3]
    assert all(b == steps[steps.index(a) + 1] for a, b in moves), moves
    assert all(prev[1] == nxt[0] for prev, nxt in zip(moves, moves[1:])), moves
    removed_in_log = max(t for t, msg in envoy_lines(proxy) if msg == f"lds: remove listener '{urls[leader][0]}'")
    acquired_in_log = next(t for t, who in holders if who.startswith(survivor + "/"))
    print(f"\ntakeover: {survivor} took the lease {acquired_in_log - removed_in_log:.2f}s after Envoy "
          f"removed {urls[leader][0]} (its drain is 1 s; {takeover_s:.2f}s as the test saw it); "
          f"{len(lines)} checks, {checks_total - checks_before} after the removal, min gap "
          f"{min(gaps) * 1000:.0f} ms, longest {max(gaps) * 1000:.0f} ms")
    record_property("takeover_s", round(takeover_s, 3))


# ---- an invalid update -----------------------------------------------------------------------

def test_an_invalid_update_is_refused_while_the_valid_configuration_serves(launcher, backends):
    # The default policy (no CANARY_GUARD_INVALID_CONFIG): the update arrives while the valid
    # configuration of the same plugin serves, so the module refuses it and Envoy keeps the
    # old listener. The same configuration as a first delivery would have run inert.
    cfg = reload_cfg()
    proxy = harness.auto_invalid_config_policy(
        harness.Proxy(launcher.tmp_path, backends, cfg, mode="leader", lds=True))
    launcher._track(proxy).start()
    with proxy.load(rate=60, connections=2) as load:
        wait_phase(proxy, PROGRESSING)
        before = proxy.listener_manager()
        bad = canary_cfg(stepWeights=[30, 10, 50])
        wasm = harness._http_filter(proxy.listener("ingress"), "envoy.filters.http.wasm")["config"]
        wasm["configuration"]["value"] = harness._compact(bad)
        proxy._write_lds()
        proxy.wait_for(lambda: proxy.listener_manager().get("lds.update_rejected", 0)
                       > before.get("lds.update_rejected", 0), 15, "the LDS update rejected")
        refusals = [l for l in proxy.log_text().splitlines() if "invalid canary-guard configuration" in l]
        assert refusals and all("refused: canary web rev v2 keeps serving" in l for l in refusals), refusals
        weight = stat(proxy, "weight")
        proxy.wait_for(lambda: stat(proxy, "weight") > weight, 10, "the valid configuration stepping on")
    assert_all_ok(load.timed_records(), "while the invalid update was refused")
    assert stat(proxy, "config_invalid") == 0


# ---- a revert while the old listener drains --------------------------------------------------

def test_a_configuration_reverted_during_the_drain_is_the_one_analysed(launcher, backends):
    # v2 -> v3 -> byte-identical v2 within Envoy's default drain time (600 s). Envoy reuses the
    # draining v2 filter contexts without configuring them again, so the published
    # configuration used to stay v3: the analyser promoted v3 while every request ran on v2.
    # Now the v2 filters republish theirs once v3 has routed nothing for 3 s (store::served).
    v2 = reload_cfg(interval="1s", stepWeights=STEPS)
    v3 = copy.deepcopy(v2)
    v3["revision"] = "v3"
    proxy = harness.Proxy(launcher.tmp_path, backends, v2, lds=True, drain_time_s=600)
    launcher._track(proxy).start()

    def started(rev: str) -> int:
        return proxy.log_text().count(f"canary web rev {rev}: starting analysis")

    with proxy.load(rate=60, connections=2):
        proxy.wait_for(lambda: started("v2") == 1, 15, "v2's analysis")
        proxy.update_plugin_config(v3, drained=False)
        proxy.wait_for(lambda: started("v3") == 1, 15, "v3's analysis")
        proxy.update_plugin_config(v2, drained=False)
        proxy.wait_for(lambda: started("v2") == 2, 20, "v2 analysed again after the revert")
        assert "rev v2: configuration republished" in proxy.log_text()
        # From then on the analysis follows v2, which is what serves.
        proxy.wait_for(lambda: stat(proxy, "weight", 0) > 0, 10, "v2 stepping")
    assert "rev v3: promotion completed" not in proxy.log_text()
    assert proxy.listener_manager().get("total_filter_chains_draining", 0) + \
        proxy.listener_manager().get("total_listeners_draining", 0) > 0, "the old listeners still drain"


# ---- churn -------------------------------------------------------------------------------------

def test_shared_data_stays_bounded_across_a_thousand_listener_updates(launcher, backends):
    # Each update creates new filter contexts (and slots) while the old ones drain; slots are
    # freed and adopted, idle ones released, buckets pruned on every tick. shared_bytes (what
    # the analyser reads: slots, state, lease, config, served) must not grow with the updates.
    cfg = reload_cfg()
    proxy = harness.Proxy(launcher.tmp_path, backends, cfg, lds=True, drain_time_s=1)
    launcher._track(proxy).start()
    samples = {}
    with proxy.load(rate=50, connections=2):
        wait_phase(proxy, PROGRESSING)
        for i in range(1, 1001):
            c = copy.deepcopy(cfg)
            c["analysis"]["metrics"][0]["thresholdRange"]["min"] = 90 + i % 9
            proxy.update_plugin_config(c, drained=False)
            if i in (100, 1000):
                time.sleep(2.5)  # a couple of drains and windows: the steady state
                samples[i] = stat(proxy, "shared_bytes")
    print(f"\nshared_bytes after 100 updates {samples[100]} B, after 1000 {samples[1000]} B")
    assert samples[1000] <= max(1.25 * samples[100], samples[100] + 2048), samples
    assert proxy.listener_manager()["lds.update_success"] >= 1001
