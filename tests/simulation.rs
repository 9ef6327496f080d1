//! Simulation scenarios: one proxy's worker contexts (and the singleton) as the plugin wires
//! them, on the test kit's fake host (`canary_guard::testkit::sim`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::analyser::{Analyser, LEASE_TTL_MS, WORKER_GRACE_MS};
use canary_guard::config::parse;
use canary_guard::host::{HostError, SetError, SharedStore, Stat};
use canary_guard::state::{CanaryState, Phase};
use canary_guard::store::lease::HolderKind;
use canary_guard::store::Keys;
use canary_guard::testkit::fake_host::{FakeStore, FakeTelemetry};
use canary_guard::testkit::sim::{config, Mode, Sim, INTERVAL_MS, NAME};
use serde_json::Value;
use std::cell::RefCell;

/// The logged reasons of the (only) rollback.
fn rollback_line(sim: &Sim) -> String {
    let lines: Vec<&String> = sim
        .tel
        .logs
        .iter()
        .map(|(_, m)| m)
        .filter(|m| m.contains("rolling back"))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    lines[0].clone()
}

const FIRST_TO_LAST: [u8; 6] = [1, 5, 10, 25, 50, 100];

#[test]
fn singleton_walks_every_step_weight_and_promotes_a_healthy_canary() {
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Succeeded)),
        "{:?}",
        sim.history
    );
    assert_eq!(sim.weights("v2"), FIRST_TO_LAST);
    assert_eq!(sim.weight(), 100);
    for (a, b) in [(1, 5), (5, 10), (10, 25), (25, 50)] {
        assert_eq!(
            sim.log_count(&format!("canary web rev v2: advance weight {a} -> {b}")),
            1,
            "{a} -> {b}"
        );
    }
    assert_eq!(sim.log_count("canary web rev v2: promotion completed"), 1);
    assert!(
        !sim.tel.logged("halt advancement"),
        "a healthy canary never fails a check"
    );
    assert_eq!(
        (sim.counter(Stat::Promotions), sim.counter(Stat::Checks)),
        (1, 5)
    );
    assert_eq!(sim.lease_holder(), sim.singleton_token());
    assert!(
        sim.leaders().is_empty(),
        "the workers stand by while the singleton holds the lease"
    );
    assert_eq!(
        sim.send(200).canary_requests,
        200,
        "promoted: all traffic to the canary"
    );
}

#[test]
fn elected_worker_leader_promotes_a_healthy_canary_alone() {
    let mut sim = Sim::new(Mode::Leader, 4, &config(&[]));
    sim.run(WORKER_GRACE_MS + 200); // every worker has ticked past its grace
    let done = sim.run_until(10_000, |s| {
        let leaders = s.leaders();
        assert_eq!(leaders.len(), 1, "exactly one leader at t={}", s.now);
        assert_eq!(s.lease_holder(), Some(s.nodes[leaders[0]].root.token()));
        s.phase() == Some(Phase::Succeeded)
    });
    assert!(done, "{:?}", sim.history);
    assert_eq!(sim.max_leaders, 1);
    assert_eq!(sim.weights("v2"), FIRST_TO_LAST);
    assert_eq!(sim.log_count("acquired the analyser lease as worker"), 1);
    assert!(sim.tel.logged("promotion completed"));
    assert_eq!(sim.counter(Stat::Promotions), 1);
}

#[test]
fn failing_canary_is_rolled_back_and_gets_no_more_traffic() {
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    sim.backend.canary_5xx_pct = 30;
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        sim.history
    );
    sim.run(2_000);
    let s = sim.state().unwrap();
    assert_eq!((s.phase, s.weight, s.failed_checks), (Phase::Failed, 0, 3));
    assert_eq!(sim.counter(Stat::Rollbacks), 1);
    assert!(sim.sent.canary_requests > 0 && sim.sent_after_failed.stable_requests > 1_000);
    assert_eq!(
        sim.sent_after_failed.canary_requests, 0,
        "nothing routed to the canary after the rollback"
    );
    assert!(
        rollback_line(&sim).contains("rolling back, request-success-rate"),
        "{}",
        rollback_line(&sim)
    );
    assert_eq!(sim.log_count("halt advancement, request-success-rate"), 2);
}

#[test]
fn slow_canary_is_rolled_back_on_request_duration() {
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    sim.backend.canary_ms = 800;
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        sim.history
    );
    assert_eq!(sim.weight(), 0);
    assert_eq!(sim.counter(Stat::Rollbacks), 1);
    let line = rollback_line(&sim);
    assert!(
        line.contains("rolling back, request-duration p99 8"),
        "{line}"
    );
    assert!(
        line.contains("ms > 500ms") && !line.contains("success-rate"),
        "{line}"
    );
}

#[test]
fn canary_without_traffic_fails_its_checks_and_is_rolled_back() {
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    sim.load = 0;
    sim.run(200);
    assert_eq!(
        sim.weight(),
        1,
        "the weight goes to the canary, but no request comes"
    );
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        sim.history
    );
    assert_eq!(
        sim.log_count("halt advancement, no traffic: 0 requests < minRequests 5"),
        2
    );
    assert!(rollback_line(&sim).contains("rolling back, no traffic: 0 requests < minRequests 5"));
    assert_eq!((sim.weight(), sim.counter(Stat::Rollbacks)), (0, 1));
}

#[test]
fn tallies_stay_exact_across_a_shutdown_and_slot_reuse() {
    let raw = config(&[("/analysis/threshold", 1000.into())]);
    let mut sim = Sim::new(Mode::Leader, 4, &raw);
    sim.backend.stable_5xx_pct = 2;
    sim.backend.canary_5xx_pct = 5;
    sim.run(1_515);
    // The leader's context goes away mid-run (between two of its ticks): lease and slot freed.
    let leader = sim.leaders()[0];
    let slot = sim.nodes[leader].root.slot_index().unwrap();
    sim.send(100); // requests that completed after the last tick
    sim.shutdown(leader);
    sim.run(500);
    assert_eq!(sim.leaders().len(), 1, "released lease taken over at once");
    let fresh = sim.add_worker(&raw);
    sim.run(1_000);
    assert_eq!(
        sim.nodes[fresh].root.slot_index(),
        Some(slot),
        "the released slot is adopted"
    );
    assert!(sim.sent.canary_errors > 0 && sim.sent.stable_errors > 0);
    sim.settle();
    sim.assert_tallies_exact();
    sim.run(2_000);
    sim.assert_tallies_exact();
}

/// Sums the checks counters; asserts they fit the time the analysis ran.
fn assert_one_check_per_interval(checks: u64, started_ms: u64, now_ms: u64, tick_ms: u64) {
    let elapsed = now_ms - started_ms;
    assert!(
        checks <= elapsed / INTERVAL_MS + 1,
        "{checks} checks in {elapsed} ms"
    );
    assert!(
        checks >= elapsed / (INTERVAL_MS + tick_ms),
        "the analysis ran: {checks} checks in {elapsed} ms"
    );
}

#[test]
fn two_leaders_sharing_a_token_never_check_twice_in_an_interval() {
    // A canary that always fails a check without reaching the threshold: every check is a
    // state change, for the whole run.
    let raw = config(&[("/analysis/threshold", 1000.into())]);
    let mut sim = Sim::new(Mode::Leader, 0, &raw);
    sim.backend.canary_5xx_pct = 30;
    // Same context id, same random bits, configured at the same time: the same token.
    sim.add_node(&raw, 7, 0x5eed);
    sim.add_node(&raw, 7, 0x5eed);
    assert_eq!(sim.nodes[0].root.token(), sim.nodes[1].root.token());
    sim.run(200);
    sim.add_worker(&raw); // a third context, which waits for the lease
    let mut both_led = false;
    for _ in 0..1_000 {
        sim.step();
        both_led |= sim.leaders().len() == 2;
    }
    assert!(both_led, "the shared token let both believe they lead");
    assert_eq!(
        sim.log_count("halt advancement"),
        sim.counter(Stat::Checks) as usize
    );
    assert_one_check_per_interval(
        sim.counter(Stat::Checks),
        sim.state().unwrap().started_ms,
        sim.now,
        50,
    );
}

/// A store where another context runs between this context's read of `key` and what follows
/// (two worker threads interleaving).
struct Interleaved<'a> {
    inner: &'a FakeStore,
    key: &'a str,
    other: RefCell<Option<Box<dyn FnOnce() + 'a>>>,
}

impl SharedStore for Interleaved<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let read = self.inner.get(key);
        if key == self.key {
            if let Some(run) = self.other.borrow_mut().take() {
                run();
            }
        }
        read
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        self.inner.set(key, value, cas)
    }
}

#[test]
fn a_check_racing_another_leaders_check_is_void() {
    let cfg = parse(config(&[("/analysis/threshold", 1000.into())]).as_bytes()).unwrap();
    let store = FakeStore::default();
    let state_key = Keys::new(NAME).state;
    let (mut a, mut b) = (
        Analyser::new(cfg.clone(), 7, HolderKind::Worker),
        Analyser::new(cfg, 7, HolderKind::Worker),
    );
    let (mut tel_a, mut tel_b) = (FakeTelemetry::default(), FakeTelemetry::default());
    let mut now = 0;
    while now < 10_000 {
        // b runs a whole tick right after a reads the state, so a's check then writes with a stale cas.
        {
            let b_tick: Box<dyn FnOnce() + '_> = Box::new(|| b.tick(&store, &mut tel_b, now));
            let racing = Interleaved {
                inner: &store,
                key: &state_key,
                other: RefCell::new(Some(b_tick)),
            };
            a.tick(&racing, &mut tel_a, now);
            let missed = racing.other.take(); // a did not read the state: b ticks after it
            if let Some(run) = missed {
                run();
            }
        }
        now += 50;
    }
    let checks = tel_a.counter_of(NAME, Stat::Checks) + tel_b.counter_of(NAME, Stat::Checks);
    assert_eq!(
        tel_a.counter_of(NAME, Stat::Checks),
        0,
        "every racing check of a lost its CAS"
    );
    let state = CanaryState::decode(&store.raw(&state_key).unwrap()).unwrap();
    assert_eq!(
        u64::from(state.failed_checks),
        checks,
        "each check counted is one state change"
    );
    assert_one_check_per_interval(checks, state.started_ms, now, 50);
}

#[test]
fn leadership_fails_over_within_the_lease_ttl_when_the_leader_crashes() {
    let mut sim = Sim::new(Mode::Leader, 3, &config(&[]));
    assert!(sim.run_until(10_000, |s| s.weight() >= 10));
    let crashed = sim.leaders()[0];
    sim.nodes[crashed].ticking = false; // no release: the lease must expire
    sim.nodes[crashed].serving = false;
    let (crash_ms, checks_before) = (sim.now, sim.counter(Stat::Checks));
    let mut took_over_ms = None;
    while took_over_ms.is_none() && sim.now < crash_ms + 2 * LEASE_TTL_MS {
        let t = sim.now;
        sim.step();
        took_over_ms = sim.leaders().iter().any(|i| *i != crashed).then_some(t);
    }
    let waited = took_over_ms.expect("nobody took over") - crash_ms;
    let tick = sim.nodes[0].period();
    assert!(
        waited + tick >= LEASE_TTL_MS && waited <= LEASE_TTL_MS + tick,
        "took over after {waited} ms"
    );
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Succeeded)),
        "{:?}",
        sim.history
    );
    assert!(sim.counter(Stat::Checks) > checks_before);
    assert_eq!(
        sim.weights("v2"),
        FIRST_TO_LAST,
        "the new leader continued where the old one stopped"
    );
    assert_eq!(sim.log_count("acquired the analyser lease as worker"), 2);
}

#[test]
fn singleton_restarts_on_a_new_revision_and_keeps_state_on_the_same_one() {
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    assert!(sim.run_until(10_000, |s| s.weight() >= 10));
    // Same revision, other settings: the analysis goes on from where it was.
    sim.reconfigure_all(&config(&[("/analysis/threshold", 5.into())]));
    assert!(sim.run_until(3_000, |s| s.log_count("singleton analyser picked up") == 2));
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Succeeded)),
        "{:?}",
        sim.history
    );
    assert_eq!(
        sim.weights("v2"),
        FIRST_TO_LAST,
        "no step repeated or skipped"
    );
    assert_eq!(sim.log_count("starting analysis"), 1);
    // A new revision starts over from the first step.
    sim.reconfigure_all(&config(&[("/revision", "v3".into())]));
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Succeeded)
            && s.weight() == 100
            && s.state().unwrap().revision == "v3")
    );
    assert!(sim
        .tel
        .logged("canary web: revision v2 -> v3, previous phase Succeeded"));
    assert!(sim
        .tel
        .logged("canary web rev v3: starting analysis, phase Progressing, weight 0 -> 1"));
    assert_eq!(sim.weights("v3"), FIRST_TO_LAST);
    assert_eq!(sim.counter(Stat::Promotions), 2);
}

#[test]
fn failed_revision_stays_failed_when_its_configuration_is_reapplied() {
    let raw = config(&[]);
    let mut sim = Sim::new(Mode::Singleton, 4, &raw);
    sim.backend.canary_5xx_pct = 30;
    assert!(sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)));
    sim.reconfigure_all(&raw);
    sim.run(3_000);
    // And the singleton restarts (a new one picks the configuration up afresh).
    let old = sim.singleton_token();
    sim.restart_singleton();
    assert_ne!(sim.singleton_token(), old);
    sim.run(3_000);
    assert_eq!(sim.log_count("singleton analyser picked up"), 2);
    assert_eq!(sim.lease_holder(), sim.singleton_token());
    assert_eq!((sim.phase(), sim.weight()), (Some(Phase::Failed), 0));
    assert_eq!(
        (
            sim.counter(Stat::Rollbacks),
            sim.log_count("starting analysis")
        ),
        (1, 1)
    );
    assert!(sim.sent_after_failed.stable_requests > 5_000);
    assert_eq!(sim.sent_after_failed.canary_requests, 0);
}

#[test]
fn corrupt_state_routes_to_stable_and_a_corrupt_slot_is_ignored_and_logged_once() {
    let mut sim = Sim::new(
        Mode::Singleton,
        4,
        &config(&[("/analysis/threshold", 1000.into())]),
    );
    assert!(sim.run_until(10_000, |s| s.weight() >= 25));
    let keys = Keys::new(NAME);
    sim.store.put(&keys.state, b"CGst\x01garbage");
    let routed = sim.send(500);
    assert_eq!((routed.stable_requests, routed.canary_requests), (500, 0));
    // Unreadable state: the analyser starts this revision over from the first step.
    sim.run(200);
    assert_eq!((sim.phase(), sim.weight()), (Some(Phase::Progressing), 1));

    // A corrupt slot after the live ones: skipped in the sums, reported once.
    sim.store.put(&keys.slot(4), b"CGtl\x01junk");
    sim.run(2_000);
    // A live worker's slot corrupted: its owner republishes its whole record there.
    sim.store.put(&keys.slot(0), b"junk");
    sim.run(1_000);
    assert_eq!(sim.log_count("ignored 1 unreadable tally slot(s)"), 1);
    assert_eq!(sim.log_count("unreadable tally slot"), 1, "logged once");
    assert_eq!(
        sim.nodes
            .iter()
            .filter(|n| n.root.slot_index() == Some(0))
            .count(),
        1
    );
    sim.settle();
    sim.assert_tallies_exact();
}

#[test]
fn draining_contexts_with_the_old_configuration_do_not_restart_the_new_analysis() {
    // An LDS update drains the old listener: its root contexts keep ticking (no traffic) while
    // new ones run the new configuration.
    let mut sim = Sim::new(Mode::Singleton, 4, &config(&[]));
    assert!(sim.run_until(10_000, |s| s.weight() >= 10));
    sim.nodes.iter_mut().for_each(|n| n.serving = false);
    for _ in 0..4 {
        sim.add_worker(&config(&[("/revision", "v3".into())]));
    }
    assert!(
        sim.run_until(15_000, |s| s.phase() == Some(Phase::Succeeded)
            && s.state().unwrap().revision == "v3"),
        "{:?}",
        sim.history
    );
    sim.run(15_000);
    assert_eq!(sim.weights("v3"), FIRST_TO_LAST);
    assert!(!sim.tel.logged("revision v3 -> v2"), "{:?}", sim.history);
}

// ---- restart behaviour: a fresh process finds no state ------------------------------------

/// `approvedUntil` at `ms` after the epoch (the simulated clock starts there).
fn approved_until(ms: u64) -> Value {
    let s = ms / 1000;
    format!(
        "1970-01-01T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
    .into()
}

const HELD: &str = "canary web rev v2: halt advancement, waiting for approval: no analysis state (first load or proxy restart), and restartPolicy hold keeps the canary at weight 0 in phase Waiting until the revision changes or approvedUntil is a time in the future";

/// Runs `ms` of traffic and returns what the canary got while the state said Waiting (and
/// asserts it stayed Waiting at weight 0 with the phase gauge saying so).
fn assert_held(sim: &mut Sim, ms: u64) {
    assert!(
        sim.run_until(2_000, |s| s.phase() == Some(Phase::Waiting)),
        "{:?}",
        sim.history
    );
    let before = sim.sent;
    sim.run(ms);
    let s = sim.state().unwrap();
    assert_eq!(
        (s.revision.as_str(), s.phase, s.weight),
        ("v2", Phase::Waiting, 0)
    );
    assert_eq!(
        sim.tel.gauge_of(NAME, Stat::Phase),
        Some(Phase::Waiting as u64)
    );
    assert_eq!(sim.tel.gauge_of(NAME, Stat::Weight), Some(0));
    assert!(sim.sent.stable_requests > before.stable_requests + 1_000);
    assert_eq!(sim.sent.canary_requests, 0, "a held canary got traffic");
    assert_eq!(sim.counter(Stat::Checks), 0);
    assert_eq!(sim.log_count("starting analysis"), 0);
}

#[test]
fn fresh_process_with_hold_waits_at_weight_zero_in_both_analyser_modes() {
    for mode in [Mode::Singleton, Mode::Leader] {
        let mut sim = Sim::new(mode, 4, &config(&[("/restartPolicy", "hold".into())]));
        assert_held(&mut sim, 5_000);
        assert_eq!(sim.log_count(HELD), 1, "logged once: {:?}", sim.tel.logs);
        assert!(!sim.tel.logged("has passed"), "no approval configured");
        assert_eq!(sim.history, vec![("v2".to_string(), Phase::Waiting, 0)]);
    }
}

#[test]
fn default_policy_is_hold() {
    let mut v: Value = serde_json::from_str(&config(&[])).unwrap();
    v.as_object_mut().unwrap().remove("restartPolicy");
    let mut sim = Sim::new(Mode::Singleton, 2, &v.to_string());
    assert_held(&mut sim, 1_000);
}

#[test]
fn fresh_process_with_an_approval_in_the_future_runs_the_analysis() {
    for mode in [Mode::Singleton, Mode::Leader] {
        let raw = config(&[
            ("/restartPolicy", "hold".into()),
            ("/approvedUntil", approved_until(3_600_000)),
        ]);
        let mut sim = Sim::new(mode, 4, &raw);
        assert!(
            sim.run_until(15_000, |s| s.phase() == Some(Phase::Succeeded)),
            "{:?}",
            sim.history
        );
        assert_eq!(sim.weights("v2"), FIRST_TO_LAST);
        assert_eq!(sim.log_count("canary web rev v2: no analysis state (first load or proxy restart), approved until 1970-01-01T01:00:00Z: starting the analysis"), 1);
        assert!(!sim.history.iter().any(|h| h.1 == Phase::Waiting));
    }
}

#[test]
fn an_approval_passing_mid_analysis_does_not_stop_it() {
    // Approved for the first second only: the start, not the rest, needs the approval.
    let raw = config(&[
        ("/restartPolicy", "hold".into()),
        ("/approvedUntil", approved_until(1_000)),
    ]);
    let mut sim = Sim::new(Mode::Singleton, 4, &raw);
    assert!(
        sim.run_until(15_000, |s| s.phase() == Some(Phase::Succeeded)),
        "{:?}",
        sim.history
    );
    assert!(sim.now > 2_000, "the analysis outlived the approval");
    assert_eq!(sim.weights("v2"), FIRST_TO_LAST);
    assert!(!sim.tel.logged("waiting for approval"));
}

/// The story of the issue: a revision is rolled back, then the proxy restarts on the same
/// configuration. Returns the rolled-back run's end time.
fn rolled_back(raw: &str) -> u64 {
    let mut sim = Sim::new(Mode::Singleton, 4, raw);
    sim.backend.canary_5xx_pct = 30;
    assert!(
        sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)),
        "{:?}",
        sim.history
    );
    sim.now
}

#[test]
fn restart_after_a_rollback_holds_once_the_approval_has_passed() {
    let raw = config(&[
        ("/restartPolicy", "hold".into()),
        ("/approvedUntil", approved_until(30_000)),
    ]);
    let failed_at = rolled_back(&raw);
    assert!(failed_at < 30_000);
    // Restarted inside the approval window: the approval re-runs the analysis (the documented
    // meaning of approvedUntil), from the first step.
    let mut inside = Sim::starting_at(failed_at + 1_000, Mode::Singleton, 4, &raw);
    assert!(inside.run_until(2_000, |s| s.weight() == 1));
    assert_eq!(inside.phase(), Some(Phase::Progressing));
    // Restarted after it: held, and the log says the approval has passed.
    for mode in [Mode::Singleton, Mode::Leader] {
        let mut after = Sim::starting_at(60_000, mode, 4, &raw);
        after.backend.canary_5xx_pct = 30;
        assert_held(&mut after, 5_000);
        assert!(after
            .tel
            .logged("until the revision changes or approvedUntil is a time in the future (RFC 3339); approvedUntil 1970-01-01T00:00:30Z has passed"));
    }
}

#[test]
fn restart_policy_restart_sends_a_rolled_back_revision_traffic_again() {
    // The documented risk of `restart`: a fresh process cannot know the revision failed.
    let raw = config(&[]);
    let failed_at = rolled_back(&raw);
    let mut after = Sim::starting_at(failed_at + 60_000, Mode::Singleton, 4, &raw);
    assert!(after.run_until(3_000, |s| s.sent.canary_requests > 0));
    assert_eq!(after.phase(), Some(Phase::Progressing));
    assert_eq!(after.log_count("canary web rev v2: no analysis state (first load or proxy restart), restartPolicy restart: starting the analysis"), 1);
    assert_eq!(
        after.log_count("canary web rev v2: starting analysis, phase Progressing, weight 0 -> 1"),
        1
    );
}

#[test]
fn waiting_canary_starts_on_a_new_revision_or_a_fresh_approval() {
    for mode in [Mode::Singleton, Mode::Leader] {
        let hold = config(&[("/restartPolicy", "hold".into())]);
        // A new revision: a real change (this process saw v2), analysed from the first step.
        let mut sim = Sim::new(mode, 4, &hold);
        assert_held(&mut sim, 1_000);
        sim.reconfigure_all(&config(&[
            ("/restartPolicy", "hold".into()),
            ("/revision", "v3".into()),
        ]));
        assert!(
            sim.run_until(15_000, |s| s.phase() == Some(Phase::Succeeded)),
            "{:?}",
            sim.history
        );
        assert!(sim
            .tel
            .logged("canary web: revision v2 -> v3, previous phase Waiting"));
        assert_eq!(sim.weights("v3"), FIRST_TO_LAST);

        // The same revision with an approval that has passed: still held, and said so once.
        let mut sim = Sim::new(mode, 4, &hold);
        assert_held(&mut sim, 1_000);
        let expired = config(&[
            ("/restartPolicy", "hold".into()),
            ("/approvedUntil", approved_until(1_000)),
        ]);
        sim.reconfigure_all(&expired);
        assert_held(&mut sim, 3_000);
        assert_eq!(
            sim.log_count("canary web rev v2: halt advancement, waiting for approval: held since a first load or proxy restart"),
            1,
            "{:?}",
            sim.tel.logs
        );
        assert!(sim
            .tel
            .logged("approvedUntil 1970-01-01T00:00:01Z has passed"));
        // Then with an approval in the future: it starts from the first step.
        sim.reconfigure_all(&config(&[
            ("/restartPolicy", "hold".into()),
            ("/approvedUntil", approved_until(3_600_000)),
        ]));
        assert!(
            sim.run_until(15_000, |s| s.phase() == Some(Phase::Succeeded)),
            "{:?}",
            sim.history
        );
        assert_eq!(sim.weights("v2"), [0, 1, 5, 10, 25, 50, 100]);
        assert_eq!(sim.log_count("canary web rev v2: held since a first load or proxy restart, approved until 1970-01-01T01:00:00Z: starting the analysis"), 1);
    }
}

#[test]
fn failed_revision_stays_failed_whatever_the_approval_or_policy_say() {
    let raw = config(&[]);
    let mut sim = Sim::new(Mode::Singleton, 4, &raw);
    sim.backend.canary_5xx_pct = 30;
    assert!(sim.run_until(10_000, |s| s.phase() == Some(Phase::Failed)));
    for reapplied in [
        config(&[("/approvedUntil", approved_until(3_600_000))]),
        config(&[
            ("/restartPolicy", "hold".into()),
            ("/approvedUntil", approved_until(3_600_000)),
        ]),
    ] {
        sim.reconfigure_all(&reapplied);
        sim.run(3_000);
        assert_eq!((sim.phase(), sim.weight()), (Some(Phase::Failed), 0));
    }
    assert_eq!(sim.log_count("singleton analyser picked up"), 3);
    assert_eq!(sim.log_count("starting analysis"), 1);
    assert!(sim.sent_after_failed.stable_requests > 5_000);
    assert_eq!(sim.sent_after_failed.canary_requests, 0);
}

#[test]
fn unreadable_state_is_held_like_no_state() {
    // It may have been Failed: with hold, an unreadable state does not restart the analysis.
    let mut sim = Sim::new(
        Mode::Singleton,
        4,
        &config(&[("/restartPolicy", "hold".into())]),
    );
    sim.store.put(&Keys::new(NAME).state, b"CGst\x01garbage");
    assert_held(&mut sim, 2_000);
    assert_eq!(
        sim.log_count("canary web rev v2: halt advancement, waiting for approval: analysis state unreadable (treated as no state), and restartPolicy hold"),
        1
    );
}

/// Flagger scheduler.go: the canary's ticker keeps its schedule while `suspend` is set
/// (`advanceCanary` returns early), so lifting it does not check at once on traffic served
/// while suspended: the next check is the schedule's next tick.
#[test]
fn lifting_suspend_keeps_the_check_schedule() {
    let mut sim = Sim::new(Mode::Singleton, 2, &config(&[]));
    assert!(
        sim.run_until(5_000, |s| s.weight() == 5),
        "{:?}",
        sim.history
    );
    let last = sim.state().unwrap().last_check_ms;
    sim.reconfigure_all(&config(&[("/suspend", serde_json::json!(true))]));
    sim.run(3_450);
    assert_eq!(
        sim.state().unwrap().last_check_ms,
        last,
        "no check while suspended"
    );
    // The backend breaks while suspended (threshold 3: one check would only halt).
    sim.backend.canary_5xx_pct = 100;
    sim.reconfigure_all(&config(&[]));
    let resumed = sim.now;
    assert!(sim.run_until(3_000, |s| s.state().unwrap().last_check_ms != last));
    let checked = sim.state().unwrap().last_check_ms;
    assert!(
        checked >= resumed + 100,
        "checked {} ms after the resume",
        checked - resumed
    );
    assert_eq!(
        (checked - last) % INTERVAL_MS,
        0,
        "on the schedule: last check {last} + whole intervals, got {checked}"
    );
    assert!(sim
        .tel
        .logged("resumed, weight 5 in phase Progressing: the next check keeps the schedule"));
}
