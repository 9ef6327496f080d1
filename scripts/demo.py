#!/usr/bin/env python3
"""canary-guard live demo: a canary rollout, a bad canary, and the automatic rollback.

Run it with `make demo` (which installs Envoy and builds the module first), or directly
with the venv's python once both are there: `.venv/bin/python -m scripts.demo`.

It starts two real Envoys from the repository's configs (only ports and paths rewritten,
the analyser singleton kept): envoy/backends.yaml (the stable and canary services) and
envoy/envoy.yaml (the proxy running canary-guard, with a demo plugin configuration).
It sends steady traffic through the proxy and prints, once a second, what the module
reports in Envoy's stats next to what clients see. Once the canary weight has reached
--fault-at-weight, the canary starts failing a share of its requests; canary-guard's
checks fail, it rolls back, and clients stop reaching the canary. The module's decision
log lines are printed from the proxy's Envoy log as they appear.

Fleet mode (`make demo DEMO_ARGS='--replicas 3'`): a local etcd (Debian's etcd-server, as
the tests run it) and N proxies, each with the fleet block of envoy/envoy-fleet.yaml, taking
uneven shares of the traffic (the quietest alone is below minRequests). One replica is the
judge; every replica shows the same weight and phase within a poll period, and the one
rollback sends every replica to stable.

Everything it starts is stopped on exit, also on Ctrl-C. Set ENVOY_BIN to use another
Envoy binary (ETCD_BIN another etcd). Exit code 0 when the rollback happened as expected on
every proxy, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
from tests.integration import harness
from tests.integration import fleet as fleet_harness

CANARY = "web"
STAT_PREFIX = f"{harness.WASM_STAT_PREFIX}canary_guard.{CANARY}."
PHASES = harness.PHASES
FAILED = 4

# "[2026-11-22 01:21:53.425][8047][info][wasm] [source/...:1151] wasm log <plugin> <root_id>: msg"
# Per-worker configuration lines, left out in fleet mode where every replica repeats them.
NOISE = ("filter configured", "configuration published")
LOG_LINE = re.compile(r"\]\[(?P<level>\w+)\]\[wasm\] .*?wasm log [^:]*: (?P<msg>.*)$")


def demo_plugin_config() -> dict:
    """The plugin JSON from envoy/envoy.yaml with a quick analysis for the demo."""
    cfg = harness.default_plugin_config()
    cfg.pop("sessionAffinity", None)  # the demo's clients carry no user id: plain weights
    cfg["analysis"] = {
        "interval": "1s",
        "threshold": 2,
        "stepWeights": [10, 20, 30, 40, 50],
        "minRequests": 10,
        "metrics": [
            {"name": "request-success-rate", "thresholdRange": {"min": 99}, "interval": "5s"},
            {"name": "request-duration", "thresholdRange": {"max": 500}, "interval": "5s"},
        ],
    }
    return cfg


def traffic_shares(replicas: int) -> list[float]:
    """Uneven shares of the traffic, each replica a quarter of the one before (3: 76/19/5%):
    the quietest replica's own canary traffic is below minRequests, the fleet's is not."""
    raw = [4.0 ** -i for i in range(replicas)]
    return [r / sum(raw) for r in raw]


def check_prerequisites(replicas: int) -> Optional[str]:
    envoy = os.environ.get("ENVOY_BIN") or str(REPO / ".venv" / "bin" / "envoy")
    if not os.access(envoy, os.X_OK):
        return f"no Envoy at {envoy}: run `make setup` (or set ENVOY_BIN)"
    wasm = Path(os.environ.get("CANARY_GUARD_WASM") or harness.DEFAULT_WASM)
    if not wasm.is_file():
        return f"no module at {wasm}: run `make build`"
    if replicas > 1 and not (os.environ.get("ETCD_BIN") or shutil.which("etcd")):
        return "fleet mode needs etcd: run `make setup` (Debian etcd-server) or set ETCD_BIN"
    return None


class LogFollower:
    """Reads the lines an Envoy appends to its log and keeps canary-guard's decisions."""

    def __init__(self, path: Path, label: str = ""):
        self.path = path
        self.label = label
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[tuple[str, str]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        out = []
        for raw in lines:
            line = raw.decode(errors="replace")
            if "wasm log" not in line or f"canary {CANARY}" not in line:
                continue
            if self.label and any(n in line for n in NOISE):
                continue  # one line per worker and replica: noise next to the decisions
            m = LOG_LINE.search(line)
            level, msg = (m.group("level"), m.group("msg")) if m else ("?", line)
            out.append((level, f"{self.label}{msg}"))
        return out


PHASE_COLOURS = {1: "#4c9be8", 2: "#8fd18f", 3: "#2ca02c", 4: "#d62728", 5: "#bbbbbb", 6: "#f0b400"}


def write_svg(path: Path, samples: list, names: list[str], fault_s: Optional[float]) -> None:
    """The run as a picture: each proxy's weight (lines), the canary error rate clients saw
    (red, dashed), the phase as coloured bands, and the moment the fault started."""
    w, h, left, top, plot_h = 900, 360, 50, 40, 240
    end = max((t for t, *_ in samples), default=1.0) or 1.0
    x = lambda t: left + (w - left - 20) * t / end  # noqa: E731
    y = lambda v: top + plot_h * (1 - v / 100.0)  # noqa: E731
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{left}" y="20" font-size="15">canary-guard demo: weight, canary error rate and phase</text>']
    for v in (0, 25, 50, 75, 100):
        out.append(f'<line x1="{left}" x2="{w - 20}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>')
        out.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{v}%</text>')
    band_y = top + plot_h + 12
    for i, name in enumerate(names):
        for (t, _, phases, _), nxt in zip(samples, samples[1:] + [None]):
            t1 = nxt[0] if nxt else t + 1
            colour = PHASE_COLOURS.get(phases[i] if i < len(phases) else 0, "#ffffff")
            out.append(f'<rect x="{x(t):.1f}" y="{band_y + 14 * i}" width="{max(x(t1) - x(t), 1):.1f}" '
                       f'height="10" fill="{colour}"/>')
        out.append(f'<text x="{left - 8}" y="{band_y + 14 * i + 9}" text-anchor="end" font-size="10">{name}</text>')
    palette = ["#1f77b4", "#9467bd", "#17becf", "#8c564b", "#e377c2"]
    for i, name in enumerate(names):
        pts = " ".join(f"{x(t):.1f},{y(ws[i] or 0):.1f}" for t, ws, _, _ in samples if i < len(ws))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{palette[i % len(palette)]}" stroke-width="2"/>')
    errs = " ".join(f"{x(t):.1f},{y(min(e, 100)):.1f}" for t, _, _, e in samples if e is not None)
    if errs:
        out.append(f'<polyline points="{errs}" fill="none" stroke="#d62728" stroke-width="1.5" stroke-dasharray="4 3"/>')
    if fault_s:
        out.append(f'<line x1="{x(fault_s):.1f}" x2="{x(fault_s):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#d62728"/>')
        out.append(f'<text x="{x(fault_s) + 4:.1f}" y="{top + 12}" fill="#d62728">fault</text>')
    legend_y = h - 14
    items = [(palette[i % len(palette)], f"weight {n}") for i, n in enumerate(names)]
    items += [("#d62728", "canary error rate")]
    items += [(PHASE_COLOURS[k], harness.PHASES[k]) for k in (1, 4, 6)]
    lx = left
    for colour, label in items:
        out.append(f'<rect x="{lx}" y="{legend_y - 9}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{lx + 14}" y="{legend_y}">{label}</text>')
        lx += 24 + 7 * len(label)
    out.append(f'<text x="{w - 20}" y="{top + plot_h + 12 + 14 * len(names) + 12}" text-anchor="end">seconds: 0 to {end:.0f}</text>')
    out.append("</svg>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(out) + "\n")


class Demo:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.fleet = args.replicas > 1
        self.workdir = Path(args.workdir).resolve()
        self.etcd: Optional[fleet_harness.Etcd] = None
        self.backends: Optional[harness.Backends] = None
        self.proxies: list[harness.Proxy] = []
        self.loads: list[harness.LoadGenerator] = []
        self.t0 = time.monotonic()
        # One sample a second: (seconds, weight per proxy, phase per proxy, canary error %).
        self.samples: list[tuple[float, list, list, Optional[float]]] = []

    # -- output ------------------------------------------------------------------------
    def ts(self, t: Optional[float] = None) -> str:
        return f"{(time.monotonic() if t is None else t) - self.t0:6.1f}s"

    def say(self, text: str) -> None:
        print(text, flush=True)

    def records(self, since: float) -> list[tuple]:
        return sorted((r for load in self.loads for r in load.records(since=since)),
                      key=lambda r: r[0])

    def header(self) -> None:
        if self.fleet:
            cols = "  ".join(f"{p.name + ' (weight phase)':<27}" for p in self.proxies)
            self.say(f"{'time':>7}  {cols}  {'req/s':>5}  {'canary req/s':>12}  {'canary err':>10}")
            return
        self.say(f"{'time':>7}  {'weight':>6}  {'phase':<12} {'failed':>6}  {'req/s':>5}  "
                 f"{'canary req/s':>12}  {'canary 5xx':>10}  {'canary err':>10}")

    def row(self, now: float, all_stats: list[dict]) -> None:
        recent = [r for r in self.records(since=now - 1.0) if r[0] < now]
        canary = [r for r in recent if r[2] == "canary"]
        errors = sum(1 for r in canary if r[1] >= 500 or r[1] == 0)
        self.samples.append((now - self.t0, [s.get("weight") for s in all_stats],
                             [s.get("phase", 0) for s in all_stats],
                             100.0 * errors / len(canary) if canary else None))
        err = f"{100.0 * errors / len(canary):.1f}%" if canary else "-"
        if self.fleet:
            cols = []
            for stats in all_stats:
                weight = stats.get("weight")
                phase = PHASES.get(stats.get("phase", 0), str(stats.get("phase")))
                judge = " judge" if stats.get("fleet.judge") == 1 else ""
                cols.append(f"{'-' if weight is None else weight:>3} {phase + judge:<23}")
            self.say(f"{self.ts(now)}  {'  '.join(cols)}  {len(recent):>5}  {len(canary):>12}  "
                     f"{err:>10}")
            return
        stats = all_stats[0]
        weight = stats.get("weight")
        phase = PHASES.get(stats.get("phase", 0), str(stats.get("phase")))
        self.say(f"{self.ts(now)}  {'-' if weight is None else weight:>6}  {phase:<12} "
                 f"{stats.get('failed_checks', 0):>6}  {len(recent):>5}  {len(canary):>12}  "
                 f"{errors:>10}  {err:>10}")

    # -- pieces ------------------------------------------------------------------------
    @staticmethod
    def canary_stats(proxy: harness.Proxy) -> dict:
        if not proxy.alive():
            return {}
        raw = proxy.stats(filter="^" + re.escape(STAT_PREFIX))
        return {k[len(STAT_PREFIX):]: v for k, v in raw.items() if k.startswith(STAT_PREFIX)}

    def start(self) -> None:
        a = self.args
        self.workdir.mkdir(parents=True, exist_ok=True)
        cfg = demo_plugin_config()
        if self.fleet:
            cfg = fleet_harness.fleet_plugin_config(cfg)
        names = ["proxy"] if not self.fleet else [f"replica-{i + 1}" for i in range(a.replicas)]
        self.say("canary-guard demo" + (f", fleet mode: {a.replicas} replicas" if self.fleet else ""))
        self.say(f"  envoy:  {harness.envoy_binary()}")
        self.say(f"  module: {harness.wasm_path()}")
        self.say(f"  logs:   {self.workdir}/{{backends,{','.join(names)}}}.log")
        self.say(f"  plugin configuration: {json.dumps(cfg['analysis'], separators=(',', ':'))}")
        if self.fleet:
            self.say(f"  fleet: {json.dumps(cfg['fleet'], separators=(',', ':'))}")
            self.etcd = fleet_harness.Etcd(self.workdir, name="etcd")
            shutil.rmtree(self.etcd.dir, ignore_errors=True)  # a fresh store: a first rollout
            self.etcd.start()
            self.say(f"  etcd:   {self.etcd.url} (data {self.etcd.dir})")
        self.backends = harness.Backends(self.workdir, name="backends")
        self.backends.start()
        for name in names:
            proxy = harness.Proxy(self.workdir, self.backends, cfg, mode="singleton",
                                  name=name, concurrency=2)
            if self.fleet:
                fleet_harness.add_etcd_cluster(proxy, self.etcd.port, name)
            self.proxies.append(proxy)
        # Clients are already knocking when the proxies come up (as users would be), so the
        # first check, one interval after the analysis starts, sees a full interval of
        # traffic. Their refused connections before that are left out of the figures.
        shares = traffic_shares(len(self.proxies))
        for proxy, share in zip(self.proxies, shares):
            self.loads.append(harness.LoadGenerator(
                proxy.url, rate=a.rate * share, connections=max(1, round(a.connections * share)),
                timeout=5.0).start())
        for proxy in self.proxies:
            proxy.start()
        self.t0 = time.monotonic()
        self.say(f"  backends admin {self.backends.admin_url}")
        for proxy, share in zip(self.proxies, shares):
            self.say(f"  {proxy.name}: {proxy.url} (admin {proxy.admin_url}, control "
                     f"http://127.0.0.1:{proxy.control_port}), ~{a.rate * share:.0f} req/s")
        self.say(f"  traffic: ~{a.rate:g} req/s in all; the canary will fail {a.abort_percent}% "
                 f"of its requests once its weight reaches {a.fault_at_weight}")
        self.say("")

    def stop(self) -> None:
        steps = [("traffic", load.stop) for load in self.loads]
        steps += [(p.name, p.stop) for p in self.proxies]
        steps += [("backends", self.backends and self.backends.stop),
                  ("etcd", self.etcd and self.etcd.stop)]
        for what, stop in steps:
            if not stop:
                continue
            try:
                stop()
            except Exception as e:  # keep stopping the rest
                print(f"demo: stopping {what} failed: {e}", file=sys.stderr)

    # -- the run -----------------------------------------------------------------------
    def run(self) -> int:
        a = self.args
        followers = [LogFollower(p.log_path, f"{p.name}: " if self.fleet else "")
                     for p in self.proxies]
        self.header()
        fault_at: Optional[float] = None       # when the fault was switched on
        weight0_at: Optional[float] = None     # first poll showing weight 0 on every proxy
        next_row = self.t0 + 1.0
        deadline = self.t0 + a.max_seconds
        while True:
            now = time.monotonic()
            self.print_logs(followers)
            all_stats = [self.canary_stats(p) for p in self.proxies]
            weights = [s.get("weight") for s in all_stats]
            phases = [s.get("phase", 0) for s in all_stats]

            if fault_at is None:
                if FAILED in phases:
                    self.say(f"{self.ts()}  !! the analysis failed before any fault was injected")
                    return self.finish(None, None, ok=False)
                if any(ph in (2, 3) for ph in phases):
                    self.say(f"{self.ts()}  !! the canary was promoted before the fault "
                             f"(lower --fault-at-weight)")
                    return self.finish(None, None, ok=False)
                top = max((w for w in weights if w is not None), default=None)
                if top is not None and top >= a.fault_at_weight:
                    self.backends.set_canary_fault(abort_percent=a.abort_percent)
                    fault_at = time.monotonic()
                    self.say(f"{self.ts(fault_at)}  >> fault injected: the canary now answers "
                             f"500 to {a.abort_percent}% of its requests (weight {top})")
            elif weight0_at is None and all(w == 0 for w in weights):
                weight0_at = now
                where = "on every replica" if self.fleet else ""
                self.say(f"{self.ts(now)}  >> weight is 0 {where}, phase "
                         f"{'/'.join(sorted({PHASES.get(ph, str(ph)) for ph in phases}))}: "
                         f"canary-guard rolled the canary back")

            if now >= next_row:
                self.row(now, all_stats)
                next_row += 1.0
                if weight0_at is not None and now >= weight0_at + a.tail_seconds:
                    break
            if now >= deadline:
                self.say(f"{self.ts()}  !! no rollback within {a.max_seconds:g}s")
                return self.finish(fault_at, None, ok=False)
            time.sleep(0.1)
        self.print_logs(followers)
        return self.finish(fault_at, weight0_at, ok=True)

    def print_logs(self, followers: list[LogFollower]) -> None:
        for follower in followers:
            for level, msg in follower.new_lines():
                self.say(f"{self.ts()}  log [{level}] {msg}")

    def finish(self, fault_at: Optional[float], weight0_at: Optional[float], ok: bool) -> int:
        for load in self.loads:
            load.stop()
        records = self.records(since=self.t0)
        self.say("")
        self.say("summary")
        by = harness.summarize(records)
        self.say(f"  requests sent: {len(records)}; responses by server/status: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
        if fault_at is None:
            return 1
        failing = [r for r in records if r[1] >= 500 or r[1] == 0]
        canary_failing = [r for r in failing if r[2] == "canary" and r[0] >= fault_at]
        first_bad = min((r[0] for r in canary_failing), default=None)
        self.say(f"  failing responses clients received: {len(failing)} "
                 f"({len(canary_failing)} from the canary after the fault, "
                 f"{len(failing) - len(canary_failing)} other)")
        if first_bad is not None and weight0_at is not None:
            self.say(f"  first failing canary response at {self.ts(first_bad).strip()}, "
                     f"weight 0 seen at {self.ts(weight0_at).strip()}: "
                     f"time to rollback {weight0_at - first_bad:.1f}s")
        if weight0_at is not None:
            # Requests already routed when the state changed (and each worker's next read of the
            # state) may still reach the canary for a moment; after that there must be none.
            late = [r for r in records if r[2] == "canary" and r[0] > weight0_at]
            settled = [r for r in late if r[0] > weight0_at + 1.0]
            self.say(f"  canary responses after weight 0: {len(late)} "
                     f"({len(settled)} later than 1s after it)")
            ok = ok and not settled
        all_stats = [self.canary_stats(p) for p in self.proxies]
        for proxy, stats in zip(self.proxies, all_stats):
            if not stats:
                ok = False
                continue
            judge = f", judge {stats.get('fleet.judge')}, replicas seen " \
                    f"{stats.get('fleet.replicas')}" if self.fleet else ""
            self.say(f"  {proxy.name} stats: phase {PHASES.get(stats.get('phase'))}, weight "
                     f"{stats.get('weight')}, failed_checks {stats.get('failed_checks')}, "
                     f"rollbacks {stats.get('rollbacks')}, checks {stats.get('checks')}{judge}")
            ok = ok and stats.get("phase") == FAILED and stats.get("weight") == 0
        if self.fleet and all(all_stats):
            judges = sum(1 for s in all_stats if s.get("fleet.judge") == 1)
            rollbacks = sum(s.get("rollbacks", 0) for s in all_stats)
            self.say(f"  fleet: {judges} judge, {rollbacks} rollback in all (one decision)")
            ok = ok and judges == 1 and rollbacks == 1
        picture = Path(self.args.picture).resolve()
        try:
            write_svg(picture, self.samples, [p.name for p in self.proxies], fault_at and fault_at - self.t0)
            self.say(f"  picture: {picture}")
        except OSError as e:
            self.say(f"  picture not written: {e}")
        self.say("  result: " + ("rollback as expected" if ok else "NOT as expected"))
        return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate", type=float, default=250.0, help="requests per second (default 250)")
    p.add_argument("--connections", type=int, default=8, help="client connections (default 8)")
    p.add_argument("--fault-at-weight", type=int, default=30,
                   help="inject the canary fault once the weight reaches this (default 30)")
    p.add_argument("--abort-percent", type=int, default=30,
                   help="share of canary requests that fail with 500 (default 30)")
    p.add_argument("--tail-seconds", type=float, default=3.0,
                   help="keep showing traffic this long after the rollback (default 3)")
    p.add_argument("--max-seconds", type=float, default=45.0,
                   help="give up when there was no rollback after this long (default 45)")
    p.add_argument("--replicas", type=int, default=1,
                   help="fleet mode with this many proxies and a local etcd (default 1: one "
                        "proxy, no fleet)")
    p.add_argument("--picture", default=str(REPO / "out" / "demo.svg"),
                   help="the run as an SVG picture: weight, canary error rate, phase (default out/demo.svg)")
    p.add_argument("--workdir", default=str(REPO / "out" / "demo"),
                   help="rendered configs and Envoy logs (default out/demo)")
    args = p.parse_args()

    if args.replicas < 1:
        p.error("--replicas must be at least 1")
    problem = check_prerequisites(args.replicas)
    if problem:
        print(f"demo: {problem}", file=sys.stderr)
        return 2

    # Ctrl-C and SIGTERM unwind through the finally below, which stops every Envoy. SIGINT is
    # set explicitly: a shell starting us in the background would have it ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo = Demo(args)
    try:
        demo.start()
        return demo.run()
    except KeyboardInterrupt:
        print("\ndemo: interrupted, stopping everything", file=sys.stderr)
        return 130
    except AssertionError as e:  # harness failures (an Envoy that did not start, ...)
        print(f"demo: {e}", file=sys.stderr)
        return 1
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
