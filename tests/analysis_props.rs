//! Property tests of the analysis state machine (`analysis::start`, `is_due`, `check`), driven
//! the way the analyser drives it: random valid configurations (through the real parser) and
//! random sequences of time steps and canary outcomes (healthy, failing, no data, mixed).
//!
//! Properties, for every reachable state:
//! - the weight never exceeds the last step (`maxWeight`) before promotion, and is 0 in Failed;
//! - Failed and Succeeded are final: no check is ever due again;
//! - failed checks never decrease within a revision (except a passing check in `consecutive`
//!   mode, which resets them, as Flagger does);
//! - the weight never decreases except on rollback;
//! - every check emits exactly one event, the one that describes its transition, and every
//!   phase change is logged with the new phase's name;
//! - promotion happens only from the last step after a passing check (A/B: after the
//!   iterations);
//! - a check runs only when due, and at most once per interval;
//! - every state the analysis writes is one the shared-data codec accepts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::config::{parse, Config, Steps};
use canary_guard::metrics::{evaluate, MetricResult};
use canary_guard::state::{CanaryState, Phase};
use canary_guard::state_machine::{check, is_due, start, Event, Gates, Logged};
use canary_guard::tally::Tally;
use proptest::prelude::*;
use serde_json::{json, Value};

// ---- configurations -----------------------------------------------------------------------------

fn steps() -> impl Strategy<Value = Value> {
    prop_oneof![
        // stepWeight with or without maxWeight (>= stepWeight).
        (1u32..=100, proptest::option::of(0u32..=100)).prop_map(|(step, extra)| {
            match extra {
                Some(e) => json!({"stepWeight": step, "maxWeight": (step + e).min(100)}),
                None => json!({"stepWeight": step}),
            }
        }),
        // stepWeights, strictly increasing, optionally capped by maxWeight (>= the first).
        (
            proptest::collection::btree_set(1u32..=100, 1..8),
            proptest::option::of(0u32..=100)
        )
            .prop_map(|(set, extra)| {
                let list: Vec<u32> = set.into_iter().collect();
                match extra {
                    Some(e) => json!({"stepWeights": list, "maxWeight": (list[0] + e).min(100)}),
                    None => json!({"stepWeights": list}),
                }
            }),
        // A/B testing: iterations (needs a match rule, added below).
        (1u32..8).prop_map(|n| json!({"iterations": n})),
    ]
}

fn metrics() -> impl Strategy<Value = Value> {
    let success = (0u32..=100)
        .prop_map(|min| json!({"name": "request-success-rate", "thresholdRange": {"min": min}}));
    let duration = (1u32..2_000, 50u32..=100).prop_map(|(max, p)| {
        json!({"name": "request-duration", "thresholdRange": {"max": max}, "percentile": p})
    });
    (
        proptest::option::of(success),
        proptest::option::of(duration),
    )
        .prop_map(|(s, d)| Value::Array(s.into_iter().chain(d).collect()))
}

prop_compose! {
    fn config()(
        steps in steps(),
        metrics in metrics(),
        interval_ms in 100u64..5_000,
        threshold in 1u32..5,
        promotion in prop_oneof![Just(0u32), 1u32..=100],
        min_requests in 1u64..50,
        consecutive in any::<bool>(),
        skip in proptest::bool::weighted(0.05),
    ) -> Config {
        let mut analysis = json!({
            "interval": format!("{interval_ms}ms"),
            "threshold": threshold,
            "stepWeightPromotion": promotion,
            "minRequests": min_requests,
            "consecutive": consecutive,
            "metrics": metrics,
            "match": [{"headers": {"x-canary": {"exact": "insider"}}}],
        });
        for (k, v) in steps.as_object().unwrap() {
            analysis[k] = v.clone();
        }
        // No metrics is the explicit opt-in (refused otherwise: no evidence).
        if analysis["metrics"].as_array().is_some_and(Vec::is_empty) {
            analysis["promoteWithoutMetrics"] = json!(true);
        }
        let cfg = json!({
            "name": "web",
            "revision": "v2",
            "upstreams": {"header": "x-canary-upstream", "stable": "web-stable", "canary": "web-canary"},
            "analysis": analysis,
            "skipAnalysis": skip,
        });
        parse(cfg.to_string().as_bytes()).unwrap_or_else(|e| panic!("{e}: {cfg}"))
    }
}

// ---- outcomes and time ----------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Outcome {
    Healthy,
    Failing,
    NoData,
    Mixed {
        requests: u64,
        errors_pct: u64,
        latency_ms: u64,
    },
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        3 => Just(Outcome::Healthy),
        1 => Just(Outcome::Failing),
        1 => Just(Outcome::NoData),
        2 => (0u64..200, 0u64..=100, 1u64..3_000).prop_map(|(requests, errors_pct, latency_ms)| {
            Outcome::Mixed { requests, errors_pct, latency_ms }
        }),
    ]
}

fn window(o: &Outcome) -> Tally {
    // Healthy passes every generated metric: no errors, 0.5 ms (bounds are >= 1 ms).
    let (requests, errors, latency_us) = match *o {
        Outcome::Healthy => (100, 0, 500),
        Outcome::Failing => (100, 50, 2_500_000),
        Outcome::NoData => (0, 0, 0),
        Outcome::Mixed {
            requests,
            errors_pct,
            latency_ms,
        } => (requests, requests * errors_pct / 100, latency_ms * 1_000),
    };
    let mut t = Tally::default();
    for i in 0..requests {
        t.record(if i < errors { 503 } else { 200 }, latency_us);
    }
    t
}

fn results(cfg: &Config, o: &Outcome) -> Vec<MetricResult> {
    let w = window(o);
    cfg.analysis
        .metrics
        .iter()
        .map(|m| evaluate(m, cfg.analysis.min_requests, &w))
        .collect()
}

/// A time step as a fraction of the interval (0 = the same instant, 3 = three intervals).
fn step() -> impl Strategy<Value = (u64, Outcome)> {
    (0u64..=300, outcome())
}

// ---- the properties of one transition -------------------------------------------------------------

fn text(cfg: &Config, e: &Event) -> String {
    Logged::of(cfg, e).to_string()
}

fn is_final(p: Phase) -> bool {
    p == Phase::Failed || p == Phase::Succeeded
}

/// Everything one check may and must do, given the state before, after, and its events.
fn check_transition(
    cfg: &Config,
    before: &CanaryState,
    after: &CanaryState,
    events: &[Event],
    passed: bool,
    now: u64,
) -> Result<(), TestCaseError> {
    let a = &cfg.analysis;
    let max = a.steps.max_weight();
    prop_assert!(after.weight <= 100);
    prop_assert_eq!(after.last_check_ms, now, "a check records when it ran");
    prop_assert_eq!(&after.revision, &before.revision);
    prop_assert_eq!(after.started_ms, before.started_ms);
    if after.phase == Phase::Progressing {
        prop_assert!(
            after.weight <= max,
            "weight {} over the last step {max}",
            after.weight
        );
    }
    if after.phase == Phase::Failed {
        prop_assert_eq!(after.weight, 0);
    }
    if after.phase == Phase::Succeeded {
        prop_assert_eq!(after.weight, 100);
    }
    // Failed checks: a running total, reset only by a passing check in consecutive mode.
    if a.consecutive && passed {
        prop_assert_eq!(after.failed_checks, 0);
    } else {
        prop_assert!(after.failed_checks >= before.failed_checks);
    }
    prop_assert_eq!(after.failed_checks > before.failed_checks, !passed);
    prop_assert!(
        after.failed_checks <= before.failed_checks + 1,
        "one failed check per check"
    );
    if after.phase != Phase::Failed {
        prop_assert!(
            after.weight >= before.weight,
            "weight fell without a rollback"
        );
    }
    // Promotion: only from the last step (A/B: after the iterations), after a passing check.
    let promoted = matches!(after.phase, Phase::Promoting | Phase::Succeeded);
    if promoted && before.phase == Phase::Progressing {
        prop_assert!(passed, "promoted on a failing check");
        match a.steps {
            Steps::Iterations(n) => prop_assert!(after.iterations >= n),
            _ => prop_assert_eq!(before.weight, max, "promoted before the last step"),
        }
    }

    // Exactly one event, and it is the one describing this transition.
    prop_assert_eq!(events.len(), 1, "events {:?}", events);
    let e = &events[0];
    let line = text(cfg, e);
    match e {
        Event::RolledBack {
            from,
            failed,
            threshold,
            ..
        } => {
            prop_assert_eq!(after.phase, Phase::Failed);
            prop_assert_eq!(
                (*from, *failed, *threshold),
                (before.weight, after.failed_checks, a.threshold)
            );
            prop_assert!(after.failed_checks >= a.threshold);
        }
        Event::Halt {
            failed, threshold, ..
        } => {
            prop_assert_eq!(after.phase, before.phase);
            prop_assert_eq!(after.weight, before.weight);
            prop_assert_eq!((*failed, *threshold), (after.failed_checks, a.threshold));
            prop_assert!(after.failed_checks < a.threshold);
        }
        Event::Advance { from, to } => {
            prop_assert_eq!(
                (before.phase, after.phase),
                (Phase::Progressing, Phase::Progressing)
            );
            prop_assert_eq!((*from, *to), (before.weight, after.weight));
            prop_assert!(to > from);
        }
        Event::Iteration { done, of } => {
            prop_assert_eq!(
                (before.phase, after.phase),
                (Phase::Progressing, Phase::Progressing)
            );
            prop_assert_eq!(after.weight, before.weight);
            prop_assert_eq!(*done, after.iterations);
            prop_assert!(matches!(a.steps, Steps::Iterations(n) if n == *of && *done < n));
        }
        Event::PromotionStarted { weight } => {
            prop_assert_eq!(after.phase, Phase::Promoting);
            prop_assert_eq!(*weight, after.weight);
        }
        Event::PromotionCompleted => prop_assert_eq!(after.phase, Phase::Succeeded),
        other => prop_assert!(false, "a check emitted {:?}", other),
    }
    // Every phase change is logged, naming the new phase.
    if after.phase != before.phase {
        prop_assert!(
            line.contains(&format!("phase {}", after.phase.name())),
            "phase {} -> {} logged as {line:?}",
            before.phase.name(),
            after.phase.name()
        );
    } else {
        prop_assert!(
            !line.contains("phase ") || matches!(e, Event::PromotionStarted { .. }),
            "no phase change, yet {line:?}"
        );
    }
    Ok(())
}

// ---- the runs -------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn analysis_runs_keep_their_invariants(
        cfg in config(),
        t0 in 0u64..1_000_000_000_000,
        steps in proptest::collection::vec(step(), 1..60),
    ) {
        let interval = cfg.analysis.interval_ms;
        let (mut s, events) = start(&cfg, t0);
        prop_assert_eq!(events.len(), 1);
        prop_assert_eq!((s.failed_checks, s.iterations, s.last_check_ms), (0, 0, t0));
        match &events[0] {
            Event::Skipped => prop_assert_eq!((s.phase, s.weight), (Phase::Succeeded, 100)),
            Event::Started { weight } => {
                prop_assert_eq!(*weight, s.weight);
                prop_assert_eq!(s.weight, cfg.analysis.steps.first_weight());
                let logged = text(&cfg, &events[0]).contains(&format!("phase {}", s.phase.name()));
                prop_assert!(logged, "the start does not name its phase");
            }
            other => prop_assert!(false, "start emitted {:?}", other),
        }
        prop_assert_eq!(CanaryState::decode(&s.encode()), Some(s.clone()));

        let mut now = t0;
        let mut checks = 0;
        for (fraction, outcome) in &steps {
            now += interval * fraction / 100;
            let due = is_due(&cfg, &s, now);
            prop_assert_eq!(
                due,
                s.phase.is_running() && now >= s.last_check_ms + interval,
                "due exactly when running and an interval has passed"
            );
            if is_final(s.phase) {
                prop_assert!(!due, "{} is final", s.phase.name());
            }
            if !due {
                continue;
            }
            let r = results(&cfg, outcome);
            let passed = r.iter().all(MetricResult::passed);
            let (next, events) = check(&cfg, &s, &r, &Gates::OPEN, now);
            check_transition(&cfg, &s, &next, &events, passed, now)?;
            // At most once per interval: not due again until a full interval later.
            prop_assert!(!is_due(&cfg, &next, now + interval - 1));
            prop_assert!(!is_due(&cfg, &next, now));
            // The analyser writes it to shared data: the workers must be able to read it.
            prop_assert_eq!(CanaryState::decode(&next.encode()), Some(next.clone()));
            s = next;
            checks += 1;
        }
        // Failed and Succeeded stay put however long one waits.
        if is_final(s.phase) {
            prop_assert!(!is_due(&cfg, &s, now + 1_000 * interval));
            prop_assert!(!is_due(&cfg, &s, u64::MAX));
        }
        prop_assert!(checks <= steps.len());
    }

    /// A suspended analysis never checks, whatever the time.
    #[test]
    fn suspended_analysis_never_checks(cfg in config(), t0 in 0u64..1_000_000, later in 0u64..u64::MAX / 2) {
        let cfg = Config { suspend: true, ..cfg };
        let (s, _) = start(&cfg, t0);
        prop_assert!(!is_due(&cfg, &s, t0 + later));
    }

    /// Always healthy and always due: the analysis walks every step in order and promotes.
    #[test]
    fn a_healthy_canary_is_promoted_through_every_step(cfg in config()) {
        let interval = cfg.analysis.interval_ms;
        let (mut s, _) = start(&cfg, 0);
        let mut weights = vec![s.weight];
        let mut now = 0;
        for _ in 0..300 {
            if !s.phase.is_running() {
                break;
            }
            now += interval;
            let (next, _) = check(&cfg, &s, &results(&cfg, &Outcome::Healthy), &Gates::OPEN, now);
            s = next;
            weights.push(s.weight);
        }
        prop_assert_eq!(s.phase, Phase::Succeeded);
        prop_assert_eq!(s.failed_checks, 0);
        prop_assert!(weights.windows(2).all(|w| w[0] <= w[1]), "{:?}", weights);
        if let Steps::List(list) = &cfg.analysis.steps {
            if !cfg.skip_analysis {
                let progressing: Vec<u8> = weights.iter().copied().filter(|w| *w <= *list.last().unwrap()).collect();
                let mut distinct = progressing.clone();
                distinct.dedup();
                prop_assert_eq!(&distinct, list, "every step, in order");
            }
        }
    }

    /// Failing checks roll back after exactly `threshold` of them (running total).
    #[test]
    fn failing_checks_roll_back_at_the_threshold(cfg in config(), healthy_first in 0usize..4) {
        prop_assume!(!cfg.skip_analysis && !cfg.analysis.metrics.is_empty());
        let interval = cfg.analysis.interval_ms;
        let (mut s, _) = start(&cfg, 0);
        let mut now = 0;
        for _ in 0..healthy_first {
            now += interval;
            s = check(&cfg, &s, &results(&cfg, &Outcome::Healthy), &Gates::OPEN, now).0;
        }
        prop_assume!(s.phase.is_running());
        let mut failing = 0;
        while s.phase != Phase::Failed {
            now += interval;
            s = check(&cfg, &s, &results(&cfg, &Outcome::NoData), &Gates::OPEN, now).0;
            failing += 1;
            prop_assert!(failing <= cfg.analysis.threshold);
        }
        prop_assert_eq!(failing, cfg.analysis.threshold);
        prop_assert_eq!((s.weight, s.failed_checks), (0, cfg.analysis.threshold));
    }
}
