"""Fixtures for the canary-guard integration tests (see harness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import harness


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the item (item.rep_setup/rep_call/rep_teardown) and,
    when a test fails, attach the tail of every Envoy log it started to the report."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for e in getattr(item, "_envoys", []):
            rep.sections.append((f"envoy log tail: {e.name} ({e.log_path})", e.log_tail(120)))


class Launcher:
    """Starts Envoys for one test and stops them all at teardown."""

    def __init__(self, node, tmp_path: Path):
        self.tmp_path = tmp_path
        self.envoys: list[harness.Envoy] = []
        node._envoys = self.envoys

    def _track(self, e):
        self.envoys.append(e)  # before start, so a failed start is still stopped and logged
        return e

    def backends(self, concurrency: int = 1, name: str = "backends") -> harness.Backends:
        return self._track(harness.Backends(self.tmp_path, name=name, concurrency=concurrency)).start()

    def proxy(self, backends: harness.Backends, plugin_cfg: dict | None = None,
              mode: str = "singleton", **kw) -> harness.Proxy:
        """kw: name, concurrency, fail_open, filter_config_override, wasm."""
        cfg = plugin_cfg if plugin_cfg is not None else harness.default_plugin_config()
        return self._track(harness.Proxy(self.tmp_path, backends, cfg, mode=mode, **kw)).start()

    def expect_failure(self, config: dict, name: str = "bad-envoy", **kw) -> tuple[int, str]:
        return harness.run_envoy_expect_failure(config, self.tmp_path, name=name, **kw)

    def stop_all(self) -> None:
        for e in reversed(self.envoys):
            e.stop()


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return harness.envoy_binary()


@pytest.fixture(scope="session")
def wasm(envoy_bin) -> str:
    return harness.wasm_path()


@pytest.fixture
def plugin_cfg() -> dict:
    """A fresh copy of the plugin JSON from envoy/envoy.yaml, for tests to tweak."""
    return harness.default_plugin_config()


@pytest.fixture
def launcher(request, tmp_path, envoy_bin) -> Launcher:
    l = Launcher(request.node, tmp_path)
    yield l
    l.stop_all()


@pytest.fixture
def backends(launcher) -> harness.Backends:
    return launcher.backends()
