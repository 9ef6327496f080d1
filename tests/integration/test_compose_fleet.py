"""docker-compose.fleet.yml (etcd + three replicas in fleet mode), checked without a Docker
engine, as test_compose.py checks docker-compose.yml: Compose accepts the file; each replica's
config, rendered by envoy/replica.sh exactly as its entrypoint does, is envoy/envoy-fleet.yaml
but for its own listener, admin and control ports and passes `envoy --mode validate` with the service's
flags; the images are pinned; the scripts parse; and traffic.py in fleet mode, against a real
etcd and three local Envoys running the shipped fleet config in the compose start order,
sees one rollback made once and followed by every replica.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import yaml

from tests.integration import harness
from tests.integration.fleet import Etcd, add_etcd_cluster
from tests.integration.test_compose import (_argv, _container_path, bind_mounts, compose_command,
                                            config_arg, host_path, load_compose, run_traffic_first)

COMPOSE_FILE = harness.REPO / "docker-compose.fleet.yml"
FLEET_YAML = harness.REPO / "envoy" / "envoy-fleet.yaml"
REPLICA_SH = harness.REPO / "envoy" / "replica.sh"
REPLICAS = ["replica-1", "replica-2", "replica-3"]


def services() -> dict[str, dict]:
    with open(COMPOSE_FILE) as f:
        return yaml.safe_load(f)["services"]


def resolved() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_"))}
    r = subprocess.run([*compose_command(), "-f", str(COMPOSE_FILE), "config"], cwd=harness.REPO,
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"compose config failed:\n{r.stdout}\n{r.stderr}"
    return yaml.safe_load(r.stdout)["services"]


def env_of(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def render(svc: dict, out) -> subprocess.CompletedProcess:
    """envoy/replica.sh with the service's environment, as its entrypoint runs it."""
    env = {**os.environ, **env_of(svc)}
    return subprocess.run(["sh", str(REPLICA_SH), str(FLEET_YAML), str(out)], env=env,
                          capture_output=True, text=True, timeout=30)


def test_compose_accepts_the_fleet_file_and_everything_shares_the_etcd_namespace():
    svcs = resolved()
    assert set(svcs) == {"etcd", "backends", "traffic", *REPLICAS}, svcs.keys()
    for name, svc in svcs.items():
        if name != "etcd":
            assert svc.get("network_mode") == "service:etcd", \
                f"{name} must share the namespace (the configs use 127.0.0.1)"
    # Long syntax (Compose v2) or "host_ip:published:target" strings (docker-compose v1).
    published = {int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
                 for p in svcs["etcd"].get("ports", [])}
    listeners = {int(env_of(services()[r])["LISTEN_PORT"]) for r in REPLICAS}
    assert listeners <= published, f"replica listeners {listeners} not all published {published}"


def test_each_replica_runs_the_shipped_fleet_config_but_for_its_ports(tmp_path, envoy_bin, wasm):
    shipped = yaml.safe_load(FLEET_YAML.read_text())
    seen_ports = set()
    for name in REPLICAS:
        svc = services()[name]
        script = _argv(svc["entrypoint"])[2]
        assert "envoy/replica.sh envoy/envoy-fleet.yaml /tmp/envoy-fleet.yaml" in script, script
        argv = _argv(svc["command"])
        assert config_arg(argv) == "/tmp/envoy-fleet.yaml", argv
        assert argv[argv.index("--service-node") + 1] == name, "each replica its own node id"
        for rel in ("envoy/envoy-fleet.yaml", "envoy/replica.sh",
                    "target/wasm32-wasip1/release/canary_guard.wasm"):
            assert host_path(svc, _container_path(svc, rel)) == (harness.REPO / rel).resolve(), \
                f"{name}: {rel} not mounted from the repository"
        out = tmp_path / f"{name}.yaml"
        r = render(svc, out)
        assert r.returncode == 0, r.stderr
        rendered = yaml.safe_load(out.read_text())
        env = env_of(svc)
        listen, admin, control = (int(env[k]) for k in ("LISTEN_PORT", "ADMIN_PORT", "CONTROL_PORT"))
        assert rendered["admin"]["address"]["socket_address"]["port_value"] == admin
        ingress = harness._listener(rendered, "ingress")
        assert ingress["address"]["socket_address"]["port_value"] == listen
        ctl = harness._listener(rendered, "canary-guard-control")
        assert ctl["address"]["socket_address"]["port_value"] == control
        rendered["admin"]["address"]["socket_address"]["port_value"] = 9901
        ingress["address"]["socket_address"]["port_value"] = 10000
        ctl["address"]["socket_address"]["port_value"] = 9902
        assert rendered == shipped, f"{name}: replica.sh changed more than the three ports"
        assert not seen_ports & {listen, admin, control}, f"{name}: ports {listen}/{admin}/{control} reused"
        seen_ports |= {listen, admin, control}
        # Envoy accepts the rendered file with the service's flags (module path as in the repo).
        cfg = yaml.safe_load(out.read_text())
        for holder in (harness._http_filter(harness._listener(cfg, "ingress"),
                                            "envoy.filters.http.wasm")["config"],
                       cfg["bootstrap_extensions"][0]["typed_config"]["config"]):
            holder["vm_config"]["code"]["local"]["filename"] = wasm
        out.write_text(yaml.safe_dump(cfg))
        args = [str(out) if a == "/tmp/envoy-fleet.yaml" else a for a in argv[1:]]
        r = subprocess.run([envoy_bin, *args, "--mode", "validate"], cwd=harness.REPO,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "OK" in r.stdout, f"{name}:\n{r.stdout}\n{r.stderr}"
    traffic = env_of(services()["traffic"])
    assert traffic["PROXY"].split(",") == [f"127.0.0.1:{env_of(services()[r])['LISTEN_PORT']}" for r in REPLICAS]
    assert traffic["PROXY_ADMIN"].split(",") == [f"127.0.0.1:{env_of(services()[r])['ADMIN_PORT']}" for r in REPLICAS]


def test_replica_sh_refuses_a_config_without_the_ports(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("admin: {}\n")
    r = subprocess.run(["sh", str(REPLICA_SH), str(bad), str(tmp_path / "out.yaml")],
                       env={**os.environ, "LISTEN_PORT": "1", "ADMIN_PORT": "2", "CONTROL_PORT": "3"},
                       capture_output=True, text=True)
    assert r.returncode != 0 and "should hold 'port_value: 10000 }' once" in r.stderr


def test_images_are_pinned_and_match_the_plain_compose_file():
    plain = {s.get("image") for s in load_compose()["services"].values()}
    for name, svc in services().items():
        image = svc["image"]
        if name == "etcd":
            assert re.fullmatch(r"(gcr\.io/etcd-development|quay\.io/coreos)/etcd:v3\.\d+\.\d+"
                                r"(@sha256:[0-9a-f]{64})?", image), f"etcd: {image} not a pinned official image"
        else:
            assert image in plain, f"{name}: {image} is not one of docker-compose.yml's images {plain}"


def test_fleet_scripts_parse():
    for name in REPLICAS:
        script = _argv(services()[name]["entrypoint"])[2].replace("$$", "$")
        r = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
        assert r.returncode == 0, f"{name} entrypoint:\n{r.stderr}"
    r = subprocess.run(["sh", "-n", str(REPLICA_SH)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for source, _ in bind_mounts(services()["traffic"]):
        r = subprocess.run([sys.executable, "-m", "py_compile", str(source)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def shipped_plugin_config() -> dict:
    cfg = yaml.safe_load(FLEET_YAML.read_text())
    wasm_filter = harness._http_filter(harness._listener(cfg, "ingress"), "envoy.filters.http.wasm")
    return json.loads(wasm_filter["config"]["configuration"]["value"])


def test_fleet_traffic_drives_three_replicas_to_one_rollback(launcher, tmp_path):
    """The fleet compose scenario with local processes: a real etcd, the backends, three
    Envoys with the shipped fleet plugin configuration (ports and paths changed, as harness.py
    renders envoy.yaml), and traffic.py with the compose file's settings, started first."""
    etcd = Etcd(tmp_path).start()
    try:
        backends = launcher.backends()
        proxies = []
        for name in REPLICAS:
            p = harness.Proxy(tmp_path, backends, shipped_plugin_config(), name=name)
            add_etcd_cluster(p, etcd.port, name)
            launcher._track(p)
            proxies.append(p)
        env = {**os.environ, **env_of(services()["traffic"]),
               "READY_FILE": str(tmp_path / "traffic-sending"),
               "PROXY": ",".join(f"127.0.0.1:{p.listener_port}" for p in proxies),
               "PROXY_ADMIN": ",".join(f"127.0.0.1:{p.admin_port}" for p in proxies),
               "BACKENDS_ADMIN": f"127.0.0.1:{backends.admin_port}"}
        rc, text = run_traffic_first(env, tmp_path / "traffic-sending", tmp_path / "traffic.out", proxies)
        assert rc == 0 and "result: rollback as expected" in text, f"traffic.py exit {rc}:\n{text}"
        assert "fleet: 1 judge, 1 rollback in all" in text, text
        logs = [p.log_text() for p in proxies]
        assert sum(l.count("rolling back") for l in logs) == 1, "one rollback, by the judge"
        assert not any("no traffic" in l for l in logs), text
    finally:
        etcd.stop()
