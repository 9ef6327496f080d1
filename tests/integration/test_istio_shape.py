"""canary-guard delivered exactly as istiod delivers a WasmPlugin, in a real Envoy.

istiod does not put a WasmPlugin into the listener: the listener's HTTP filter is only a name
(`extensions.istio.io/wasmplugin/<ns>.<name>`) and a `config_discovery` (ECDS, no default
config, initial_fetch_timeout 0), and the Wasm configuration follows by ECDS: `name:
<ns>.<name>`, `root_id: <pluginName>`, the pluginConfig as a JSON StringValue written by
protobuf's legacy marshaller (keys sorted, `<>&` escaped), no vm_id. There is no bootstrap
singleton (the analyser is elected among the workers) and, here, no early header removal (the
filter alone keeps a client's routing header from the canary). The filter sits where Istio puts
a phase-UNSPECIFIED plugin: after authn/authz, before grpc_stats, fault and cors
(tests/istio_shape.py, harness.IstioProxy).

What ECDS changes: a configuration Envoy NACKs on first delivery leaves the listener without
the filter, and Envoy answers every request with 500 (NoFilterConfigFound). So canary-guard
accepts an invalid first delivery inert (everything to stable, the error logged and
config_invalid = 1) and refuses an invalid update only while a valid configuration of the
same plugin serves (Envoy then keeps that one)."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from tests.integration import harness
from tests.integration.test_canary import FAILED, PROGRESSING, SUCCEEDED, ab_cfg, canary_cfg, stat, wait_phase

MANIFEST = harness.REPO / "istio" / "wasmplugin-gateway.yaml"
CHECK = harness.REPO / "target" / "release" / "canary-guard-check"
# The module's error line, as the pre-apply check prints it and the proxy logs it.
BAD_STEPS = "invalid canary-guard configuration: analysis.stepWeights: [30, 10, 50] must be strictly increasing"


def wasm_plugin() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "WasmPlugin"]
    assert len(docs) == 1, f"{MANIFEST} should hold one WasmPlugin"
    return docs[0]


def plugin_config(**analysis) -> dict:
    """The WasmPlugin's pluginConfig with the fast analysis of test_canary."""
    pc = wasm_plugin()["spec"]["pluginConfig"]
    return {**pc, "analysis": canary_cfg(**analysis)["analysis"]}


# A match value with the characters istiod's marshaller escapes (\u003c, \u003e, \u0026).
ESCAPED_VALUE = "beta<1>&2"


def ab_plugin_config() -> dict:
    """A/B testing (weight 0, only `x-canary: insider` or `x-group: beta<1>&2` reaches the
    canary): routing that does not depend on chance."""
    analysis = ab_cfg()["analysis"]
    analysis["match"] = analysis["match"] + [{"headers": {"x-group": {"exact": ESCAPED_VALUE}}}]
    return {**wasm_plugin()["spec"]["pluginConfig"], "analysis": analysis}


def invalid_config() -> dict:
    return plugin_config(stepWeights=[30, 10, 50])


def istio_proxy(launcher, backends, first, name="istio-proxy") -> harness.IstioProxy:
    proxy = launcher._track(harness.IstioProxy(launcher.tmp_path, backends, wasm_plugin(), first, name=name))
    proxy.start()
    # initial_fetch_timeout 0: the listener serves before the filter's configuration is in.
    proxy.wait_ecds("update_attempt", 1)
    return proxy


def ecds_delivery(proxy) -> dict:
    return yaml.safe_load(proxy.ecds_path.read_text())["resources"][0]


def module_errors(proxy) -> list[str]:
    return [l for l in proxy.log_text().splitlines() if "invalid canary-guard configuration" in l]


def forged(cfg: dict) -> dict:
    up = cfg["upstreams"]
    return {up["header"]: up["canary"]}


# ---- the shape ------------------------------------------------------------------------------

def test_the_filter_comes_by_ecds_in_istios_shape_and_place(launcher, backends):
    cfg = ab_plugin_config()
    proxy = istio_proxy(launcher, backends, cfg)
    proxy.wait_ecds("update_success", 1)
    hcm = harness._hcm(harness._listener(proxy.config, "ingress"))
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.rbac", "extensions.istio.io/wasmplugin/istio-system.canary-guard",
                     "envoy.filters.http.grpc_stats", "envoy.filters.http.fault", "envoy.filters.http.cors",
                     "envoy.filters.http.router"]
    discovery = hcm["http_filters"][1]["config_discovery"]
    assert "default_config" not in discovery and discovery["config_source"]["initial_fetch_timeout"] == "0s"
    assert "bootstrap_extensions" not in proxy.config
    wasm_cfg = ecds_delivery(proxy)["typed_config"]["config"]
    assert wasm_cfg["name"] == "istio-system.canary-guard" and wasm_cfg["root_id"] == "canary-guard"
    assert "vm_id" not in wasm_cfg["vm_config"]
    value = wasm_cfg["configuration"]["value"]
    assert json.loads(value) == cfg and "beta\\u003c1\\u003e\\u00262" in value
    assert list(json.loads(value)) == sorted(cfg), "istiod's marshaller sorts the keys"
    wait_phase(proxy, PROGRESSING)
    assert "acquired the analyser lease as worker (leader election)" in proxy.log_text()
    # Routing works with the explicit route-cache clear, and the host has the function.
    assert harness.summarize(proxy.send(20, headers={"x-canary": "insider"})) == {"canary/200": 20}
    assert harness.summarize(proxy.send(20, headers={"x-group": ESCAPED_VALUE})) == {"canary/200": 20}
    assert harness.summarize(proxy.send(20, headers=forged(cfg))) == {"stable/200": 20}
    assert "clear_route_cache foreign function is called after each routing header change" in proxy.log_text()
    assert stat(proxy, "host_errors.clear_route_cache") == 0


def test_requests_rejected_by_authz_never_reach_the_filter(launcher, backends):
    proxy = istio_proxy(launcher, backends, ab_plugin_config())
    proxy.wait_ecds("update_success", 1)
    wait_phase(proxy, PROGRESSING)
    assert harness.summarize(proxy.send(20, headers={"x-authz-deny": "1"})) == {"None/403": 20}
    assert harness.summarize(proxy.send(30)) == {"stable/200": 30}
    proxy.wait_for(lambda: stat(proxy, "tallied_stable_requests") == 30, 10,
                   lambda: f"30 tallied, not 50: {stat(proxy, 'tallied_stable_requests')}")


# ---- a valid first delivery ---------------------------------------------------------------

def test_a_valid_first_delivery_routes_and_promotes(launcher, backends):
    proxy = istio_proxy(launcher, backends, plugin_config())
    proxy.wait_ecds("update_success", 1)
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, SUCCEEDED)
    assert stat(proxy, "weight") == 100 and stat(proxy, "promotions") == 1
    assert stat(proxy, "config_invalid") == 0
    assert harness.summarize(proxy.send(30)) == {"canary/200": 30}


def test_a_valid_first_delivery_rolls_back_and_ignores_forged_headers(launcher, backends):
    backends.set_canary_fault(abort_percent=30)
    cfg = plugin_config()
    proxy = istio_proxy(launcher, backends, cfg)
    proxy.wait_ecds("update_success", 1)
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, FAILED)
    assert stat(proxy, "weight") == 0 and stat(proxy, "rollbacks") == 1
    assert harness.summarize(proxy.send(40, headers=forged(cfg))) == {"stable/200": 40}


# ---- an invalid first delivery ------------------------------------------------------------

@pytest.mark.parametrize("first, error", [
    (invalid_config(), BAD_STEPS),
    (None, "invalid canary-guard configuration: no plugin configuration"),
], ids=["bad-step-weights", "no-plugin-config"])
def test_an_invalid_first_delivery_keeps_the_listener_serving_stable(launcher, backends, first, error):
    proxy = istio_proxy(launcher, backends, first)
    # Accepted (inert), not NACKed: a NACK would leave the listener answering 500 to everything.
    proxy.wait_ecds("update_success", 1)
    assert proxy.ecds().get("update_rejected", 0) == 0
    cfg = plugin_config()
    results = (proxy.send(100) + proxy.send(50, headers=forged(cfg))
               + proxy.send(50, headers={"x-canary": "insider"}))
    assert harness.summarize(results) == {"stable/200": 200}
    assert proxy.stat("cluster.web-canary.upstream_rq_total", 0) == 0
    errors = module_errors(proxy)
    assert errors and all(error in line and "running inert" in line for line in errors), errors
    assert "[error][wasm]" in errors[0]
    name = "web" if first else "unnamed"
    assert proxy.wasm_stat(f"canary_guard.{name}.config_invalid") == 1
    # Nothing is analysed: no phase was ever published.
    assert stat(proxy, "checks", 0) == 0 and stat(proxy, "weight", 0) == 0


def test_the_pre_apply_check_gives_the_error_the_proxy_logs(launcher, backends, tmp_path):
    bad = wasm_plugin()
    bad["spec"]["pluginConfig"] = invalid_config()
    manifest = tmp_path / "wasmplugin-bad.yaml"
    manifest.write_text(yaml.safe_dump(bad))
    run = subprocess.run([str(CHECK), str(MANIFEST), str(manifest)], capture_output=True, text=True)
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].endswith("WasmPlugin istio-system/canary-guard: ok: canary web rev v2"), lines
    assert lines[1].endswith(f"WasmPlugin istio-system/canary-guard: {BAD_STEPS}"), lines
    proxy = istio_proxy(launcher, backends, invalid_config())
    proxy.wait_ecds("update_success", 1)
    assert BAD_STEPS in module_errors(proxy)[0]


# ---- updates -----------------------------------------------------------------------------------

def test_an_invalid_update_is_refused_and_the_valid_configuration_keeps_serving(launcher, backends):
    proxy = istio_proxy(launcher, backends, plugin_config())
    proxy.wait_ecds("update_success", 1)
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, PROGRESSING)
        proxy.wait_for(lambda: stat(proxy, "weight", 0) > 0, 10, "a first weight step")
        proxy.deliver(invalid_config(), expect="update_rejected")
        refusals = [l for l in module_errors(proxy) if BAD_STEPS in l]
        assert refusals and all("refused: canary web rev v2 keeps serving" in l for l in refusals), refusals
        # The valid configuration carries on to the end.
        wait_phase(proxy, SUCCEEDED)
    assert stat(proxy, "config_invalid") == 0
    assert harness.summarize(proxy.send(30)) == {"canary/200": 30}


def test_a_valid_update_after_an_invalid_first_delivery_recovers(launcher, backends):
    proxy = istio_proxy(launcher, backends, invalid_config())
    proxy.wait_ecds("update_success", 1)
    assert stat(proxy, "config_invalid") == 1
    proxy.deliver(plugin_config(), expect="update_success")
    proxy.wait_for(lambda: stat(proxy, "config_invalid") == 0, 10, "config_invalid back to 0")
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, SUCCEEDED)
    assert stat(proxy, "promotions") == 1
    assert harness.summarize(proxy.send(30)) == {"canary/200": 30}
