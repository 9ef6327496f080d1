#!/usr/bin/env python3
"""Traffic for `docker compose up` (docker-compose.yml): steady requests through the
canary-guard proxy, a canary that starts failing, and the rollback, printed once a second.

Standard library only: it runs in a plain python image, in the proxy's network namespace, so
the addresses below are the loopback ones from envoy/envoy.yaml and envoy/backends.yaml.

1. Requests start at once, before the proxy is up (refused connections are not counted): the
   analysis starts when the proxy starts, and its first check, one interval later, must
   already see minRequests canary requests, or it fails as "no traffic".
2. Once a second: the canary weight, phase and failed checks from the proxy admin's stats,
   and what clients got during that second.
3. Once the weight reaches FAULT_AT_WEIGHT, the canary is made to answer 500 to
   ABORT_PERCENT% of its requests (backends admin: POST
   /runtime_modify?fault.http.abort.abort_percent=N). The analysis fails its checks and rolls
   the canary back: weight 0, phase Failed.
4. A summary, then exit: 0 when the rollback happened as expected, 1 otherwise (so
   `docker compose up --exit-code-from traffic` gives a verdict).

Settings (environment): PROXY, PROXY_ADMIN, BACKENDS_ADMIN (host:port), RATE (requests/s),
CONNECTIONS, FAULT_AT_WEIGHT, ABORT_PERCENT, TAIL_SECONDS, MAX_SECONDS, READY_FILE (created
once requests are being sent; the compose healthcheck waits for it).

Fleet mode (docker-compose.fleet.yml): PROXY and PROXY_ADMIN list the replicas, comma
separated, and SHARES their shares of RATE in percent (default even). The rollback must then
show on every replica (weight 0, phase Failed), made once: one judge, one rollback in all.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
import urllib.request

CANARY = "web"  # the "name" in envoy/envoy.yaml's plugin configuration
STAT_PREFIX = f"wasmcustom.canary_guard.{CANARY}."
PHASES = {0: "Initializing", 1: "Progressing", 2: "Promoting", 3: "Succeeded", 4: "Failed", 5: "Waiting", 6: "WaitingPromotion"}
PROGRESSING, FAILED = 1, 4


def env(name: str, default: str) -> str:
    return os.environ.get(name) or default


PROXIES = env("PROXY", "127.0.0.1:10000").split(",")
PROXY_ADMINS = env("PROXY_ADMIN", "127.0.0.1:9901").split(",")
SHARES = [float(x) for x in env("SHARES", ",".join(["1"] * len(PROXIES))).split(",")]
BACKENDS_ADMIN = env("BACKENDS_ADMIN", "127.0.0.1:9911")
RATE = float(env("RATE", "400"))
CONNECTIONS = int(env("CONNECTIONS", "8"))
FAULT_AT_WEIGHT = int(env("FAULT_AT_WEIGHT", "30"))
ABORT_PERCENT = int(env("ABORT_PERCENT", "30"))
TAIL_SECONDS = float(env("TAIL_SECONDS", "5"))
MAX_SECONDS = float(env("MAX_SECONDS", "60"))
READY_FILE = env("READY_FILE", "/tmp/sending")


class Traffic:
    """CONNECTIONS keep-alive clients sending RATE requests/s in all, recording
    (time, status, x-served-by) from `counting` on; status 0 is a request with no response."""

    def __init__(self, proxy: str, rate: float, connections: int) -> None:
        host, _, port = proxy.rpartition(":")
        self.host, self.port = host, int(port)
        self.rate, self.connections = rate, connections
        self.records: list[tuple[float, int, str]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.counting = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(connections)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def one(self, conn: "http.client.HTTPConnection | None"):
        try:
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            conn.request("GET", "/")
            r = conn.getresponse()
            r.read()
            if r.will_close:
                conn.close()
                return None, r.status, r.getheader("x-served-by") or "-"
            return conn, r.status, r.getheader("x-served-by") or "-"
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            return None, 0, "-"

    def run(self) -> None:
        period = self.connections / self.rate
        next_at = time.monotonic()
        conn = None
        while not self.stop.is_set():
            conn, status, served_by = self.one(conn)
            now = time.monotonic()
            if self.counting.is_set():
                with self.lock:
                    self.records.append((now, status, served_by))
            next_at = max(next_at + period, now - period)
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()

    def since(self, t: float, until: float = float("inf")) -> list[tuple[float, int, str]]:
        with self.lock:
            return [r for r in self.records if t <= r[0] < until]


def admin(addr: str, path: str, method: str = "GET", **params) -> str:
    url = f"http://{addr}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, method=method)
    with urllib.request.urlopen(req, timeout=2) as r:
        return r.read().decode()


def canary_stats(proxy_admin: str) -> dict:
    raw = json.loads(admin(proxy_admin, "/stats", format="json",
                           filter="^" + STAT_PREFIX.replace(".", r"\.")))
    return {s["name"][len(STAT_PREFIX):]: s["value"]
            for s in raw.get("stats", []) if "value" in s and s["name"].startswith(STAT_PREFIX)}


def proxy_ready(proxy_admin: str) -> bool:
    try:
        return admin(proxy_admin, "/ready").strip() == "LIVE"
    except OSError:
        return False


def main() -> int:
    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)  # PID 1 in a container: no default handler

    if not (len(PROXIES) == len(PROXY_ADMINS) == len(SHARES)):
        print("traffic: PROXY, PROXY_ADMIN and SHARES must list as many entries", flush=True)
        return 2
    fleet = len(PROXIES) > 1
    shares = [x / sum(SHARES) for x in SHARES]
    traffics = [Traffic(p, RATE * x, max(1, round(CONNECTIONS * x))) for p, x in zip(PROXIES, shares)]
    for traffic in traffics:
        traffic.start()
    try:
        os.remove(READY_FILE)
    except FileNotFoundError:
        pass
    with open(READY_FILE, "w") as f:
        f.write("sending\n")
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"traffic: ~{RATE:g} req/s to {', '.join(f'{p} ({x:.0%})' for p, x in zip(PROXIES, shares))} "
        f"over {CONNECTIONS} connections; the canary will fail {ABORT_PERCENT}% of its requests "
        f"once its weight reaches {FAULT_AT_WEIGHT}")
    say(f"traffic: waiting for the proxies (admin {', '.join(PROXY_ADMINS)} /ready)")
    deadline = time.monotonic() + MAX_SECONDS
    while not all(proxy_ready(a) for a in PROXY_ADMINS):
        if time.monotonic() > deadline:
            say(f"traffic: !! a proxy was not ready after {MAX_SECONDS:g}s "
                f"(see `docker compose logs`)")
            return 1
        time.sleep(0.05)
    t0 = time.monotonic()
    for traffic in traffics:
        traffic.counting.set()
    ts = lambda t: f"{t - t0:6.1f}s"  # noqa: E731

    for a in PROXY_ADMINS:
        first = canary_stats(a)
        if first.get("phase") in (2, 3, 4):
            say(f"traffic: !! the analysis at {a} is already over (phase "
                f"{PHASES[first['phase']]}): `docker compose down -v`, then `docker compose up`")
            return 1

    def since(t: float, until: float = float("inf")) -> list[tuple[float, int, str]]:
        return sorted((r for tr in traffics for r in tr.since(t, until)), key=lambda r: r[0])

    if fleet:
        say(f"{'time':>7}  " + "  ".join(f"{'replica ' + str(i + 1):<18}" for i in range(len(PROXIES)))
            + f"  {'req/s':>5}  {'stable':>6}  {'canary':>6}  {'canary 5xx':>10}  {'other err':>9}")
    else:
        say(f"{'time':>7}  {'weight':>6}  {'phase':<12} {'failed':>6}  {'req/s':>5}  "
            f"{'stable':>6}  {'canary':>6}  {'canary 5xx':>10}  {'other err':>9}")
    fault_at = weight0_at = None
    next_row = t0 + 1.0
    ok = False
    try:
        while True:
            now = time.monotonic()
            all_stats = [canary_stats(a) for a in PROXY_ADMINS]
            weights = [st.get("weight") for st in all_stats]
            phases = [st.get("phase", 0) for st in all_stats]
            if fault_at is None:
                odd = [ph for ph in phases if ph not in (PROGRESSING, 0)]
                if odd:
                    say(f"{ts(now)}  !! phase {PHASES.get(odd[0])} before any fault was injected "
                        f"(see the proxy's log for the reason)")
                    break
                top = max((w for w in weights if w is not None), default=None)
                if top is not None and top >= FAULT_AT_WEIGHT:
                    admin(BACKENDS_ADMIN, "/runtime_modify", method="POST",
                          **{"fault.http.abort.abort_percent": str(ABORT_PERCENT)})
                    fault_at = time.monotonic()
                    say(f"{ts(fault_at)}  >> the canary now answers 500 to {ABORT_PERCENT}% of "
                        f"its requests (weight {top})")
            elif weight0_at is None and all(w == 0 for w in weights) and all(ph == FAILED for ph in phases):
                weight0_at = now
                where = " on every replica" if fleet else ""
                say(f"{ts(now)}  >> weight 0, phase Failed{where}: canary-guard rolled the canary back")
            if now >= next_row:
                recent = since(now - 1.0, now)
                count = lambda pred: sum(1 for r in recent if pred(r))  # noqa: E731
                if fleet:
                    cols = "  ".join(f"{'-' if w is None else w:>3} {PHASES.get(ph, ph):<14}"
                                     for w, ph in zip(weights, phases))
                    head = f"{ts(now)}  {cols}"
                else:
                    head = (f"{ts(now)}  {'-' if weights[0] is None else weights[0]:>6}  "
                            f"{PHASES.get(phases[0], phases[0]):<12} "
                            f"{all_stats[0].get('failed_checks', 0):>6}")
                say(f"{head}  {len(recent):>5}  {count(lambda r: r[2] == 'stable'):>6}  "
                    f"{count(lambda r: r[2] == 'canary'):>6}  "
                    f"{count(lambda r: r[2] == 'canary' and r[1] >= 500):>10}  "
                    f"{count(lambda r: r[2] != 'canary' and (r[1] >= 500 or r[1] == 0)):>9}")
                next_row += 1.0
                if weight0_at is not None and now >= weight0_at + TAIL_SECONDS:
                    ok = True
                    break
            if now >= t0 + MAX_SECONDS:
                say(f"{ts(now)}  !! no rollback within {MAX_SECONDS:g}s")
                break
            time.sleep(0.1)
    finally:
        for traffic in traffics:
            traffic.stop.set()
        for traffic in traffics:
            for t in traffic.threads:
                t.join(6)

    records = since(t0)
    by: dict[str, int] = {}
    for _, status, served_by in records:
        key = f"{served_by}/{status}"
        by[key] = by.get(key, 0) + 1
    say("summary")
    say(f"  requests: {len(records)}; by server/status: "
        + ", ".join(f"{k} {v}" for k, v in sorted(by.items())))
    if fault_at is not None and weight0_at is not None:
        bad = [r[0] for r in records if r[0] >= fault_at and r[2] == "canary" and r[1] >= 500]
        late = [r for r in records if r[2] == "canary" and r[0] > weight0_at + 1.0]
        if bad:
            say(f"  failing canary responses: {len(bad)}; from the first one to weight 0: "
                f"{weight0_at - min(bad):.1f}s")
        say(f"  canary responses later than 1s after weight 0: {len(late)}")
        ok = ok and not late
    all_stats = [canary_stats(a) for a in PROXY_ADMINS]
    for a, stats in zip(PROXY_ADMINS, all_stats):
        where = f" at {a}" if fleet else ""
        say(f"  module stats{where}: phase {PHASES.get(stats.get('phase'))}, weight "
            f"{stats.get('weight')}, failed_checks {stats.get('failed_checks')}, rollbacks "
            f"{stats.get('rollbacks')}, checks {stats.get('checks')}")
        ok = ok and stats.get("phase") == FAILED and stats.get("weight") == 0
    if fleet:
        judges = sum(1 for st in all_stats if st.get("fleet.judge") == 1)
        rollbacks = sum(st.get("rollbacks", 0) for st in all_stats)
        say(f"  fleet: {judges} judge, {rollbacks} rollback in all")
        ok = ok and judges == 1 and rollbacks == 1
    say("  result: " + ("rollback as expected" if ok else "NOT as expected"))
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
