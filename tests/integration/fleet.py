"""Fleet-mode driver: a real etcd (Debian's etcd-server) on free ports with a temporary data
dir, and canary-guard proxies (envoy/envoy.yaml) that reach it through an Envoy cluster.

etcd is `$ETCD_BIN` or `etcd` on the PATH; without it the fleet tests skip, and fail when CI
is set (harness._in_ci)."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional, Union

import pytest
import requests

from tests.integration import harness

ETCD_CLUSTER = "etcd"


def etcd_binary() -> str:
    import os
    path = os.environ.get("ETCD_BIN") or shutil.which("etcd")
    if not path:
        if harness._in_ci():
            pytest.fail("etcd not found (ETCD_BIN or PATH): CI must run the fleet tests")
        pytest.skip("etcd not found (install etcd-server or set ETCD_BIN)")
    return path


class Etcd:
    """One etcd member on loopback; stop()/start() keep the data dir (a restart)."""

    def __init__(self, workdir: Union[str, Path], name: str = "etcd", tls: "Optional[Certs]" = None):
        self.bin = etcd_binary()
        self.tls = tls
        self.name = name
        self.dir = Path(workdir) / f"{name}-data"
        self.log_path = Path(workdir) / f"{name}.log"
        self.port = harness.free_port()
        self.peer = harness.free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def _requests_kw(self) -> dict:
        if not self.tls:
            return {}
        return {"verify": str(self.tls.ca), "cert": (str(self.tls.client_cert), str(self.tls.client_key))}

    def start(self, timeout: float = 20.0) -> "Etcd":
        log = open(self.log_path, "ab")
        peer = f"http://127.0.0.1:{self.peer}"
        self.proc = subprocess.Popen(
            [self.bin, "--name", "n1", "--data-dir", str(self.dir),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"n1={peer}",
             *([] if not self.tls else [
                 "--cert-file", str(self.tls.server_cert), "--key-file", str(self.tls.server_key),
                 "--trusted-ca-file", str(self.tls.ca), "--client-cert-auth"])],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.url}/health", timeout=1,
                                **self._requests_kw()).json().get("health") == "true":
                    return self
            except (requests.RequestException, ValueError):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"etcd did not become healthy:\n{self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        harness.stop_process(self.proc)

    # -- the v3 gateway, for tests to look and tamper ------------------------
    def call(self, path: str, body: dict) -> dict:
        r = requests.post(f"{self.url}{path}", json=body, timeout=5, **self._requests_kw())
        r.raise_for_status()
        return r.json()

    def get(self, key: str) -> Optional[bytes]:
        kvs = self.call("/v3/kv/range", {"key": b64(key)}).get("kvs", [])
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    def put(self, key: str, value: bytes) -> None:
        self.call("/v3/kv/put", {"key": b64(key), "value": base64.b64encode(value).decode()})

    def keys(self, prefix: str) -> list[str]:
        end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
        kvs = self.call("/v3/kv/range", {"key": b64(prefix), "range_end": b64(end),
                                         "keys_only": True}).get("kvs", [])
        return [base64.b64decode(kv["key"]).decode() for kv in kvs]


class Partition:
    """A TCP forwarder in front of etcd for one replica: cut() drops every connection and
    refuses new ones (that replica's network partition), heal() lets them through again."""

    def __init__(self, target_port: int):
        import socket
        import threading
        self.target = target_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.open = True
        self.conns: list = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=2)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        with self.lock:
            for c in self.conns:
                try:
                    c.close()
                except OSError:
                    pass
            self.conns.clear()

    def heal(self) -> None:
        self.open = True


class Certs:
    """A test CA, a server certificate for etcd (localhost, 127.0.0.1) and a client
    certificate for the proxies, made with openssl at test time."""

    def __init__(self, workdir: Union[str, Path]):
        d = Path(workdir) / "certs"
        d.mkdir(parents=True, exist_ok=True)
        self.ca, ca_key = d / "ca.pem", d / "ca-key.pem"
        self.server_cert, self.server_key = d / "server.pem", d / "server-key.pem"
        self.client_cert, self.client_key = d / "client.pem", d / "client-key.pem"
        run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=canary-guard test CA",
            "-keyout", str(ca_key), "-out", str(self.ca))
        # etcd's HTTP gateway dials etcd's own gRPC port with the server certificate, as a
        # client: with --client-cert-auth that certificate needs clientAuth too.
        for cert, key, cn, ext in (
                (self.server_cert, self.server_key, "localhost",
                 "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                (self.client_cert, self.client_key, "canary-guard", "extendedKeyUsage=clientAuth")):
            csr, extfile = d / f"{cn}.csr", d / f"{cn}.ext"
            extfile.write_text(ext.replace("\\n", "\n") + "\n")
            run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", str(key), "-out", str(csr))
            run("x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(ca_key), "-CAcreateserial",
                "-days", "2", "-extfile", str(extfile), "-out", str(cert))

    def envoy_transport_socket(self) -> dict:
        """The etcd cluster's transport_socket: TLS with the client certificate, etcd's
        certificate checked against the test CA (SAN localhost)."""
        return {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "sni": "localhost",
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(self.client_cert)},
                                      "private_key": {"filename": str(self.client_key)}}],
                "validation_context": {"trusted_ca": {"filename": str(self.ca)},
                                       "match_typed_subject_alt_names": [
                                           {"san_type": "DNS", "matcher": {"exact": "localhost"}}]}}}}


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def fleet_plugin_config(base: dict, **fleet: Any) -> dict:
    cfg = json.loads(json.dumps(base))
    cfg["fleet"] = {"etcdCluster": ETCD_CLUSTER, "leaseTTL": "3s", "maxStaleness": "2s",
                    "timeout": "500ms", **fleet}
    return cfg


def add_etcd_cluster(proxy: harness.Envoy, etcd_port: int, node_id: str,
                     cluster: str = ETCD_CLUSTER) -> None:
    """Adds the etcd cluster (HTTP/1.1 to etcd's client port) and a node id to a proxy's
    Envoy configuration before it starts."""
    cfg = proxy.config
    cfg["node"] = {"id": node_id, "cluster": "canary-guard-tests"}
    cfg["static_resources"]["clusters"].append({
        "name": cluster,
        "type": "STATIC",
        "connect_timeout": "0.25s",
        "load_assignment": {"cluster_name": cluster, "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                         "port_value": etcd_port}}}}]}]},
    })


def fleet_proxy(launcher, backends: harness.Backends, etcd: "Etcd | Partition", plugin_cfg: dict,
                name: str, mode: str = "singleton", **kw) -> harness.Proxy:
    """A canary-guard proxy in fleet mode, started (tracked by the launcher for teardown)."""
    p = harness.Proxy(launcher.tmp_path, backends, plugin_cfg, mode=mode, name=name, **kw)
    add_etcd_cluster(p, etcd.port, name)
    tls = getattr(etcd, "tls", None)
    if tls:
        p.config["static_resources"]["clusters"][-1]["transport_socket"] = tls.envoy_transport_socket()
    launcher._track(p)
    return p.start()


def restart(proxy: harness.Proxy) -> harness.Proxy:
    """The same proxy (same config, ports and log file appended) started again."""
    proxy.stop()
    proxy.proc = None
    proxy._http = requests.Session()
    return proxy.start()


# -- canary-guard's record encoding, for tests that forge records (src/checksum.rs, state.rs) --
_M64 = (1 << 64) - 1
_K = 0x9E3779B97F4A7C15


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _M64


def _step(h: int, word: int) -> int:
    x = ((h ^ word) * _K) & _M64
    return x ^ (x >> 32)


def _avalanche(h: int) -> int:
    h ^= h >> 33
    h = (h * 0xFF51AFD7ED558CCD) & _M64
    h ^= h >> 33
    h = (h * 0xC4CEB9FE1A85EC53) & _M64
    return h ^ (h >> 33)


def checksum(data: bytes) -> int:
    """src/checksum.rs in Python (a forger can compute it too: it guards against corruption)."""
    a, b, c, d = _K, _rotl(_K, 16), _rotl(_K, 32), _rotl(_K, 48)
    n_blocks = len(data) // 32
    word = lambda off: int.from_bytes(data[off:off + 8], "little")
    for i in range(n_blocks):
        o = i * 32
        a, b, c, d = _step(a, word(o)), _step(b, word(o + 8)), _step(c, word(o + 16)), _step(d, word(o + 24))
    m = _K | 2
    h = ((len(data) * _K) & _M64) ^ ((a * m) & _M64) ^ _rotl((b * m) & _M64, 16) \
        ^ _rotl((c * m) & _M64, 32) ^ _rotl((d * m) & _M64, 48)
    rest = data[n_blocks * 32:]
    while len(rest) >= 8:
        h = _step(h, int.from_bytes(rest[:8], "little"))
        rest = rest[8:]
    if rest:
        h = _step(h, int.from_bytes(rest, "little"))
    return _avalanche(h)


def with_checksum(body: bytes) -> bytes:
    return body + checksum(body).to_bytes(8, "little")


def state_record(revision: str, phase: int, weight: int, started_ms: int, last_check_ms: int,
                 failed_checks: int = 0, iterations: int = 0) -> bytes:
    """A CGst v2 state record (src/state.rs), checksum included."""
    rev = revision.encode()
    body = (b"CGst" + bytes([2, len(rev)]) + rev + bytes([phase, weight])
            + failed_checks.to_bytes(4, "little") + iterations.to_bytes(4, "little")
            + started_ms.to_bytes(8, "little") + last_check_ms.to_bytes(8, "little"))
    return with_checksum(body)


def parse_state(data: bytes) -> dict:
    n = data[5]
    o = 6 + n
    return {"revision": data[6:o].decode(), "phase": data[o], "weight": data[o + 1],
            "failed_checks": int.from_bytes(data[o + 2:o + 6], "little"),
            "started_ms": int.from_bytes(data[o + 10:o + 18], "little"),
            "last_check_ms": int.from_bytes(data[o + 18:o + 26], "little"),
            "valid": data[-8:] == checksum(data[:-8]).to_bytes(8, "little")}
