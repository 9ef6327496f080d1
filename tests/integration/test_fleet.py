"""Fleet mode end to end: a real etcd 3.4 and three real Envoys (--concurrency 2), each with
canary-guard's filter and singleton, all following one decision kept in etcd.

Every wait is on stats or logs; figures (propagation, failover, fallback) are printed for the
record (`-s`), never asserted."""

from __future__ import annotations

import time

import pytest

from tests.integration import harness
from tests.integration.fleet import (Certs, Etcd, Partition, add_etcd_cluster, fleet_plugin_config, fleet_proxy,
                                     parse_state, restart, state_record)

PROGRESSING, SUCCEEDED, FAILED, WAITING = 1, 3, 4, 5


def canary_cfg(**analysis) -> dict:
    cfg = harness.default_plugin_config()
    cfg["analysis"] = {
        "interval": "1s",
        "threshold": 2,
        "stepWeights": [10, 20, 30],
        "minRequests": 10,
        "metrics": [
            {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "4s"},
        ],
    }
    cfg["analysis"].update(analysis)
    return fleet_plugin_config(cfg)


stat = harness.canary_stat


wait_phase = harness.wait_phase


@pytest.fixture
def etcd(launcher):
    e = Etcd(launcher.tmp_path).start()
    yield e
    e.stop()


def fleet(launcher, backends, etcd, cfg, n=3, **kw):
    return [fleet_proxy(launcher, backends, etcd, cfg, name=f"replica-{i}", **kw) for i in range(n)]


class Loads:
    """A load generator per proxy (one rate for all, or one each), stopped on exit."""

    def __init__(self, proxies, rates):
        rates = list(rates) if isinstance(rates, (list, tuple)) else [rates] * len(proxies)
        self.gens = [harness.LoadGenerator(p.url, rate=r, connections=2).start()
                     for p, r in zip(proxies, rates)]

    def restart(self, i: int, proxy, rate: float) -> None:
        """Replica i's clients start over (it was restarted)."""
        self.gens[i].stop()
        self.gens[i] = harness.LoadGenerator(proxy.url, rate=rate, connections=2).start()

    def stop(self) -> list:
        return [g.stop() for g in self.gens]

    def __enter__(self) -> "Loads":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def judges(proxies) -> list:
    return [p for p in proxies if p.alive() and stat(p, "fleet.judge", 0) == 1]


def test_uneven_load_promotes_on_every_replica(launcher, backends, etcd):
    # Ten older revisions' states already in etcd (v0-0 written first): the judge starting v2
    # keeps the 7 most recently written of them next to its own (STATES_KEPT 8).
    old = [f"v0-{i}" for i in range(10)]
    for rev in old:
        etcd.put(f"/canary-guard/web/state/{rev}", state_record(rev, FAILED, 0, 1, 1))
        etcd.put(f"/canary-guard/web/command/{rev}", b"{}")
        etcd.put(f"/canary-guard/web/decisions/{rev}", b"[]")
    proxies = fleet(launcher, backends, etcd, canary_cfg(stepWeights=[20, 40, 60]))
    # 80 / 16 / 3 req/s: the fleet's canary traffic (~20/s at weight 20) is well above
    # minRequests 10 per check; the quiet replica's own (<1/s) is far below it.
    with Loads(proxies, (80, 16, 3)) as loads:
        for p in proxies:
            wait_phase(p, SUCCEEDED, timeout=40)
    assert len(judges(proxies)) == 1
    for p in proxies:
        assert stat(p, "weight") == 100
        assert stat(p, "rollbacks", 0) == 0
    (judge,) = judges(proxies)
    assert stat(judge, "fleet.replicas") == 3
    assert "fleet judge acquired" in judge.log_text()
    sizes = [len(etcd.get(k)) for k in etcd.keys("/canary-guard/web/replicas/v2/")]
    print(f"\nreplica record sizes (bytes): {sizes}")
    states = etcd.keys("/canary-guard/web/state/")
    assert sorted(states) == sorted(f"/canary-guard/web/state/{r}" for r in ["v2", *old[3:]]), states
    assert "deleted the fleet state, last command and decisions of 3 old revision(s)" in judge.log_text()
    # Each deleted revision's command and decisions went with its state.
    for kind in ["command", "decisions"]:
        kept = [k for k in etcd.keys(f"/canary-guard/web/{kind}/") if not k.endswith("/v2")]
        assert sorted(kept) == sorted(f"/canary-guard/web/{kind}/{r}" for r in old[3:]), kept
    # A replica that leaves: its record expires with its lease, and the judge says so.
    leaver = next(p for p in proxies if p is not judge)
    leaver.stop()
    judge.wait_for(lambda: stat(judge, "fleet.replicas") == 2, 15, "2 replicas after one left")
    assert "replica(s) left the fleet" in judge.log_text()


def canary_requests(p) -> int:
    return p.stat("cluster.web-canary.upstream_rq_total", 0)


def test_failing_canary_is_rolled_back_once_and_a_restarted_replica_sends_it_nothing(
        launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[30, 60], minRequests=5)
    cfg["approvedUntil"] = "2099-01-01T00:00:00Z"  # a release approval in effect throughout
    proxies = fleet(launcher, backends, etcd, cfg)
    backends.set_canary_fault(abort_percent=50)
    with Loads(proxies, (40, 20, 10)) as loads:
        for p in proxies:
            wait_phase(p, FAILED, timeout=30)
        # Once every replica follows Failed, none sends the canary anything more.
        settled = [canary_requests(p) for p in proxies]
        for p in proxies:
            p.wait_more_requests(20, "after the rollback")
        assert [canary_requests(p) for p in proxies] == settled
        (judge,) = judges(proxies)
        # Exact tallies: the judge's fleet totals are the sum of the replicas' cluster counters.
        judge.wait_for(
            lambda: stat(judge, "fleet.tallied_canary_requests") == sum(settled), 10,
            lambda: f"fleet canary total {stat(judge, 'fleet.tallied_canary_requests')} == {settled}")
        rollbacks = sum(stat(p, "rollbacks", 0) for p in proxies)
        assert rollbacks == 1, "one rollback, counted by the judge that made it"
        # A replica restarted after the rollback follows Failed, approval or not.
        quiet = proxies[2]
        restart(quiet)
        loads.restart(2, quiet, 20)
        wait_phase(quiet, FAILED, timeout=10)
        quiet.wait_more_requests(60, "after the restart")
        assert canary_requests(quiet) == 0, "a restarted replica never sends the failed revision traffic"


def test_judge_killed_another_takes_over_and_the_analysis_goes_on(launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[10, 15, 20, 25, 30, 35, 40, 45], minRequests=5)
    proxies = fleet(launcher, backends, etcd, cfg)
    with Loads(proxies, 30) as loads:
        proxies[0].wait_for(lambda: len(judges(proxies)) == 1, 10, "one judge")
        proxies[0].wait_for(lambda: (stat(proxies[0], "weight") or 0) >= 15, 20, "weight >= 15")
        (judge,) = judges(proxies)
        weight_at_kill = stat(judge, "weight")
        judge.proc.kill()  # SIGKILL: no lease revoke, no goodbye
        killed_at = time.monotonic()
        rest = [p for p in proxies if p is not judge]
        rest[0].wait_for(lambda: len(judges(rest)) == 1, 15, "a new judge")
        print(f"\nfailover: new judge {time.monotonic() - killed_at:.2f}s after SIGKILL (leaseTTL 3s)")
        for p in rest:
            wait_phase(p, SUCCEEDED, timeout=40)
        (new_judge,) = judges(rest)
        assert "fleet judge acquired" in new_judge.log_text()
        assert stat(new_judge, "fleet.replicas") == 2
        # Never two steps in one interval: the steps logged fleet-wide, in time order, 1 apart.
        steps = []
        for p in proxies:
            for line in p.log_text().splitlines():
                if "advance weight" in line:
                    steps.append(line.split("advance weight ")[1].split(" ->")[0])
        assert len(steps) == len(set(steps)), f"a weight stepped twice: {steps}"
        assert weight_at_kill >= 15


def all_stable(proxies) -> bool:
    return all(stat(p, "fleet.fallback", 0) == 1 and stat(p, "phase") == WAITING for p in proxies)


def test_etcd_down_routes_everyone_to_stable_and_the_fleet_resumes_when_it_is_back(
        launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[20, 40, 60, 80], minRequests=5)
    cfg["analysis"]["interval"] = "2s"
    proxies = fleet(launcher, backends, etcd, cfg)
    with Loads(proxies, 20) as loads:
        for p in proxies:
            p.wait_for(lambda p=p: stat(p, "weight") == 40, 30, f"{p.name} at weight 40")
        etcd.stop()
        stopped = time.monotonic()
        for p in proxies:
            p.wait_for(lambda p=p: stat(p, "fleet.fallback", 0) == 1, 10, f"{p.name} falls back")
        print(f"\nfallback: every replica stable {time.monotonic() - stopped:.2f}s after etcd stopped (maxStaleness 2s)")
        assert all_stable(proxies)
        settled = [canary_requests(p) for p in proxies]
        for p in proxies:
            p.wait_more_requests(30, "while etcd is down")
        assert [canary_requests(p) for p in proxies] == settled, "nothing to the canary while etcd is down"
        for p in proxies:
            assert "routing every request to stable until etcd answers" in p.log_text()
        etcd.start()
        for p in proxies:
            wait_phase(p, SUCCEEDED, timeout=40)
            assert "following the fleet" in p.log_text()
        records = loads.stop()
    for r in records:
        statuses = {status for _, status, _ in r}
        assert statuses == {200}, f"no client request fails because of the store: {statuses}"


def test_forged_and_corrupt_records_are_rejected_and_stable_gets_the_traffic(
        launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[20, 40], minRequests=5)
    cfg["analysis"]["interval"] = "3s"
    proxies = fleet(launcher, backends, etcd, cfg)
    with Loads(proxies, 20) as loads:
        for p in proxies:
            p.wait_for(lambda p=p: stat(p, "weight") == 20, 30, f"{p.name} at weight 20")
        # A tally record that is not one: the judge ignores it and says so.
        etcd.put("/canary-guard/web/replicas/v2/forged-00000000", b"CGfr\x01not a record")
        judge = judges(proxies)[0]
        judge.wait_for(lambda: "replica record(s) that do not validate" in judge.log_text(), 10,
                       "the corrupt record logged")
        # A forged state with a valid encoding and checksum, at weight 90 (above the last step
        # 40): rejected, logged, stable.
        good = parse_state(etcd.get("/canary-guard/web/state/v2"))
        assert good["valid"] and good["weight"] == 20
        etcd.put("/canary-guard/web/state/v2", state_record(
            "v2", PROGRESSING, 90, good["started_ms"], good["last_check_ms"]))
        for p in proxies:
            p.wait_for(lambda p=p: stat(p, "fleet.fallback", 0) == 1, 10, f"{p.name} rejects it")
            assert "fleet state at /canary-guard/web/state/v2 rejected" in p.log_text()
        settled = [canary_requests(p) for p in proxies]
        for p in proxies:
            p.wait_more_requests(20, "with a forged state")
        assert [canary_requests(p) for p in proxies] == settled
        assert all((stat(p, "weight") or 0) == 0 for p in proxies)


def test_state_survives_an_etcd_restart_and_a_new_replica_follows_it(launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[50], minRequests=5)
    proxies = fleet(launcher, backends, etcd, cfg, n=2)
    with Loads(proxies, 30) as loads:
        for p in proxies:
            wait_phase(p, SUCCEEDED, timeout=30)
    for p in proxies:
        p.stop()
    etcd.stop()
    etcd.start()  # same data dir
    late = fleet_proxy(launcher, backends, etcd, cfg, name="replica-late")
    wait_phase(late, SUCCEEDED, timeout=15)
    assert stat(late, "weight") == 100
    assert "starting analysis" not in late.log_text()


def test_a_forged_state_cannot_revive_a_failed_revision(launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[30], minRequests=5)
    proxies = fleet(launcher, backends, etcd, cfg, n=2)
    backends.set_canary_fault(abort_percent=100)
    with Loads(proxies, 30) as loads:
        for p in proxies:
            wait_phase(p, FAILED, timeout=30)
        failed = parse_state(etcd.get("/canary-guard/web/state/v2"))
        assert failed["valid"] and failed["phase"] == FAILED
        backends.set_canary_fault(abort_percent=0)
        etcd.put("/canary-guard/web/state/v2", state_record(
            "v2", PROGRESSING, 30, failed["started_ms"], failed["last_check_ms"]))
        for p in proxies:
            p.wait_for(lambda p=p: "for a revision this proxy saw Failed" in p.log_text(), 10,
                       f"{p.name} refuses the revival")
        settled = [canary_requests(p) for p in proxies]
        for p in proxies:
            p.wait_more_requests(30, "after the forged revival")
        assert [canary_requests(p) for p in proxies] == settled


def test_a_partitioned_replica_falls_back_to_stable_and_cannot_write(launcher, backends, etcd):
    cfg = canary_cfg(stepWeights=[10, 20, 30, 40, 50, 60], minRequests=5)
    cfg["analysis"]["interval"] = "2s"
    cut_off = Partition(etcd.port)
    # The partitioned one starts first, so that it is the judge when it is cut off.
    isolated = fleet_proxy(launcher, backends, cut_off, cfg, name="replica-isolated")
    isolated.wait_for(lambda: stat(isolated, "fleet.judge", 0) == 1, 10, "the first replica judges")
    rest = fleet(launcher, backends, etcd, cfg, n=2)
    proxies = [isolated, *rest]
    with Loads(proxies, 25) as loads:
        for p in proxies:
            p.wait_for(lambda p=p: (stat(p, "weight") or 0) >= 20, 30, f"{p.name} at weight 20")
        cut_off.cut()
        isolated.wait_for(lambda: stat(isolated, "fleet.fallback", 0) == 1, 10, "the isolated replica falls back")
        assert stat(isolated, "fleet.judge", 0) == 0, "a judge without etcd stops deciding"
        settled = canary_requests(isolated)
        isolated.wait_more_requests(30, "while partitioned")
        assert canary_requests(isolated) == settled, "a partitioned replica sends the canary nothing"
        # The others elect a judge among themselves and go on to promotion.
        for p in rest:
            wait_phase(p, SUCCEEDED, timeout=60)
        assert len(judges(rest)) == 1
        assert "routing every request to stable until etcd answers" in isolated.log_text()
        # Healed: it follows the fleet's decision, made without it.
        cut_off.heal()
        wait_phase(isolated, SUCCEEDED, timeout=15)
        assert stat(isolated, "weight") == 100


ISTIO_ETCD = "outbound|2379||etcd.infra.svc.cluster.local"


def test_istio_shape_in_fleet_mode(launcher, backends, etcd):
    """The filter delivered as istiod does (ECDS, no singleton: an elected worker stands for
    each proxy) in two proxies, reaching etcd through an Istio-named cluster."""
    from tests.integration.test_istio_shape import plugin_config, wasm_plugin
    pc = plugin_config(stepWeights=[20, 40], minRequests=5)
    pc["fleet"] = {"etcdCluster": ISTIO_ETCD, "authority": "etcd.infra.svc.cluster.local",
                   "leaseTTL": "3s", "maxStaleness": "2s", "timeout": "500ms"}
    proxies = []
    for i in range(2):
        p = harness.IstioProxy(launcher.tmp_path, backends, wasm_plugin(), pc, name=f"istio-{i}")
        add_etcd_cluster(p, etcd.port, f"router~10.0.0.{i}~gw-{i}.istio-system~istio-system.svc.cluster.local",
                         cluster=ISTIO_ETCD)
        launcher._track(p)
        proxies.append(p.start())
    with Loads(proxies, (40, 5)) as loads:
        for p in proxies:
            wait_phase(p, SUCCEEDED, timeout=40)
    assert len(judges(proxies)) == 1
    for p in proxies:
        assert "worker (leader election)" in p.log_text()
        assert "follows the fleet state in etcd (cluster outbound|2379||etcd" in p.log_text()


def test_tls_to_an_etcd_that_requires_client_certificates(launcher, backends):
    certs = Certs(launcher.tmp_path)
    etcd = Etcd(launcher.tmp_path, name="etcd-tls", tls=certs).start()
    try:
        # Without a client certificate, etcd refuses the caller.
        import requests
        with pytest.raises(requests.RequestException):
            requests.post(f"{etcd.url}/v3/kv/range", json={"key": "eA=="}, verify=str(certs.ca), timeout=3)
        proxies = fleet(launcher, backends, etcd, canary_cfg(stepWeights=[25, 50], minRequests=5), n=2)
        with Loads(proxies, 30) as loads:
            for p in proxies:
                wait_phase(p, SUCCEEDED, timeout=30)
        assert len(judges(proxies)) == 1
        assert parse_state(etcd.get("/canary-guard/web/state/v2"))["phase"] == SUCCEEDED
    finally:
        etcd.stop()


FLEET_YAML = harness.REPO / "envoy" / "envoy-fleet.yaml"


def test_the_shipped_fleet_config_is_envoy_yaml_plus_the_fleet_pieces_and_envoy_accepts_it(
        launcher, wasm):
    import json
    import subprocess
    import yaml
    fleet_cfg = yaml.safe_load(FLEET_YAML.read_text())
    plain = yaml.safe_load(harness.ENVOY_YAML.read_text())
    clusters = fleet_cfg["static_resources"]["clusters"]
    etcd_cluster = clusters.pop()
    assert etcd_cluster["name"] == "etcd"
    wasm_filter = harness._http_filter(harness._listener(fleet_cfg, "ingress"), "envoy.filters.http.wasm")
    value = json.loads(wasm_filter["config"]["configuration"]["value"])
    assert value.pop("fleet")["etcdCluster"] == "etcd"
    plain_filter = harness._http_filter(harness._listener(plain, "ingress"), "envoy.filters.http.wasm")
    plain_value = json.loads(plain_filter["config"]["configuration"]["value"])
    assert plain_value.pop("restartPolicy") == "restart"  # fleet mode tells a restart from a first load
    assert value == plain_value
    wasm_filter["config"]["configuration"]["value"] = plain_filter["config"]["configuration"]["value"]
    assert fleet_cfg == plain
    cfg = yaml.safe_load(FLEET_YAML.read_text())
    for holder in (harness._http_filter(harness._listener(cfg, "ingress"), "envoy.filters.http.wasm")["config"],
                   cfg["bootstrap_extensions"][0]["typed_config"]["config"]):
        holder["vm_config"]["code"]["local"]["filename"] = wasm
    path = launcher.tmp_path / "envoy-fleet.yaml"
    path.write_text(yaml.safe_dump(cfg))
    r = subprocess.run([harness.envoy_binary(), "--mode", "validate", "-c", str(path)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_make_demo_fleet_mode_shows_one_decision(tmp_path):
    """`make demo DEMO_ARGS='--replicas 3'`: etcd and three replicas with uneven traffic; the
    demo exits 0 only when every replica ended Failed at weight 0, one judge, one rollback."""
    import subprocess
    import sys
    import xml.dom.minidom
    picture = tmp_path / "demo.svg"
    r = subprocess.run([sys.executable, "-m", "scripts.demo", "--replicas", "3",
                        "--workdir", str(tmp_path / "demo"), "--picture", str(picture)],
                       cwd=harness.REPO, capture_output=True, text=True, timeout=120)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "result: rollback as expected" in out, out[-6000:]
    # The picture: a weight line per replica and the canary error rate, and its path printed.
    assert f"picture: {picture}" in out
    svg = xml.dom.minidom.parse(str(picture))
    assert len(svg.getElementsByTagName("polyline")) == 3 + 1
    assert "fleet: 1 judge, 1 rollback in all (one decision)" in out, out[-3000:]
    assert out.count("fleet judge acquired") == 1, out[-6000:]
    # The quietest replica's own traffic (5%) is below minRequests: the fleet's carried it.
    assert "replica-3: " in out and "no traffic" not in out, out[-6000:]


def test_the_statistical_judge_decides_on_the_fleets_traffic(launcher, backends, etcd):
    # Stable fails 5%, the canary 15% (3x): the judge's error-rate-vs-stable test on every
    # replica's records rolls back at once, and every replica follows; threshold 10 and no other
    # metric, so only the test can roll back.
    backends.set_stable_fault(abort_percent=5)
    backends.set_canary_fault(abort_percent=15)
    cfg = canary_cfg(interval="4s", threshold=10, stepWeights=[20, 40, 60, 80], minRequests=20,
                     metrics=[{"name": "error-rate-vs-stable", "maxRatio": 1.5, "alpha": 0.01,
                               "interval": "10s"}])
    proxies = fleet(launcher, backends, etcd, cfg, n=2)
    with Loads(proxies, (120, 80)):
        for p in proxies:
            wait_phase(p, FAILED, timeout=90)
    (judge,) = judges(proxies)
    lines = [l for l in judge.log_text().splitlines() if "rolling back" in l]
    assert len(lines) == 1 and "error-rate-vs-stable: canary worse than 1.5x stable" in lines[0], lines
    assert "rejected at once" in lines[0], lines[0]
    assert sum(stat(p, "rollbacks", 0) for p in proxies) == 1
    for p in proxies:
        assert stat(p, "weight") == 0
