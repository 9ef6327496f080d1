"""Offline checks of the Istio manifests in istio/: no Envoy, no cluster.

1. Every YAML document in istio/*.yaml validates strictly against Istio's CRD bundle
   (tests/istio_validate.py: closed objects, enums, types, oneOf, CEL rules), and the
   validator provably rejects misspelt fields and bad values.
2. The manifests agree with each other and with canary-guard: the WasmPlugins carry the
   standalone configuration of envoy/envoy.yaml, the VirtualServices send only the
   filter's canary header value to the canary subset (everything else to stable), the
   DestinationRule has both subsets, every FAIL_OPEN plugin has its early header removal.
3. The stats settings in istio/stats/ (core Kubernetes objects and patches: no CRD in the
   bundle, so not CRD-validated) label canary-guard's stats by canary; Istio's own bootstrap
   stats matcher already keeps them.

scripts/istio_envoy_check.py complements this with a real Envoy (pluginConfig accepted by
the module as istiod delivers it, stats kept and tagged, the EnvoyFilter patch)."""

from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
from tests import istio_validate as iv  # strict YAML loading
from tests import istio_shape
from tests.istio_shape import istio_struct_json

ISTIO = REPO / "istio"
MANIFESTS = sorted(ISTIO.glob("*.yaml"))
SNIPPETS = sorted((ISTIO / "stats").glob("*.yaml"))
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"

# What Envoy calls canary-guard's stats: "wasmcustom." (Envoy's namespace for custom Wasm
# stats) + "canary_guard.<name>.<stat>" (src/host.rs).
STAT_NAMES = ["weight", "phase", "failed_checks", "canary_requests", "canary_5xx", "stable_requests",
              "stable_5xx", "promotions", "rollbacks", "checks"]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

def documents(paths=MANIFESTS) -> list[tuple[str, dict]]:
    """(id, document) for every document of `paths`; id is "<file>#<index> <kind>/<name>"."""
    out = []
    for path in paths:
        for i, doc in iv.load_documents(path):
            out.append((f"{path.name}#{i} {doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc))
    return out


def doc(file: str, kind: str, name: str | None = None) -> dict:
    found = [d for d in (d for _, d in documents([ISTIO / file]))
             if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{file}: expected one {kind} {name or ''}, found {len(found)}"
    return copy.deepcopy(found[0])


def all_of_kind(kind: str) -> list[dict]:
    return [copy.deepcopy(d) for _, d in documents() if d.get("kind") == kind]


def standalone_config() -> dict:
    """The canary configuration of the HTTP filter in envoy/envoy.yaml."""
    cfg = yaml.safe_load(ENVOY_YAML.read_text())
    for listener in cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        return json.loads(hf["typed_config"]["config"]["configuration"]["value"])
    raise AssertionError(f"no Wasm filter in {ENVOY_YAML}")


@pytest.fixture(scope="module")
def bundle() -> iv.CrdBundle:
    path = iv.find_crds()
    if path is None or not path.is_file():
        msg = ("Istio CRD bundle not found (set ISTIO_CRDS, or put crd-all.gen.yaml at one of "
               + ", ".join(str(p) for p in iv.CRD_CANDIDATES) + ")")
        if _in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return iv.CrdBundle(path)


# ----------------------------------------------------------------------------------------------
# 1. CRD validation
# ----------------------------------------------------------------------------------------------

def test_there_are_manifests():
    kinds = {d["kind"] for _, d in documents()}
    assert {"WasmPlugin", "VirtualService", "DestinationRule", "EnvoyFilter", "Gateway"} <= kinds, kinds


@pytest.mark.parametrize("name,manifest", documents(), ids=[i for i, _ in documents()])
def test_manifest_validates_against_the_crds(bundle, name, manifest):
    result = bundle.validate(manifest)
    assert result.errors == [], f"{name}:\n  " + "\n  ".join(result.errors)
    assert result.unevaluated == [], f"{name}: CEL rules not evaluated: {result.unevaluated}"


def test_every_cel_rule_of_the_bundle_is_evaluated(bundle):
    """So that no document can pass because a rule was skipped."""
    rules: set[str] = set()

    def walk(s: Any) -> None:
        if isinstance(s, dict):
            for r in s.get("x-kubernetes-validations") or []:
                rules.add(r["rule"])
            for k, v in s.items():
                if k != "description":
                    walk(v)
        elif isinstance(s, list):
            for x in s:
                walk(x)

    for v in bundle.versions.values():
        walk(v.schema)
    assert rules, "the bundle has CEL rules; none found means the walk is broken"
    assert sorted(r for r in rules if iv.CEL.program(r) is None) == []


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """Mutation: set a dotted path ("spec.http.0.route") to value."""
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        if isinstance(d, list):
            d[int(last)] = value
        else:
            d[last] = value
    return mutate


def _rename(path: str, new: str) -> Callable[[dict], None]:
    def mutate(d: dict) -> None:
        *parents, last = path.split(".")
        for p in parents:
            d = d[int(p)] if isinstance(d, list) else d[p]
        d[new] = d.pop(last)
    return mutate


NEGATIVE = [
    # (id, file, kind, mutation, expected fragment of an error)
    ("wasmplugin-pluginConfg", "wasmplugin-gateway.yaml", "WasmPlugin",
     _rename("spec.pluginConfig", "pluginConfg"), "spec.pluginConfg: unknown field 'pluginConfg' (did you mean 'pluginConfig'?)"),
    ("wasmplugin-failStrategy-FAIL_OPENED", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.failStrategy", "FAIL_OPENED"), "spec.failStrategy: string 'FAIL_OPENED' is not one of [FAIL_CLOSE, FAIL_OPEN, FAIL_RELOAD]"),
    ("wasmplugin-phase", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.phase", "BEFORE_ROUTER"), "spec.phase: string 'BEFORE_ROUTER' is not one of"),
    ("wasmplugin-imagePullPolicy-case", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.imagePullPolicy", "IfNotPreset"), "spec.imagePullPolicy: string 'IfNotPreset' is not one of"),
    ("wasmplugin-matchLabels-typo", "wasmplugin-gateway.yaml", "WasmPlugin",
     _rename("spec.selector.matchLabels", "matchLabel"), "spec.selector.matchLabel: unknown field"),
    ("wasmplugin-selector-and-targetRefs", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.targetRefs", [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "web"}]),
     "spec: only one of targetRefs or selector can be set"),
    ("wasmplugin-url-scheme", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.url", "ftp://ghcr.io/example/canary-guard:0.1.0"), "spec.url: url must have schema one of"),
    ("wasmplugin-priority-type", "wasmplugin-gateway.yaml", "WasmPlugin",
     _set("spec.priority", "high"), "spec.priority: must be an integer, got string 'high'"),
    ("wasmplugin-sidecar-mode", "wasmplugin-sidecar.yaml", "WasmPlugin",
     _set("spec.match.0.mode", "OUTBOUND"), "spec.match[0].mode: string 'OUTBOUND' is not one of"),
    ("wasmplugin-sidecar-port-range", "wasmplugin-sidecar.yaml", "WasmPlugin",
     _set("spec.match.0.ports.0.number", 70000), "spec.match[0].ports[0].number: 70000 is above the maximum 65535"),
    ("metadata-typo", "wasmplugin-gateway.yaml", "WasmPlugin",
     _rename("metadata", "metdata"), "metdata: unknown field 'metdata' (did you mean 'metadata'?)"),
    ("virtualservice-headers-typo", "virtualservice.yaml", "VirtualService",
     _rename("spec.http.0.match.0.headers", "header"), "spec.http[0].match[0].header: unknown field 'header' (did you mean 'headers'?)"),
    ("virtualservice-subset-typo", "virtualservice.yaml", "VirtualService",
     _rename("spec.http.0.route.0.destination.subset", "subet"), "spec.http[0].route[0].destination.subet: unknown field"),
    ("virtualservice-exactly", "virtualservice.yaml", "VirtualService",
     _set("spec.http.0.match.0.headers.x-canary-upstream", {"exactly": "web-canary"}), "unknown field 'exactly' (did you mean 'exact'?)"),
    ("virtualservice-two-string-matches", "virtualservice.yaml", "VirtualService",
     _set("spec.http.0.match.0.headers.x-canary-upstream", {"exact": "web-canary", "prefix": "web"}),
     "set at most one of exact, prefix, regex (found: exact, prefix)"),
    ("virtualservice-remove-not-a-list", "virtualservice.yaml", "VirtualService",
     _set("spec.http.0.headers.request.remove", "x-canary-upstream"), "spec.http[0].headers.request.remove: must be an array"),
    ("virtualservice-timeout", "virtualservice.yaml", "VirtualService",
     _set("spec.http.1.timeout", "5 seconds"), "spec.http[1].timeout: must be a valid duration greater than 1ms"),
    ("destinationrule-label-number", "destinationrule.yaml", "DestinationRule",
     _set("spec.subsets.0.labels.version", 1), "spec.subsets[0].labels.version: must be a string, got int 1"),
    ("destinationrule-subsets-typo", "destinationrule.yaml", "DestinationRule",
     _rename("spec.subsets", "subset"), "spec.subset: unknown field 'subset' (did you mean 'subsets'?)"),
    ("envoyfilter-context", "envoyfilter-gateway.yaml", "EnvoyFilter",
     _set("spec.configPatches.0.match.context", "GATEWAYS"), "spec.configPatches[0].match.context: string 'GATEWAYS' is not one of"),
    ("envoyfilter-operation", "envoyfilter-gateway.yaml", "EnvoyFilter",
     _set("spec.configPatches.0.patch.operation", "MERGED"), "spec.configPatches[0].patch.operation: string 'MERGED' is not one of"),
    ("gateway-protocol-field", "gateway.yaml", "Gateway",
     _rename("spec.servers.0.port.protocol", "proto"), "spec.servers[0].port.proto: unknown field"),
    ("apiVersion-unknown", "destinationrule.yaml", "DestinationRule",
     _set("apiVersion", "networking.istio.io/v2"), "DestinationRule has no version networking.istio.io/v2"),
]


@pytest.mark.parametrize("file,kind,mutate,expected", [n[1:] for n in NEGATIVE], ids=[n[0] for n in NEGATIVE])
def test_validator_rejects_mistakes(bundle, file, kind, mutate, expected):
    manifest = doc(file, kind) if kind != "VirtualService" else doc(file, kind, "web")
    assert bundle.validate(manifest).ok, "the unmodified manifest must validate"
    mutate(manifest)
    errors = bundle.validate(manifest).errors
    assert any(expected in e for e in errors), f"expected {expected!r} in {errors}"


def test_duplicate_yaml_keys_are_refused():
    text = (ISTIO / "wasmplugin-gateway.yaml").read_text() + "\n  failStrategy: FAIL_CLOSE\n"
    with pytest.raises(yaml.YAMLError, match="duplicate key 'failStrategy'"):
        iv.loads_documents(text)


def test_plugin_config_is_opaque_to_the_crd(bundle):
    """pluginConfig is x-kubernetes-preserve-unknown-fields: the CRD accepts any content, so a
    misspelt canary-guard field passes it. test_plugin_config_is_the_standalone_one catches it."""
    plugin = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    plugin["spec"]["pluginConfig"]["analysis"]["stepWieght"] = plugin["spec"]["pluginConfig"]["analysis"].pop("stepWeight")
    assert bundle.validate(plugin).ok
    assert plugin_config_problems(plugin) != []


def test_stats_snippets_have_no_crd(bundle):
    """istio/stats/ holds core objects and patches: none has a CRD in
    the bundle, which is why they live outside istio/*.yaml and are checked by the tests below."""
    for name, d in documents(SNIPPETS):
        if "apiVersion" in d:
            version, why = bundle.lookup(d["apiVersion"], d["kind"])
            assert version is None, f"{name} has a CRD: move it to istio/*.yaml"


# ----------------------------------------------------------------------------------------------
# 2. Consistency between the manifests and with canary-guard
# ----------------------------------------------------------------------------------------------

def plugin_config_problems(plugin: dict) -> list[str]:
    pc = plugin["spec"].get("pluginConfig")
    if not isinstance(pc, dict):
        return ["spec.pluginConfig is missing"]
    problems = []
    for key in ("name", "revision", "upstreams", "analysis"):
        if key not in pc:
            problems.append(f"pluginConfig.{key} is required by canary-guard")
    up = pc.get("upstreams", {})
    for key in ("header", "stable", "canary"):
        if not isinstance(up.get(key), str) or not up.get(key):
            problems.append(f"pluginConfig.upstreams.{key} must be a non-empty string")
    if up.get("stable") == up.get("canary"):
        problems.append("pluginConfig.upstreams.stable and canary must differ")
    # Through Istio's Struct the JSON must not change (a float where canary-guard wants an
    # integer would be refused).
    received = json.loads(json.dumps(istio_struct_json(pc)))
    if received != pc or json.dumps(received, sort_keys=True) != json.dumps(pc, sort_keys=True):
        problems.append("pluginConfig changes through Istio's protobuf Struct (numbers)")
    standalone = standalone_config()
    if pc != standalone:
        diff = sorted(set(json.dumps(pc, sort_keys=True).split(",")) ^ set(json.dumps(standalone, sort_keys=True).split(",")))
        problems.append(f"pluginConfig differs from envoy/envoy.yaml's configuration: {diff[:6]}")
    return problems


@pytest.mark.parametrize("file", ["wasmplugin-gateway.yaml", "wasmplugin-gateway-file.yaml", "wasmplugin-sidecar.yaml"])
def test_plugin_config_is_the_standalone_one(file):
    """The integration tests load envoy/envoy.yaml's configuration into the module in a real
    Envoy; a pluginConfig equal to it is a configuration canary-guard accepts."""
    assert plugin_config_problems(doc(file, "WasmPlugin")) == []


def test_every_wasm_plugin_is_checked():
    files = {p.name for p in MANIFESTS if any(d.get("kind") == "WasmPlugin" for _, d in iv.load_documents(p))}
    assert files == {"wasmplugin-gateway.yaml", "wasmplugin-gateway-file.yaml", "wasmplugin-sidecar.yaml",
                     "wasmplugin-gateway-fleet.yaml", "control-gateway.yaml"}


def test_control_plugin_serves_only_its_loopback_gateway_server_ahead_of_the_routing_plugin():
    """control-gateway.yaml: the gateway plugin's module in the control role, matched to the
    port of a Gateway server bound to the pod's loopback, and ordered before the routing plugin
    (istiod orders a phase by priority, highest first), so that the routing plugin never sees a
    control request (scripts/istio_envoy_check.py `control` runs that chain in a real Envoy)."""
    control = doc("control-gateway.yaml", "WasmPlugin")
    gateway = doc("control-gateway.yaml", "Gateway")
    routing = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    (server,) = gateway["spec"]["servers"]
    assert server["bind"] == "127.0.0.1" and server["port"]["protocol"] == "HTTP"
    assert gateway["spec"]["selector"] == routing["spec"]["selector"]["matchLabels"]
    spec = control["spec"]
    for key in ("selector", "url", "imagePullPolicy", "pluginName", "type", "phase"):
        assert spec[key] == routing["spec"][key], f"{key}: the routing plugin's"
    assert spec["priority"] > routing["spec"].get("priority", 0)
    # Gateway listeners are CLIENT in istiod's traffic selector (workloadModeForListenerClass).
    assert spec["match"] == [{"mode": "CLIENT", "ports": [{"number": server["port"]["number"]}]}]
    assert spec["pluginConfig"]["role"] == "control"
    assert "allowRemote" not in spec["pluginConfig"], "loopback only"
    assert control["metadata"]["namespace"] == routing["metadata"]["namespace"]


def test_fleet_plugin_is_the_gateway_one_plus_fleet():
    """wasmplugin-gateway-fleet.yaml: the gateway plugin with the fleet block (Istio's etcd
    cluster name, the one etcd-serviceentry.yaml makes) and without restartPolicy (fleet mode
    tells a restart from a first load); the module accepts its pluginConfig."""
    fleet_doc = doc("wasmplugin-gateway-fleet.yaml", "WasmPlugin")
    plain = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    pc = copy.deepcopy(fleet_doc["spec"]["pluginConfig"])
    fleet = pc.pop("fleet")
    host = doc("etcd-serviceentry.yaml", "ServiceEntry")["spec"]["hosts"][0]
    port = doc("etcd-serviceentry.yaml", "ServiceEntry")["spec"]["ports"][0]["number"]
    assert fleet["etcdCluster"] == f"outbound|{port}||{host}"
    plain_pc = copy.deepcopy(plain["spec"]["pluginConfig"])
    assert plain_pc.pop("restartPolicy") == "restart"
    assert pc == plain_pc
    strip = lambda d: {**d, "spec": {k: v for k, v in d["spec"].items() if k != "pluginConfig"}}
    assert strip(fleet_doc) == strip(plain)


@pytest.mark.parametrize("file", ["wasmplugin-gateway.yaml", "wasmplugin-gateway-file.yaml", "wasmplugin-sidecar.yaml",
                                  "wasmplugin-gateway-fleet.yaml"])
def test_plugin_settings(file):
    spec = doc(file, "WasmPlugin")["spec"]
    assert spec["pluginName"] == "canary-guard"
    assert spec["phase"] == "UNSPECIFIED_PHASE", "must run right before the router"
    assert spec.get("type", "HTTP") == "HTTP"
    assert spec["failStrategy"] == "FAIL_OPEN", "the documented choice (README: failStrategy)"
    assert "selector" in spec and "targetRefs" not in spec


def test_gateway_variants_are_alternatives():
    oci = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    local = doc("wasmplugin-gateway-file.yaml", "WasmPlugin")
    assert oci["spec"]["url"].startswith("oci://") and oci["spec"]["url"].endswith("/canary-guard:0.1.0")
    assert local["spec"]["url"] == "file:///var/local/wasm/canary_guard.wasm"
    assert oci["metadata"] == local["metadata"], "same name: applying one replaces the other"
    strip = lambda s: {k: v for k, v in s.items() if k not in ("url", "imagePullPolicy", "imagePullSecret", "sha256")}
    assert strip(oci["spec"]) == strip(local["spec"])


def test_sidecar_plugin_runs_on_the_callers_outbound_side():
    spec = doc("wasmplugin-sidecar.yaml", "WasmPlugin")["spec"]
    assert [m["mode"] for m in spec["match"]] == ["CLIENT"], "routing happens in the caller's (outbound) proxy"
    assert all(m.get("ports") for m in spec["match"]), "limit the filter to web's port"


def routing_problems(plugin: dict, vs: dict, dr: dict) -> list[str]:
    """The VirtualService sends exactly the filter's canary value to subset canary and every
    other request to subset stable, and the DestinationRule defines both subsets."""
    up = plugin["spec"]["pluginConfig"]["upstreams"]
    header, canary_value = up["header"], up["canary"]
    host = dr["spec"]["host"]
    subsets = {s["name"]: s.get("labels", {}) for s in dr["spec"].get("subsets", [])}
    problems = []
    if set(subsets) != {"stable", "canary"}:
        problems.append(f"DestinationRule subsets are {sorted(subsets)}, want canary and stable")
    elif subsets["stable"] == subsets["canary"] or not subsets["stable"] or not subsets["canary"]:
        problems.append("the subsets must select different pods")
    routes = vs["spec"].get("http", [])
    if not routes:
        return problems + ["VirtualService has no http routes"]

    def targets(route: dict) -> list[tuple[str, str]]:
        return [(d["destination"].get("host"), d["destination"].get("subset")) for d in route.get("route", [])]

    *matched, last = routes
    if last.get("match") or targets(last) != [(host, "stable")]:
        problems.append("the last route must match everything and go to subset stable only")
    canary_routes = [r for r in routes if any(s == "canary" for _, s in targets(r))]
    if len(canary_routes) != 1:
        problems.append(f"exactly one route may reach subset canary, found {len(canary_routes)}")
    for r in canary_routes:
        if targets(r) != [(host, "canary")]:
            problems.append(f"the canary route must go to {host} subset canary only, goes to {targets(r)}")
        for m in r.get("match") or [{}]:
            hdrs = m.get("headers", {})
            if hdrs != {header: {"exact": canary_value}}:
                problems.append(f"the canary route must match only {header}: exact {canary_value!r}, matches {hdrs}")
            extra = set(m) - {"headers", "sourceLabels", "name"}
            if extra:
                problems.append(f"the canary route has extra match conditions {sorted(extra)}")
        if not r.get("match"):
            problems.append("the canary route has no match: every request would reach the canary")
    for r in routes:
        if header not in (r.get("headers", {}).get("request", {}).get("remove") or []):
            problems.append(f"route {r.get('name')!r} does not remove {header} from the forwarded request")
        for h, _ in targets(r):
            if h != host:
                problems.append(f"route {r.get('name')!r} goes to {h}, not the DestinationRule's host {host}")
    return problems


def test_gateway_routing_matches_the_plugin():
    plugin = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    vs = doc("virtualservice.yaml", "VirtualService", "web")
    dr = doc("destinationrule.yaml", "DestinationRule")
    assert routing_problems(plugin, vs, dr) == []
    gw = doc("gateway.yaml", "Gateway")
    assert vs["spec"]["gateways"] == [gw["metadata"]["name"]] and vs["metadata"]["namespace"] == gw["metadata"]["namespace"]
    assert gw["spec"]["selector"] == plugin["spec"]["selector"]["matchLabels"], "the plugin must run on the gateway serving the route"
    assert set(vs["spec"]["hosts"]) <= {h for s in gw["spec"]["servers"] for h in s["hosts"]}
    assert not any("sourceLabels" in m for r in vs["spec"]["http"] for m in r.get("match") or [])


def test_mesh_traffic_goes_to_stable_in_the_gateway_variant():
    """No filter runs in the other sidecars: they must neither reach the canary nor choose it."""
    vs = doc("virtualservice.yaml", "VirtualService", "web-mesh")
    dr = doc("destinationrule.yaml", "DestinationRule")
    assert vs["spec"]["gateways"] == ["mesh"]
    assert [r.get("match") for r in vs["spec"]["http"]] == [None]
    assert [[(d["destination"]["host"], d["destination"]["subset"]) for d in r["route"]] for r in vs["spec"]["http"]] \
        == [[(dr["spec"]["host"], "stable")]]


def test_sidecar_routing_matches_the_plugin():
    plugin = doc("wasmplugin-sidecar.yaml", "WasmPlugin")
    vs = doc("virtualservice-sidecar.yaml", "VirtualService")
    dr = doc("destinationrule.yaml", "DestinationRule")
    assert routing_problems(plugin, vs, dr) == []
    assert vs["metadata"] == doc("virtualservice.yaml", "VirtualService", "web-mesh")["metadata"], \
        "replaces the gateway variant's mesh VirtualService"
    assert vs["spec"]["gateways"] == ["mesh"]
    selector = plugin["spec"]["selector"]["matchLabels"]
    canary = [r for r in vs["spec"]["http"] if r.get("match")]
    assert all(m.get("sourceLabels") == selector for r in canary for m in r["match"]), \
        "only sidecars running canary-guard may reach the canary"


@pytest.mark.parametrize("breakage,expected", [
    (lambda vs, dr: vs["spec"]["http"][0]["match"][0]["headers"]["x-canary-upstream"].update(exact="canary"), "must match only"),
    (lambda vs, dr: vs["spec"]["http"][0]["match"][0]["headers"].update({"x-canary-upstream": {"prefix": "web"}}), "must match only"),
    (lambda vs, dr: vs["spec"]["http"][1]["route"][0]["destination"].update(subset="canary"), "last route"),
    (lambda vs, dr: vs["spec"]["http"].reverse(), "last route"),
    (lambda vs, dr: vs["spec"]["http"][0].pop("match"), "has no match"),
    (lambda vs, dr: vs["spec"]["http"][1].pop("headers"), "does not remove"),
    (lambda vs, dr: dr["spec"]["subsets"][1]["labels"].update(version="stable"), "different pods"),
    (lambda vs, dr: dr["spec"].update(host="web.other.svc.cluster.local"), "not the DestinationRule's host"),
])
def test_routing_check_catches_inconsistencies(breakage, expected):
    plugin = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    vs = doc("virtualservice.yaml", "VirtualService", "web")
    dr = doc("destinationrule.yaml", "DestinationRule")
    breakage(vs, dr)
    problems = routing_problems(plugin, vs, dr)
    assert any(expected in p for p in problems), problems


def header_removal_problems(plugin: dict, filters: list[dict]) -> list[str]:
    """A FAIL_OPEN plugin needs an EnvoyFilter on the same workloads that removes the routing
    header with an early header mutation (before route matching)."""
    spec = plugin["spec"]
    header = spec["pluginConfig"]["upstreams"]["header"]
    labels = spec["selector"]["matchLabels"]
    ns = plugin["metadata"]["namespace"]
    modes = {m.get("mode", "CLIENT_AND_SERVER") for m in spec.get("match") or [{}]}
    ports = {p["number"] for m in spec.get("match") or [] for p in m.get("ports") or []}
    context = "GATEWAY" if labels.get("istio") == "ingressgateway" else "SIDECAR_OUTBOUND"
    if context == "SIDECAR_OUTBOUND" and modes != {"CLIENT"}:
        return [f"a sidecar plugin routing requests must be CLIENT, is {modes}"]
    for ef in filters:
        if ef["metadata"]["namespace"] not in (ns, "istio-system"):
            continue
        if ef["spec"].get("workloadSelector", {}).get("labels") != labels:
            continue
        for patch in ef["spec"].get("configPatches", []):
            match = patch.get("match", {})
            listener = match.get("listener", {})
            if (patch.get("applyTo") != "NETWORK_FILTER" or match.get("context") != context
                    or listener.get("filterChain", {}).get("filter", {}).get("name") != "envoy.filters.network.http_connection_manager"
                    or patch.get("patch", {}).get("operation") != "MERGE"):
                continue
            if context == "SIDECAR_OUTBOUND" and listener.get("portNumber") not in ports:
                continue
            tc = patch["patch"]["value"].get("typed_config", {})
            if tc.get("@type") != "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager":
                continue
            for ext in tc.get("early_header_mutation_extensions", []):
                mutations = ext.get("typed_config", {}).get("mutations", [])
                if ext.get("name") == "envoy.http.early_header_mutation.header_mutation" and {"remove": header} in mutations:
                    return []
    return [f"no EnvoyFilter removes {header} before route matching on {labels} ({context})"]


@pytest.mark.parametrize("file", ["wasmplugin-gateway.yaml", "wasmplugin-gateway-file.yaml", "wasmplugin-sidecar.yaml"])
def test_fail_open_plugins_strip_the_client_header_early(file):
    plugin = doc(file, "WasmPlugin")
    assert plugin["spec"]["failStrategy"] == "FAIL_OPEN"
    assert header_removal_problems(plugin, all_of_kind("EnvoyFilter")) == []


def test_header_removal_check_catches_a_mismatch():
    plugin = doc("wasmplugin-gateway.yaml", "WasmPlugin")
    filters = all_of_kind("EnvoyFilter")
    for ef in filters:
        ef["spec"]["workloadSelector"]["labels"] = {"istio": "egressgateway"}
    assert header_removal_problems(plugin, filters) != []
    filters = all_of_kind("EnvoyFilter")
    for ef in filters:
        for p in ef["spec"]["configPatches"]:
            p["patch"]["value"]["typed_config"]["early_header_mutation_extensions"][0]["typed_config"]["mutations"] = [{"remove": "x-other"}]
    assert header_removal_problems(plugin, filters) != []
    sidecar = doc("wasmplugin-sidecar.yaml", "WasmPlugin")
    sidecar["spec"]["match"][0]["mode"] = "SERVER"
    assert header_removal_problems(sidecar, all_of_kind("EnvoyFilter")) != []


# ----------------------------------------------------------------------------------------------
# 3. Stats: matcher and tags
# ----------------------------------------------------------------------------------------------

def snippet(name: str) -> list[dict]:
    return [d for _, d in iv.load_documents(ISTIO / "stats" / name)]


def stats_matchers() -> dict[str, dict]:
    """Every proxyStatsMatcher in istio/stats/, by where it comes from."""
    return istio_shape.stats_matchers(SNIPPETS, iv.load_documents)


def envoy_includes(matcher: dict, stat: str) -> bool:
    """Envoy's stats_matcher inclusion list as Istio builds it: prefix, suffix, and RE2 regex
    (full match), applied to the full stat name."""
    return (any(stat.startswith(p) for p in matcher.get("inclusionPrefixes", []))
            or any(stat.endswith(s) for s in matcher.get("inclusionSuffixes", []))
            or any(re.fullmatch(r, stat) for r in matcher.get("inclusionRegexps", [])))


def test_istios_bootstrap_keeps_canary_guard_stats_without_a_stats_matcher():
    # Istio's bootstrap always includes the prefix "wasm" (pkg/bootstrap/config.go), and the
    # matcher sees the full name with Envoy's custom namespace: wasmcustom.canary_guard....
    bootstrap = {"inclusionPrefixes": istio_shape.ISTIO_BOOTSTRAP_INCLUSION_PREFIXES}
    for stat in STAT_NAMES + ["tallied_canary_requests", "config_invalid"]:
        full = f"wasmcustom.canary_guard.web.{stat}"
        assert envoy_includes(bootstrap, full), f"Istio's bootstrap drops {full}"
    assert not envoy_includes(bootstrap, "http.inbound_0.0.0.0_8080.downstream_rq_total")
    # So istio/stats/ sets none: it only adds the canary label.
    assert stats_matchers() == {}


def envoy_tag(name: str, tags: list[dict]) -> tuple[str, dict]:
    """Envoy's tag extraction: each stats_tags regex is matched against the whole name; where it
    matches, the second group is the tag value and the first group is cut from the name (the cuts
    made together at the end, as Envoy's TagProducerImpl does). Returns the Prometheus name (the
    custom namespace dropped, dots to underscores) and the labels."""
    labels, cuts = {}, []
    for t in tags:
        m = re.search(t["regex"], name)
        if m:
            labels[t["tag_name"]] = m.group(2)
            cuts.append((m.start(1), m.end(1)))
    name = "".join(c for i, c in enumerate(name) if not any(a <= i < b for a, b in cuts))
    name = name.removeprefix("wasmcustom.")
    return re.sub(r"[^a-zA-Z0-9_]", "_", name), labels


def test_stats_tag_gives_the_canary_label():
    configmaps = [d for d in snippet("stats-tags-configmap.yaml") if d["kind"] == "ConfigMap"]
    assert {c["metadata"]["namespace"] for c in configmaps} == {"istio-system", "prod"}
    standalone = yaml.safe_load(ENVOY_YAML.read_text())["stats_config"]["stats_tags"]
    for cm in configmaps:
        assert cm["metadata"]["name"] == "canary-guard-stats-tags"
        bootstrap = json.loads(cm["data"]["custom_bootstrap.json"])
        assert set(bootstrap) == {"stats_config"} and set(bootstrap["stats_config"]) == {"stats_tags"}
        tags = bootstrap["stats_config"]["stats_tags"]
        assert tags == standalone, "same tag as standalone envoy/envoy.yaml"
        assert envoy_tag("wasmcustom.canary_guard.web.weight", tags) == ("canary_guard_weight", {"canary": "web"})
        assert envoy_tag("wasmcustom.canary_guard.checkout-v2.failed_checks", tags) == \
            ("canary_guard_failed_checks", {"canary": "checkout-v2"})
        assert envoy_tag("wasmcustom.canary_guard.web.revision_info.v2.1", tags) == \
            ("canary_guard_revision_info", {"canary": "web", "revision": "v2.1"})
        assert envoy_tag("wasmcustom.canary_guard.web.revision.v2.1.canary_5xx", tags) == \
            ("canary_guard_revision_canary_5xx", {"canary": "web", "revision": "v2.1"})
        assert envoy_tag("wasmcustom.canary_guard.web.decisions.rollback", tags) == \
            ("canary_guard_decisions", {"canary": "web", "decision": "rollback"})
    # Without it (Istio's own bootstrap has no such tag) the name carries the canary.
    assert envoy_tag("wasmcustom.canary_guard.web.weight", []) == ("canary_guard_web_weight", {})


def test_deployment_patches_mount_the_bootstrap_override():
    cm_name = snippet("stats-tags-configmap.yaml")[0]["metadata"]["name"]
    gw = snippet("gateway-deployment-patch.yaml")[0]["spec"]["template"]["spec"]
    proxy = next(c for c in gw["containers"] if c["name"] == "istio-proxy")
    override = next(e["value"] for e in proxy["env"] if e["name"] == "ISTIO_BOOTSTRAP_OVERRIDE")
    mount = next(m for m in proxy["volumeMounts"] if m["mountPath"] == str(Path(override).parent))
    volume = next(v for v in gw["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == cm_name
    assert Path(override).name in snippet("stats-tags-configmap.yaml")[0]["data"]
    caller = snippet("caller-deployment-patch.yaml")[0]["spec"]["template"]["metadata"]["annotations"]
    assert caller["sidecar.istio.io/bootstrapOverride"] == cm_name
    # The sidecar injector mounts that ConfigMap and reads this key from it.
    assert "custom_bootstrap.json" in snippet("stats-tags-configmap.yaml")[1]["data"]


# ----------------------------------------------------------------------------------------------
# The operator's guide
# ----------------------------------------------------------------------------------------------

def test_readme_covers_every_file():
    readme = (ISTIO / "README.md").read_text()
    for path in MANIFESTS + SNIPPETS:
        rel = path.relative_to(ISTIO).as_posix()
        assert rel in readme, f"istio/README.md does not mention {rel}"
    for phrase in ("FAIL_OPEN", "UNSPECIFIED_PHASE", "skopeo copy", "pilot-agent request GET stats",
                   'canary_guard_weight{canary="web"}', 'grep "canary web"', "Succeeded", "Failed", "revision"):
        assert phrase in readme, f"istio/README.md should cover {phrase!r}"
