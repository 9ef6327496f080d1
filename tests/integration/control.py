"""The control endpoint in a test proxy: envoy/envoy.yaml ships its listener (loopback, the
same VM as the routing filter); harness.Proxy gives it a free port (`proxy.control_port`) and,
with `control_config=`, another control configuration (a token)."""

from __future__ import annotations

from typing import Optional

import requests


def control_url(proxy) -> str:
    return f"http://127.0.0.1:{proxy.control_port}"


def get(proxy, path: str = "/canaries", token: Optional[str] = None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return requests.get(control_url(proxy) + path, headers=headers, timeout=5)


def post(proxy, path: str, token: Optional[str] = None, body: Optional[bytes] = None) -> requests.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return requests.post(control_url(proxy) + path, headers=headers, data=body, timeout=5)
