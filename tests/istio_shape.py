"""What istiod generates from a WasmPlugin, shared by the manifest tests, the Istio-shaped Envoy
tests and scripts/istio_envoy_check.py. Checked against Istio 1.29 (tag 1.29.6):
pilot/pkg/model/extensions.go (the Wasm PluginConfig), pilot/pkg/networking/core/extension/
wasmplugin.go (the filter delivered by ECDS), pilot/pkg/networking/core/listener_builder.go (its
place in the chain), pkg/util/protomarshal (the pluginConfig's JSON)."""

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


def istiod_plugin_config_json(plugin_config: Any) -> str:
    """The pluginConfig as istiod writes it into the StringValue: protomarshal.ToJSON is
    golang/protobuf's legacy jsonpb, which writes a Struct's keys sorted, compact, with Go's
    HTML escaping of <, > and & (and U+2028/U+2029) in strings."""
    text = json.dumps(istio_struct_json(plugin_config), separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False)
    for raw, escaped in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(raw, escaped)
    return text


# The ECDS resource name istiod gives a WasmPlugin's filter (model.WasmPluginResourceNamePrefix).
WASMPLUGIN_RESOURCE_PREFIX = "extensions.istio.io/wasmplugin/"
WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"


def resource_name(plugin: dict) -> str:
    meta = plugin["metadata"]
    return f"{WASMPLUGIN_RESOURCE_PREFIX}{meta.get('namespace', 'default')}.{meta['name']}"


def istio_ecds_filter(plugin: dict, config_source: dict) -> dict:
    """The HTTP filter istiod puts in the listener for a WasmPlugin (wasmplugin.go
    toEnvoyHTTPFilter): only a name and a config_discovery with the Wasm and RBAC type URLs,
    no default_config, initial_fetch_timeout 0. istiod's source is ADS; `config_source` is the
    test's stand-in (a file) with the same initial_fetch_timeout."""
    return {"name": resource_name(plugin),
            "config_discovery": {"config_source": {**config_source, "initial_fetch_timeout": "0s"},
                                 "type_urls": [WASM_TYPE, RBAC_TYPE]}}


def ecds_resource(plugin: dict, wasm: Union[str, Path], plugin_config: Any = None,
                  configuration: Optional[str] = None) -> dict:
    """The TypedExtensionConfig istiod sends for a WasmPlugin by ECDS (wasmplugin.go
    InsertedExtensionConfigurations). `configuration`: the StringValue verbatim instead of
    `plugin_config`; an empty pluginConfig gets no configuration, as istiod sends it."""
    typed = istio_wasm_filter(plugin, wasm, plugin_config)["typed_config"]
    if configuration is not None:
        typed["config"]["configuration"]["value"] = configuration
    elif not (plugin["spec"].get("pluginConfig") if plugin_config is None else plugin_config):
        typed["config"].pop("configuration")
    return {"name": resource_name(plugin), "typed_config": typed}


def istio_http_filters(wasm_filter: dict, router: dict) -> list[dict]:
    """An HTTP filter chain ordered as listener_builder.go orders Istio's (buildHTTPConnectionManager):
    metadata exchange, authn and authz filters, then the WasmPlugins of phase AUTHN/AUTHZ/STATS,
    then UNSPECIFIED_PHASE ones (canary-guard), then grpc_stats, fault, cors, the telemetry
    (istio.stats) filters and the router. Upstream Envoy has no istio.metadata_exchange or
    istio.stats, so they are left out; the authz place is held by an RBAC filter that denies
    requests carrying `x-authz-deny`, so a test can show that rejected requests never reach
    canary-guard."""
    authz = {"name": "envoy.filters.http.rbac", "typed_config": {
        "@type": RBAC_TYPE,
        "rules": {"action": "DENY", "policies": {"deny-marked": {
            "permissions": [{"header": {"name": "x-authz-deny", "present_match": True}}],
            "principals": [{"any": True}]}}}}}
    grpc_stats = {"name": "envoy.filters.http.grpc_stats", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
        "emit_filter_state": True, "stats_for_all_methods": False}}
    fault = {"name": "envoy.filters.http.fault", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}}
    cors = {"name": "envoy.filters.http.cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}}
    return [authz, wasm_filter, grpc_stats, fault, cors, router]


def istio_wasm_filter(plugin: dict, wasm: Union[str, Path], plugin_config: Optional[dict] = None) -> dict:
    """The Wasm filter configuration istiod builds for a WasmPlugin (extensions.go
    buildPluginConfig), with the module already fetched to a local file by istio-agent: name
    <ns>.<name>, root_id = pluginName, the pluginConfig as a JSON StringValue, environment
    variables, failure_policy (proxies from 1.25 on; older ones got fail_open), and no vm_id.
    (istio-agent strips the ISTIO_META_* variables when it fetches a remote module.)"""
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
                                  "value": istiod_plugin_config_json(pc)},
                "failure_policy": {"FAIL_OPEN": "FAIL_OPEN", "FAIL_RELOAD": "FAIL_RELOAD"}.get(
                    spec.get("failStrategy", "FAIL_CLOSE"), "FAIL_CLOSED"),
            },
        },
    }


# The stats matcher of every Istio proxy's bootstrap, before any proxyStatsMatcher: the required
# prefixes of pkg/bootstrap/config.go (requiredEnvoyStatsMatcherInclusionPrefixes) and the
# patterns tools/packaging/common/envoy_bootstrap.json adds around them.
ISTIO_BOOTSTRAP_INCLUSION_PREFIXES = ["reporter=", "cluster_manager", "listener_manager", "server",
                                      "cluster.xds-grpc", "wasm", "component", "istio"]


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
