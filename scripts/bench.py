#!/usr/bin/env python3
"""canary-guard benchmarks (`make bench`; never part of `make test`).

Run with the venv's python once Envoy, the module and the fixture are built:
    .venv/bin/python -m scripts.bench [--rounds 1 --duration 3 ...]

Three parts, each against real Envoys started from the repository's configs (through
tests/integration/harness.py; only ports, paths, routes and filters rewritten):

1. throughput: interleaved rounds of the arms below, each a fresh proxy Envoy in front of
   envoy/backends.yaml (direct_response), driven by wrk on loopback (same connections and
   threads for every arm, after a warm-up), at proxy --concurrency 1 and 2:
     A  native weighted_clusters 90/10 route, no Wasm at all
     B  envoy/envoy.yaml as is: canary-guard (filter + analyser singleton) at weight 10,
        with an analysis that holds weight 10 for the whole run (interval 1h)
     C  the same config with bench/min-router instead (one shared-data read + one header
        write per request, no singleton): the floor every Wasm router pays
     D  (optional, --arms ABCD) min-router configured "noop": an empty Wasm filter
     F  B in fleet mode: the same canary with envoy/envoy-fleet.yaml's fleet block, against a
        real etcd the bench starts (this proxy is the judge and publishes its tallies)
   Per arm: requests/s and p50/p99 latency (wrk --latency), and proxy CPU time per request
   ((utime+stime) delta of the proxy process / http.ingress.downstream_rq_total delta).
   Medians over rounds; ratios B/A, B/C (and C/A, D/A) per round, reported as the median
   with every round's value. The proxy is pinned to CPU 0 (0..n-1) and wrk, the backends
   and this script to the other CPUs when the machine has at least 2.
2. reaction: interval 1s, threshold 1, a canary near weight 10 under steady load; the canary
   starts answering 500 to every request; time from the first failing response a client
   received to weight 0 (polled every 10 ms), and the failing responses clients received.
3. propagation (fleet mode): a real etcd and three replicas (--concurrency 2) under light
   load, an analysis stepping every second; per step, the time from the judge's state write
   (the state key's mod revision changing in etcd, polled every 5 ms) to the last replica
   routing on it (its weight gauge showing the step, polled every 10 ms): median and max.
4. memory: the proxy's VmRSS and the canary's shared-data footprint (gauge
   canary_guard.web.shared_bytes, "n/a" when the module does not define it) after 10
   thousand and 1 million requests through canary-guard; the .wasm sizes.

Writes out/bench/results.md and out/bench/results.json (and each Envoy's config and log
under out/bench/run/).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

REPO = Path(__file__).resolve().parents[1]
from tests.integration import harness
from tests.integration import fleet as fleet_harness
import requests  # noqa: E402

CANARY = "web"
STAT = f"{harness.WASM_STAT_PREFIX}canary_guard.{CANARY}."
RQ_TOTAL = "http.ingress.downstream_rq_total"
MIN_ROUTER_WASM = REPO / "target" / "bench" / "wasm32-wasip1" / "release" / "min_router.wasm"
CLK_TCK = os.sysconf("SC_CLK_TCK")
ARM_TITLES = {
    "A": "A native weighted_clusters 90/10 (no Wasm)",
    "B": "B canary-guard (filter + singleton), weight 10",
    "C": "C min-router (1 shared-data read + 1 header write)",
    "D": "D empty Wasm filter (min-router noop)",
    "F": "F canary-guard in fleet mode (etcd, judge), weight 10",
}
# What min-router's calibrate mode logs (one line each).
CALIBRATED_CALLS = 11
RATIOS = (("B", "A"), ("B", "C"), ("C", "A"), ("D", "A"), ("C", "D"), ("F", "B"))
METRICS = ("rps", "p50_ms", "p99_ms", "cpu_us_per_req")


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------
# CPU pinning and process figures
# --------------------------------------------------------------------------

class Pinning:
    """Proxy CPUs vs everything else (wrk, backends, this script)."""

    def __init__(self, enabled: bool):
        cpus = sorted(os.sched_getaffinity(0))
        self.available = cpus
        self.enabled = enabled and len(cpus) >= 2 and shutil.which("taskset") is not None
        self.rest = cpus[1:] if self.enabled else cpus

    def proxy_cpus(self, concurrency: int) -> list[int]:
        if not self.enabled:
            return self.available
        # One CPU per proxy worker while at least one CPU is left for the load side.
        n = max(1, min(concurrency, len(self.available) - 1))
        return self.available[:n]

    def load_cpus(self, concurrency: int) -> list[int]:
        if not self.enabled:
            return self.available
        return self.available[len(self.proxy_cpus(concurrency)):]

    def describe(self, concurrency: int) -> str:
        if not self.enabled:
            return f"not pinned ({len(self.available)} CPUs)"
        return (f"proxy on CPU {_cpulist(self.proxy_cpus(concurrency))}, wrk + backends on CPU "
                f"{_cpulist(self.load_cpus(concurrency))}")


def _cpulist(cpus: list[int]) -> str:
    return ",".join(map(str, cpus))


def cpu_ticks(pid: int) -> int:
    """utime + stime of the whole process (all threads), in clock ticks."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def cpu_busy(cpus: list[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over `cpus`, from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *vals = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            v = [int(x) for x in vals[:8]]
            total += sum(v)
            busy += sum(v) - v[3] - v[4]  # minus idle and iowait
    return busy, total


def rss_kib(pid: int) -> Optional[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


class PinnedEnvoy(harness.Envoy):
    """harness.Envoy started under `taskset -c <cpus>` (same PID: taskset and the venv's
    envoy launcher both exec), logging at info (no per-request debug lines)."""

    def __init__(self, config: dict, workdir: Path, name: str, concurrency: int,
                 cpus: Optional[list[int]], listener_port: int):
        super().__init__(config, workdir, name=name, concurrency=concurrency)
        self.cpus = cpus
        self.listener_port = listener_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}/"

    def _launch(self) -> None:
        import yaml
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [harness.envoy_binary(), "-c", str(self.config_path),
               "--base-id", str(harness.next_base_id()), "--disable-hot-restart",
               "--concurrency", str(self.concurrency), "--log-level", "info"]
        if self.cpus is not None:
            cmd = ["taskset", "-c", _cpulist(self.cpus), *cmd]
        self._log_file = open(self.log_path, "wb")
        self.proc = harness.subprocess.Popen(cmd, cwd=self.workdir, stdout=self._log_file,
                                             stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


# --------------------------------------------------------------------------
# Configs for the arms
# --------------------------------------------------------------------------

def hold_plugin_config() -> dict:
    """envoy/envoy.yaml's canary with an analysis that sits at weight 10 for the whole run:
    the first step is 10 and the next check is an hour away. The metrics stay as shipped
    (windows 10s), so workers tally exactly as in production."""
    cfg = harness.default_plugin_config()
    cfg["analysis"].pop("stepWeight", None)
    cfg["analysis"].pop("maxWeight", None)
    cfg["analysis"].update({"interval": "1h", "stepWeights": [10, 20]})
    return cfg


def reaction_plugin_config() -> dict:
    """As tests/integration/test_canary.py::test_rollback_reaction_at_one_second_interval:
    interval 1s, threshold 1, small steps from 10 so the canary stays near weight 10 while
    building healthy history in its 10s window."""
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg["analysis"] = {
        "interval": "1s", "threshold": 1, "stepWeights": list(range(10, 31)), "minRequests": 5,
        "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99},
                     "interval": "10s"}],
    }
    return cfg


def fleet_hold_plugin_config() -> dict:
    """Arm F: hold_plugin_config in fleet mode, with envoy/envoy-fleet.yaml's timings."""
    return fleet_harness.fleet_plugin_config(hold_plugin_config(), leaseTTL="5s",
                                             maxStaleness="5s", timeout="1s")


def propagation_plugin_config() -> dict:
    """A step every second from 5 to 95 (success rate only, a few requests per check)."""
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)
    cfg["analysis"] = {
        "interval": "1s", "threshold": 3, "stepWeights": list(range(5, 100, 5)), "minRequests": 1,
        "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 90}, "interval": "5s"}],
    }
    return fleet_harness.fleet_plugin_config(cfg, leaseTTL="5s", maxStaleness="5s", timeout="1s")


def add_etcd(cfg: dict, etcd_port: int, node_id: str) -> None:
    """The etcd cluster and a node id, as tests/integration/fleet.py adds them."""
    cfg["node"] = {"id": node_id, "cluster": "canary-guard-bench"}
    cfg["static_resources"]["clusters"].append({
        "name": fleet_harness.ETCD_CLUSTER, "type": "STATIC", "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": fleet_harness.ETCD_CLUSTER, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": etcd_port}}}}]}]},
    })


def _ingress(cfg: dict) -> dict:
    return harness._listener(cfg, "ingress")


def proxy_config(arm: str, backends: harness.Backends, plugin_cfg: dict,
                 admin_port: int, listener_port: int, fixture_mode: Optional[str] = None,
                 etcd_port: Optional[int] = None, node_id: str = "bench") -> dict:
    if arm == "F":
        assert etcd_port is not None, "arm F needs the bench's etcd"
        cfg = proxy_config("B", backends, plugin_cfg, admin_port, listener_port)
        add_etcd(cfg, etcd_port, node_id)
        return cfg
    cfg = harness.render_proxy_config(
        plugin_cfg, "singleton", admin_port=admin_port, listener_port=listener_port,
        stable_port=backends.stable_port, canary_port=backends.canary_port,
        wasm_path=str(harness.DEFAULT_WASM.resolve()))
    hcm = harness._hcm(_ingress(cfg))
    if arm == "B":
        return cfg
    # The other arms have no canary-guard: nor its control endpoint's listener (and VM).
    cfg["static_resources"]["listeners"] = [l for l in cfg["static_resources"]["listeners"]
                                            if l["name"] != "canary-guard-control"]
    cfg.pop("bootstrap_extensions", None)
    if arm == "A":
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
        vhost = hcm["route_config"]["virtual_hosts"][0]
        vhost["routes"] = [{
            "name": "web-weighted",
            "match": {"prefix": "/"},
            "route": {"timeout": "5s", "weighted_clusters": {"clusters": [
                {"name": "web-stable", "weight": 90}, {"name": "web-canary", "weight": 10}]}},
        }]
        return cfg
    if arm in ("C", "D"):
        wasm = harness._http_filter(_ingress(cfg), "envoy.filters.http.wasm")["config"]
        wasm["name"] = wasm["root_id"] = wasm["vm_config"]["vm_id"] = "min-router"
        wasm["vm_config"]["code"]["local"]["filename"] = str(MIN_ROUTER_WASM)
        wasm["configuration"]["value"] = fixture_mode or ("noop" if arm == "D" else "")
        return cfg
    raise ValueError(arm)


# --------------------------------------------------------------------------
# wrk
# --------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", value)
    if not m:
        raise ValueError(f"unparsable wrk latency {value!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    res: dict[str, Any] = {}
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    res["rps"] = float(m.group(1)) if m else None
    m = re.search(r"(\d+) requests in", out)
    res["requests"] = int(m.group(1)) if m else None
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        res[f"p{pct}_ms"] = _ms(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: (.*)", out)
    res["socket_errors"] = m.group(1).strip() if m else ""
    return res


def wrk_cmd(url: str, args, duration: float, cpus: list[int], latency: bool = True) -> list[str]:
    cmd = ["wrk", "-c", str(args.connections), "-t", str(args.threads), "-d", f"{duration:g}s"]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    return ["taskset", "-c", _cpulist(cpus), *cmd] if cpus else cmd


def run_wrk(url: str, args, duration: float, cpus: list[int]) -> dict:
    p = subprocess.run(wrk_cmd(url, args, duration, cpus), capture_output=True, text=True,
                       timeout=duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}): {p.stderr or p.stdout}")
    res = parse_wrk(p.stdout)
    res["raw"] = p.stdout
    return res


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def median(xs: list) -> Optional[float]:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x: Optional[float], digits: int = 2) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def stat_or(e: harness.Envoy, name: str, default=None):
    try:
        return e.stat(name, default)
    except Exception:  # noqa: BLE001 - a figure we cannot read is reported as n/a
        return default


class Bench:
    def __init__(self, args):
        self.args = args
        self.out = Path(args.out).resolve()
        self.workdir = self.out / "run"
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.pin = Pinning(not args.no_pin)
        self.started: list[harness.Envoy] = []
        self.backends: Optional[harness.Backends] = None
        self.etcd: Optional[fleet_harness.Etcd] = None
        self.seq = 0

    # -- processes ---------------------------------------------------------
    def start_backends(self) -> None:
        # Backends inherit this script's affinity (the load CPUs).
        self.backends = harness.Backends(self.workdir, concurrency=1)
        self.started.append(self.backends)
        self.backends.start()

    def start_etcd(self) -> fleet_harness.Etcd:
        if self.etcd is None:
            self.etcd = fleet_harness.Etcd(self.workdir, name="etcd").start()
        return self.etcd

    def start_proxy(self, arm: str, concurrency: int, plugin_cfg: Optional[dict] = None,
                    tag: str = "", fixture_mode: Optional[str] = None,
                    pinned: bool = True) -> PinnedEnvoy:
        assert self.backends is not None
        self.seq += 1
        listener_port = harness.free_port()
        default_cfg = fleet_hold_plugin_config() if arm == "F" else hold_plugin_config()
        name = f"{self.seq:03d}-{tag or arm}-c{concurrency}"
        cfg = proxy_config(arm, self.backends, plugin_cfg or default_cfg,
                           admin_port=harness.free_port(), listener_port=listener_port,
                           fixture_mode=fixture_mode,
                           etcd_port=self.start_etcd().port if arm == "F" else None, node_id=name)
        cpus = self.pin.proxy_cpus(concurrency) if self.pin.enabled and pinned else None
        e = PinnedEnvoy(cfg, self.workdir, name, concurrency, cpus, listener_port)
        self.started.append(e)
        e.start()
        if arm in ("B", "F") and plugin_cfg is None:
            e.wait_for_stat(STAT + "weight", lambda v: v == 10, timeout=15)
        return e

    def stop(self, e: harness.Envoy) -> None:
        e.stop()
        if e in self.started:
            self.started.remove(e)

    def stop_all(self) -> None:
        for e in reversed(self.started):
            try:
                e.stop()
            except Exception:  # noqa: BLE001
                pass
        self.started.clear()
        if self.etcd is not None:
            self.etcd.stop()
            self.etcd = None

    # -- 1. throughput ------------------------------------------------------
    def measure_arm(self, arm: str, concurrency: int) -> dict:
        a = self.args
        e = self.start_proxy(arm, concurrency)
        try:
            load_cpus = self.pin.load_cpus(concurrency) if self.pin.enabled else []
            # Warm-up: V8 tiers up, connection pools to the backends fill.
            run_wrk(e.url, a, a.warmup, load_cpus)
            rq0, t0 = e.stat(RQ_TOTAL, 0), cpu_ticks(e.pid)
            l0, w0 = cpu_busy(load_cpus), time.monotonic()
            w = run_wrk(e.url, a, a.duration, load_cpus)
            t1, rq1 = cpu_ticks(e.pid), e.stat(RQ_TOTAL, 0)
            l1, w1 = cpu_busy(load_cpus), time.monotonic()
            requests = rq1 - rq0
            cpu_s = (t1 - t0) / CLK_TCK
            res = {
                "rps": w["rps"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
                "cpu_us_per_req": cpu_s / requests * 1e6 if requests else None,
                "proxy_cpu_s": cpu_s, "proxy_requests": requests, "wrk_requests": w["requests"],
                # Is the proxy the bottleneck? Its CPU use in CPUs, and the load side's busy share.
                "proxy_cpus_used": cpu_s / (w1 - w0),
                "load_cpu_busy_pct": 100.0 * (l1[0] - l0[0]) / (l1[1] - l0[1]) if l1[1] > l0[1] else None,
                "non_2xx": w["non_2xx"], "socket_errors": w["socket_errors"],
            }
            if arm in ("B", "F"):
                res["weight"] = e.stat(STAT + "weight")
            if arm == "F":
                res["fleet_calls_ok"] = e.stat(STAT + "fleet.calls_ok", 0)
                res["fleet_calls_failed"] = e.stat(STAT + "fleet.calls_failed", 0)
            canary = e.stat("cluster.web-canary.upstream_rq_total", 0)
            stable = e.stat("cluster.web-stable.upstream_rq_total", 0)
            res["canary_share_pct"] = 100.0 * canary / (canary + stable) if canary + stable else None
            if w["non_2xx"] or w["socket_errors"]:
                log(f"    warning: {arm}: non-2xx {w['non_2xx']}, socket errors {w['socket_errors'] or 0}")
            return res
        finally:
            self.stop(e)

    def throughput(self) -> dict:
        a = self.args
        arms = list(a.arms)
        out: dict[str, Any] = {}
        for conc in a.concurrency:
            log(f"\n== throughput, proxy --concurrency {conc} ({self.pin.describe(conc)}), "
                f"wrk -c {a.connections} -t {a.threads} -d {a.duration:g}s after {a.warmup:g}s warm-up ==")
            rounds: list[dict] = []
            for r in range(a.rounds):
                order = arms[r % len(arms):] + arms[:r % len(arms)]
                res = {}
                for arm in order:
                    res[arm] = self.measure_arm(arm, conc)
                    x = res[arm]
                    log(f"  round {r + 1}/{a.rounds} {arm}: {fmt(x['rps'], 0)} req/s, p50 "
                        f"{fmt(x['p50_ms'], 3)} ms, p99 {fmt(x['p99_ms'], 3)} ms, proxy CPU "
                        f"{fmt(x['cpu_us_per_req'], 1)} us/req (proxy {fmt(x['proxy_cpus_used'])} CPU, load CPUs "
                        f"{fmt(x['load_cpu_busy_pct'], 0)}% busy), canary {fmt(x['canary_share_pct'], 1)}%")
                rounds.append({"order": "".join(order), "arms": res})
            summary = {arm: {m: median([rd["arms"][arm][m] for rd in rounds])
                             for m in (*METRICS, "proxy_cpus_used", "load_cpu_busy_pct")}
                       for arm in arms}
            ratios = {}
            for num, den in RATIOS:
                if num in arms and den in arms:
                    ratios[f"{num}/{den}"] = {}
                    for m in METRICS:
                        per_round = [rd["arms"][num][m] / rd["arms"][den][m]
                                     if rd["arms"][num][m] and rd["arms"][den][m] else None
                                     for rd in rounds]
                        ratios[f"{num}/{den}"][m] = {"median": median(per_round), "rounds": per_round}
            out[str(conc)] = {"pinning": self.pin.describe(conc), "rounds": rounds,
                              "median": summary, "ratios": ratios}
        return out

    # -- 2. reaction --------------------------------------------------------
    def reaction_run(self, i: int) -> dict:
        a = self.args
        assert self.backends is not None
        self.backends.set_canary_fault()
        e = self.start_proxy("B", a.reaction_concurrency, reaction_plugin_config(), tag=f"reaction{i}")
        try:
            load = harness.LoadGenerator(e.url, rate=a.reaction_rate, connections=6).start()
            try:
                e.wait_for(lambda: (e.stat(STAT + "weight", 0) or 0) >= 12, 20, "two healthy steps")
                weight_at_fault = e.stat(STAT + "weight")
                fault_at = time.monotonic()
                self.backends.set_canary_fault(abort_percent=100)
                e.wait_for(lambda: e.stat(STAT + "weight") == 0, 20, "weight 0", interval=0.01)
                zero_at = time.monotonic()
                time.sleep(0.5)
            finally:
                records = load.stop()
        finally:
            self.stop(e)
            self.backends.set_canary_fault()
        failing = [t for t, status, served in records if served == "canary" and status >= 500]
        if not failing:
            raise RuntimeError("reaction: no failing canary response was received")
        rate = len(records) / (records[-1][0] - records[0][0])
        reaction = zero_at - failing[0]
        res = {
            "reaction_s": reaction, "failing_responses": len(failing), "rate_rps": rate,
            "weight_at_fault": weight_at_fault, "fault_to_first_failure_s": failing[0] - fault_at,
            "bound_responses": rate * weight_at_fault / 100.0 * reaction,
        }
        log(f"  run {i}: weight {weight_at_fault} -> 0 in {reaction:.3f}s after the first failing "
            f"response; {len(failing)} failing responses at {rate:.0f} req/s "
            f"(rate x weight x time = {res['bound_responses']:.1f})")
        return res

    def reaction(self) -> dict:
        a = self.args
        log(f"\n== reaction: interval 1s, threshold 1, {a.reaction_rate:g} req/s, canary fails "
            f"every request ({a.reaction_runs} runs, proxy --concurrency {a.reaction_concurrency}) ==")
        runs = [self.reaction_run(i + 1) for i in range(a.reaction_runs)]
        return {"runs": runs,
                "median": {k: median([r[k] for r in runs])
                           for k in ("reaction_s", "failing_responses", "rate_rps", "bound_responses")}}

    # -- 3. propagation (fleet mode) ------------------------------------------
    def propagation(self) -> dict:
        """Per step of a fleet analysis: the judge's state write (seen in etcd) to the last of
        three replicas routing on it (its weight gauge). Polling adds up to ~15 ms."""
        import base64
        import threading
        a = self.args
        etcd = self.start_etcd()
        key = "/canary-guard/web/state/v2"
        etcd.call("/v3/kv/deleterange", {"key": base64.b64encode(b"/canary-guard/").decode(),
                                          "range_end": base64.b64encode(b"/canary-guard0").decode()})
        log(f"\n== propagation: etcd + 3 replicas (--concurrency 2), a step every 1s from 5 to 95 ==")
        writes: list[tuple[float, int]] = []   # (monotonic time seen, weight written)
        stop = threading.Event()

        def watch() -> None:
            last = None
            while not stop.is_set():
                try:
                    kvs = etcd.call("/v3/kv/range", {"key": base64.b64encode(key.encode()).decode()}).get("kvs", [])
                except Exception:  # noqa: BLE001 - a missed poll only delays the timestamp
                    kvs = []
                if kvs and kvs[0]["mod_revision"] != last:
                    last = kvs[0]["mod_revision"]
                    st = fleet_harness.parse_state(base64.b64decode(kvs[0]["value"]))
                    # Only writes that change the weight: the others route as before.
                    if not writes or writes[-1][1] != st["weight"]:
                        writes.append((time.monotonic(), st["weight"]))
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        replicas = [self.start_proxy("F", 2, propagation_plugin_config(), tag=f"replica{i + 1}",
                                     pinned=False) for i in range(3)]
        loads = [harness.LoadGenerator(r.url, rate=a.propagation_rate, connections=2).start()
                 for r in replicas]
        watcher.start()
        samples: list[dict] = []
        try:
            deadline = time.monotonic() + 60
            seen: dict[int, float] = {}
            while time.monotonic() < deadline:
                for i, w in enumerate(writes):
                    if i in seen:
                        continue
                    weights = [r.stat(STAT + "weight") for r in replicas]
                    if all(x == w[1] for x in weights):
                        seen[i] = time.monotonic()
                        samples.append({"weight": w[1], "propagation_s": seen[i] - w[0]})
                        log(f"  weight {w[1]:>3}: last replica routing on it "
                            f"{1000 * (seen[i] - w[0]):.0f} ms after the write")
                    elif i + 1 < len(writes):
                        seen[i] = -1.0  # superseded before every replica showed it
                    break
                if writes and writes[-1][1] >= 95 and len(seen) == len(writes):
                    break
                time.sleep(0.01)
        finally:
            stop.set()
            for load in loads:
                load.stop()
            for r in replicas:
                self.stop(r)
        values = [x["propagation_s"] for x in samples]
        if not values:
            raise RuntimeError("propagation: no step propagated (see out/bench/run/*replica*.log)")
        return {"samples": samples, "writes": len(writes),
                "median_s": median(values), "max_s": max(values)}

    # -- 4. host calls --------------------------------------------------------
    def hostcalls(self) -> dict:
        """min-router's `calibrate` mode inside the real Envoy: ns per host call, best of 5 loops
        of 20k calls on the first request (warm caches: a lower bound for the cost under load)."""
        log("\n== host calls: min-router calibrate (proxy --concurrency 1) ==")
        e = self.start_proxy("C", 1, tag="calibrate", fixture_mode="calibrate")
        try:
            requests.get(e.url, timeout=60)
            pattern = re.compile(r"calibrate (.+?): (\d+) ns/call")
            found: dict[str, int] = {}

            def done() -> bool:
                found.update({m.group(1): int(m.group(2)) for m in pattern.finditer(e.log_text())})
                return len(found) >= CALIBRATED_CALLS
            e.wait_for(done, 120, "calibrate log lines")
        finally:
            self.stop(e)
        for label, ns in found.items():
            log(f"  {label:<48} {ns:>6} ns/call")
        return {"ns_per_call": found}

    # -- 3. memory ----------------------------------------------------------
    def memory(self) -> dict:
        a = self.args
        log(f"\n== memory: canary-guard (proxy --concurrency {a.memory_concurrency}), "
            f"marks {', '.join(f'{m:,}' for m in a.memory_marks)} requests ==")
        e = self.start_proxy("B", a.memory_concurrency, tag="memory")
        window_s = max(_ms(m["interval"]) for m in hold_plugin_config()["analysis"]["metrics"]) / 1000
        points = []

        def point(mark: Optional[int]) -> dict:
            p = {"mark": mark, "requests": e.stat(RQ_TOTAL, 0), "rss_kib": rss_kib(e.pid),
                 "shared_bytes": stat_or(e, STAT + "shared_bytes")}
            log(f"  {p['requests']:>9,} requests: VmRSS {p['rss_kib'] / 1024:.1f} MiB, shared_bytes "
                f"{p['shared_bytes'] if p['shared_bytes'] is not None else 'n/a'}")
            return p

        try:
            time.sleep(1.0)
            points.append(point(None))
            load_cpus = self.pin.load_cpus(a.memory_concurrency) if self.pin.enabled else []
            for mark in sorted(a.memory_marks):
                if e.stat(RQ_TOTAL, 0) < mark:
                    cmd = wrk_cmd(e.url, a, 3600, load_cpus, latency=False)
                    wrk = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                           start_new_session=True)
                    try:
                        while e.stat(RQ_TOTAL, 0) < mark:
                            if wrk.poll() is not None:
                                raise RuntimeError(f"wrk exited early ({wrk.returncode})")
                            time.sleep(0.02 if mark <= 100_000 else 0.2)
                    finally:
                        os.killpg(wrk.pid, signal.SIGTERM)
                        wrk.wait(10)
                # Shared data holds one analysis window of buckets: fill a whole window at
                # both marks (a light load for window + 1 s), so the two samples compare the
                # same thing and only the request count differs.
                with harness.LoadGenerator(e.url, rate=100, connections=2):
                    time.sleep(window_s + 1.0)
                time.sleep(0.5)  # let the workers publish their tallies (tick <= 100 ms)
                points.append(point(mark))
        finally:
            self.stop(e)
        sizes = {"canary_guard.wasm": _size(harness.DEFAULT_WASM), "min_router.wasm": _size(MIN_ROUTER_WASM)}
        log(f"  canary_guard.wasm {sizes['canary_guard.wasm']:,} bytes "
            f"({sizes['canary_guard.wasm'] / 1000:.0f} KB, target < 500 KB)")
        return {"points": points, "wasm_bytes": sizes}


def _size(p: Path) -> Optional[int]:
    return p.stat().st_size if p.is_file() else None


# --------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------

def _vals(xs: list, digits: int) -> str:
    return ", ".join(fmt(x, digits) for x in xs)


def markdown(results: dict) -> str:
    env = results["environment"]
    lines = ["# canary-guard benchmark results", "",
             f"{env['date']} on {env['cpu_model']} ({env['cpus']} CPUs), {env['kernel']}; "
             f"{env['envoy']}; {env['wrk']}; wrk -c {env['wrk_connections']} -t {env['wrk_threads']} "
             f"-d {env['duration_s']:g}s after a {env['warmup_s']:g}s warm-up, {env['rounds']} interleaved "
             f"rounds (arm order rotated). Produced by `make bench` (scripts/bench.py).", ""]
    tp = results.get("throughput")
    if tp:
        lines += ["## Throughput and per-request cost", "",
                  "Medians over rounds. CPU = proxy process utime+stime / requests Envoy completed.", ""]
        for conc, block in tp.items():
            lines += [f"### proxy --concurrency {conc} ({block['pinning']})", "",
                      "| arm | req/s | p50 ms | p99 ms | proxy CPU µs/req | proxy CPUs used | load CPUs busy |",
                      "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for arm, m in block["median"].items():
                lines.append(f"| {ARM_TITLES[arm]} | {fmt(m['rps'], 0)} | {fmt(m['p50_ms'], 3)} | "
                             f"{fmt(m['p99_ms'], 3)} | {fmt(m['cpu_us_per_req'], 1)} | {fmt(m['proxy_cpus_used'])} | "
                             f"{fmt(m['load_cpu_busy_pct'], 0)}% |")
            lines += ["", "| ratio | req/s | p50 | p99 | CPU/req | CPU/req per round |",
                      "| --- | ---: | ---: | ---: | ---: | --- |"]
            for name, r in block["ratios"].items():
                lines.append(f"| {name} | {fmt(r['rps']['median'])} | {fmt(r['p50_ms']['median'])} | "
                             f"{fmt(r['p99_ms']['median'])} | {fmt(r['cpu_us_per_req']['median'])} | "
                             f"{_vals(r['cpu_us_per_req']['rounds'], 2)} |")
            lines.append("")
            lines.append("Per-round values of every ratio are in results.json.")
            lines.append("")
    rx = results.get("reaction")
    if rx:
        m = rx["median"]
        runs = rx["runs"]
        lines += ["## Rollback reaction", "",
                  "interval 1s, threshold 1, request-success-rate ≥ 99% over 10s; the canary starts "
                  "answering 500 to every request. Reaction = weight 0 (stat polled every 10 ms) minus "
                  "the first failing response a client received.", "",
                  "| | median | runs |", "| --- | ---: | --- |",
                  f"| reaction (s) | {fmt(m['reaction_s'], 3)} | {_vals([r['reaction_s'] for r in runs], 3)} |",
                  f"| failing responses received | {fmt(m['failing_responses'], 0)} | "
                  f"{', '.join(str(r['failing_responses']) for r in runs)} |",
                  f"| load (req/s) | {fmt(m['rate_rps'], 0)} | {_vals([r['rate_rps'] for r in runs], 0)} |",
                  f"| canary weight at the fault | | {', '.join(str(r['weight_at_fault']) for r in runs)} |",
                  f"| rate × weight × reaction | {fmt(m['bound_responses'], 1)} | "
                  f"{_vals([r['bound_responses'] for r in runs], 1)} |", ""]
    pr = results.get("propagation")
    if pr:
        lines += ["## Fleet propagation", "",
                  "Three replicas (--concurrency 2) and a real etcd; per step, from the judge's state "
                  "write (the key's mod revision in etcd, polled every 5 ms) to the last replica "
                  "routing on it (its weight gauge, polled every 10 ms). Replicas poll every half "
                  "interval (here 500 ms).", "",
                  f"{len(pr['samples'])} steps: median {pr['median_s'] * 1000:.0f} ms, max "
                  f"{pr['max_s'] * 1000:.0f} ms ({_vals([x['propagation_s'] for x in pr['samples']], 3)} s).", ""]
    mem = results.get("memory")
    if mem:
        lines += ["## Memory", "", "| requests through canary-guard | Envoy VmRSS (MiB) | shared_bytes |",
                  "| ---: | ---: | ---: |"]
        for p in mem["points"]:
            sb = p["shared_bytes"]
            lines.append(f"| {p['requests']:,} | {p['rss_kib'] / 1024:.1f} | {sb if sb is not None else 'n/a'} |")
        w = mem["wasm_bytes"]
        cg = w.get("canary_guard.wasm")
        lines += ["", "Each mark is sampled after a light load has run for one full analysis window "
                      "(10 s), so both hold a full window of buckets.", "",
                      f"`canary_guard.wasm`: {cg:,} bytes ({cg / 1000:.0f} KB; target < 500 KB: "
                      f"{'met' if cg < 500_000 else 'NOT met'}). `min_router.wasm` (fixture): "
                      f"{w.get('min_router.wasm') or 0:,} bytes.", ""]
    hc = results.get("hostcalls")
    if hc:
        lines += ["## What a Wasm filter's host calls cost", "",
                  "min-router's `calibrate` mode inside this Envoy: ns per call, best of 5 loops of 20k "
                  "calls (warm caches: under load, with cold caches, each costs 2-4× this). A call that "
                  "returns a value makes the host call back into the VM to allocate it.", "",
                  "| host call | ns/call |", "| --- | ---: |"]
        lines += [f"| {label} | {ns} |" for label, ns in hc["ns_per_call"].items()]
        lines.append("")
    return "\n".join(lines)


def environment(args) -> dict:
    def cmd_out(cmd: list[str]) -> str:
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
            return (p.stdout + p.stderr).strip()
        except Exception:  # noqa: BLE001
            return "n/a"

    model = "n/a"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy_v = cmd_out([harness.envoy_binary(), "--version"])
    m = re.search(r"version: \S+/([\d.]+)/", envoy_v)
    wrk_v = cmd_out(["wrk", "--version"]).splitlines()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"), "cpu_model": model, "cpus": os.cpu_count(),
        "kernel": f"Linux {platform.release()}", "envoy": f"Envoy {m.group(1) if m else envoy_v[:60]}",
        "wrk": wrk_v[0].split(" Copyright")[0] if wrk_v else "wrk", "wrk_connections": args.connections,
        "wrk_threads": args.threads, "duration_s": args.duration, "warmup_s": args.warmup,
        "rounds": args.rounds, "clk_tck": CLK_TCK,
    }


def summary_table(results: dict) -> str:
    """The headline figures, one line each (also in results.md)."""
    rows = []
    for conc, block in (results.get("throughput") or {}).items():
        for name in ("B/A", "B/C", "C/A", "D/A", "F/B"):
            r = block["ratios"].get(name)
            if r:
                rows.append((f"c{conc} {name} CPU/req", fmt(r["cpu_us_per_req"]["median"]),
                             _vals(r["cpu_us_per_req"]["rounds"], 2)))
                rows.append((f"c{conc} {name} req/s", fmt(r["rps"]["median"]), _vals(r["rps"]["rounds"], 2)))
                rows.append((f"c{conc} {name} p99", fmt(r["p99_ms"]["median"]), _vals(r["p99_ms"]["rounds"], 2)))
    rx = results.get("reaction")
    if rx:
        rows.append(("reaction s", fmt(rx["median"]["reaction_s"], 3),
                     _vals([r["reaction_s"] for r in rx["runs"]], 3)))
        rows.append(("failing responses", fmt(rx["median"]["failing_responses"], 0),
                     ", ".join(str(r["failing_responses"]) for r in rx["runs"])))
        rows.append(("rate x weight x time", fmt(rx["median"]["bound_responses"], 1),
                     _vals([r["bound_responses"] for r in rx["runs"]], 1)))
    pr = results.get("propagation")
    if pr:
        rows.append(("propagation s (median/max)", f"{pr['median_s']:.3f}/{pr['max_s']:.3f}",
                     _vals([x["propagation_s"] for x in pr["samples"]], 3)))
    mem = results.get("memory")
    if mem:
        for p in mem["points"]:
            sb = p["shared_bytes"]
            rows.append((f"after {p['requests']:,} req", f"RSS {p['rss_kib'] / 1024:.1f} MiB",
                         f"shared_bytes {sb if sb is not None else 'n/a'}"))
        rows.append(("canary_guard.wasm", f"{mem['wasm_bytes']['canary_guard.wasm']:,} B", "target < 500 KB"))
    w0 = max([len(r[0]) for r in rows] + [4])
    w1 = max([len(r[1]) for r in rows] + [6])
    out = [f"{'what':<{w0}}  {'median':>{w1}}  per round / run", "-" * (w0 + w1 + 20)]
    out += [f"{a:<{w0}}  {b:>{w1}}  {c}" for a, b, c in rows]
    return "\n".join(out)


# --------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per concurrency (default 5)")
    ap.add_argument("--duration", type=float, default=10, help="seconds of wrk per arm (default 10)")
    ap.add_argument("--warmup", type=float, default=2, help="seconds of wrk warm-up per arm (default 2)")
    ap.add_argument("--connections", type=int, default=32, help="wrk -c (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2],
                    help="proxy --concurrency values, comma-separated (default 1,2)")
    ap.add_argument("--arms", default="ABCDF",
                    help="throughput arms (default ABCDF; D is the empty filter, F fleet mode)")
    ap.add_argument("--propagation-rate", type=float, default=40,
                    help="req/s to each replica in the propagation part (default 40)")
    ap.add_argument("--reaction-runs", type=int, default=3)
    ap.add_argument("--reaction-rate", type=float, default=300)
    ap.add_argument("--reaction-concurrency", type=int, default=2)
    ap.add_argument("--memory-marks", type=lambda s: [int(float(x)) for x in s.split(",")],
                    default=[10_000, 1_000_000], help="request counts (default 10000,1000000)")
    ap.add_argument("--memory-concurrency", type=int, default=2)
    ap.add_argument("--skip", default="",
                    help="parts to skip, comma-separated: throughput,reaction,propagation,memory,hostcalls")
    ap.add_argument("--no-pin", action="store_true", help="do not pin CPUs")
    ap.add_argument("--out", default=str(REPO / "out" / "bench"))
    args = ap.parse_args()
    args.arms = "".join(a for a in args.arms.upper() if a in ARM_TITLES)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    missing = [what for what, ok in (
        ("wrk (apt-get install wrk)", shutil.which("wrk")),
        ("Envoy ($ENVOY_BIN or .venv/bin/envoy: make setup)",
         os.access(os.environ.get("ENVOY_BIN") or str(REPO / ".venv" / "bin" / "envoy"), os.X_OK)),
        (f"{harness.DEFAULT_WASM} (make build)", harness.DEFAULT_WASM.is_file()),
        ("etcd (Debian etcd-server: make setup, or ETCD_BIN) for arm F and propagation",
         os.environ.get("ETCD_BIN") or shutil.which("etcd")
         or ("F" not in args.arms or "throughput" in skip) and "propagation" in skip),
        (f"{MIN_ROUTER_WASM} (the bench/min-router fixture)",
         MIN_ROUTER_WASM.is_file() or ((not (set(args.arms) & {"C", "D"}) or "throughput" in skip)
                                       and "hostcalls" in skip)),
    ) if not ok]
    if missing:
        log("bench: missing " + "; ".join(missing))
        return 2

    bench = Bench(args)
    # This script, wrk and the backends run on the load CPUs; the proxy gets its own.
    if bench.pin.enabled:
        os.sched_setaffinity(0, bench.pin.load_cpus(max(args.concurrency)))
    results: dict[str, Any] = {"environment": environment(args)}
    t0 = time.monotonic()
    try:
        bench.start_backends()
        if "throughput" not in skip:
            results["throughput"] = bench.throughput()
        if "reaction" not in skip:
            results["reaction"] = bench.reaction()
        if "propagation" not in skip:
            results["propagation"] = bench.propagation()
        if "memory" not in skip:
            results["memory"] = bench.memory()
        if "hostcalls" not in skip:
            results["hostcalls"] = bench.hostcalls()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.stop_all()
    results["environment"]["elapsed_s"] = round(time.monotonic() - t0, 1)

    bench.out.mkdir(parents=True, exist_ok=True)
    slim = copy.deepcopy(results)  # wrk's raw output is not kept
    (bench.out / "results.json").write_text(json.dumps(slim, indent=2) + "\n")
    md = markdown(results)
    (bench.out / "results.md").write_text(md + "\n")
    log("\n== summary ==\n" + summary_table(results))
    log(f"\n{bench.out / 'results.md'}\n{bench.out / 'results.json'}  ({results['environment']['elapsed_s']:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
