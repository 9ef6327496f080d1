"""The Istio shapes of istio/ in a real Envoy (scripts/istio_envoy_check.py), one test per
check group so that each shows in the JUnit report: every WasmPlugin's pluginConfig accepted as
istiod delivers it (and a misspelt control refused), the stats kept and named under Istio's
stats matcher and bootstrap override, the EnvoyFilter keeping a forged routing header from the
canary route, the control plugin on its loopback listener. The script stays runnable alone: `python -m scripts.istio_envoy_check`."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts import istio_envoy_check
from tests.integration import harness


@pytest.mark.parametrize("check", ["plugin_config", "stats", "envoyfilter", "control"])
def test_istio_envoy_check(check: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    checker = istio_envoy_check.Checker(harness.envoy_binary(), Path(harness.wasm_path()), tmp_path)
    getattr(checker, check)()
    report = capsys.readouterr().out
    assert checker.runs > 0, "the check started no Envoy"
    assert not checker.failures, f"failed: {checker.failures}\n{report}"
