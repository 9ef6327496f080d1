#!/usr/bin/env python3
"""Runs the Istio manifests of istio/ in the shape Istio gives them, in a real Envoy.

What no schema can tell, checked with the Envoy of `make setup` and the module of `make build`:

1. plugin-config: every WasmPlugin's pluginConfig, serialised as istiod does (protobuf Struct,
   legacy jsonpb: keys sorted, <>& escaped) and delivered as istiod delivers it (ECDS under
   extensions.istio.io/wasmplugin/<ns>.<name>, no default config; root_id = pluginName, no
   vm_id, no singleton), is accepted by the module: Envoy takes the ECDS update and defines the
   canary's stats. A control run with a misspelt field must run inert (accepted, error logged,
   config_invalid = 1), not be NACKed (which would answer every request with 500).
2. stats: with Istio's bootstrap stats matcher and no proxyStatsMatcher, canary-guard's stats
   are kept (the bootstrap includes the prefix "wasm"); with the bootstrap override of
   istio/stats/stats-tags-configmap.yaml (passed as --config-yaml, as istio-agent does with
   ISTIO_BOOTSTRAP_OVERRIDE) /stats/prometheus names them canary_guard_<stat>{canary="<name>"},
   without it canary_guard_<name>_<stat>.
3. envoyfilter: the patch value of istio/envoyfilter-gateway.yaml, merged into the connection
   manager as istiod's MERGE does, keeps a client-sent routing header from reaching the canary
   route of istio/virtualservice.yaml while no canary-guard filter runs (failed open). A control
   run without the patch must reach the canary.
4. control: istio/control-gateway.yaml's control plugin on its loopback Gateway listener, ahead
   of the routing plugin, sees the routing plugin's canary (shared data of the empty vm_id),
   carries out an abort, and none of its requests is counted as a canary or stable outcome.

    .venv/bin/python -m scripts.istio_envoy_check [--envoy PATH] [--wasm PATH]

Exit status 0 when every check passes. Envoy: $ENVOY_BIN or .venv/bin/envoy.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
from tests import istio_validate as iv  # strict YAML loading
from tests import istio_shape
from tests.istio_shape import ecds_resource, istio_ecds_filter, istio_http_filters, resource_name

ISTIO = REPO / "istio"
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "canary_guard.wasm"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


def merge(dst: Any, src: Any) -> Any:
    """Protobuf MergeFrom on JSON: objects merged key by key, lists appended, scalars replaced
    (what an EnvoyFilter MERGE and Envoy's --config-yaml do)."""
    if isinstance(dst, dict) and isinstance(src, dict):
        out = dict(dst)
        for k, v in src.items():
            out[k] = merge(dst[k], v) if k in dst else copy.deepcopy(v)
        return out
    if isinstance(dst, list) and isinstance(src, list):
        return dst + copy.deepcopy(src)
    return copy.deepcopy(src)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def documents(path: Path) -> list[dict]:
    return [d for _, d in iv.load_documents(path)]


class Envoy:
    def __init__(self, binary: str, config: dict, workdir: Path, name: str, config_yaml: Optional[str] = None):
        self.name = name
        self.admin = free_port()
        self.listen = free_port()
        cfg = copy.deepcopy(config)
        cfg["admin"] = {"address": {"socket_address": {"address": "127.0.0.1", "port_value": self.admin}}}
        # The first listener (traffic) on a free port; others keep the free ports they were given.
        cfg["static_resources"]["listeners"][0]["address"]["socket_address"].update(
            address="127.0.0.1", port_value=self.listen)
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.log_path = workdir / f"{name}.log"
        args = [binary, "-c", str(self.config_path), "--concurrency", "2", "--disable-hot-restart",
                "--base-id", str(random.randint(1000, 60000)), "-l", "info", "--log-path", str(self.log_path)]
        if config_yaml:
            args += ["--config-yaml", config_yaml]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)

    def ready(self, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                if self.get("/ready", admin=True)[0] == 200:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def get(self, path: str, admin: bool = False, headers: Optional[dict] = None) -> tuple[int, str]:
        port = self.admin if admin else self.listen
        req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.admin}/quitquitquit", method="POST"), timeout=2)
            except OSError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> "Envoy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------
# Istio-shaped configurations
# ----------------------------------------------------------------------------------------------

def base_config() -> dict:
    """envoy/envoy.yaml as an Istio proxy would have it: no singleton, no early header removal,
    no canary-guard stats tag, no Wasm filter yet, and no control endpoint listener."""
    cfg = yaml.safe_load(ENVOY_YAML.read_text())
    cfg.pop("bootstrap_extensions", None)
    cfg["static_resources"]["listeners"] = [l for l in cfg["static_resources"]["listeners"]
                                            if l["name"] != "canary-guard-control"]
    cfg.pop("stats_config", None)
    hcm = http_connection_manager(cfg)
    hcm.pop("early_header_mutation_extensions", None)
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.wasm"]
    return cfg


def http_connection_manager(cfg: dict) -> dict:
    return cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


def ecds_filter(plugin: dict, wasm: Path, workdir: Path, plugin_config: Optional[dict] = None) -> dict:
    """The listener's filter for a WasmPlugin, its configuration delivered by ECDS as istiod
    delivers it (a file of its own in workdir here, ADS in Istio)."""
    ecds_dir = Path(tempfile.mkdtemp(prefix="ecds-", dir=workdir))
    path = ecds_dir / "extensions.yaml"
    doc = {"version_info": "1", "resources": [{
        "@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
        **ecds_resource(plugin, wasm, plugin_config)}]}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    source = {"resource_api_version": "V3", "path_config_source": {
        "path": str(path), "watched_directory": {"path": str(ecds_dir)}}}
    return istio_ecds_filter(plugin, source)


def with_plugin(cfg: dict, plugin: dict, wasm: Path, workdir: Path,
                plugin_config: Optional[dict] = None) -> dict:
    """cfg with the WasmPlugin's filter as istiod delivers it: by ECDS, in Istio's place in the
    chain for phase UNSPECIFIED_PHASE."""
    cfg = copy.deepcopy(cfg)
    hcm = http_connection_manager(cfg)
    router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")
    hcm["http_filters"] = istio_http_filters(ecds_filter(plugin, wasm, workdir, plugin_config), router)
    cfg.setdefault("node", {"id": "istio-envoy-check", "cluster": "istio-envoy-check"})
    return cfg


def all_wasm_plugins() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(ISTIO.glob("*.yaml")) for d in documents(p) if d.get("kind") == "WasmPlugin"]


def wasm_plugins() -> list[tuple[str, dict]]:
    """The routing WasmPlugins (the control one is checked by `control`)."""
    return [(f, d) for f, d in all_wasm_plugins() if d["spec"]["pluginConfig"].get("role") != "control"]


def stats_matchers() -> dict[str, dict]:
    return istio_shape.stats_matchers(sorted((ISTIO / "stats").glob("*.yaml")), iv.load_documents)


def wait_log(e: "Envoy", *needles: str, timeout: float = 15.0) -> bool:
    """Whether one line of Envoy's log holds all needles within the timeout (the log file is
    flushed in batches)."""
    deadline = time.monotonic() + timeout
    while True:
        if any(all(n in line for n in needles) for line in e.log().splitlines()):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def wait_stat(e: "Envoy", pattern: str, timeout: float = 10.0) -> str:
    """/stats once a line matches `pattern` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        stats = e.get("/stats", admin=True)[1]
        if re.search(pattern, stats, re.M) or time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


def istio_stats_config(matcher: Optional[dict] = None) -> dict:
    """stats_config as Istio's bootstrap template renders it (tools/packaging/common/
    envoy_bootstrap.json with the required prefixes of pkg/bootstrap/config.go), plus a
    ProxyConfig's proxyStatsMatcher if one is given."""
    matcher = matcher or {}
    patterns = [{"prefix": p} for p in istio_shape.ISTIO_BOOTSTRAP_INCLUSION_PREFIXES]
    patterns += [{"prefix": p} for p in matcher.get("inclusionPrefixes", [])]
    patterns += [{"suffix": s} for s in matcher.get("inclusionSuffixes", [])]
    patterns += [{"safe_regex": {"regex": r}} for r in matcher.get("inclusionRegexps", [])]
    return {"use_all_default_tags": False, "stats_matcher": {"inclusion_list": {"patterns": patterns}}}


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------

class Checker:
    def __init__(self, envoy: str, wasm: Path, workdir: Path):
        self.envoy, self.wasm, self.workdir = envoy, wasm, workdir
        self.failures: list[str] = []
        self.runs = 0

    def report(self, ok: bool, what: str, detail: str = "") -> None:
        print(f"{'ok  ' if ok else 'FAIL'} {what}" + (f": {detail}" if detail and not ok else ""))
        if not ok:
            self.failures.append(what)

    def start(self, cfg: dict, config_yaml: Optional[str] = None) -> Envoy:
        self.runs += 1
        return Envoy(self.envoy, cfg, self.workdir, f"envoy{self.runs}", config_yaml)

    def plugin_config(self) -> None:
        for file, plugin in wasm_plugins():
            name = plugin["spec"]["pluginConfig"]["name"]
            with self.start(with_plugin(base_config(), plugin, self.wasm, self.workdir)) as e:
                ready = e.ready()
                stats = wait_stat(e, rf"^wasmcustom\.canary_guard\.{name}\.weight:") if ready else ""
                errors = [l for l in e.log().splitlines() if "invalid canary-guard configuration" in l]
                self.report(ready and not errors and f"wasmcustom.canary_guard.{name}.weight" in stats,
                            f"plugin-config: {file} delivered by ECDS, accepted by the module",
                            "; ".join(errors) or f"Envoy not ready or no stats, log {e.log_path}")
        # Control: a misspelt field runs inert (so the check above can fail), and is not
        # NACKed: a NACKed first delivery leaves the listener answering 500.
        file, plugin = wasm_plugins()[0]
        bad = copy.deepcopy(plugin["spec"]["pluginConfig"])
        bad["analysis"]["stepWieght"] = bad["analysis"].pop("stepWeight", 10)
        name = bad["name"]
        with self.start(with_plugin(base_config(), plugin, self.wasm, self.workdir, bad)) as e:
            ready = e.ready()
            stats = wait_stat(e, rf"^wasmcustom\.canary_guard\.{name}\.config_invalid: 1$") if ready else ""
            inert = wait_log(e, "invalid canary-guard configuration: analysis.stepWieght", "running inert")
            rejected = re.search(rf"^extension_config_discovery\.http_filter\.{re.escape(resource_name(plugin))}"
                                 r"\.update_rejected: [1-9]", stats, re.M) is not None
            flagged = f"wasmcustom.canary_guard.{name}.config_invalid: 1" in stats
            self.report(ready and inert and flagged and not rejected,
                        "plugin-config: control, a misspelt field runs inert (config_invalid 1), not NACKed",
                        f"ready={ready}, inert={inert}, config_invalid={flagged}, NACKed={rejected}, log {e.log_path}")

    def stats(self) -> None:
        file, plugin = next((f, p) for f, p in wasm_plugins() if f == "wasmplugin-gateway.yaml")
        name = plugin["spec"]["pluginConfig"]["name"]
        configmap = documents(ISTIO / "stats" / "stats-tags-configmap.yaml")[0]
        override = configmap["data"]["custom_bootstrap.json"]
        # istio/stats/ sets no proxyStatsMatcher: Istio's bootstrap matcher alone must keep them.
        if stats_matchers():
            self.report(False, "stats: istio/stats/ needs no proxyStatsMatcher", str(sorted(stats_matchers())))
        cfg = with_plugin(base_config(), plugin, self.wasm, self.workdir)
        cfg["stats_config"] = istio_stats_config()
        for tagged in (False, True):
            with self.start(cfg, override if tagged else None) as e:
                if not e.ready():
                    self.report(False, "stats: Istio's bootstrap matcher", f"Envoy not ready, log {e.log_path}")
                    continue
                stats = wait_stat(e, rf"^wasmcustom\.canary_guard\.{name}\.weight:")
                for _ in range(5):
                    e.get("/")
                prom = e.get("/stats/prometheus", admin=True)[1]
                kept = f"wasmcustom.canary_guard.{name}.weight:" in stats
                others = [l for l in stats.splitlines() if l.startswith(("cluster.web", "http."))]
                want = f'canary_guard_weight{{canary="{name}"}}' if tagged else f"canary_guard_{name}_weight{{}}"
                named = re.search(rf"^{re.escape(want)} ", prom, re.M) is not None
                label = "with" if tagged else "without"
                self.report(kept and not others and named,
                            f"stats: Istio's bootstrap matcher, no proxyStatsMatcher, {label} the bootstrap override: kept, named {want}",
                            f"kept={kept}, other stats kept={len(others)}, named={named}")

    def envoyfilter(self) -> None:
        ef = documents(ISTIO / "envoyfilter-gateway.yaml")[0]
        vs = next(d for d in documents(ISTIO / "virtualservice.yaml") if d["metadata"]["name"] == "web")
        plugin = next(p for f, p in wasm_plugins() if f == "wasmplugin-gateway.yaml")
        header = plugin["spec"]["pluginConfig"]["upstreams"]["header"]
        canary_value = plugin["spec"]["pluginConfig"]["upstreams"]["canary"]
        cfg = base_config()
        hcm = http_connection_manager(cfg)
        # The VirtualService's routes, answering with the subset's name instead of proxying.
        routes = []
        for r in vs["spec"]["http"]:
            subset = r["route"][0]["destination"]["subset"]
            match: dict = {"prefix": "/"}
            for m in r.get("match") or []:
                match["headers"] = [{"name": h, "string_match": sm} for h, sm in m.get("headers", {}).items()]
            routes.append({"name": r.get("name", subset), "match": match,
                           "direct_response": {"status": 200, "body": {"inline_string": subset}},
                           "request_headers_to_remove": r.get("headers", {}).get("request", {}).get("remove", [])})
        hcm["route_config"]["virtual_hosts"][0]["routes"] = routes
        patch = ef["spec"]["configPatches"][0]["patch"]
        assert patch["operation"] == "MERGE" and patch["value"]["typed_config"]["@type"] == HCM_TYPE
        patched = copy.deepcopy(cfg)
        listener_filter = patched["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        listener_filter.update(merge(listener_filter, patch["value"]))
        for label, config, want in (("without the EnvoyFilter (control)", cfg, "canary"),
                                    ("with the EnvoyFilter", patched, "stable")):
            with self.start(config) as e:
                if not e.ready():
                    self.report(False, f"envoyfilter: {label}", f"Envoy not ready, log {e.log_path}")
                    continue
                status, body = e.get("/", headers={header: canary_value})
                self.report(status == 200 and body == want,
                            f"envoyfilter: a forged {header}: {canary_value}, no filter running, {label} -> {want}",
                            f"got {status} {body!r}")
        # The whole gateway stack: early removal, the Istio-shaped filter, the VirtualService's
        # routes. The header the filter sets still reaches routing: once the elected analyser
        # has started (phase Progressing), requests matching the A/B rule go to the canary.
        rule = plugin["spec"]["pluginConfig"]["analysis"]["match"][0]["headers"]
        ab_headers = {h: m["exact"] for h, m in rule.items()}
        name = plugin["spec"]["pluginConfig"]["name"]
        with self.start(with_plugin(patched, plugin, self.wasm, self.workdir)) as e:
            bodies: list[str] = []
            if e.ready():
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline:
                    e.get("/")
                    if re.search(rf"^wasmcustom\.canary_guard\.{name}\.phase: 1$", e.get("/stats", admin=True)[1], re.M):
                        bodies = [e.get("/", headers={**ab_headers, header: "web-stable"})[1] for _ in range(5)]
                        break
                    time.sleep(0.1)
            self.report(bodies == ["canary"] * 5,
                        f"envoyfilter: with the EnvoyFilter and the plugin, A/B match traffic {ab_headers} -> canary",
                        f"got {bodies}, log {e.log_path}")


    def control(self) -> None:
        """istio/control-gateway.yaml beside the gateway plugin, as istiod builds the gateway:
        the traffic listener with the routing plugin alone (the control plugin's match is port
        9902), and the Gateway server's listener on loopback with both plugins, the control one
        first (priority 100), each by its own ECDS resource, and routes leading nowhere (no
        VirtualService binds that Gateway). The control endpoint must see the routing plugin's
        canary through the shared data of the empty vm_id, carry out an abort, and no control
        request may be counted as a canary or stable outcome."""
        plugin = next(p for f, p in wasm_plugins() if f == "wasmplugin-gateway.yaml")
        control_file, control = next((f, p) for f, p in all_wasm_plugins() if f == "control-gateway.yaml")
        server = next(d for d in documents(ISTIO / control_file) if d["kind"] == "Gateway")["spec"]["servers"][0]
        name = plugin["spec"]["pluginConfig"]["name"]
        cfg = with_plugin(base_config(), plugin, self.wasm, self.workdir)
        traffic = cfg["static_resources"]["listeners"][0]
        listener = copy.deepcopy(traffic)
        port = free_port()
        listener["name"] = f"{server['bind']}_{server['port']['number']}"
        listener["address"] = {"socket_address": {"address": server["bind"], "port_value": port}}
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        port_name = server["port"]["number"]
        hcm["route_config"] = {"name": f"http.{port_name}",
                               "virtual_hosts": [{"name": f"blackhole:{port_name}", "domains": ["*"]}]}
        router = hcm["http_filters"][-1]
        chain = istio_http_filters(ecds_filter(plugin, self.wasm, self.workdir), router)
        at = next(i for i, f in enumerate(chain) if f["name"] == resource_name(plugin))
        chain.insert(at, ecds_filter(control, self.wasm, self.workdir))
        hcm["http_filters"] = chain
        cfg["static_resources"]["listeners"].append(listener)
        base = f"http://{server['bind']}:{port}"

        def call(method: str, path: str) -> tuple[int, str]:
            req = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None)
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as err:
                return err.code, err.read().decode()
            except (urllib.error.URLError, OSError) as err:
                return 0, str(err)

        with self.start(cfg) as e:
            if not e.ready():
                self.report(False, "control: Envoy ready", f"log {e.log_path}")
                return
            status, body = 0, ""
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                status, body = call("GET", f"/canaries/{name}")
                if status == 200 and '"phase":"Progressing"' in body.replace(" ", ""):
                    break
                time.sleep(0.2)
            self.report(status == 200 and '"phase":"Progressing"' in body.replace(" ", ""),
                        f"control: {control_file}'s endpoint shows canary {name} of the routing plugin (shared vm_id)",
                        f"got {status} {body[:300]!r}, log {e.log_path}")
            status, body = call("POST", f"/canaries/{name}/abort")
            stats = wait_stat(e, rf"^wasmcustom\.canary_guard\.{name}\.phase: 4$")
            failed = re.search(rf"^wasmcustom\.canary_guard\.{name}\.phase: 4$", stats, re.M) is not None
            weight0 = re.search(rf"^wasmcustom\.canary_guard\.{name}\.weight: 0$", stats, re.M) is not None
            self.report(status in (200, 202) and failed and weight0,
                        "control: an abort through it rolls the canary back (phase Failed, weight 0)",
                        f"answer {status} {body[:200]!r}, failed={failed}, weight0={weight0}, log {e.log_path}")
            counted = [l for l in stats.splitlines()
                       if re.match(rf"wasmcustom\.canary_guard\.{name}\.(canary|stable)_requests: [1-9]", l)]
            self.report(not counted, "control: the routing plugin counted none of the control requests",
                        "; ".join(counted))
            status, _ = call("GET", "/")
            self.report(status == 404, "control: a path that is not the API gets the control role's 404", f"got {status}")


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", default=os.environ.get("ENVOY_BIN") or str(REPO / ".venv" / "bin" / "envoy"))
    ap.add_argument("--wasm", type=Path, default=DEFAULT_WASM)
    ap.add_argument("--only", choices=["plugin-config", "stats", "envoyfilter", "control"], action="append")
    args = ap.parse_args(argv)
    for path, what in ((Path(args.envoy), "Envoy (make setup, or ENVOY_BIN)"), (args.wasm, "the module (make build)")):
        if not path.is_file():
            print(f"missing {what}: {path}", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="istio-envoy-check-") as tmp:
        checker = Checker(args.envoy, args.wasm.resolve(), Path(tmp))
        for check in args.only or ["plugin-config", "stats", "envoyfilter", "control"]:
            getattr(checker, check.replace("-", "_"))()
        if checker.failures:
            print(f"\n{len(checker.failures)} check(s) failed")
            return 1
    print("\nall checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
