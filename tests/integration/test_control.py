"""The control endpoint and the `canary-guard` CLI against a real Envoy: the listener
envoy/envoy.yaml ships (loopback, canary-guard in the `control` role in the routing filter's
VM) beside the routing filter and the analyser singleton."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.integration import harness
from tests.integration.control import control_url, get, post
from tests.integration.loadtester import LoadTester, add_cluster

PROGRESSING, SUCCEEDED, FAILED, WAITING = 1, 3, 4, 5
CLI = harness.REPO / "target" / "release" / "canary-guard"
TOKEN = "s3cret-token-0123456789"


def cli(proxy, *args, token=None) -> subprocess.CompletedProcess:
    if not CLI.is_file():
        pytest.fail(f"{CLI} missing: run `make build`", pytrace=False)
    extra = ["--token", token] if token else []
    return subprocess.run([str(CLI), "--endpoint", control_url(proxy), *extra, *args],
                          capture_output=True, text=True, timeout=30)


def canary_cfg(**analysis) -> dict:
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg["analysis"] = {"interval": "1s", "threshold": 2, "stepWeights": [20, 30, 40, 50, 60, 70, 80, 90],
                       "minRequests": 3,
                       "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "4s"}],
                       **analysis}
    return cfg


stat = harness.canary_stat


def start(launcher, backends, cfg, control=None, lt=None, name="proxy") -> harness.Proxy:
    p = harness.Proxy(launcher.tmp_path, backends, cfg, mode="singleton", name=name,
                      control_config=control)
    if lt:
        add_cluster(p, "flagger-loadtester.test", lt.port)
    launcher._track(p)
    return p.start()


def test_status_abort_and_the_cli(launcher, backends):
    lt = LoadTester().start()
    try:
        cfg = canary_cfg(webhooks=[{"name": "audit", "type": "event", "url": "http://flagger-loadtester.test/events"}])
        p = start(launcher, backends, cfg, lt=lt)
        with harness.LoadGenerator(p.url, rate=60, connections=2):
            p.wait_for(lambda: (stat(p, "weight") or 0) >= 30, 15, "weight 30")
            (st,) = get(p).json()
            assert (st["name"], st["revision"], st["phase"]) == ("web", "v2", "Progressing")
            assert st["weight"] >= 30 and "advance weight" in st["lastDecision"]["text"]
            table = cli(p, "status")
            assert table.returncode == 0, table.stderr
            head, row = table.stdout.splitlines()[:2]
            assert head.split()[:5] == ["NAME", "REVISION", "PHASE", "WEIGHT", "FAILED"], head
            assert row.split()[:3] == ["web", "v2", "Progressing"], row
            # `watch` redraws the table every interval until stopped.
            watch = subprocess.Popen([str(CLI), "--endpoint", control_url(p), "watch", "--interval", "200ms"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(1.5)
            watch.terminate()
            out, _ = watch.communicate(timeout=10)
            assert out.count("NAME") >= 4 and "\x1b[2J" in out, out[-500:]
            asked = time.monotonic()
            r = cli(p, "abort", "web")
            assert r.returncode == 0 and "abort accepted" in r.stdout, r.stdout + r.stderr
            p.wait_for(lambda: stat(p, "phase") == FAILED, 5, "aborted")
            print(f"\nabort -> weight 0: {time.monotonic() - asked:.2f}s")
            assert stat(p, "weight") == 0
            settled = p.stat("cluster.web-canary.upstream_rq_total", 0)
            p.wait_more_requests(30, "after the abort")
            assert p.stat("cluster.web-canary.upstream_rq_total", 0) == settled
        assert "rolling back, aborted by 127.0.0.1:" in p.log_text()
        p.wait_for(lambda: any("aborted by" in m for m in lt.event_messages()), 5, "the audit event")
        again = cli(p, "promote", "web")
        assert again.returncode == 1 and "is Failed: only a new revision runs again" in again.stderr, again.stderr
        assert get(p).json()[0]["phase"] == "Failed"
    finally:
        lt.stop()


def test_pause_resume_promote(launcher, backends):
    p = start(launcher, backends, canary_cfg())
    with harness.LoadGenerator(p.url, rate=60, connections=2):
        p.wait_for(lambda: (stat(p, "weight") or 0) >= 30, 15, "weight 30")
        assert post(p, "/canaries/web/pause").status_code == 202
        p.wait_for(lambda: "paused by" in p.log_text(), 5, "paused")
        time.sleep(0.5)
        weight, checks = stat(p, "weight"), stat(p, "checks", 0)
        time.sleep(3)
        assert (stat(p, "weight"), stat(p, "checks", 0)) == (weight, checks), "no checks while paused"
        assert get(p, "/canaries/web").json()["paused"] is True
        assert post(p, "/canaries/web/resume").status_code == 202
        p.wait_for(lambda: stat(p, "checks", 0) > checks, 5, "checks again")
        assert post(p, "/canaries/web/promote").status_code == 202
        p.wait_for(lambda: stat(p, "phase") == SUCCEEDED, 5, "promoted")
        assert stat(p, "weight") == 100
    assert "promoted by 127.0.0.1:" in p.log_text()


def test_approve_starts_a_held_revision(launcher, backends):
    cfg = canary_cfg()
    cfg["restartPolicy"] = "hold"
    p = start(launcher, backends, cfg)
    p.wait_for(lambda: stat(p, "phase") == WAITING, 10, "held")
    assert post(p, "/canaries/web/approve").status_code == 202
    p.wait_for(lambda: stat(p, "weight") == 20, 5, "started at the first step")
    assert "approved by 127.0.0.1:" in p.log_text()
    assert post(p, "/canaries/web/approve").status_code == 409, "approve only starts a held revision"


def test_tokens_hostile_input_and_clear_errors(launcher, backends):
    cfg = canary_cfg()
    cfg["suspend"] = True  # the state stays as it is while the endpoint is poked
    p = start(launcher, backends, cfg, control={"role": "control", "token": TOKEN, "tokenName": "ops"})
    p.wait_for(lambda: stat(p, "phase") == PROGRESSING, 10, "running")
    before = stat(p, "phase"), stat(p, "weight")
    assert get(p).status_code == 401
    assert get(p, token="wrong").status_code == 403
    assert get(p, token=TOKEN).status_code == 200
    r = cli(p, "status", token="wrong-token-000000")
    assert r.returncode == 1 and "wrong token" in r.stderr, r.stderr
    cases = [
        (post(p, "/canaries/web/explode", token=TOKEN), 400, "unknown action"),
        (post(p, "/canaries/nope/abort", token=TOKEN), 404, "no canary"),
        (post(p, "/canaries/web/abort", token=TOKEN, body=b"{not json"), 400, "must be JSON"),
        (post(p, "/canaries/web/abort", token=TOKEN, body=b"x" * 100_000), 413, "at most"),
        (get(p, "/nothing", token=TOKEN), 404, "not found"),
    ]
    for resp, status, text in cases:
        assert resp.status_code == status and text in resp.json()["error"], (resp.status_code, resp.text)
    r = cli(p, "abort", "nope", token=TOKEN)
    assert r.returncode == 1 and "no canary" in r.stderr
    assert (stat(p, "phase"), stat(p, "weight")) == before, "hostile input changed nothing"
    ok = cli(p, "pause", "web", token=TOKEN)
    assert ok.returncode == 0 and "by ops" in ok.stdout, ok.stdout
    gone = subprocess.run([str(CLI), "--endpoint", f"http://127.0.0.1:{harness.free_port()}", "status"],
                          capture_output=True, text=True, timeout=30)
    assert gone.returncode == 2 and "cannot reach the control endpoint" in gone.stderr, gone.stderr


def test_fleet_mode_an_abort_on_one_replica_rolls_back_every_replica(launcher, backends):
    from tests.integration.fleet import Etcd, add_etcd_cluster, fleet_plugin_config
    etcd = Etcd(launcher.tmp_path).start()
    try:
        cfg = fleet_plugin_config(canary_cfg())
        proxies = []
        for i in range(3):
            p = harness.Proxy(launcher.tmp_path, backends, cfg, mode="singleton", name=f"replica-{i}")
            add_etcd_cluster(p, etcd.port, p.name)
            launcher._track(p)
            proxies.append(p.start())
        loads = [harness.LoadGenerator(p.url, rate=r, connections=2).start() for p, r in zip(proxies, (40, 20, 10))]
        try:
            for p in proxies:
                p.wait_for(lambda p=p: (stat(p, "weight") or 0) >= 30, 20, f"{p.name} at 30")
            judge = next(p for p in proxies if stat(p, "fleet.judge", 0) == 1)
            other = next(p for p in proxies if p is not judge)
            # The CLI straight from etcd: the fleet's state and its judge.
            direct = subprocess.run([str(CLI), "--etcd", etcd.url, "status"], capture_output=True,
                                    text=True, timeout=30)
            assert direct.returncode == 0, direct.stderr
            row = direct.stdout.splitlines()[1]
            assert row.split()[:3] == ["web", "v2", "Progressing"] and "judge replica-" in row, direct.stdout
            asked = time.monotonic()
            r = cli(other, "abort", "web")
            print(f"\nthe CLI answered in {time.monotonic() - asked:.2f}s")
            assert r.returncode == 0, r.stdout + r.stderr
            for p in proxies:
                p.wait_for(lambda p=p: stat(p, "phase") == FAILED and stat(p, "weight") == 0, 10,
                           f"{p.name} rolled back")
            print(f"\nfleet abort on {other.name} (not the judge) -> weight 0 on every replica: "
                  f"{time.monotonic() - asked:.2f}s")
        finally:
            for l in loads:
                l.stop()
        assert f"rolling back, aborted by 127.0.0.1:" in judge.log_text()
        # Every replica's own endpoint shows the judge's decisions (copied from etcd).
        for p in proxies:
            last = lambda p=p: (get(p, "/canaries/web").json().get("lastDecision") or {}).get("text", "")  # noqa: E731
            p.wait_for(lambda: "rolling back, aborted by 127.0.0.1:" in last(), 5,
                       lambda: f"{p.name}'s status shows the rollback: {last()!r}")
            decisions = [d["text"] for d in get(p, "/canaries/web").json()["decisions"]]
            assert any("advance weight" in d for d in decisions), decisions
        refused = subprocess.run([str(CLI), "--etcd", etcd.url, "promote", "web"], capture_output=True,
                                 text=True, timeout=30)
        assert refused.returncode == 1 and "is Failed" in refused.stderr, refused.stderr
        assert sum(stat(p, "rollbacks", 0) for p in proxies) == 1
    finally:
        etcd.stop()
