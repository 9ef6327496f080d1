//! Window sums against an exact per-request model, for windows from 1 s to 24 h (alone and
//! mixed in one configuration): tally::SlotRecord's series cut from the analysis start.
//!
//! For each metric window W at time `now`, with `from = max(now - W, start)`:
//! - nothing before `from` is counted (no outcome outside the window, none of an earlier
//!   revision);
//! - everything in `[from + bucket, now]` is, with `bucket = bucket_ms_for(W)` (W/64, at least
//!   100 ms): at most one bucket at the far end is missed;
//! - when the analysis is younger than the window (`from == start`), the sum is exact.

use canary_guard::outcome::Side;
use canary_guard::tally::{bucket_ms_for, SlotRecord, Tally};
use proptest::prelude::*;

const DAY: u64 = 24 * 3600 * 1000;

fn window() -> impl Strategy<Value = u64> {
    prop_oneof![
        1_000u64..=60_000,
        60_000u64..=3_600_000,
        Just(DAY),
        3_600_000u64..=DAY,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn windows_count_what_the_exact_model_says(
        windows in prop::collection::vec(window(), 1..=3),
        start in 1_000_000u64..2_000_000_000,
        elapsed in 0u64..(2 * DAY),
        // Request offsets from the analysis start (some before it: an earlier revision).
        offsets in prop::collection::vec(-600_000i64..(2 * DAY as i64), 0..400),
        errors in prop::collection::vec(any::<bool>(), 400),
    ) {
        let now = start + elapsed;
        let mut times: Vec<u64> = offsets
            .iter()
            .map(|o| (start as i64 + o) as u64)
            .filter(|t| *t <= now)
            .collect();
        times.sort_unstable();
        let mut r = SlotRecord::new(1, &windows);
        r.origin_ms = start;
        let mut model: Vec<(u64, bool)> = Vec::new();
        for (i, t) in times.iter().enumerate() {
            let e = errors[i % errors.len()];
            r.record(*t, Side::Canary, if e { 503 } else { 200 }, 1_000);
            model.push((*t, e));
            // The worker prunes on its ticks; do it now and then as time passes.
            if i % 17 == 0 {
                r.prune(*t);
            }
        }
        r.prune(now);
        let exact = |from: u64| {
            let in_range: Vec<&(u64, bool)> = model.iter().filter(|(t, _)| *t >= from && *t <= now).collect();
            (in_range.len() as u64, in_range.iter().filter(|(_, e)| *e).count() as u64)
        };
        for w in &windows {
            let from = now.saturating_sub(*w).max(start);
            let mut t = Tally::default();
            r.window(Side::Canary, *w, from, now, &mut t);
            let (all, all_errors) = exact(from);
            let (inner, _) = exact(from + bucket_ms_for(*w));
            prop_assert!(t.requests <= all && t.errors <= all_errors,
                "window {w}: counted {} (errors {}), only {all} ({all_errors}) in [from, now]", t.requests, t.errors);
            prop_assert!(t.requests >= inner,
                "window {w}: counted {}, but {inner} lie in [from + bucket, now]", t.requests);
            if from == start {
                prop_assert_eq!((t.requests, t.errors), (all, all_errors),
                    "window {} longer than the analysis: all of it", w);
            }
        }
    }
}
