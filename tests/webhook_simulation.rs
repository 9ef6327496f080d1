//! Flagger's webhooks on the fake host: one simulated proxy (`testkit::sim`) whose webhook
//! calls are answered by a fake of Flagger's load tester (its gate API, keyed by
//! `name.namespace` as `pkg/loadtester/server.go` keys them) and an event sink. The same
//! scenarios run against a real Envoy and a real HTTP gate server in
//! tests/integration/test_webhooks.py.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::host::Stat;
use canary_guard::state::Phase;
use canary_guard::testkit::fake_loadtester::LoadTester;
use canary_guard::testkit::sim::{config, Mode, Sim, NAME};
use serde_json::{json, Value};

fn sim_with(hooks: Value) -> Sim {
    let mut sim = Sim::new(
        Mode::Singleton,
        2,
        &config(&[("/analysis/webhooks", hooks)]),
    );
    sim.load = 10;
    sim
}

/// Steps the proxy and answers its webhook calls, until `done` or `limit_ms` passed.
fn run_until(
    sim: &mut Sim,
    lt: &mut LoadTester,
    limit_ms: u64,
    done: impl Fn(&Sim) -> bool,
) -> bool {
    let end = sim.now + limit_ms;
    while sim.now < end {
        sim.step();
        sim.answer(|c| lt.respond(c));
        if done(sim) {
            return true;
        }
    }
    false
}

fn phase_gauge(sim: &Sim) -> Option<u64> {
    sim.tel.gauge_of(NAME, Stat::Phase)
}

#[test]
fn confirm_rollout_holds_the_start_at_weight_0_until_the_gate_opens() {
    let mut sim = sim_with(json!([
        {"name": "go", "type": "confirm-rollout", "url": "http://flagger-loadtester.test/gate/check"}
    ]));
    let mut lt = LoadTester::default();
    assert!(!run_until(&mut sim, &mut lt, 3_000, |s| s
        .state()
        .is_some()));
    assert_eq!(phase_gauge(&sim), Some(Phase::Waiting as u64));
    assert_eq!(
        sim.sent.canary_requests, 0,
        "nothing reaches the canary while it waits"
    );
    assert_eq!(
        sim.log_count("halt advancement, waiting for approval: confirm-rollout webhook go"),
        1,
        "logged once"
    );
    let asked = lt.calls.iter().filter(|c| c.0 == "/gate/check").count();
    assert!(
        (5..=7).contains(&asked),
        "asked every 500 ms interval: {asked} times in 3 s"
    );
    lt.open("web.default");
    assert!(run_until(&mut sim, &mut lt, 1_000, |s| s
        .state()
        .is_some_and(|st| st.weight == 1)));
    assert_eq!(sim.log_count("confirm-rollout webhook go passed"), 1);
    assert!(run_until(&mut sim, &mut lt, 10_000, |s| s.phase()
        == Some(Phase::Succeeded)));
}

#[test]
fn confirm_promotion_waits_at_the_last_step_with_checks_running_then_promotes() {
    let mut sim = sim_with(json!([
        {"name": "promo", "type": "confirm-promotion", "url": "http://flagger-loadtester.test/gate/check"}
    ]));
    let mut lt = LoadTester::default();
    assert!(run_until(&mut sim, &mut lt, 10_000, |s| s.phase()
        == Some(Phase::WaitingPromotion)));
    assert_eq!(sim.weight(), 50);
    let checks = sim.counter(Stat::Checks);
    assert!(!run_until(&mut sim, &mut lt, 2_000, |s| s.phase()
        != Some(Phase::WaitingPromotion)));
    assert!(
        sim.counter(Stat::Checks) >= checks + 3,
        "checks keep running while it waits"
    );
    assert_eq!(
        sim.log_count("waiting for promotion approval: confirm-promotion webhook promo"),
        1
    );
    lt.open("web.default");
    assert!(run_until(&mut sim, &mut lt, 2_000, |s| s.phase()
        == Some(Phase::Succeeded)));
    assert_eq!(sim.weights("v2"), [1, 5, 10, 25, 50, 100]);
}

#[test]
fn confirm_traffic_increase_asks_before_each_step_and_holds_without_failing() {
    let mut sim = sim_with(json!([
        {"name": "up", "type": "confirm-traffic-increase", "url": "http://flagger-loadtester.test/gate/check"}
    ]));
    let mut lt = LoadTester::default();
    assert!(!run_until(&mut sim, &mut lt, 2_000, |s| s.weight() > 0));
    assert_eq!(sim.phase(), Some(Phase::Progressing));
    assert_eq!(
        sim.state().unwrap().failed_checks,
        0,
        "a closed gate is not a failed check"
    );
    let asked_closed = lt.calls.iter().filter(|c| c.0 == "/gate/check").count();
    assert!(
        asked_closed >= 3,
        "asked at every check while closed: {asked_closed}"
    );
    lt.open("web.default");
    assert!(run_until(&mut sim, &mut lt, 10_000, |s| s.phase()
        == Some(Phase::Succeeded)));
    let asked = lt.calls.iter().filter(|c| c.0 == "/gate/check").count() - asked_closed;
    assert_eq!(
        asked, 5,
        "once before each step (0->1, 1->5, 5->10, 10->25, 25->50), not for the promotion"
    );
    assert_eq!(sim.weights("v2"), [0, 1, 5, 10, 25, 50, 100]);
}

#[test]
fn a_manual_rollback_through_the_rollback_gate_fails_the_canary_at_once() {
    let mut sim = sim_with(json!([
        {"name": "rb", "type": "rollback", "url": "http://flagger-loadtester.test/rollback/check"},
        {"name": "sink", "type": "event", "url": "http://sink/events"},
        {"name": "after", "type": "post-rollout", "url": "http://flagger-loadtester.test/"}
    ]));
    let mut lt = LoadTester::default();
    assert!(run_until(&mut sim, &mut lt, 10_000, |s| s.weight() >= 5));
    lt.open("rollback.web.default");
    assert!(run_until(&mut sim, &mut lt, 1_500, |s| s.phase()
        == Some(Phase::Failed)));
    assert_eq!(sim.weight(), 0);
    assert_eq!(
        sim.log_count("rolling back, manual webhook invoked: rollback webhook rb"),
        1
    );
    assert_eq!(sim.counter(Stat::Rollbacks), 1);
    run_until(&mut sim, &mut lt, 500, |_| false);
    // The audit trail: one event per decision, Flagger's payload.
    let decisions = sim.log_count("canary web rev v2: ");
    let texts: Vec<&str> = lt
        .events
        .iter()
        .map(|e| e["metadata"]["eventMessage"].as_str().unwrap())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("manual webhook invoked")),
        "{texts:?}"
    );
    let last = lt.events.last().unwrap();
    assert_eq!(last["phase"], "Failed");
    assert_eq!(last["metadata"]["eventType"], "Warning");
    assert_eq!(
        (
            last["name"].as_str(),
            last["namespace"].as_str(),
            last["checksum"].as_str()
        ),
        (Some("web"), Some("default"), Some("v2"))
    );
    assert!(
        texts.len() <= decisions,
        "{} events for {decisions} decision lines",
        texts.len()
    );
    let post: Vec<&Value> = lt
        .calls
        .iter()
        .filter(|c| c.0 == "/")
        .map(|c| &c.1)
        .collect();
    assert_eq!(post.len(), 1, "post-rollout once, after the rollback");
    assert_eq!(
        (post[0]["phase"].as_str(), post[0]["type"].as_str()),
        (Some("Failed"), Some("post-rollout"))
    );
}

#[test]
fn a_failing_or_unreachable_rollout_webhook_rolls_back_at_the_threshold() {
    for unreachable in [false, true] {
        let mut sim = sim_with(
            json!([{"name": "load-test", "url": "http://flagger-loadtester.test/", "timeout": "200ms"}]),
        );
        let mut lt = LoadTester::default();
        assert!(run_until(&mut sim, &mut lt, 5_000, |s| s.weight() >= 5));
        if unreachable {
            lt.unreachable.insert("/".into());
        } else {
            lt.load_status = Some(500);
        }
        assert!(run_until(&mut sim, &mut lt, 5_000, |s| s.phase()
            == Some(Phase::Failed)));
        let why = if unreachable { "no answer" } else { "HTTP 500" };
        let line = format!("rollout webhook load-test failed: {why}");
        assert!(sim.tel.logged(&line), "{unreachable}: {:?}", sim.tel.logs);
        assert_eq!(sim.counter(Stat::Rollbacks), 1);
        let asked = lt.calls.iter().filter(|c| c.0 == "/").count() as u64;
        assert_eq!(
            asked,
            sim.counter(Stat::Checks),
            "the load test is called at every check"
        );
    }
}

#[test]
fn a_webhook_that_never_answers_stalls_only_its_check_until_its_timeout() {
    let mut sim = sim_with(
        json!([{"name": "slow", "url": "http://flagger-loadtester.test/", "timeout": "1s"}]),
    );
    let mut lt = LoadTester::default();
    assert!(run_until(&mut sim, &mut lt, 5_000, |s| s.weight() >= 5));
    let weight = sim.weight();
    let failed = sim.state().unwrap().failed_checks;
    // From now on its calls are never answered: the analyser gives up on them after the
    // timeout (and a second), and that check fails; requests flow all along.
    let before = sim.sent.stable_requests + sim.sent.canary_requests;
    sim.run(1_500);
    assert_eq!(
        sim.weight(),
        weight,
        "no step while the webhook has not answered"
    );
    assert_eq!(
        sim.state().unwrap().failed_checks,
        failed,
        "not failed before its timeout"
    );
    sim.run(1_500);
    let after = sim.sent.stable_requests + sim.sent.canary_requests;
    assert!(
        after - before >= 1_000,
        "requests keep flowing: {}",
        after - before
    );
    assert_eq!(sim.state().unwrap().failed_checks, failed + 1);
    assert!(sim.tel.logged("rollout webhook slow failed: no answer"));
}
