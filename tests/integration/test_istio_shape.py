"""canary-guard in the exact shape Istio gives it, in a real Envoy.

For a WasmPlugin, istiod builds (pilot/pkg/model/extensions.go) an
`envoy.extensions.filters.http.wasm.v3.Wasm` whose PluginConfig has `name: <ns>.<name>`,
`root_id: <pluginName>`, the pluginConfig serialised to JSON in a StringValue, and a vm_config
with the runtime, the code (a local file once istio-agent has fetched the image) and
environment variables, but NO vm_id; there is no bootstrap singleton and no early header
mutation. So the analyser must be elected among the workers, and the filter alone must keep a
client-sent routing header from reaching the canary. This test runs that shape with the
pluginConfig of istio/wasmplugin-gateway.yaml (analysis sped up as in test_canary) and shows a promotion, a
rollback and a forged header going to stable."""

from __future__ import annotations


import yaml

from tests.integration import harness
from tests.integration.test_canary import FAILED, PROGRESSING, SUCCEEDED, canary_cfg, stat, wait_phase, without_early_header_removal

from tests.istio_shape import istio_wasm_filter

MANIFEST = harness.REPO / "istio" / "wasmplugin-gateway.yaml"


def wasm_plugin() -> dict:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d and d.get("kind") == "WasmPlugin"]
    assert len(docs) == 1, f"{MANIFEST} should hold one WasmPlugin"
    return docs[0]


def istio_shaped_proxy(launcher, backends, wasm, name="istio-proxy"):
    plugin = wasm_plugin()
    plugin_config = {**plugin["spec"]["pluginConfig"], "analysis": canary_cfg()["analysis"]}
    up = plugin_config["upstreams"]
    proxy = harness.Proxy(launcher.tmp_path, backends, harness.default_plugin_config(), mode="leader", name=name)
    cfg = without_early_header_removal(proxy.config)
    hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [istio_wasm_filter(plugin, wasm, plugin_config)] + [
        f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    # The routing half, as the VirtualService does it: the filter's header value picks the subset.
    canary_route = hcm["route_config"]["virtual_hosts"][0]["routes"][0]
    canary_route["match"]["headers"] = [{"name": up["header"], "string_match": {"exact": up["canary"]}}]
    launcher._track(proxy).start()
    return proxy, plugin_config


def test_istio_shape_has_no_vm_id_and_no_singleton(launcher, backends, wasm):
    proxy, _ = istio_shaped_proxy(launcher, backends, wasm)
    wasm_cfg = proxy.config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]
    assert "vm_id" not in wasm_cfg["vm_config"] and "bootstrap_extensions" not in proxy.config
    assert isinstance(wasm_cfg["configuration"]["value"], str)
    wait_phase(proxy, PROGRESSING)
    assert "acquired the analyser lease as worker (leader election)" in proxy.log_text()


def test_istio_shape_promotes_a_healthy_canary(launcher, backends, wasm):
    proxy, cfg = istio_shaped_proxy(launcher, backends, wasm)
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, SUCCEEDED)
    assert stat(proxy, "weight") == 100 and stat(proxy, "promotions") == 1
    assert harness.summarize(proxy.send(30)) == {"canary/200": 30}


def test_istio_shape_rolls_back_a_failing_canary_and_ignores_forged_headers(launcher, backends, wasm):
    backends.set_canary_fault(abort_percent=30)
    proxy, cfg = istio_shaped_proxy(launcher, backends, wasm)
    with proxy.load(rate=120, connections=4):
        wait_phase(proxy, FAILED)
    assert stat(proxy, "weight") == 0 and stat(proxy, "rollbacks") == 1
    up = cfg["upstreams"]
    # No early header removal in Istio: the filter itself overwrites the client's value.
    forged = proxy.send(40, headers={up["header"]: up["canary"]})
    assert harness.summarize(forged) == {"stable/200": 40}
