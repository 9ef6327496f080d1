"""The control endpoint in a test proxy: a second listener on loopback whose HTTP filter is
canary-guard in the `control` role, in the same VM (vm_id) as the routing filter, so it reads
and writes the same shared data."""

from __future__ import annotations

import copy
import json
from typing import Optional

import requests

from tests.integration import harness


def add_control_listener(proxy: harness.Envoy, control_cfg: Optional[dict] = None) -> int:
    """Adds the control listener before the proxy starts; returns its port."""
    cfg = proxy.config
    ingress = harness._listener(cfg, "ingress")
    listener = copy.deepcopy(ingress)
    port = harness.free_port()
    listener["name"] = "canary-guard-control"
    listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": port}}
    hcm = harness._hcm(listener)
    hcm["stat_prefix"] = "control"
    hcm["http_filters"] = [f for f in hcm["http_filters"]
                           if f["name"] in ("envoy.filters.http.wasm", "envoy.filters.http.router")]
    wasm = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm")["typed_config"]
    wasm["config"]["name"] = "canary-guard-control"
    wasm["config"]["configuration"]["value"] = json.dumps(control_cfg or {"role": "control"})
    # The endpoint reads a request's body before it answers: Envoy must deliver the body to a
    # filter that stopped at the headers (without this, Envoy stops body iteration too).
    wasm["config"]["allow_on_headers_stop_iteration"] = True
    cfg["static_resources"]["listeners"].append(listener)
    proxy.control_port = port
    return port


def control_url(proxy) -> str:
    return f"http://127.0.0.1:{proxy.control_port}"


def get(proxy, path: str = "/canaries", token: Optional[str] = None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return requests.get(control_url(proxy) + path, headers=headers, timeout=5)


def post(proxy, path: str, token: Optional[str] = None, body: Optional[bytes] = None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return requests.post(control_url(proxy) + path, headers=headers, data=body, timeout=5)
