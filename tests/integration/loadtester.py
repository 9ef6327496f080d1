"""A stand-in for Flagger's load tester (fluxcd/flagger `pkg/loadtester/server.go`) for the
webhook tests: its gate API, keyed by `<name>.<namespace>` from the webhook payload as Flagger
keys it, its task endpoint (`/`, answered 200), and an event sink (`/events`) that keeps every
event webhook payload. A user's real `flagger-loadtester` answers the same paths the same way:

  /gate/approve   200 always            /gate/halt      403 always
  /gate/check     200 if open, else 403 /rollback/check 200 if open, else 403
  /gate/open, /gate/close, /rollback/open, /rollback/close: 202 (payload: name, namespace)

Tests can also make a path answer another status or answer late (`behave`). Standard library
only; `python -m tests.integration.loadtester --port N` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional

import requests

from tests.integration import harness


class LoadTester:
    def __init__(self, port: Optional[int] = None):
        self.port = port or harness.free_port()
        self.lock = threading.Lock()
        self.gates: set[str] = set()
        self.calls: list[tuple[float, str, dict]] = []
        self.events: list[dict] = []
        # path -> (status, delay seconds)
        self.behaviour: dict[str, tuple[Optional[int], float]] = {}
        tester = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body = tester.handle(self.path, raw)
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.send_header("content-type", "text/plain")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/healthz":
                    self.send_response(200)
                    self.send_header("content-length", "2")
                    self.end_headers()
                    self.wfile.write(b"OK")
                else:
                    self.send_response(404)
                    self.send_header("content-length", "0")
                    self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "LoadTester":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- Flagger's API ---------------------------------------------------------------------
    def handle(self, path: str, raw: bytes) -> tuple[int, bytes]:
        try:
            payload = json.loads(raw or b"{}")
        except ValueError:
            return 400, b"bad payload"
        if not isinstance(payload, dict):
            return 400, b"bad payload"
        with self.lock:
            self.calls.append((time.monotonic(), path, payload))
            status, delay = self.behaviour.get(path, (None, 0.0))
        if delay:
            time.sleep(delay)
        if status is not None:
            return status, b"as told"
        if not payload.get("name") or not payload.get("namespace"):
            return 400, b"name and namespace are required"
        key = f"{payload['name']}.{payload['namespace']}"
        with self.lock:
            if path == "/gate/approve":
                return 200, b"Approved"
            if path == "/gate/halt":
                return 403, b"Forbidden"
            if path == "/gate/check":
                return (200, b"Approved") if key in self.gates else (403, b"Forbidden")
            if path == "/rollback/check":
                return (200, b"Approved") if f"rollback.{key}" in self.gates else (403, b"Forbidden")
            if path in ("/gate/open", "/gate/close", "/rollback/open", "/rollback/close"):
                name = key if path.startswith("/gate") else f"rollback.{key}"
                (self.gates.add if path.endswith("open") else self.gates.discard)(name)
                return 202, b"Accepted"
            if path == "/events":
                self.events.append(payload)
                return 202, b""
            if path == "/":
                return 200, b"{}"
        return 404, b"not found"

    # -- what tests (and operators) do -----------------------------------------------------
    def post(self, path: str, name: str = "web", namespace: str = "default") -> int:
        return requests.post(self.url + path, json={"name": name, "namespace": namespace},
                             timeout=5).status_code

    def behave(self, path: str, status: Optional[int] = None, delay: float = 0.0) -> None:
        with self.lock:
            self.behaviour[path] = (status, delay)

    def calls_to(self, path: str) -> list[tuple[float, dict]]:
        with self.lock:
            return [(t, p) for t, q, p in self.calls if q == path]

    def event_messages(self) -> list[str]:
        with self.lock:
            return [e.get("metadata", {}).get("eventMessage", "") for e in self.events]


def add_cluster(proxy: harness.Envoy, name: str, port: int) -> None:
    """A plain HTTP/1.1 cluster to 127.0.0.1:port, added before the proxy starts."""
    proxy.config["static_resources"]["clusters"].append({
        "name": name, "type": "STATIC", "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": port}}}}]}]},
    })


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Flagger load tester stand-in (gates, events)")
    ap.add_argument("--port", type=int, default=8080)
    lt = LoadTester(ap.parse_args().port).start()
    print(f"load tester on {lt.url}", flush=True)
    try:
        lt.thread.join()
    except KeyboardInterrupt:
        lt.stop()
