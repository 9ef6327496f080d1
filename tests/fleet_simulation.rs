//! Fleet mode on the fake host: several simulated proxies (`testkit::sim`, each its own shared
//! data, workers and singleton) and one in-memory etcd (`testkit::fake_etcd`), every etcd call
//! answered in the step it was made (or failed, for a proxy cut from etcd). The same
//! scenarios run against real Envoys and a real etcd in tests/integration/test_fleet.py; here
//! the clock is simulated, so every step of the protocol is checked, not only its outcome.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::analyser::WORKER_GRACE_MS;
use canary_guard::host::Stat;
use canary_guard::state::{CanaryState, Phase};
use canary_guard::testkit::fake_etcd::FakeEtcd;
use canary_guard::testkit::fake_loadtester::LoadTester;
use canary_guard::testkit::sim::{config, Mode, Sim, INTERVAL_MS, NAME};
use serde_json::json;

const STATE_KEY: &[u8] = b"/canary-guard/web/state/v2";
const JUDGE_KEY: &[u8] = b"/canary-guard/web/judge/v2";
const LEASE_TTL_MS: u64 = 2_000;
const MAX_STALENESS_MS: u64 = 1_000;

fn fleet_config(extra: &[(&str, serde_json::Value)]) -> String {
    let mut edits = vec![(
        "/fleet",
        json!({"etcdCluster": "etcd", "leaseTTL": "2s", "maxStaleness": "1s", "timeout": "300ms"}),
    )];
    edits.extend(extra.iter().cloned());
    config(&edits)
}

struct Fleet {
    etcd: FakeEtcd,
    replicas: Vec<Sim>,
    /// Replicas whose calls to etcd fail (a partition), or all of them when etcd is down.
    cut: Vec<bool>,
    etcd_down: bool,
    /// Every distinct weight the fleet state in etcd held, with the time it was first seen.
    written: Vec<(u64, Phase, u8)>,
    max_judges: usize,
    /// Answers every call that is not for the etcd cluster (webhooks).
    lt: LoadTester,
}

impl Fleet {
    /// `loads[i]` requests per 10 ms step through replica i (uneven on purpose).
    fn new(loads: &[u64], raw: &str) -> Fleet {
        Fleet::with_mode(Mode::Singleton, loads, raw)
    }

    /// Leader mode: no singleton, the workers elect the analyser (Istio).
    fn with_mode(mode: Mode, loads: &[u64], raw: &str) -> Fleet {
        let replicas = loads
            .iter()
            .enumerate()
            .map(|(i, load)| {
                let mut sim = Sim::new(mode, 2, raw);
                sim.load = *load;
                for n in sim.nodes.iter_mut().chain(sim.singleton.iter_mut()) {
                    n.host.node_id = Some(format!("replica-{i}"));
                }
                sim
            })
            .collect::<Vec<_>>();
        Fleet {
            etcd: FakeEtcd::default(),
            cut: vec![false; replicas.len()],
            replicas,
            etcd_down: false,
            written: Vec::new(),
            max_judges: 0,
            lt: LoadTester::default(),
        }
    }

    fn now(&self) -> u64 {
        self.replicas[0].now
    }

    fn step(&mut self) {
        for (i, r) in self.replicas.iter_mut().enumerate() {
            // Answers arrive one 10 ms step after their calls (Sim::step advanced the clock).
            r.step();
            let reachable = !(self.etcd_down || self.cut[i]);
            let (etcd, lt) = (&mut self.etcd, &mut self.lt);
            let now = r.now;
            r.answer(|c| {
                if c.cluster != "etcd" {
                    lt.respond(c)
                } else if reachable {
                    Some(etcd.handle(&c.path, &c.body, now))
                } else {
                    None
                }
            });
        }
        let now = self.now();
        self.etcd.expire(now);
        if let Some(s) = self.etcd_state() {
            let seen = (s.phase, s.weight);
            if self.written.last().map(|w| (w.1, w.2)) != Some(seen) {
                self.written.push((now, s.phase, s.weight));
            }
        }
        self.max_judges = self.max_judges.max(self.judges().len());
    }

    fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Fleet) -> bool) -> bool {
        let end = self.now() + limit_ms;
        while self.now() < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    fn run(&mut self, ms: u64) {
        let end = self.now() + ms;
        while self.now() < end {
            self.step();
        }
    }

    fn etcd_state(&self) -> Option<CanaryState> {
        CanaryState::decode(&self.etcd.get(STATE_KEY)?.value)
    }

    fn judges(&self) -> Vec<usize> {
        (0..self.replicas.len())
            .filter(|i| {
                let r = &self.replicas[*i];
                alive(r) && r.tel.gauge_of(NAME, Stat::FleetJudge) == Some(1)
            })
            .collect()
    }

    fn all(&self, phase: Phase) -> bool {
        self.replicas
            .iter()
            .filter(|r| alive(r))
            .all(|r| r.phase() == Some(phase))
    }
}

/// The proxy still runs (not killed).
fn alive(r: &Sim) -> bool {
    r.nodes.iter().chain(r.singleton.iter()).any(|n| n.ticking)
}

#[test]
fn one_judge_decides_on_the_fleets_traffic_and_every_replica_follows_each_step() {
    // 4, 1 and 0 requests per 10 ms: the quiet replica alone could never pass minRequests.
    let mut f = Fleet::new(&[4, 1, 0], &fleet_config(&[]));
    assert!(
        f.run_until(20_000, |f| f.all(Phase::Succeeded)),
        "etcd: {:?}\nreplicas: {:?}",
        f.written,
        f.replicas.iter().map(|r| &r.history).collect::<Vec<_>>()
    );
    assert_eq!(f.max_judges, 1, "never two judges");
    let judge = f.judges()[0];
    let weights: Vec<u8> = f.written.iter().map(|w| w.2).collect();
    assert_eq!(weights, [1, 5, 10, 25, 50, 100], "{:?}", f.written);
    // Every replica routed on each step the judge wrote, in order, none skipped.
    for (i, r) in f.replicas.iter().enumerate() {
        let steps: Vec<u8> = r
            .history
            .iter()
            .filter(|h| h.1 == Phase::Progressing)
            .map(|h| h.2)
            .collect();
        assert_eq!(steps, [1, 5, 10, 25, 50], "replica {i}: {:?}", r.history);
    }
    let jt = &f.replicas[judge].tel;
    assert!(jt.logged("fleet judge acquired"));
    assert_eq!(jt.gauge_of(NAME, Stat::FleetReplicas), Some(3));
    // The judge's fleet totals are what the three proxies sent (a settled window aside, the
    // sums match exactly: every replica's record is its own tallies, merged once).
    let sent: u64 = f.replicas.iter().map(|r| r.sent.canary_requests).sum();
    let tallied = jt.gauge_of(NAME, Stat::FleetTalliedCanaryRequests).unwrap();
    assert!(
        tallied <= sent && tallied > 0,
        "tallied {tallied} of {sent}"
    );
    for (i, r) in f.replicas.iter().enumerate() {
        if i != judge {
            assert_eq!(
                r.counter(Stat::Checks),
                0,
                "replica {i} never checks itself"
            );
        }
        assert_eq!(r.counter(Stat::Rollbacks), 0);
    }
}

#[test]
fn a_killed_judge_is_replaced_within_the_lease_and_no_step_comes_early() {
    let steps: Vec<u8> = (1..=12).map(|i| i * 4).collect();
    let mut f = Fleet::new(
        &[2, 2, 2],
        &fleet_config(&[("/analysis/stepWeights", json!(steps))]),
    );
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 12)));
    let judge = f.judges()[0];
    f.replicas[judge].kill();
    let killed_at = f.now();
    assert!(f.run_until(LEASE_TTL_MS + 1_000, |f| f.judges().len() == 1));
    let took = f.now() - killed_at;
    assert!(
        took <= LEASE_TTL_MS + 300,
        "a new judge after {took} ms (lease {LEASE_TTL_MS} ms)"
    );
    assert!(
        f.run_until(15_000, |f| f.all(Phase::Succeeded)),
        "{:?}",
        f.written
    );
    // Never two steps within one interval, across the hand-over too.
    let progressing: Vec<&(u64, Phase, u8)> = f
        .written
        .iter()
        .filter(|w| w.1 == Phase::Progressing)
        .collect();
    for pair in progressing.windows(2) {
        assert!(
            pair[1].0 - pair[0].0 >= INTERVAL_MS - 10,
            "steps {:?} then {:?}: closer than the {INTERVAL_MS} ms interval",
            pair[0],
            pair[1]
        );
        assert!(
            pair[1].2 > pair[0].2,
            "the weight only goes up: {:?}",
            f.written
        );
    }
    let judges = f.etcd.get(JUDGE_KEY).unwrap();
    assert!(String::from_utf8_lossy(&judges.value).starts_with("replica-"));
}

#[test]
fn etcd_down_sends_every_replica_to_stable_after_max_staleness_then_the_fleet_goes_on() {
    let mut f = Fleet::new(&[2, 2, 2], &fleet_config(&[]));
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 5)));
    f.etcd_down = true;
    let down_at = f.now();
    assert!(f.run_until(MAX_STALENESS_MS + 500, |f| f
        .replicas
        .iter()
        .all(|r| r.weight() == 0)));
    let took = f.now() - down_at;
    assert!(
        (MAX_STALENESS_MS..=MAX_STALENESS_MS + 100).contains(&took),
        "every replica on stable {took} ms after etcd went down (maxStaleness {MAX_STALENESS_MS})"
    );
    for r in &f.replicas {
        assert_eq!(r.phase(), Some(Phase::Waiting));
        assert!(r
            .tel
            .logged("routing every request to stable until etcd answers"));
        assert_eq!(r.tel.gauge_of(NAME, Stat::FleetFallback), Some(1));
    }
    let canary_before: Vec<u64> = f.replicas.iter().map(|r| r.sent.canary_requests).collect();
    f.run(3_000);
    let canary_after: Vec<u64> = f.replicas.iter().map(|r| r.sent.canary_requests).collect();
    assert_eq!(
        canary_before, canary_after,
        "nothing to the canary while etcd is down"
    );
    assert!(f.judges().is_empty(), "no judge decides on a stale state");
    f.etcd_down = false;
    assert!(
        f.run_until(15_000, |f| f.all(Phase::Succeeded)),
        "{:?}",
        f.written
    );
    assert!(f
        .replicas
        .iter()
        .all(|r| r.tel.logged("following the fleet")));
}

#[test]
fn a_forged_state_above_the_last_step_is_refused_and_sends_the_replicas_to_stable() {
    let mut f = Fleet::new(&[2, 2, 2], &fleet_config(&[]));
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 5)));
    let mut forged = f.etcd_state().unwrap();
    forged.weight = 90; // a valid record (checksum and all), but above the last step (50)
    f.etcd.put_raw(STATE_KEY, &forged.encode());
    f.run(600);
    for r in &f.replicas {
        assert_eq!(r.weight(), 0, "{:?}", r.history);
        assert!(r.tel.logged("weight 90 above the last step 50"));
    }
    assert!(f
        .replicas
        .iter()
        .all(|r| r.history.iter().all(|h| h.2 != 90)));
}

#[test]
fn a_partitioned_replica_falls_back_alone_and_cannot_judge() {
    let mut f = Fleet::new(&[2, 2, 2], &fleet_config(&[]));
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 5)));
    let judge = f.judges()[0];
    f.cut[judge] = true;
    f.run(LEASE_TTL_MS + 500);
    assert_eq!(
        f.replicas[judge].weight(),
        0,
        "the cut judge routes to stable"
    );
    assert_eq!(
        f.replicas[judge].tel.gauge_of(NAME, Stat::FleetJudge),
        Some(0),
        "and stopped judging"
    );
    let others: Vec<usize> = (0..3).filter(|i| *i != judge).collect();
    assert_eq!(f.judges().len(), 1, "another replica took the judge key");
    assert!(f.run_until(15_000, |f| others
        .iter()
        .all(|i| f.replicas[*i].phase() == Some(Phase::Succeeded))));
    assert_eq!(f.replicas[judge].weight(), 0);
    f.cut[judge] = false;
    assert!(f.run_until(2_000, |f| f.replicas[judge].phase()
        == Some(Phase::Succeeded)));
}

#[test]
fn a_failing_canary_is_rolled_back_once_and_a_new_replica_follows_the_failure() {
    let mut f = Fleet::new(
        &[3, 1, 1],
        &fleet_config(&[("/analysis/threshold", json!(2))]),
    );
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 5)));
    for r in &mut f.replicas {
        r.backend.canary_5xx_pct = 50;
    }
    assert!(
        f.run_until(10_000, |f| f.all(Phase::Failed)),
        "{:?}",
        f.written
    );
    let rollbacks: u64 = f.replicas.iter().map(|r| r.counter(Stat::Rollbacks)).sum();
    assert_eq!(rollbacks, 1, "one rollback, by the judge");
    // A new proxy (a restart) with a release approval in effect follows Failed at once.
    let raw = fleet_config(&[
        ("/analysis/threshold", json!(2)),
        ("/approvedUntil", json!("2099-01-01T00:00:00Z")),
    ]);
    let mut late = Sim::starting_at(f.now(), Mode::Singleton, 2, &raw);
    late.singleton.as_mut().unwrap().host.node_id = Some("replica-late".into());
    late.load = 2;
    f.replicas.push(late);
    f.cut.push(false);
    f.run(1_000);
    let late = f.replicas.last().unwrap();
    assert_eq!(late.phase(), Some(Phase::Failed), "{:?}", late.history);
    assert_eq!(
        late.sent.canary_requests, 0,
        "never a request to the failed revision"
    );
}

#[test]
fn istio_shape_a_reload_hands_the_judge_role_over_without_waiting_for_the_lease() {
    // A long etcd lease (6 s): without the revoke the new leader would wait for it.
    let raw = fleet_config(&[
        ("/analysis/stepWeights", json!([10, 20, 30, 40, 50])),
        ("/fleet/leaseTTL", json!("6s")),
    ]);
    let mut f = Fleet::with_mode(Mode::Leader, &[2, 2, 2], &raw);
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 20)));
    let judge = f.judges()[0];
    // ECDS pushes the same revision again: every worker root context is replaced.
    f.replicas[judge].reconfigure_all(&raw);
    for n in &mut f.replicas[judge].nodes {
        n.host.node_id = Some(format!("replica-{judge}"));
    }
    let reloaded_at = f.now();
    assert!(f.replicas[judge]
        .tel
        .logged("left the fleet: etcd lease revoked, judge key released"));
    assert!(f.run_until(6_000, |f| f.judges().len() == 1));
    let took = f.now() - reloaded_at;
    // The new workers' election grace (1 s), a lease grant, a poll and the campaign.
    assert!(
        took < WORKER_GRACE_MS + 1_000,
        "a judge again {took} ms after the reload (without the revoke: about the 6 s lease)"
    );
    assert!(
        f.run_until(15_000, |f| f.all(Phase::Succeeded)),
        "{:?}",
        f.written
    );
    assert_eq!(f.max_judges, 1);
}

#[test]
fn the_judge_asks_the_webhooks_and_every_replica_follows_its_gates() {
    let raw = fleet_config(&[(
        "/analysis/webhooks",
        json!([
            {"name": "promo", "type": "confirm-promotion", "url": "http://lt/gate/check"},
            {"name": "rb", "type": "rollback", "url": "http://lt/rollback/check"},
            {"name": "audit", "type": "event", "url": "http://lt/events"}
        ]),
    )]);
    let mut f = Fleet::new(&[3, 1, 1], &raw);
    assert!(
        f.run_until(15_000, |f| f.all(Phase::WaitingPromotion)),
        "{:?}",
        f.written
    );
    assert!(f.replicas.iter().all(|r| r.weight() == 50));
    let checks = f.lt.calls.iter().filter(|c| c.0 == "/gate/check").count();
    f.run(1_500);
    assert!(f.all(Phase::WaitingPromotion));
    let asked = f.lt.calls.iter().filter(|c| c.0 == "/gate/check").count() - checks;
    assert!(
        (2..=4).contains(&asked),
        "the judge alone asks, once per interval: {asked}"
    );
    f.lt.open("rollback.web.default");
    assert!(
        f.run_until(3_000, |f| f.all(Phase::Failed)),
        "{:?}",
        f.written
    );
    let judge = f.judges()[0];
    assert!(f.replicas[judge]
        .tel
        .logged("rolling back, manual webhook invoked: rollback webhook rb"));
    let events: Vec<&str> =
        f.lt.events
            .iter()
            .map(|e| e["metadata"]["eventMessage"].as_str().unwrap())
            .collect();
    assert_eq!(
        events
            .iter()
            .filter(|m| m.contains("manual webhook invoked"))
            .count(),
        1,
        "one event, from the judge"
    );
    assert_eq!(
        events
            .iter()
            .filter(|m| m.contains("waiting for promotion approval"))
            .count(),
        1
    );
}

#[test]
fn the_judge_takes_commands_from_etcd_and_from_its_own_endpoint_alike() {
    use canary_guard::control::{Action, Command};
    let mut f = Fleet::new(&[2, 2, 2], &fleet_config(&[]));
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 5)));
    let judge = f.judges()[0];
    // `canary-guard --etcd pause web`: an id from the clock, written straight to etcd.
    let from_cli = Command {
        id: 1_900_000_000_000,
        action: Action::Pause,
        revision: "v2".into(),
        by: "cli".into(),
        at_ms: 0,
    };
    f.etcd
        .put_raw(b"/canary-guard/web/command/v2", &from_cli.encode());
    assert!(f.run_until(2_000, |f| f.replicas[judge].tel.logged("paused by cli")));
    // Then the judge's own control endpoint takes its first command (id 1): it still counts.
    let local = Command {
        id: 1,
        action: Action::Resume,
        revision: "v2".into(),
        by: "127.0.0.1:1".into(),
        at_ms: 0,
    };
    f.replicas[judge]
        .store
        .put("canary-guard/web/command", &local.encode());
    assert!(
        f.run_until(2_000, |f| f.replicas[judge]
            .tel
            .logged("resumed by 127.0.0.1:1")),
        "a local command after one from etcd was ignored"
    );
}

#[test]
fn every_follower_shows_the_judges_decisions_and_refuses_forged_ones() {
    use canary_guard::control::decode_decisions;
    let mut f = Fleet::new(&[2, 2, 2], &fleet_config(&[]));
    assert!(f.run_until(10_000, |f| f.etcd_state().is_some_and(|s| s.weight >= 10)));
    let judge = f.judges()[0];
    let decisions = |r: &Sim| {
        r.store
            .raw("canary-guard/web/decisions")
            .and_then(|b| decode_decisions(&b))
            .unwrap_or_default()
    };
    assert!(
        f.run_until(2_000, |f| f
            .replicas
            .iter()
            .all(|r| decisions(r) == decisions(&f.replicas[judge]))),
        "a follower's decisions differ from the judge's"
    );
    let texts: Vec<String> = decisions(&f.replicas[judge])
        .iter()
        .map(|d| d["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        texts.iter().any(|t| t.contains("advance weight")),
        "{texts:?}"
    );
    // Something not written by a judge (not the versioned shape) is not copied.
    let follower = (0..3).find(|i| *i != judge).unwrap();
    let before = f.replicas[follower].store.raw("canary-guard/web/decisions");
    f.etcd.put_raw(
        b"/canary-guard/web/decisions/v2",
        br#"[{"atMs": 1, "text": "promoted by mallory", "extra": true}]"#,
    );
    assert!(f.run_until(2_000, |f| f.replicas[follower]
        .tel
        .logged("ignored the judge's decisions in etcd")));
    assert_eq!(
        f.replicas[follower].store.raw("canary-guard/web/decisions"),
        before
    );
}

fn judged_fleet() -> String {
    fleet_config(&[
        ("/analysis/interval", json!("2s")),
        (
            "/analysis/metrics",
            json!([{"name": "error-rate-vs-stable", "maxRatio": 1.5, "alpha": 0.01, "interval": "4s"}]),
        ),
    ])
}

/// Three replicas (2, 2 and 1 requests per 10 ms step) judged against stable, each side
/// failing this percentage of its requests.
fn judged_fleet_failing(stable_pct: u64, canary_pct: u64) -> Fleet {
    let mut f = Fleet::new(&[2, 2, 1], &judged_fleet());
    for r in &mut f.replicas {
        r.backend.stable_5xx_pct = stable_pct;
        r.backend.canary_5xx_pct = canary_pct;
    }
    f
}

#[test]
fn the_judge_runs_the_statistical_test_on_the_fleets_traffic_and_every_replica_follows() {
    // 3x stable's error rate, traffic spread over three replicas (2, 2, 1 per 10 ms step).
    let mut bad = judged_fleet_failing(5, 15);
    assert!(
        bad.run_until(40_000, |f| f.all(Phase::Failed)),
        "{:?}",
        bad.written
    );
    let judge = bad.judges()[0];
    let line = bad.replicas[judge]
        .tel
        .logs
        .iter()
        .map(|(_, m)| m.clone())
        .find(|m| m.contains("rolling back"))
        .unwrap();
    assert!(
        line.contains("error-rate-vs-stable: canary worse than 1.5x stable")
            && line.contains("rejected at once"),
        "{line}"
    );
    let rollbacks: u64 = bad
        .replicas
        .iter()
        .map(|r| r.counter(Stat::Rollbacks))
        .sum();
    assert_eq!(rollbacks, 1, "one rollback, by the judge");
    // A shared outage (both at 5%): promoted on every replica.
    let mut shared = judged_fleet_failing(5, 5);
    assert!(
        shared.run_until(60_000, |f| f.all(Phase::Succeeded)),
        "{:?}",
        shared.written
    );
}
