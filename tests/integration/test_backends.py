"""Smoke test: the test backends answer, and canary faults toggle at runtime."""

import time

from tests.integration.harness import send, summarize


def test_backends_answer_and_canary_faults_toggle(backends):
    assert summarize(send(backends.stable_url, 20)) == {"stable/200": 20}
    assert summarize(send(backends.canary_url, 20)) == {"canary/200": 20}

    # 100% abort: every canary request fails (tagged canary), stable is untouched.
    backends.set_canary_fault(abort_percent=100)
    backends.wait_for(lambda: send(backends.canary_url, 1)[0] == (500, "canary"),
                      what="canary to abort")
    assert summarize(send(backends.canary_url, 20)) == {"canary/500": 20}
    assert summarize(send(backends.stable_url, 10)) == {"stable/200": 10}
    assert backends.stat("http.canary.fault.aborts_injected") >= 20

    # 300 ms delay on every canary request.
    backends.set_canary_fault(delay_ms=300)

    def timed_canary() -> float:
        t0 = time.monotonic()
        assert send(backends.canary_url, 1) == [(200, "canary")]
        return time.monotonic() - t0

    # Undelayed answers take ~1 ms; Envoy's timer may fire a hair before 300 ms, so 250 ms proves
    # the delay without depending on timer rounding.
    backends.wait_for(lambda: timed_canary() >= 0.25, what="canary delay >= 250ms")
    assert all(timed_canary() >= 0.25 for _ in range(3))

    # Healed.
    backends.set_canary_fault()
    backends.wait_for(lambda: timed_canary() < 0.2, what="canary delay to go away")
    assert summarize(send(backends.canary_url, 20)) == {"canary/200": 20}
