//! The statistical judge's guarantees (`canary_guard::judge`), checked by simulation:
//! - under the null (the canary's error rate exactly `maxRatio` times stable's, the boundary,
//!   where rejection is likeliest), with the weight stepping up and a bursty background rate
//!   shared by both sides, the share of runs ever rejected stays at or below `alpha`: seeded,
//!   600 runs of 30 minutes' traffic each at alpha 5% (expected at most 30 rejections; the
//!   binomial's 3-sigma tolerance allows 46);
//! - strictly inside the null (a healthy canary, ratio 1 against maxRatio 1.5) rejections are
//!   far rarer still;
//! - the test's state has a fixed size for any traffic, and what is encoded decodes to itself.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use canary_guard::judge::{Batch, JudgeState, SequentialTest};
use canary_guard::testkit::traffic::Rng;
use proptest::prelude::*;

/// One run: 1 s batches of 100 requests for 30 minutes, the weight stepping 5, 10, 25, 50 every
/// few minutes, stable's error rate drifting and now and then bursting (a shared outage).
fn rejected(rng: &mut Rng, ratio: f64, max_ratio: f64, alpha: f64) -> bool {
    let mut t = SequentialTest::default();
    for second in 0..1800u64 {
        let weight = [0.05, 0.10, 0.25, 0.50][(second / 450) as usize];
        let base = 0.01 * (1.0 + 0.5 * ((second as f64) / 97.0).sin());
        let burst = (second % 600) < 60 && second >= 600;
        let stable_p = if burst { base + 0.2 } else { base };
        let canary_p = (stable_p * ratio).min(1.0);
        let canary = rng.binomial(100, weight);
        let stable = 100 - canary;
        t.update(
            max_ratio,
            &Batch {
                canary_requests: canary,
                canary_events: rng.binomial(canary, canary_p),
                stable_requests: stable,
                stable_events: rng.binomial(stable, stable_p),
            },
        );
        if t.rejects(alpha) {
            return true;
        }
    }
    false
}

#[test]
fn under_the_null_the_share_of_runs_rejected_stays_at_or_below_alpha() {
    let mut rng = Rng(0x00c0_ffee);
    let runs = 600;
    let alpha = 0.05;
    let at_boundary = (0..runs)
        .filter(|_| rejected(&mut rng, 1.5, 1.5, alpha))
        .count();
    // alpha·runs = 30; + 3 sigma (sqrt(600 · 0.05 · 0.95) = 5.3) = 46.
    assert!(
        at_boundary <= 46,
        "{at_boundary} of {runs} rejected at the boundary (alpha {alpha})"
    );
    let healthy = (0..runs)
        .filter(|_| rejected(&mut rng, 1.0, 1.5, alpha))
        .count();
    println!("null: {at_boundary}/{runs} rejected at the boundary, {healthy}/{runs} healthy (alpha {alpha})");
    assert!(
        healthy <= 6,
        "{healthy} of {runs} healthy canaries rejected"
    );
}

#[test]
fn a_canary_three_times_worse_is_rejected_in_nearly_every_run() {
    let mut rng = Rng(7);
    let hits = (0..100)
        .filter(|_| rejected(&mut rng, 3.0, 1.5, 0.01))
        .count();
    println!("3x: {hits}/100 rejected");
    assert!(hits >= 95, "{hits} of 100");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn the_state_is_bounded_and_decodes_to_itself(
        batches in prop::collection::vec((0u64..5_000, 0u64..5_000, 0u64..5_000, 0u64..5_000), 0..200),
        tests in 1usize..=4,
        ratio in 1.0f64..10.0,
    ) {
        let mut state = JudgeState::new("v2", tests, 12_345);
        let empty = state.encode().len();
        for (i, (nc, c, ns, s)) in batches.into_iter().enumerate() {
            let b = Batch {
                canary_requests: nc,
                canary_events: c.min(nc),
                stable_requests: ns,
                stable_events: s.min(ns),
            };
            state.tests[i % tests].update(ratio, &b);
            state.cursor_ms += 100;
        }
        let bytes = state.encode();
        prop_assert_eq!(bytes.len(), empty, "fixed size whatever the traffic");
        prop_assert_eq!(JudgeState::decode(&bytes), Some(state));
    }
}
