//! The analyser of one canary: on each tick, if this context leads, it starts the analysis of a
//! new revision, and when a check is due it sums the workers' tallies over each metric's window,
//! judges them, and writes the next state with compare-and-swap.

use crate::analysis::{check, held, is_due, resume, summary, Cause, Event, Found, Logged, Resume};
use crate::checks::evaluate;
use crate::config::{self, Config};
use crate::host::{Level, SharedStore, Stat, Telemetry};
use crate::keys::Keys;
use crate::lease::{self, HolderKind};
use crate::routing::Side;
use crate::slots::read_all;
use crate::state::{CanaryState, Phase};
use crate::tally::{Tally, Totals};
use crate::worker::registered;
use hashbrown::HashMap;

/// A leader that stops renewing (its worker went away) is replaced after this long.
pub const LEASE_TTL_MS: u64 = 2_000;
/// A worker waits this long after its first tick before bidding for the lease, so that where a
/// bootstrap singleton exists it is the analyser from the start.
pub const WORKER_GRACE_MS: u64 = 1_000;
/// How often the leader refreshes the tallied-totals gauges between checks.
const TOTALS_EVERY_MS: u64 = 250;

pub struct Analyser {
    pub cfg: Config,
    keys: Keys,
    token: u64,
    kind: HolderKind,
    leading: bool,
    totals_at_ms: Option<u64>,
    suspended_logged: bool,
    /// The reason for holding a Waiting revision was logged by this analyser.
    waiting_logged: bool,
    corrupt_logged: bool,
    /// For an elected worker: its own configuration bytes. It only leads while that is the
    /// published configuration, so a draining listener's contexts hand over to the new ones.
    own_config: Option<Vec<u8>>,
    /// Workers only: no lease bid before this time (set on the first tick).
    not_before_ms: Option<u64>,
}

impl Analyser {
    pub fn new(cfg: Config, token: u64, kind: HolderKind) -> Self {
        Analyser {
            own_config: None,
            not_before_ms: None,
            keys: Keys::new(&cfg.name),
            cfg,
            token,
            kind,
            leading: false,
            totals_at_ms: None,
            suspended_logged: false,
            waiting_logged: false,
            corrupt_logged: false,
        }
    }

    /// An elected worker analyser that stands down while another configuration is published.
    pub fn for_worker(cfg: Config, token: u64, raw_config: Vec<u8>) -> Self {
        Analyser {
            own_config: Some(raw_config),
            ..Analyser::new(cfg, token, HolderKind::Worker)
        }
    }

    pub fn is_leading(&self) -> bool {
        self.leading
    }

    pub fn tick(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        if self.kind == HolderKind::Worker {
            let not_before = *self.not_before_ms.get_or_insert(now_ms + WORKER_GRACE_MS);
            if now_ms < not_before {
                return;
            }
        }
        if let Some(own) = &self.own_config {
            let current = matches!(store.get(&self.keys.config), Ok(Some((b, _))) if b == *own);
            if !current {
                if self.leading {
                    self.shutdown(store, tel);
                    tel.log(Level::Info, &format!("canary {} rev {}: newer configuration published, handing the analyser lease over", self.cfg.name, self.cfg.revision));
                }
                return;
            }
        }
        let lead = lease::try_lead(
            store,
            &self.keys.lease,
            self.token,
            self.kind,
            now_ms,
            LEASE_TTL_MS,
        );
        if lead != self.leading {
            self.leading = lead;
            let who = match self.kind {
                HolderKind::Singleton => "singleton",
                HolderKind::Worker => "worker (leader election)",
            };
            let msg = if lead { "acquired" } else { "lost" };
            tel.log(
                Level::Info,
                &format!(
                    "canary {}: {msg} the analyser lease as {who} (holder {})",
                    self.cfg.name,
                    self.holder()
                ),
            );
        }
        if !lead {
            return;
        }

        let (bytes, cas) = match store.get(&self.keys.state) {
            Ok(Some((bytes, cas))) => (bytes, cas),
            Ok(None) => (Vec::new(), 0),
            Err(_) => return,
        };
        let state_bytes = bytes.len() as u64;
        let decoded = CanaryState::decode(&bytes);
        let found = match &decoded {
            Some(s) => Found::State(s),
            None if bytes.is_empty() => Found::Nothing,
            None => Found::Unreadable,
        };
        let name = self.cfg.name.clone();
        let revision_change = match found {
            Found::State(p) if p.revision != self.cfg.revision => Some(format!(
                "canary {name}: revision {} -> {}, previous phase {}",
                p.revision,
                self.cfg.revision,
                p.phase.name()
            )),
            _ => None,
        };
        // One decision for the singleton and the elected worker: start, hold or go on.
        let state = match resume(&self.cfg, found, now_ms) {
            Resume::Keep(s) => s,
            Resume::Write(next, events) => {
                if store.set(&self.keys.state, &next.encode(), cas).is_ok() {
                    if let Some(line) = revision_change {
                        tel.log(Level::Info, &line);
                    }
                    self.publish_state(tel, &next);
                    self.log_events(tel, &events);
                    self.waiting_logged = next.phase == Phase::Waiting;
                }
                return;
            }
        };
        if state.phase == Phase::Waiting && !self.waiting_logged {
            // A new analyser (configuration update, new leader) says why it still holds.
            self.log_events(tel, &[held(&self.cfg, Cause::Waiting)]);
            self.waiting_logged = true;
        }
        self.publish_state(tel, &state);

        if self.cfg.suspend {
            if !self.suspended_logged {
                tel.log(
                    Level::Info,
                    &format!(
                        "canary {name} rev {}: suspended, weight held at {} in phase {}",
                        self.cfg.revision,
                        state.weight,
                        state.phase.name()
                    ),
                );
                self.suspended_logged = true;
            }
            return;
        }
        self.suspended_logged = false;

        let due = is_due(&self.cfg, &state, now_ms);
        if !due
            && self
                .totals_at_ms
                .is_some_and(|t| now_ms < t + TOTALS_EVERY_MS)
        {
            return;
        }
        let (slots, corrupt, slot_bytes) = read_all(store, &self.keys);
        if corrupt > 0 && !self.corrupt_logged {
            tel.log(
                Level::Warn,
                &format!("canary {name}: ignored {corrupt} unreadable tally slot(s)"),
            );
        }
        self.corrupt_logged = corrupt > 0;
        let mut totals = Totals::default();
        slots.iter().for_each(|s| totals.add(&s.totals));
        tel.gauge(&name, Stat::TalliedStableRequests, totals.stable_requests);
        tel.gauge(&name, Stat::TalliedStable5xx, totals.stable_errors);
        tel.gauge(&name, Stat::TalliedCanaryRequests, totals.canary_requests);
        tel.gauge(&name, Stat::TalliedCanary5xx, totals.canary_errors);
        let shared = slot_bytes
            + state_bytes
            + value_len(store, &self.keys.lease)
            + value_len(store, &self.keys.config);
        tel.gauge(&name, Stat::SharedBytes, shared);
        self.totals_at_ms = Some(now_ms);
        if !due {
            return;
        }

        let a = &self.cfg.analysis;
        let results: Vec<_> = a
            .metrics
            .iter()
            .map(|m| {
                // Only this revision's outcomes: the window never reaches before its start.
                let from = now_ms.saturating_sub(m.window_ms).max(state.started_ms);
                let mut window = Tally::default();
                slots
                    .iter()
                    .for_each(|s| s.window(Side::Canary, from, now_ms, &mut window));
                evaluate(m, a.min_requests, &window)
            })
            .collect();
        let (next, events) = check(&self.cfg, &state, &results, now_ms);
        // CAS on the value we read: if anyone else stepped the state since, this step is void.
        if store.set(&self.keys.state, &next.encode(), cas).is_err() {
            return;
        }
        tel.count(&name, Stat::Checks, 1);
        if events
            .iter()
            .all(|e| matches!(e, Event::Advance { .. } | Event::Iteration { .. }))
        {
            tel.log(
                Level::Debug,
                &format!(
                    "canary {name} rev {}: checks passed: {}",
                    self.cfg.revision,
                    summary(&results)
                ),
            );
        }
        self.publish_state(tel, &next);
        self.log_events(tel, &events);
    }

    fn publish_state(&self, tel: &mut dyn Telemetry, s: &CanaryState) {
        let name = &self.cfg.name;
        tel.gauge(name, Stat::Weight, u64::from(s.weight));
        tel.gauge(name, Stat::Phase, s.phase as u64);
        tel.gauge(name, Stat::FailedChecks, u64::from(s.failed_checks));
    }

    fn log_events(&self, tel: &mut dyn Telemetry, events: &[Event]) {
        for e in events {
            let level = match e {
                Event::RolledBack { .. } | Event::Halt { .. } | Event::Held { .. } => Level::Warn,
                Event::Released {
                    cause: Cause::Unreadable,
                    ..
                } => Level::Warn,
                _ => Level::Info,
            };
            match e {
                Event::RolledBack { .. } => tel.count(&self.cfg.name, Stat::Rollbacks, 1),
                Event::PromotionCompleted | Event::Skipped => {
                    tel.count(&self.cfg.name, Stat::Promotions, 1)
                }
                _ => {}
            }
            tel.log(level, &Logged::of(&self.cfg, e).to_string());
        }
    }

    /// Which root context this is, in the lease log lines (the token's first 8 hex digits).
    fn holder(&self) -> String {
        format!("{:08x}", self.token >> 32)
    }

    pub fn shutdown(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry) {
        if self.leading {
            lease::release(store, &self.keys.lease, self.token);
            self.leading = false;
            tel.log(
                Level::Info,
                &format!(
                    "canary {}: released the analyser lease (holder {})",
                    self.cfg.name,
                    self.holder()
                ),
            );
        }
    }
}

/// Length of a shared-data value (0 when absent or unreadable).
fn value_len(store: &dyn SharedStore, key: &str) -> u64 {
    match store.get(key) {
        Ok(Some((bytes, _))) => bytes.len() as u64,
        _ => 0,
    }
}

/// The bootstrap singleton: analyses every canary whose filters registered in this proxy, with
/// the configuration those filters published (so an xDS update of the filter reaches it).
pub struct Singleton {
    token: u64,
    analysers: HashMap<String, (Vec<u8>, Analyser)>,
    /// Published configurations that did not parse (logged once each).
    refused: HashMap<String, Vec<u8>>,
}

impl Singleton {
    pub fn new(token: u64) -> Self {
        Singleton {
            token,
            analysers: HashMap::new(),
            refused: HashMap::new(),
        }
    }

    pub fn tick(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        for name in registered(store) {
            let raw = match store.get(&Keys::new(&name).config) {
                Ok(Some((bytes, _))) => bytes,
                _ => continue,
            };
            let fresh = self
                .analysers
                .get(&name)
                .is_none_or(|(seen, _)| *seen != raw);
            if fresh && self.refused.get(&name) == Some(&raw) {
                continue;
            }
            if fresh {
                match config::parse(&raw) {
                    Ok(cfg) if cfg.name == name => {
                        tel.log(Level::Info, &format!("canary {name} rev {}: singleton analyser picked up the configuration", cfg.revision));
                        let mut analyser = Analyser::new(cfg, self.token, HolderKind::Singleton);
                        if let Some((_, old)) = self.analysers.get(&name) {
                            analyser.leading = old.leading;
                        }
                        self.analysers.insert(name.clone(), (raw, analyser));
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        // Filters validate before publishing: this is corruption, never trusted.
                        tel.log(Level::Error, &format!("canary {name}: published configuration is unreadable, not analysing: {e}"));
                        if let Some((_, mut old)) = self.analysers.remove(&name) {
                            old.shutdown(store, tel);
                        }
                        self.refused.insert(name, raw);
                        continue;
                    }
                }
            }
            if let Some((_, a)) = self.analysers.get_mut(&name) {
                a.tick(store, tel, now_ms);
            }
        }
    }

    pub fn shutdown(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry) {
        for (_, a) in self.analysers.values_mut() {
            a.shutdown(store, tel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{with, EXAMPLE};
    use crate::fake_host::{FakeStore, FakeTelemetry};
    use crate::worker::Worker;

    /// The example configuration, started at once on a fresh store (restartPolicy restart).
    fn running() -> Config {
        with("/restartPolicy", Some("restart".into())).unwrap()
    }

    /// Records `n` outcomes spread evenly over 30 s (both sides, 10 latency values) through one
    /// worker and a singleton analyser, both ticking every 100 ms; returns the last `shared_bytes`.
    fn shared_bytes_after(n: u64) -> u64 {
        let (store, mut tel) = (FakeStore::default(), FakeTelemetry::default());
        let mut worker = Worker::new(running(), EXAMPLE.as_bytes().to_vec(), 1, 0);
        let mut analyser = Analyser::new(running(), 2, HolderKind::Singleton);
        let steps = 300; // 100 ms each; a worker's clock advances on its tick
        let mut recorded = 0;
        for step in 1..=steps {
            let now = step * 100;
            for i in recorded..n * step / steps {
                let side = if i % 2 == 0 {
                    Side::Stable
                } else {
                    Side::Canary
                };
                worker.record(side, 200, 1_000 + (i / 2 % 10) * 100);
            }
            recorded = n * step / steps;
            worker.tick(&store, &mut tel, now);
            analyser.tick(&store, &mut tel, now);
        }
        assert_eq!(
            tel.gauge_of("web", Stat::TalliedCanaryRequests),
            Some(n / 2)
        );
        tel.gauge_of("web", Stat::SharedBytes).unwrap()
    }

    #[test]
    fn shared_bytes_are_reported_and_do_not_grow_with_requests() {
        let few = shared_bytes_after(10_000);
        let many = shared_bytes_after(1_000_000);
        assert!(few > 1_000, "slots, state, lease and config: {few}");
        assert!(many < 64 * 1024, "{many}");
        // A full 10 s window holds the same buckets and histogram entries either way.
        assert_eq!(few, many, "10k outcomes: {few} B, 1M outcomes: {many} B");
    }

    #[test]
    fn lease_lines_name_the_holder_and_a_shutdown_releases_it_for_the_next() {
        let (store, mut tel) = (FakeStore::default(), FakeTelemetry::default());
        let mut first = Analyser::new(running(), 0xaaaa_bbbb_0000_0001, HolderKind::Singleton);
        first.tick(&store, &mut tel, 1_000);
        assert!(first.is_leading());
        assert!(
            tel.logged("canary web: acquired the analyser lease as singleton (holder aaaabbbb)")
        );
        first.shutdown(&store, &mut tel);
        assert!(!first.is_leading());
        assert!(tel.logged("canary web: released the analyser lease (holder aaaabbbb)"));
        // Released, not expired: the next analyser takes over on its first tick.
        let mut next = Analyser::new(running(), 0xcccc_dddd_0000_0002, HolderKind::Singleton);
        next.tick(&store, &mut tel, 1_001);
        assert!(next.is_leading());
        assert!(tel.logged("acquired the analyser lease as singleton (holder ccccdddd)"));
    }
}
