//! The statistical judge (`error-rate-vs-stable`) in one simulated proxy (`testkit::sim`): the
//! workers' tallies, the analyser's per-tick sequential test, its state in shared data, and
//! the rollback it decides, on the fake host's clock.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::judge::JudgeState;
use canary_guard::state::Phase;
use canary_guard::testkit::sim::{config, Mode, Sim};
use serde_json::json;

fn judged() -> String {
    config(&[
        ("/analysis/interval", json!("2s")),
        (
            "/analysis/metrics",
            json!([{"name": "error-rate-vs-stable", "maxRatio": 1.5, "alpha": 0.01, "interval": "2s"}]),
        ),
    ])
}

fn sim(stable_pct: u64, canary_pct: u64) -> Sim {
    let mut sim = Sim::new(Mode::Singleton, 2, &judged());
    sim.load = 6; // 600 requests/s
    sim.backend.stable_5xx_pct = stable_pct;
    sim.backend.canary_5xx_pct = canary_pct;
    sim
}

fn rollbacks(sim: &Sim) -> Vec<String> {
    sim.tel
        .logs
        .iter()
        .map(|(_, m)| m.clone())
        .filter(|m| m.contains("rolling back"))
        .collect()
}

#[test]
fn a_shared_outage_raising_both_sides_errors_is_not_a_rollback() {
    let mut s = sim(5, 5);
    assert!(
        s.run_until(30_000, |s| s.phase().is_some_and(|p| !p.is_running())),
        "{:?}",
        s.history
    );
    assert_eq!(s.phase(), Some(Phase::Succeeded), "{:?}", rollbacks(&s));
    assert!(rollbacks(&s).is_empty());
}

#[test]
fn a_canary_at_three_times_stables_error_rate_is_rolled_back_with_its_evidence() {
    let mut s = sim(5, 15);
    assert!(
        s.run_until(30_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        s.history
    );
    let lines = rollbacks(&s);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert!(
        line.contains("error-rate-vs-stable: canary worse than 1.5x stable at alpha 0.01")
            && line.contains("rejected at once")
            && line.contains("e-value"),
        "{line}"
    );
    // The test's state is in shared data, for the next leader, and decodes.
    let bytes = s.store.raw("canary-guard/web/judge").unwrap();
    let judge = JudgeState::decode(&bytes).unwrap();
    assert_eq!(judge.revision, "v2");
    assert!(judge.tests[0].rejects(0.01));
}

#[test]
fn a_canary_failing_every_request_is_rolled_back_within_a_few_ticks() {
    let mut s = sim(1, 0);
    assert!(s.run_until(10_000, |s| s.weight() >= 5), "{:?}", s.history);
    s.backend.canary_5xx_pct = 100;
    let broke = s.now;
    assert!(
        s.run_until(5_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        s.history
    );
    let took = s.now - broke;
    // A bucket (100 ms) ends, the read lag (200 ms) passes, the next tick (100 ms) reads it.
    assert!(took <= 500, "rolled back {took} ms after the canary broke");
    assert!(
        rollbacks(&s)[0].contains("error-rate-vs-stable"),
        "{:?}",
        rollbacks(&s)
    );
}

fn latency_judged() -> String {
    config(&[
        ("/analysis/interval", json!("2s")),
        (
            "/analysis/metrics",
            json!([{"name": "latency-vs-stable", "percentile": 90, "maxRatio": 1.5, "alpha": 0.01, "interval": "2s"}]),
        ),
    ])
}

#[test]
fn latency_vs_stable_passes_a_canary_as_fast_as_stable_and_rolls_back_a_slower_one() {
    // Stable answers in 20-25 ms; so does the first canary.
    let mut same = Sim::new(Mode::Singleton, 2, &latency_judged());
    same.load = 6;
    same.backend.canary_ms = 20;
    assert!(same.run_until(30_000, |s| s.phase().is_some_and(|p| !p.is_running())));
    assert_eq!(
        same.phase(),
        Some(Phase::Succeeded),
        "{:?}",
        rollbacks(&same)
    );
    // 3 ms slower: most of its requests are above stable's p90 (~24.5 ms).
    let mut slow = Sim::new(Mode::Singleton, 2, &latency_judged());
    slow.load = 6;
    slow.backend.canary_ms = 23;
    assert!(
        slow.run_until(30_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        slow.history
    );
    let line = &rollbacks(&slow)[0];
    assert!(
        line.contains(
            "latency-vs-stable (slow: above stable's p90): canary worse than 1.5x stable"
        ) && line.contains("slow requests"),
        "{line}"
    );
}
