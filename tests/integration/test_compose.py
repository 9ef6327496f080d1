"""docker-compose.yml, checked without a Docker engine.

What a container engine would do is out of reach here, so these tests check everything around
it: Compose accepts the file; every Envoy config it runs, found from the services' mounts and
commands, passes `envoy --mode validate` with the service's own command-line flags, from the
repository root (the containers' working directory mirrors it), and is one of the two configs
the other integration tests run; the module is mounted where the config looks for it; the
images are pinned; the scripts parse; and the traffic script, run against the same configs in
local Envoys in the compose start order, makes the shipped canary analysis roll back.
"""

from __future__ import annotations

import os
import posixpath
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest
import yaml

from tests.integration import harness

COMPOSE_FILE = harness.REPO / "docker-compose.yml"
WORKDIR_DEFAULT = "/"


def load_compose() -> dict:
    with open(COMPOSE_FILE) as f:
        return yaml.safe_load(f)


def services() -> dict[str, dict]:
    return load_compose()["services"]


def _argv(value: Any) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _container_path(svc: dict, path: str) -> str:
    return posixpath.normpath(posixpath.join(svc.get("working_dir") or WORKDIR_DEFAULT, path))


def bind_mounts(svc: dict) -> list[tuple[Path, str]]:
    """(host path, container path) of the service's bind mounts (short and long syntax)."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            source, target = v.split(":")[:2]
            if not source.startswith((".", "/", "~")):
                continue  # a named volume
        else:
            if v.get("type") != "bind":
                continue
            source, target = v["source"], v["target"]
        out.append(((COMPOSE_FILE.parent / os.path.expanduser(source)).resolve(),
                    posixpath.normpath(target)))
    return out


def host_path(svc: dict, container_path: str) -> Optional[Path]:
    """The host file a service sees at container_path, through its bind mounts (a file mount
    or a directory mount above it), or None when no mount provides it."""
    for source, target in bind_mounts(svc):
        if container_path == target:
            return source
        if container_path.startswith(target.rstrip("/") + "/"):
            return source / posixpath.relpath(container_path, target)
    return None


def config_arg(argv: list[str]) -> Optional[str]:
    for i, a in enumerate(argv):
        if a in ("-c", "--config-path") and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config-path="):
            return a.split("=", 1)[1]
    return None


def envoy_services() -> list[tuple[str, dict, str]]:
    """(service name, service, config path as given on its command line) for every service
    whose command runs Envoy with a config file."""
    out = []
    for name, svc in services().items():
        argv = _argv(svc.get("command"))
        cfg = config_arg(argv)
        if argv and argv[0] == "envoy" and cfg:
            out.append((name, svc, cfg))
    return out


ENVOY_SERVICES = envoy_services()


def _local_filenames(node: Any) -> list[str]:
    """Every `filename` of a `local` data source in an Envoy config (Wasm code, certs...)."""
    found = []
    if isinstance(node, dict):
        local = node.get("local")
        if isinstance(local, dict) and isinstance(local.get("filename"), str):
            found.append(local["filename"])
        for v in node.values():
            found += _local_filenames(v)
    elif isinstance(node, list):
        for v in node:
            found += _local_filenames(v)
    return found


def compose_command() -> list[str]:
    """docker-compose (Debian package), else the Docker CLI plugin. Missing: fail in CI."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(
            ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    msg = ("docker-compose not found: install the Debian package "
           "(sudo apt-get install docker-compose), or Docker's compose plugin")
    if harness._in_ci():
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


# --------------------------------------------------------------------------------------------

def test_compose_accepts_the_file():
    # `config` parses, validates and resolves the file; it needs no engine. A clean environment
    # so that a developer's COMPOSE_* or DOCKER_* settings do not change the result.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    r = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config"], cwd=harness.REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"compose config failed:\n{r.stdout}\n{r.stderr}"
    resolved = yaml.safe_load(r.stdout)
    assert set(resolved["services"]) == {"envoy", "backends", "traffic"}, resolved["services"].keys()
    for name in ("backends", "traffic"):
        assert resolved["services"][name].get("network_mode") == "service:envoy", \
            f"{name} must share the proxy's network namespace (the configs use 127.0.0.1)"


def test_compose_runs_the_configs_the_integration_tests_run():
    assert ENVOY_SERVICES, "no service in docker-compose.yml runs `envoy -c <config>`"
    configs = {}
    for name, svc, cfg in ENVOY_SERVICES:
        path = host_path(svc, _container_path(svc, cfg))
        assert path is not None, f"service {name}: its config {cfg} is not mounted from the repository"
        configs[name] = path
    # harness.py renders exactly these two files for every integration test and for make demo.
    assert sorted(configs.values()) == sorted([harness.ENVOY_YAML, harness.BACKENDS_YAML]), configs
    assert configs["envoy"] == harness.ENVOY_YAML
    for name, svc in services().items():
        for source, target in bind_mounts(svc):
            if source.suffix in (".yaml", ".yml", ".json"):
                assert source in configs.values(), \
                    f"service {name} mounts {source} at {target}: a config the tests do not run"


@pytest.mark.parametrize("name,svc,cfg", ENVOY_SERVICES, ids=[s[0] for s in ENVOY_SERVICES])
def test_mounted_envoy_config_validates_with_the_service_flags(name, svc, cfg, envoy_bin):
    workdir = svc.get("working_dir") or WORKDIR_DEFAULT
    config_host = host_path(svc, _container_path(svc, cfg))
    assert config_host is not None and config_host.is_file(), f"{name}: {cfg} not mounted"
    # The container's working directory must mirror the repository root, so that the config's
    # relative paths (the module) resolve there as they do here.
    with open(config_host) as f:
        files = _local_filenames(yaml.safe_load(f))
    for rel in [cfg, *files]:
        in_container = _container_path(svc, rel)
        seen = host_path(svc, in_container)
        expected = (harness.REPO / rel).resolve()
        assert seen == expected, (f"service {name} sees {in_container} as {seen}; the config "
                                  f"expects the repository's {rel}")
        if not expected.is_file():
            pytest.fail(f"{expected} missing: run `make build` first", pytrace=False)
    argv = _argv(svc["command"])
    r = subprocess.run([envoy_bin, *argv[1:], "--mode", "validate"], cwd=harness.REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK" in r.stdout, (
        f"service {name}: `envoy {' '.join(argv[1:])} --mode validate` in {harness.REPO} "
        f"(mirroring {workdir}) failed:\n{r.stdout}\n{r.stderr}")


def test_images_are_pinned_and_envoy_matches_the_tested_release(envoy_bin):
    envoy_images = set()
    for name, svc in services().items():
        image = svc.get("image")
        assert image, f"service {name} has no image"
        ref, _, digest = image.partition("@")
        tag = ref.rsplit(":", 1)[1] if ":" in ref.rsplit("/", 1)[-1] else ""
        assert tag or digest, f"service {name}: image {image} is not pinned (no tag: latest)"
        assert tag != "latest" and not tag.endswith("-latest"), \
            f"service {name}: image {image} uses a moving 'latest' tag"
        if ref.startswith("envoyproxy/envoy:"):
            envoy_images.add(image)
    assert len(envoy_images) == 1, f"the Envoy services should share one image: {envoy_images}"
    (image,) = envoy_images
    m = re.fullmatch(r"envoyproxy/envoy:v(\d+)\.(\d+)\.(\d+)(@sha256:[0-9a-f]{64})?", image)
    assert m, f"{image}: expected envoyproxy/envoy:vX.Y.Z, optionally @sha256:<digest>"
    version = subprocess.run([envoy_bin, "--version"], capture_output=True, text=True).stdout
    tested = re.search(r"/(\d+)\.(\d+)\.(\d+)/", version)
    assert tested, f"cannot read the version from `envoy --version`: {version!r}"
    assert m.group(1, 2) == tested.group(1, 2), (
        f"docker-compose.yml runs {image} but the tests run Envoy {'.'.join(tested.groups())}")


def test_scripts_parse():
    checked = []
    for name, svc in services().items():
        # Mounted scripts.
        for source, _ in bind_mounts(svc):
            if source.suffix == ".py":
                r = subprocess.run([sys.executable, "-m", "py_compile", str(source)],
                                   capture_output=True, text=True)
                assert r.returncode == 0, f"{source}:\n{r.stderr}"
                checked.append(source.name)
            elif source.suffix == ".sh":
                r = subprocess.run(["sh", "-n", str(source)], capture_output=True, text=True)
                assert r.returncode == 0, f"{source}:\n{r.stderr}"
                checked.append(source.name)
        # Inline shell: entrypoint or command of the form [bash|sh, -c, script, ...]. Compose
        # turns $$ into $ before the shell sees it.
        for key in ("entrypoint", "command"):
            argv = _argv(svc.get(key))
            if len(argv) >= 3 and posixpath.basename(argv[0]) in ("sh", "bash") and argv[1] == "-c":
                script = argv[2].replace("$$", "$")
                r = subprocess.run([posixpath.basename(argv[0]), "-n", "-c", script],
                                   capture_output=True, text=True)
                assert r.returncode == 0, f"service {name} {key}:\n{r.stderr}"
                checked.append(f"{name}.{key}")
    assert "traffic.py" in checked and "envoy.entrypoint" in checked, checked


# --------------------------------------------------------------------------------------------
# The demo itself, without Docker: traffic.py against local Envoys running the same configs.

def _traffic_env() -> dict[str, str]:
    env = services()["traffic"].get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def _analysis_steps(analysis: dict) -> list[int]:
    top = analysis.get("maxWeight", 100)
    if analysis.get("stepWeights"):
        return [min(w, top) for w in analysis["stepWeights"]]
    step = analysis["stepWeight"]
    return list(range(step, top + 1, step))


def test_traffic_settings_fit_the_shipped_analysis():
    """The rate reaches minRequests canary requests from the very first check (a window of one
    interval at the first weight), and the fault starts at a weight below promotion."""
    env = _traffic_env()
    analysis = harness.default_plugin_config()["analysis"]
    interval_s = float(re.fullmatch(r"(\d+)s", analysis["interval"]).group(1))
    steps = _analysis_steps(analysis)
    first_check = float(env["RATE"]) * steps[0] / 100 * interval_s
    assert first_check >= 1.5 * analysis["minRequests"], (
        f"RATE {env['RATE']} gives ~{first_check:.0f} canary requests to the first check "
        f"(weight {steps[0]}, {interval_s:g}s), too close to minRequests {analysis['minRequests']}: "
        f"the canary would be rolled back for 'no traffic'")
    fault_at = int(env["FAULT_AT_WEIGHT"])
    assert fault_at in steps[:-1], (
        f"FAULT_AT_WEIGHT {fault_at} must be one of the weights before the last step {steps}, "
        f"or the canary is promoted before the fault")


def run_traffic_first(env: dict, ready: Path, out_path: Path, proxies: list) -> tuple[int, str]:
    """envoy/traffic.py in the compose start order: it sends first (refused connections), then
    the proxies start; its exit code and output once it is done."""
    with open(out_path, "w") as out:
        traffic = subprocess.Popen([sys.executable, str(harness.REPO / "envoy" / "traffic.py")],
                                   env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 10
            while not ready.exists():
                assert traffic.poll() is None and time.monotonic() < deadline, \
                    f"traffic.py did not start sending:\n{out_path.read_text()}"
                time.sleep(0.05)
            time.sleep(0.5)  # requests are flowing (refused) before the proxies start
            for p in proxies:
                p.start()
            rc = traffic.wait(timeout=float(env["MAX_SECONDS"]) + 30)
        finally:
            if traffic.poll() is None:
                traffic.kill()
                traffic.wait()
    return rc, out_path.read_text()


def test_traffic_script_drives_the_shipped_config_to_a_rollback(launcher, tmp_path):
    """The compose scenario in the compose order (traffic, backends, proxy) with local Envoys:
    harness.py renders envoy/backends.yaml and envoy/envoy.yaml (only ports and paths changed,
    the plugin configuration as shipped)."""
    backends = launcher.backends()
    ready = tmp_path / "traffic-sending"
    out_path = tmp_path / "traffic.out"
    # The proxy is created (ports chosen) but not started, so that traffic knocks first.
    proxy = harness.Proxy(tmp_path, backends, harness.default_plugin_config(), name="proxy")
    launcher._track(proxy)
    env = {**os.environ, **_traffic_env(), "READY_FILE": str(ready),
           "PROXY": f"127.0.0.1:{proxy.listener_port}",
           "PROXY_ADMIN": f"127.0.0.1:{proxy.admin_port}",
           "BACKENDS_ADMIN": f"127.0.0.1:{backends.admin_port}"}
    rc, text = run_traffic_first(env, ready, out_path, [proxy])
    assert rc == 0 and "result: rollback as expected" in text, f"traffic.py exit {rc}:\n{text}"
    log = proxy.log_text()
    rollback = [l for l in log.splitlines() if "rolling back" in l]
    assert len(rollback) == 1 and "request-success-rate" in rollback[0], \
        f"expected one rollback on the success rate:\n{rollback}\n--- traffic.py ---\n{text}"
    assert "no traffic" not in log, f"a check lacked traffic:\n{text}"
