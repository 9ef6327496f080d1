"""What istiod generates from a WasmPlugin (pilot/pkg/model/extensions.go), shared by the
manifest tests, the Istio-shaped Envoy test and scripts/istio_envoy_check.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Union

import yaml


def istio_struct_json(value: Any) -> Any:
    """What canary-guard receives from Istio: pluginConfig goes through a protobuf Struct
    (every number a float64) and protojson (integral floats written without a fraction)."""
    if isinstance(value, dict):
        return {k: istio_struct_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [istio_struct_json(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        f = float(value)
        return int(f) if f.is_integer() and abs(f) < 1e21 else f
    return value


def istio_wasm_filter(plugin: dict, wasm: Union[str, Path], plugin_config: Optional[dict] = None) -> dict:
    """The HTTP filter istiod builds for a WasmPlugin, with the module already fetched to a
    local file by istio-agent: name <ns>.<name>, root_id = pluginName, the pluginConfig as a
    JSON StringValue, environment variables, and no vm_id."""
    spec, meta = plugin["spec"], plugin["metadata"]
    name = f"{meta.get('namespace', 'default')}.{meta['name']}"
    pc = spec.get("pluginConfig") if plugin_config is None else plugin_config
    env = {"ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION": "1"}
    if "imagePullPolicy" in spec:
        env["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    return {
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": spec.get("pluginName", ""),
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": str(wasm)}},
                    "environment_variables": {"key_values": env},
                },
                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                  "value": json.dumps(istio_struct_json(pc), separators=(",", ":"))},
                "failure_policy": {"FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}.get(
                    spec.get("failStrategy", "FAIL_CLOSE"), "FAIL_CLOSED"),
            },
        },
    }


def stats_matchers(paths: Iterable[Path], load_documents: Callable) -> dict[str, dict]:
    """Every proxyStatsMatcher in the given files (a pod's proxy.istio.io/config annotation or
    meshConfig.defaultConfig), keyed by `<file>#<document> annotation|meshConfig`. An
    annotation that configures anything besides proxyStatsMatcher is refused."""
    out = {}
    for path in paths:
        for i, d in load_documents(path):
            annotations = d.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations", {})
            if "proxy.istio.io/config" in annotations:
                proxy_config = yaml.safe_load(annotations["proxy.istio.io/config"])
                if set(proxy_config) != {"proxyStatsMatcher"}:
                    raise ValueError(f"{Path(path).name}: {sorted(proxy_config)}")
                out[f"{Path(path).name}#{i} annotation"] = proxy_config["proxyStatsMatcher"]
            default_config = d.get("spec", {}).get("meshConfig", {}).get("defaultConfig", {})
            if "proxyStatsMatcher" in default_config:
                out[f"{Path(path).name}#{i} meshConfig"] = default_config["proxyStatsMatcher"]
    return out
