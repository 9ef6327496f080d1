//! The filter side of one worker root context: routes requests, records their outcomes into the
//! worker-local tally, and publishes on its tick (never a shared write on the request path).

use crate::config::Config;
use crate::hashing::{fnv1a, mix64, Xorshift64, FNV_OFFSET};
use crate::host::{SharedStore, Stat, Telemetry};
use crate::outcome::{is_error, Outcome, Side};
use crate::routing::{decide, Decision};
use crate::state::CanaryState;
use crate::store::served;
use crate::store::slots::{Publish, SlotPublisher};
use crate::store::{registry, Keys};
use crate::tally::{SlotRecord, Totals, MAX_IN_FLIGHT_SHOWN};

/// A worker that routed nothing this long, with nothing left in its windows, frees its slot.
pub const IDLE_RELEASE_MS: u64 = 10_000;
/// How often a worker re-checks that its configuration is the one published for the singleton.
const CONFIG_REPUBLISH_MS: u64 = 5_000;
/// How old the worker's copy of the analysis state may get before a request reads it again.
/// Reading shared data costs a host call that copies the value into the VM (a few µs under
/// load, the largest part of the filter's cost); at 2 ms a busy worker reads it once per tens
/// of requests, and a weight change (a rollback too) reaches every request within 2 ms.
pub const STATE_MAX_AGE_US: u64 = 2_000;

pub struct Worker {
    pub cfg: Config,
    keys: Keys,
    raw_config: Vec<u8>,
    /// FNV-1a of `raw_config`: this configuration's entry in `store::served`.
    config_hash: u64,
    /// A request was routed since this worker last renewed its `served` entry, and when that was.
    routed: bool,
    served_renewed_ms: Option<u64>,
    /// When this worker last routed a request (ms).
    last_routed_ms: u64,
    publisher: SlotPublisher,
    /// Outcomes recorded since the last tick, not yet added to the Envoy counters.
    unreported: Totals,
    /// Requests since the last tick whose state value was present but undecodable.
    unreadable_states: u64,
    /// Requests abandoned by their clients since the last tick (not evidence): stable, canary.
    abandoned: [u64; 2],
    /// Requests since the last tick on which a match regex exceeded the regex budget.
    budget_exhausted: u64,
    dirty: bool,
    rng: Xorshift64,
    now_ms: u64,
    config_checked_ms: Option<u64>,
    /// Canary requests complete and unanswered: since when (ms), sorted (a plain vector: a
    /// map's code would cost the module more than its lookups save); changed since the last tick.
    in_flight: Vec<u64>,
    in_flight_changed: bool,
    /// The state as last read, and when (host clock, µs).
    state: Option<CanaryState>,
    state_read_us: Option<u64>,
}

impl Worker {
    pub fn new(cfg: Config, raw_config: Vec<u8>, token: u64, now_ms: u64) -> Self {
        let windows = cfg.analysis.windows_ms();
        Worker {
            keys: Keys::new(&cfg.name),
            config_hash: fnv1a(FNV_OFFSET, &raw_config),
            routed: false,
            served_renewed_ms: None,
            last_routed_ms: now_ms,
            cfg,
            raw_config,
            publisher: SlotPublisher::new(token, &windows),
            in_flight: Vec::new(),
            in_flight_changed: false,
            unreported: Totals::default(),
            unreadable_states: 0,
            abandoned: [0; 2],
            budget_exhausted: 0,
            dirty: false,
            rng: Xorshift64::from_state(mix64(token ^ now_ms)),
            now_ms,
            config_checked_ms: None,
            state: None,
            state_read_us: None,
        }
    }

    /// Reads the analysis state; anything unreadable is `None` (and routes to stable). A value
    /// that is present (non-empty) but does not decode is counted.
    pub fn read_state(&mut self, store: &dyn SharedStore) -> Option<CanaryState> {
        match store.get(&self.keys.state) {
            Ok(Some((bytes, _))) if !bytes.is_empty() => {
                let state = CanaryState::decode(&bytes);
                if state.is_none() {
                    self.unreadable_states += 1;
                }
                state
            }
            _ => None,
        }
    }

    /// Decides where one request goes. `now_us` is the host clock when the request arrived: the
    /// state is read again when the copy is older than `STATE_MAX_AGE_US`, the clock went
    /// backwards or could not be read (`None`), so every request sees the last or the current
    /// weight, never a torn one.
    pub fn route(
        &mut self,
        store: &dyn SharedStore,
        header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
        now_us: Option<u64>,
    ) -> Decision {
        let fresh = match (self.state_read_us, now_us) {
            (Some(t), Some(now)) => now >= t && now - t < STATE_MAX_AGE_US,
            _ => false,
        };
        if !fresh {
            self.state = self.read_state(store);
            self.state_read_us = now_us;
            // Buckets are cut from this revision's analysis start (it changes only with the
            // state, so it is taken from each new read, not on every request).
            if let Some(s) = self
                .state
                .as_ref()
                .filter(|s| s.revision == self.cfg.revision)
            {
                self.publisher.record.origin_ms = s.started_ms;
            }
        }
        // A cheap per-worker xorshift stream seeded from the random token, whitened by mix64.
        let draw = mix64(self.rng.next_u64());
        self.routed = true;
        if let Some(us) = now_us {
            self.last_routed_ms = us / 1000;
        }
        let d = decide(&self.cfg, self.state.as_ref(), header, draw);
        self.budget_exhausted += u64::from(d.budget_exhausted);
        d
    }

    /// Records one finished request by its HTTP status (0 = no response was sent).
    pub fn record(&mut self, side: Side, status: u32, micros: u64) {
        self.count(side, is_error(status), micros);
    }

    /// Records one finished request as the filter saw it. An abandoned request is evidence only
    /// when its client had waited longer than the analysis allows: then it is a slow request
    /// (its wait a lower bound of its duration), and an error past `requestTimeout`.
    pub fn record_outcome(&mut self, side: Side, outcome: Outcome) {
        match outcome {
            Outcome::Answered { error, micros } => self.count(side, error, micros),
            Outcome::Abandoned { waited_micros } => {
                let a = &self.cfg.analysis;
                let waited_ms = waited_micros / 1000;
                if waited_ms > a.slow_after_ms() {
                    self.count(side, waited_ms > a.request_timeout_ms, waited_micros);
                } else if let Some(n) = self.abandoned.get_mut(side as usize) {
                    *n += 1;
                }
            }
        }
    }

    /// A canary request complete since `since_ms` (host clock) awaits its answer: until then it
    /// is shown in the slot, so that the analyser can judge it if it hangs.
    pub fn begin_canary(&mut self, since_ms: u64) {
        // The clock rarely goes back: almost always a push at the end.
        let at = self.in_flight.partition_point(|t| *t <= since_ms);
        self.in_flight.insert(at, since_ms);
        self.in_flight_changed = true;
    }

    /// The canary request complete since `since_ms` was answered or ended (its outcome is
    /// recorded apart).
    pub fn end_canary(&mut self, since_ms: u64) {
        if let Ok(at) = self.in_flight.binary_search(&since_ms) {
            self.in_flight.remove(at);
        }
        self.in_flight_changed = true;
    }

    /// Puts the requests in flight into the record (on the tick, not per request).
    fn show_in_flight(&mut self) {
        if !std::mem::take(&mut self.in_flight_changed) {
            return;
        }
        let r = &mut self.publisher.record;
        r.in_flight = u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX);
        r.in_flight_oldest.clear();
        r.in_flight_oldest
            .extend(self.in_flight.iter().take(MAX_IN_FLIGHT_SHOWN));
        self.dirty = true;
    }

    fn count(&mut self, side: Side, error: bool, micros: u64) {
        self.publisher
            .record
            .record_outcome(self.now_ms, side, error, micros);
        self.unreported.record_outcome(side, error);
        self.dirty = true;
    }

    pub fn tick(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        self.now_ms = now_ms;
        self.publish_config(store, tel, now_ms);
        self.renew_served(store, tel, now_ms);
        self.report_counters(tel);
        self.show_in_flight();
        // Pruned on every tick, so that an idle context's record shrinks too.
        let buckets = self.publisher.record.buckets().count();
        self.publisher.record.prune(now_ms);
        if self.publisher.record.buckets().count() != buckets {
            self.dirty = true;
        }
        if self.dirty {
            if self.publisher.publish(store, &self.keys) == Publish::Written {
                self.dirty = false;
            }
        } else if self.idle(now_ms) {
            self.release_idle_slot(store);
        }
    }

    /// Nothing routed for `IDLE_RELEASE_MS`, nothing in flight, nothing left in any window:
    /// the slot holds only totals (a draining listener's contexts stay alive for the whole
    /// drain, 600 s by default, and would otherwise keep their slots).
    fn idle(&self, now_ms: u64) -> bool {
        self.publisher.index().is_some()
            && self.in_flight.is_empty()
            && now_ms.saturating_sub(self.last_routed_ms) >= IDLE_RELEASE_MS
            && self.publisher.record.buckets().next().is_none()
    }

    /// Frees the slot with its totals for the next context to adopt, and starts an empty
    /// record: should this context route again, it claims a slot for its new outcomes only,
    /// so none is counted twice.
    fn release_idle_slot(&mut self, store: &dyn SharedStore) {
        self.publisher.release(store, &self.keys);
        let r = &self.publisher.record;
        let mut fresh = SlotRecord::new(r.owner, &self.cfg.analysis.windows_ms());
        fresh.origin_ms = r.origin_ms;
        self.publisher.record = fresh;
    }

    /// Makes this configuration visible to the analyser (a bootstrap singleton's own
    /// configuration cannot change without a restart): the filter configuration is the source
    /// of truth. The newest configured filter wins: a worker overwrites a different published
    /// configuration only on its first publish; later it only restores a missing or unreadable
    /// one. Otherwise the contexts of a draining listener (old configuration) and the new ones
    /// would overwrite each other and restart the analysis on every flip.
    fn publish_config(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        if self
            .config_checked_ms
            .is_some_and(|t| now_ms < t + CONFIG_REPUBLISH_MS)
        {
            return;
        }
        let first = self.config_checked_ms.is_none();
        let registered = registry::register(store, &self.cfg.name);
        let current = match store.get(&self.keys.config) {
            Ok(v) => v,
            Err(_) => return,
        };
        let written = match current {
            Some((bytes, _)) if bytes == self.raw_config => true,
            Some((bytes, cas)) if first || crate::config::parse(&bytes).is_err() => {
                store.set(&self.keys.config, &self.raw_config, cas).is_ok()
            }
            Some(_) => true, // a newer filter published its configuration: leave it
            None => store.set(&self.keys.config, &self.raw_config, 0).is_ok(),
        };
        if registered && written {
            if first {
                tel.log(
                    crate::host::Level::Debug,
                    &format!(
                        "canary {} rev {}: configuration published",
                        self.cfg.name, self.cfg.revision
                    ),
                );
            }
            self.config_checked_ms = Some(now_ms);
        }
    }

    /// Says, at most every `served::RENEW_MS`, that this configuration routes requests, and
    /// republishes it when the published one has routed none for `served::QUIET_MS` while this
    /// one has (a configuration reverted while the old listener drains: see `store::served`).
    fn renew_served(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        let due = self
            .served_renewed_ms
            .is_none_or(|t| now_ms >= t + served::RENEW_MS);
        if !self.routed || !due {
            return;
        }
        self.routed = false;
        self.served_renewed_ms = Some(now_ms);
        let record = served::renew(store, &self.keys.served, self.config_hash, now_ms);
        let Ok(Some((published, cas))) = store.get(&self.keys.config) else {
            return;
        };
        let published_hash = fnv1a(FNV_OFFSET, &published);
        if served::should_take_over(&record, self.config_hash, published_hash, now_ms)
            && store.set(&self.keys.config, &self.raw_config, cas).is_ok()
        {
            tel.log(
                crate::host::Level::Info,
                &format!(
                    "canary {} rev {}: configuration republished: the published one routed no request for {} ms while this one serves",
                    self.cfg.name, self.cfg.revision, served::QUIET_MS
                ),
            );
        }
    }

    /// Adds the outcomes recorded since the last report to the Envoy counters.
    fn report_counters(&mut self, tel: &mut dyn Telemetry) {
        let u = std::mem::take(&mut self.unreported);
        let [stable_abandoned, canary_abandoned] = std::mem::take(&mut self.abandoned);
        for (stat, n) in [
            (Stat::StableRequests, u.stable_requests),
            (Stat::Stable5xx, u.stable_errors),
            (Stat::CanaryRequests, u.canary_requests),
            (Stat::Canary5xx, u.canary_errors),
            (
                Stat::StateUnreadable,
                std::mem::take(&mut self.unreadable_states),
            ),
            (
                Stat::MatchBudgetExhausted,
                std::mem::take(&mut self.budget_exhausted),
            ),
            (Stat::StableAbandoned, stable_abandoned),
            (Stat::CanaryAbandoned, canary_abandoned),
        ] {
            if n > 0 {
                tel.count(&self.cfg.name, stat, n);
            }
        }
    }

    /// On shutdown: count and publish what is left and free the slot for the next context.
    pub fn shutdown(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry) {
        self.report_counters(tel);
        if self.dirty {
            self.publisher.publish(store, &self.keys);
        }
        self.publisher.release(store, &self.keys);
    }

    pub fn slot_index(&self) -> Option<u32> {
        self.publisher.index()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{example, EXAMPLE};
    use crate::state::Phase;
    use crate::testkit::fake_host::{FakeStore, FakeTelemetry};

    fn worker(token: u64) -> Worker {
        Worker::new(example(), EXAMPLE.as_bytes().to_vec(), token, 0)
    }

    fn none(_: &str) -> Option<Vec<u8>> {
        None
    }

    #[test]
    fn routes_to_stable_without_state_or_when_state_is_corrupt() {
        let s = FakeStore::default();
        let mut w = worker(1);
        assert_eq!(w.route(&s, &mut none, Some(0)).side, Side::Stable);
        s.put("canary-guard/web/state", b"CGst\x01garbage");
        assert_eq!(
            w.route(&s, &mut none, Some(STATE_MAX_AGE_US)).side,
            Side::Stable
        );
        s.broken.set(Some(10));
        assert_eq!(
            w.route(&s, &mut none, Some(2 * STATE_MAX_AGE_US)).side,
            Side::Stable
        );
        // Only the present-but-undecodable value is counted, once, at the next tick.
        s.broken.set(None);
        let mut tel = FakeTelemetry::default();
        w.tick(&s, &mut tel, 1);
        assert_eq!(tel.counter_of("web", Stat::StateUnreadable), 1);
    }

    #[test]
    fn reads_the_weight_the_analyser_wrote_once_its_copy_is_older_than_the_max_age() {
        let s = FakeStore::default();
        let mut w = worker(1);
        let st = CanaryState {
            weight: 100,
            phase: Phase::Progressing,
            ..CanaryState::new("v2", 0)
        };
        s.put("canary-guard/web/state", &st.encode());
        let t0 = 1_000_000;
        assert_eq!(w.route(&s, &mut none, Some(t0)).side, Side::Canary);
        let st = CanaryState {
            weight: 0,
            phase: Phase::Failed,
            ..st
        };
        s.put("canary-guard/web/state", &st.encode());
        // Within the max age the copy serves (no host call per request)...
        let reads = s.reads.get();
        assert_eq!(
            w.route(&s, &mut none, Some(t0 + STATE_MAX_AGE_US - 1)).side,
            Side::Canary
        );
        assert_eq!(s.reads.get(), reads, "a fresh copy must not be read again");
        // ...and from then on the rollback holds for every request.
        for dt in [
            STATE_MAX_AGE_US,
            STATE_MAX_AGE_US + 1,
            10 * STATE_MAX_AGE_US,
        ] {
            assert_eq!(w.route(&s, &mut none, Some(t0 + dt)).side, Side::Stable);
        }
        // A clock that goes backwards re-reads rather than trusting the copy forever.
        s.put(
            "canary-guard/web/state",
            &CanaryState {
                weight: 100,
                phase: Phase::Progressing,
                ..st
            }
            .encode(),
        );
        assert_eq!(w.route(&s, &mut none, Some(5)).side, Side::Canary);
        // Without a clock every request reads.
        let reads = s.reads.get();
        w.route(&s, &mut none, None);
        w.route(&s, &mut none, None);
        assert_eq!(s.reads.get(), reads + 2);
    }

    #[test]
    fn an_idle_worker_frees_its_slot_and_no_outcome_is_counted_twice() {
        let s = FakeStore::default();
        let mut t = FakeTelemetry::default();
        let mut w = worker(1);
        w.route(&s, &mut none, Some(0));
        w.record(Side::Stable, 200, 1000);
        w.tick(&s, &mut t, 100);
        assert_eq!(w.slot_index(), Some(0));
        // Idle past the windows (10 s) and IDLE_RELEASE_MS: released, totals kept in the slot.
        w.tick(&s, &mut t, 20_000);
        w.tick(&s, &mut t, 20_100);
        assert_eq!(w.slot_index(), None);
        let slot = SlotRecord::decode(&s.raw("canary-guard/web/slot/0").unwrap()).unwrap();
        assert_eq!((slot.owner, slot.totals.stable_requests), (0, 1));
        // Another context adopts the slot; the idle one routes again and gets another: the
        // totals over all slots are still exact.
        let mut other = worker(2);
        other.record(Side::Stable, 200, 1000);
        other.tick(&s, &mut t, 20_200);
        assert_eq!(other.slot_index(), Some(0));
        w.route(&s, &mut none, Some(20_300_000));
        w.record(Side::Stable, 200, 1000);
        w.tick(&s, &mut t, 20_400);
        assert_eq!(w.slot_index(), Some(1));
        let (slots, _, _) = crate::store::slots::read_all(&s, &Keys::new("web"));
        let total: u64 = slots.iter().map(|r| r.totals.stable_requests).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn publishes_tallies_counters_and_config_on_tick() {
        let s = FakeStore::default();
        let mut t = FakeTelemetry::default();
        let mut w = worker(1);
        w.record(Side::Canary, 503, 1000);
        w.record(Side::Stable, 200, 1000);
        assert!(
            s.raw("canary-guard/web/slot/0").is_none(),
            "nothing shared before the tick"
        );
        w.tick(&s, &mut t, 100);
        assert_eq!(t.counter_of("web", Stat::Canary5xx), 1);
        assert_eq!(t.counter_of("web", Stat::StableRequests), 1);
        assert!(s.raw("canary-guard/web/slot/0").is_some());
        assert_eq!(
            s.raw("canary-guard/web/config").unwrap(),
            EXAMPLE.as_bytes()
        );
        assert_eq!(registry::registered(&s), vec!["web".to_string()]);
        w.tick(&s, &mut t, 200);
        assert_eq!(t.counter_of("web", Stat::Canary5xx), 1, "counted once");
    }
}
