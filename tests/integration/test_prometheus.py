"""The shipped dashboard (dashboards/canary-guard.json) and alerting rules
(dashboards/canary-guard-alerts.yaml) against a real Prometheus (Debian's `prometheus`)
scraping a real Envoy's /stats/prometheus every second through a rollout that waits at a
confirm-promotion gate and is then rolled back: every PromQL expression of the dashboard
returns data, every rule passes `promtool check rules` and evaluates, and CanaryRolledBack
fires."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests
import yaml

from tests.integration import harness
from tests.integration.loadtester import LoadTester, add_cluster

DASHBOARD = harness.REPO / "dashboards" / "canary-guard.json"
RULES = harness.REPO / "dashboards" / "canary-guard-alerts.yaml"
WAITING_PROMOTION, FAILED = 6, 4


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        msg = f"{name} not found: install Debian's prometheus package (make setup does)"
        if harness._in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


class Prometheus:
    def __init__(self, workdir: Path, scrape: str):
        self.port = harness.free_port()
        self.dir = workdir / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "prometheus.log"
        cfg = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "envoy", "metrics_path": "/stats/prometheus",
                                "static_configs": [{"targets": [scrape]}]}],
        }
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        self.proc = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.dir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            assert self.proc.poll() is None, self.log_path.read_text()[-3000:]
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        harness.stop_process(self.proc)

    def query(self, expr: str, at: float | None = None) -> list:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        r = requests.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        assert r["status"] == "success", f"{expr}: {r}"
        return r["data"]["result"]

    def firing(self) -> set[str]:
        alerts = requests.get(f"{self.url}/api/v1/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"] for a in alerts if a["state"] == "firing"}


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$canary", "web"))
            for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(r["alert"], r["expr"]) for g in groups for r in g["rules"]]


def operands(expr: str) -> list[str]:
    """An alert's conditions without their comparison: what must return data (`a == 1 or b > 0`
    -> `a`, `b`)."""
    return [re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[\d.]+\s*$", "", part) for part in expr.split(" or ")]


def test_the_rules_pass_promtool():
    r = subprocess.run([tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS: 3 rules found" in r.stdout, r.stdout


def test_dashboard_and_rules_on_a_real_prometheus_through_a_gate_and_a_rollback(launcher, backends, tmp_path):
    lt = LoadTester().start()
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg["analysis"] = {
        "interval": "1s", "threshold": 2, "stepWeights": [20, 40], "minRequests": 5,
        "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "4s"},
                    {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "4s"}],
        "webhooks": [{"name": "promotion-gate", "type": "confirm-promotion",
                      "url": "http://flagger-loadtester.test/gate/check"}],
    }
    proxy = harness.Proxy(tmp_path, backends, cfg, mode="singleton", name="proxy")
    add_cluster(proxy, "flagger-loadtester.test", lt.port)
    launcher._track(proxy)
    # Prometheus first (it takes a few seconds to scrape): the rollout's start is in its data.
    prom = Prometheus(tmp_path, f"127.0.0.1:{proxy.admin_port}").start()
    proxy.start()
    stat = lambda n: proxy.wasm_stat(f"canary_guard.web.{n}")  # noqa: E731
    try:
        with harness.LoadGenerator(proxy.url, rate=40, connections=2):
            proxy.wait_for(lambda: stat("phase") == WAITING_PROMOTION, 30, "waiting at the promotion gate")
            proxy.wait_for(lambda: prom.query('canary_guard_phase_is{phase="WaitingPromotion"} == 1'),
                           20, "Prometheus scraped the wait")
            time.sleep(2)  # a few more scrapes while waiting (rates need two)
            waiting_at = time.time()
            backends.set_canary_fault(abort_percent=50)
            proxy.wait_for(lambda: stat("phase") == FAILED, 20, "rolled back")
            time.sleep(3)
        backends.set_canary_fault()
        # The revision's own counters: every canary request is the revision's (none is routed
        # before its analysis starts), equal to the workers' counters once the load is over;
        # stable requests count from the revision's first report (those served before it, at
        # the proxy's start, are not the revision's).
        revision = cfg["revision"]
        by_revision = lambda side, kind: proxy.wasm_stat(  # noqa: E731
            f"canary_guard.web.revision.{revision}.{side}_{kind}")
        for kind in ["requests", "5xx"]:
            proxy.wait_for(lambda: by_revision("canary", kind) == stat(f"canary_{kind}"), 5,
                           f"revision {revision}'s canary_{kind} equal to the workers' counter")
        assert by_revision("canary", "5xx") > 0, "the rollback's errors are the revision's"
        assert 0 < by_revision("stable", "requests") <= stat("stable_requests")
        # Scraped after the rollback, with the rule evaluated.
        deadline = time.monotonic() + 20
        while "CanaryRolledBack" not in prom.firing():
            assert time.monotonic() < deadline, f"CanaryRolledBack not firing: {prom.firing()}"
            time.sleep(0.5)
        now = time.time()
        for title, expr in dashboard_exprs():
            # Gauges and counters over the whole run; rates over its last minute.
            assert prom.query(expr, at=now) or prom.query(expr, at=waiting_at), f"{title}: no data for {expr}"
        values = requests.get(f"{prom.url}/api/v1/label/canary/values",
                              params={"match[]": "canary_guard_weight"}, timeout=10).json()["data"]
        assert values == ["web"], f"the dashboard's canary variable: {values}"
        for alert, expr in rule_exprs():
            prom.query(expr, at=now)  # evaluates (no error)
            for part in operands(expr):
                assert prom.query(part, at=waiting_at), f"{alert}: {part} has no data"
        stuck = prom.query(rule_exprs()[1][1], at=waiting_at)
        assert [r["metric"]["phase"] for r in stuck] == ["WaitingPromotion"], stuck
        labelled = prom.query('canary_guard_revision_canary_requests{canary="web"}', at=now)
        assert [r["metric"]["revision"] for r in labelled] == [revision], labelled
        decisions = {r["metric"]["decision"]: float(r["value"][1])
                     for r in prom.query('canary_guard_decisions{canary="web"}', at=now)}
        assert decisions["rollback"] == 1 and decisions["wait"] == 1 and decisions["advance"] >= 1, decisions
    finally:
        prom.stop()
        lt.stop()


def test_the_store_unreachable_alert_condition_holds_when_etcd_is_down(launcher, backends, tmp_path):
    """Fleet mode, etcd stopped: the proxy falls back to stable and CanaryStoreUnreachable's
    condition returns that canary (its `for: 1m` is left to Prometheus)."""
    from tests.integration.fleet import Etcd, add_etcd_cluster, fleet_plugin_config
    etcd = Etcd(tmp_path).start()
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg = fleet_plugin_config(cfg)
    proxy = harness.Proxy(tmp_path, backends, cfg, mode="singleton", name="replica")
    add_etcd_cluster(proxy, etcd.port, "replica")
    launcher._track(proxy)
    prom = Prometheus(tmp_path, f"127.0.0.1:{proxy.admin_port}").start()
    proxy.start()
    try:
        (alert, expr), = [r for r in rule_exprs() if r[0] == "CanaryStoreUnreachable"]
        proxy.wait_for(lambda: proxy.wasm_stat("canary_guard.web.fleet.judge") == 1, 15, "judge")
        assert prom.query(expr) == [], "no alert while etcd answers"
        etcd.stop()
        proxy.wait_for(lambda: proxy.wasm_stat("canary_guard.web.fleet.fallback") == 1, 15, "fallback")
        proxy.wait_for(lambda: prom.query(expr), 20, f"{alert}'s condition in Prometheus")
        assert [r["metric"]["canary"] for r in prom.query(expr)] == ["web"]
    finally:
        prom.stop()
        etcd.stop()
