"""`make bench-fleet`: fleet mode's load on etcd, by simulation against a real etcd.

N simulated replicas do what canary-guard's analyser does in fleet mode with a 1 s analysis
interval (src/fleet/mod.rs): grant a lease (TTL 5 s) and renew it every third of it, put a
replica record of the real size on it every publication period (500 ms), and read the state
and the judge key in one txn every poll period (500 ms). One judge reads every record by
prefix once per interval. Reported per N: etcd writes/s and bytes/s (offered and achieved),
the judge's read time per check (HTTP, JSON, base64: what its Envoy and the module do; the
sum itself is a few microseconds per record in the module), and whether a check completes
within one interval.

The client is asyncio over persistent HTTP/1.1 connections (one Python process): at large N
it, not etcd, may be the bottleneck; the report says how much of the offered load went out."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.fleet import Etcd  # noqa: E402

PUBLISH_S = 0.5
POLL_S = 0.5
TTL_S = 5
INTERVAL_S = 1.0


class Conn:
    """One keep-alive HTTP/1.1 connection to etcd's gateway."""

    def __init__(self, port: int):
        self.port = port
        self.reader = self.writer = None
        self.lock = asyncio.Lock()

    async def post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        async with self.lock:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.write(f"POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n"
                              f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
            await self.writer.drain()
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            chunked = False
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
                if k.strip().lower() == b"transfer-encoding" and b"chunked" in v.lower():
                    chunked = True
            if chunked:
                payload = b""
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")
                        break
                    payload += await self.reader.readexactly(size)
                    await self.reader.readexactly(2)
            else:
                payload = await self.reader.readexactly(length)
            return json.loads(payload)


def b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


async def replica(i: int, conns: list[Conn], record: bytes, stats: dict, stop: asyncio.Event):
    c = conns[i % len(conns)]
    lease = (await c.post("/v3/lease/grant", {"TTL": str(TTL_S)}))["ID"]
    key = b64(f"/canary-guard/web/replicas/v2/sim-{i:05d}".encode())
    state, judge = b64(b"/canary-guard/web/state/v2"), b64(b"/canary-guard/web/judge/v2")
    value = b64(record)
    next_pub = next_poll = next_renew = time.monotonic() + (i % 50) / 100
    while not stop.is_set():
        now = time.monotonic()
        if now >= next_pub:
            next_pub += PUBLISH_S
            await c.post("/v3/kv/put", {"key": key, "value": value, "lease": lease})
            stats["writes"] += 1
            stats["bytes"] += len(record) + len(key)
        if now >= next_poll:
            next_poll += POLL_S
            await c.post("/v3/kv/txn", {"success": [{"request_range": {"key": state}},
                                                    {"request_range": {"key": judge}}]})
            stats["reads"] += 1
        if now >= next_renew:
            next_renew += TTL_S / 3
            await c.post("/v3/lease/keepalive", {"ID": lease})
            stats["renewals"] += 1
        await asyncio.sleep(max(0.0, min(next_pub, next_poll, next_renew) - time.monotonic()))


async def judge(port: int, n: int, times: list[float], counts: list[int], stop: asyncio.Event):
    c = Conn(port)
    prefix = b"/canary-guard/web/replicas/v2/"
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    while not stop.is_set():
        t0 = time.monotonic()
        r = await c.post("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
        kvs = r.get("kvs", [])
        for kv in kvs:
            base64.b64decode(kv["value"])
        times.append(time.monotonic() - t0)
        counts.append(len(kvs))
        await asyncio.sleep(max(0.0, INTERVAL_S - (time.monotonic() - t0)))


async def run(port: int, n: int, seconds: float, record_bytes: int) -> dict:
    record = os.urandom(record_bytes)
    conns = [Conn(port) for _ in range(min(64, n))]
    stats = {"writes": 0, "bytes": 0, "reads": 0, "renewals": 0}
    stop = asyncio.Event()
    tasks = [asyncio.create_task(replica(i, conns, record, stats, stop)) for i in range(n)]
    await asyncio.sleep(TTL_S / 3 + 1)  # everyone has a lease and a record
    for k in stats:
        stats[k] = 0
    times: list[float] = []
    counts: list[int] = []
    jt = asyncio.create_task(judge(port, n, times, counts, stop))
    t0 = time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    stop.set()
    await asyncio.gather(*tasks, jt, return_exceptions=True)
    offered_writes = n / PUBLISH_S
    return {
        "replicas": n,
        "record_bytes": record_bytes,
        "writes_per_s": round(stats["writes"] / elapsed),
        "offered_writes_per_s": round(offered_writes),
        "write_bytes_per_s": round(stats["bytes"] / elapsed),
        "reads_per_s": round(stats["reads"] / elapsed),
        "renewals_per_s": round(stats["renewals"] / elapsed, 1),
        "judge_read_ms_median": round(statistics.median(times) * 1000, 1) if times else None,
        "judge_read_ms_max": round(max(times) * 1000, 1) if times else None,
        "records_seen_min": min(counts) if counts else 0,
        "check_within_interval": bool(times) and max(times) < INTERVAL_S,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", default="10,100,1000")
    ap.add_argument("--seconds", type=float, default=10.0)
    # The largest replica record seen in the fleet integration tests (one 4 s window, 80
    # req/s: 1,690 bytes; quieter replicas 420-980): the record grows with the number of
    # distinct latency buckets, not with the request count.
    ap.add_argument("--record-bytes", type=int, default=1700)
    ap.add_argument("--out", default="out/bench-fleet.json")
    args = ap.parse_args()
    results = []
    for n in [int(x) for x in args.replicas.split(",")]:
        with tempfile.TemporaryDirectory() as d:
            etcd = Etcd(d, name=f"etcd-{n}").start()
            try:
                r = asyncio.run(run(etcd.port, n, args.seconds, args.record_bytes))
            finally:
                etcd.stop()
        print(json.dumps(r))
        results.append(r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
