//! The analyser of one canary. On each tick, in named steps:
//! 1. `lead`: take or renew the analyser lease (an elected worker only while its configuration
//!    is the published one); only the holder goes on;
//! 2. `load_state`: read the analysis state (with its cas for the write);
//! 3. `resume_or_hold`: start a new revision, hold one without a state, or go on;
//! 4. `report`: when a check is due (or every `TOTALS_EVERY_MS`), sum the workers' slots into
//!    the tallied gauges and the shared-bytes probe;
//! 5. `run_check`: measure each metric over its window and step the state machine;
//! 6. `write`: compare-and-swap the next state, then count and log what happened.
//!
//! Beside the steps: `gates` (Flagger's webhooks a check or a start waits for, and the events
//! sent on), `commands` (operators' actions from the control endpoint), `fleet` (fleet mode,
//! where etcd holds the decision and one judge makes it).

mod commands;
mod fleet;
mod gates;
pub mod hooks;
mod log;
mod revision_counters;
mod singleton;
mod vs_stable;

pub use singleton::Singleton;

use crate::config::{Config, MetricCheck, MetricKind};
use crate::control::{Action, Command};
use crate::host::{
    revision_info_name, Decision, HttpCalls, Level, RootHost, SetError, SharedStore, Stat,
    Telemetry,
};
use crate::judge::READ_LAG_MS;
use crate::metrics::{evaluate, MetricResult};
use crate::outcome::Side;
use crate::state::{CanaryState, Phase};
use crate::state_machine::{
    check, held, is_due, next_check_after_hold, reject, resume, summary, Cause, Event, Found,
    Gates, Resume,
};
use crate::store::lease::{self, HolderKind};
use crate::store::slots::read_all;
use crate::store::Keys;
use crate::tally::{SlotRecord, Tally, Totals};
use log::{CanaryLog, Once};
use revision_counters::RevisionCounters;
use std::cell::RefCell;

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
    log: CanaryLog,
    token: u64,
    kind: HolderKind,
    leading: bool,
    totals_at_ms: Option<u64>,
    suspended: Once,
    /// Why a Waiting revision is held was logged by this analyser.
    waiting: Once,
    corrupt_slots: Once,
    /// For an elected worker: its own configuration bytes. It only leads while that is the
    /// published configuration, so a draining listener's contexts hand over to the new ones.
    own_config: Option<Vec<u8>>,
    /// Workers only: no lease bid before this time (set on the first tick).
    not_before_ms: Option<u64>,
    /// Fleet mode: the proxy's part in the fleet protocol (`fleet`), while this one leads.
    fleet: Option<Box<fleet::Agent>>,
    /// Flagger's webhooks in flight (`hooks`).
    hooks: hooks::Hooks,
    /// The webhook rounds of the check now due (`checked`).
    pending: Option<PendingCheck>,
    /// A `confirm-rollout` webhook approved this revision's start (asked until then).
    start_approved: bool,
    /// The start was refused: asked again at this time (every interval, as Flagger).
    next_confirm_ms: u64,
    awaiting_rollout: Once,
    /// Decisions logged since the last flush, for the `event` and `post-rollout` webhooks.
    outbox: RefCell<Vec<Outgoing>>,
    /// The id of the last operator command this analyser took from its proxy's shared data
    /// (`control`), and whether the latest command paused the checks.
    command_seen: u64,
    paused: bool,
    /// Decision lines not yet in the canary's `decisions` record (the control status).
    decided: RefCell<Vec<String>>,
    /// Fleet mode: an operator's command read from etcd, for the judge to carry out.
    pending_fleet_command: Option<Command>,
    /// This revision's `revision_info` gauge name (published with the state).
    revision_info: String,
    /// This revision's request and 5xx counters (`report`).
    revision_counters: RevisionCounters,
    /// After a hold lifted: no check before this scheduled tick.
    resume_at_ms: Option<u64>,
    /// The statistical judge's tests (`vs_stable`), as last written to shared data.
    judge: Option<crate::judge::JudgeState>,
}

/// A check's webhook rounds so far: the gates they gave, and which rounds are done.
#[derive(Debug, Clone, Default)]
struct PendingCheck {
    for_check_ms: u64,
    gates: Gates,
    first_done: bool,
    second_done: bool,
}

/// A decision for the `event` webhooks (and `post-rollout` ones when it ends the analysis).
#[derive(Debug, Clone)]
struct Outgoing {
    text: String,
    warning: bool,
    phase: Phase,
    ends: bool,
}

/// The state value as read: decoded or not, its size and the cas to write against.
struct Loaded {
    state: Option<CanaryState>,
    empty: bool,
    bytes: u64,
    cas: u32,
}

impl Analyser {
    pub fn new(cfg: Config, token: u64, kind: HolderKind) -> Self {
        Analyser {
            own_config: None,
            not_before_ms: None,
            fleet: cfg.fleet.clone().map(|f| Box::new(fleet::Agent::new(f))),
            keys: Keys::new(&cfg.name),
            log: CanaryLog::new(&cfg),
            revision_info: revision_info_name(&cfg.name, &cfg.revision),
            revision_counters: RevisionCounters::new(&cfg.name, &cfg.revision),
            resume_at_ms: None,
            judge: None,
            cfg,
            token,
            kind,
            leading: false,
            totals_at_ms: None,
            suspended: Once::default(),
            waiting: Once::default(),
            corrupt_slots: Once::default(),
            hooks: hooks::Hooks::default(),
            pending: None,
            start_approved: false,
            next_confirm_ms: 0,
            awaiting_rollout: Once::default(),
            outbox: RefCell::new(Vec::new()),
            command_seen: 0,
            paused: false,
            decided: RefCell::new(Vec::new()),
            pending_fleet_command: None,
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

    /// Takes over the leadership flag of the analyser this one replaces (same canary, same
    /// token: a singleton that picked up a new configuration).
    pub fn inherit_lead(&mut self, from: &Analyser) {
        self.leading = from.leading;
        // A configuration update that lifts `suspend` is this analyser's first tick unheld:
        // it must know the hold was on to keep the schedule.
        if from.cfg.revision == self.cfg.revision {
            self.suspended.set(from.suspended.is_set());
            self.resume_at_ms = from.resume_at_ms;
        }
        if let (Some(mine), Some(theirs), true) = (
            self.fleet.as_deref_mut(),
            from.fleet.as_deref(),
            from.cfg.revision == self.cfg.revision,
        ) {
            mine.inherit(theirs);
        }
    }

    /// Whether this analyser holds its fleet's judge key (fleet mode only).
    pub fn is_fleet_judge(&self) -> bool {
        self.fleet.as_ref().is_some_and(|f| f.is_judge())
    }

    /// A tick without calls out of the proxy (outside fleet mode, tests).
    pub fn tick(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) {
        if self.fleet.is_some() {
            return;
        }
        self.tick_with(store, tel, &mut crate::host::NoHost, now_ms);
    }

    /// One tick; in fleet mode the fleet protocol (`fleet`) replaces the local analysis.
    pub fn tick_with(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn RootHost,
        now_ms: u64,
    ) {
        if !self.lead(store, tel, now_ms) {
            self.leave_fleet(tel, host);
            return;
        }
        if self.fleet.is_some() {
            if let Some(agent) = self.fleet.as_deref_mut() {
                agent.start_clock(now_ms);
            }
            self.fleet_tick(store, tel, host, now_ms);
            if self
                .totals_at_ms
                .is_none_or(|t| now_ms >= t + TOTALS_EVERY_MS)
            {
                let bytes = value_len(store, &self.keys.state);
                self.report(store, tel, bytes, now_ms);
            }
            self.hooks.expire(&self.cfg, now_ms);
            self.flush_outbox(tel, host, now_ms);
            self.record_and_share_decisions(store, tel, host, now_ms);
            return;
        }
        self.hooks.expire(&self.cfg, now_ms);
        self.analyse(store, tel, host, now_ms);
        self.flush_outbox(tel, host, now_ms);
        self.record_decisions(store, now_ms);
    }

    /// Steps 2 to 6 (outside fleet mode).
    fn analyse(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        let Some(loaded) = self.load_state(store) else {
            return;
        };
        if let Some(cmd) = self.take_command(store) {
            if let Some((next, events)) = self.carry_out(tel, &cmd, loaded.state.as_ref(), now_ms) {
                if self.write_state(store, tel, loaded.cas, &next) {
                    self.publish_state(tel, &next);
                    self.count_and_log(tel, &events, next.phase);
                }
                return;
            }
        }
        let Some(state) = self.resume_or_hold(store, tel, host, &loaded, now_ms) else {
            return;
        };
        if self.hold_while_suspended(tel, &state, now_ms) {
            return;
        }
        let due = self.due(&state, now_ms);
        // The statistical judge reads the tallies on every tick while the analysis runs.
        let judging = self.judging(&state);
        if !due
            && !judging
            && self
                .totals_at_ms
                .is_some_and(|t| now_ms < t + TOTALS_EVERY_MS)
        {
            return;
        }
        let slots = self.report(store, tel, loaded.bytes, now_ms);
        if judging {
            if let Some(rejected) = self.judge_tick(store, tel, &state, &slots, now_ms, READ_LAG_MS)
            {
                let (next, events) = reject(&self.cfg, &state, &rejected, now_ms);
                self.write(store, tel, loaded.cas, &[rejected], &next, &events);
                return;
            }
        }
        if !due {
            return;
        }
        let Some(gates) = self.checked(tel, host, &state, &slots, now_ms, now_ms) else {
            return; // webhooks still answering
        };
        let (results, next, events) = self.run_check(&state, &slots, &gates, now_ms);
        self.write(store, tel, loaded.cas, &results, &next, &events);
    }

    /// Step 1: true when this context holds the analyser lease after this tick.
    fn lead(&mut self, store: &dyn SharedStore, tel: &mut dyn Telemetry, now_ms: u64) -> bool {
        if self.kind == HolderKind::Worker {
            let not_before = *self.not_before_ms.get_or_insert(now_ms + WORKER_GRACE_MS);
            if now_ms < not_before {
                return false;
            }
        }
        if let Some(own) = &self.own_config {
            let current = matches!(store.get(&self.keys.config), Ok(Some((b, _))) if b == *own);
            if !current {
                if self.leading {
                    self.shutdown(store, tel);
                    self.log.revision(
                        tel,
                        Level::Info,
                        "newer configuration published, handing the analyser lease over",
                    );
                }
                return false;
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
            let holder = self.holder();
            self.log.canary(
                tel,
                Level::Info,
                &format!("{msg} the analyser lease as {who} (holder {holder})"),
            );
        }
        lead
    }

    /// Step 2: the state value, `None` when the host could not read it (try again next tick).
    fn load_state(&self, store: &dyn SharedStore) -> Option<Loaded> {
        let (bytes, cas) = match store.get(&self.keys.state) {
            Ok(Some((bytes, cas))) => (bytes, cas),
            Ok(None) => (Vec::new(), 0),
            Err(_) => return None,
        };
        Some(Loaded {
            state: CanaryState::decode(&bytes),
            empty: bytes.is_empty(),
            bytes: bytes.len() as u64,
            cas,
        })
    }

    /// Step 3: one decision for the singleton and the elected worker: start, hold or go on.
    /// `Some(state)` to go on with; `None` when this tick wrote a new state (or lost the race).
    fn resume_or_hold(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        loaded: &Loaded,
        now_ms: u64,
    ) -> Option<CanaryState> {
        let found = match &loaded.state {
            Some(s) => Found::State(s),
            None if loaded.empty => Found::Nothing,
            None => Found::Unreadable,
        };
        let state = match resume(&self.cfg, found, now_ms) {
            Resume::Keep(s) => s,
            Resume::Write(next, events) => {
                let (next, events) = self.confirm_start(tel, host, next, events, now_ms)?;
                if self.write_state(store, tel, loaded.cas, &next) {
                    if let Some(p) = loaded
                        .state
                        .as_ref()
                        .filter(|p| p.revision != self.cfg.revision)
                    {
                        tel.gauge_named(&revision_info_name(&self.cfg.name, &p.revision), 0);
                        let line = format!(
                            "revision {} -> {}, previous phase {}",
                            p.revision,
                            self.cfg.revision,
                            p.phase.name()
                        );
                        self.log.canary(tel, Level::Info, &line);
                    }
                    self.publish_state(tel, &next);
                    self.count_and_log(tel, &events, next.phase);
                    self.waiting.set(next.phase == Phase::Waiting);
                }
                return None;
            }
        };
        if state.phase == Phase::Waiting && !self.waiting.is_set() {
            // A new analyser (configuration update, new leader) says why it still holds.
            self.count_and_log(tel, &[held(&self.cfg, Cause::Waiting)], Phase::Waiting);
            self.waiting.set(true);
        }
        self.publish_state(tel, &state);
        Some(state)
    }

    /// `suspend: true` (or an operator's pause) holds the weight and the phase (logged once).
    /// When it lifts, the next check keeps the schedule (`next_check_after_hold`), as Flagger's.
    fn hold_while_suspended(
        &mut self,
        tel: &mut dyn Telemetry,
        state: &CanaryState,
        now_ms: u64,
    ) -> bool {
        let was_held = self.suspended.is_set();
        let held = self.cfg.suspend || self.paused;
        if self.suspended.starts(held) {
            let line = format!(
                "suspended, weight held at {} in phase {}",
                state.weight,
                state.phase.name()
            );
            self.log.revision(tel, Level::Info, &line);
        }
        if was_held && !held && state.phase.is_running() {
            let at = next_check_after_hold(&self.cfg, state, now_ms);
            self.resume_at_ms = Some(at);
            let line = format!(
                "resumed, weight {} in phase {}: the next check keeps the schedule, in {} ms",
                state.weight,
                state.phase.name(),
                at.saturating_sub(now_ms)
            );
            self.log.revision(tel, Level::Info, &line);
        }
        held
    }

    /// Whether a check is due at `at_ms`: an interval since the last one, and not before the
    /// scheduled tick after a hold.
    fn due(&self, state: &CanaryState, at_ms: u64) -> bool {
        is_due(&self.cfg, state, at_ms) && self.resume_at_ms.is_none_or(|t| at_ms >= t)
    }

    /// Step 4: reads every worker's slot, reports the sums and the shared-data footprint.
    fn report(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        state_bytes: u64,
        now_ms: u64,
    ) -> Vec<SlotRecord> {
        let (slots, corrupt, slot_bytes) = read_all(store, &self.keys);
        if self.corrupt_slots.starts(corrupt > 0) {
            let line = format!("ignored {corrupt} unreadable tally slot(s)");
            self.log.canary(tel, Level::Warn, &line);
        }
        let name = &self.cfg.name;
        let mut totals = Totals::default();
        slots.iter().for_each(|s| totals.add(&s.totals));
        tel.gauge(name, Stat::TalliedStableRequests, totals.stable_requests);
        tel.gauge(name, Stat::TalliedStable5xx, totals.stable_errors);
        tel.gauge(name, Stat::TalliedCanaryRequests, totals.canary_requests);
        tel.gauge(name, Stat::TalliedCanary5xx, totals.canary_errors);
        self.revision_counters.report(tel, &totals);
        let shared = slot_bytes
            + state_bytes
            + value_len(store, &self.keys.lease)
            + value_len(store, &self.keys.config)
            + value_len(store, &self.keys.served)
            + value_len(store, &self.keys.judge);
        tel.gauge(name, Stat::SharedBytes, shared);
        // p99 of each side over the shortest metric window, for dashboards (canary vs stable).
        let window = self.cfg.analysis.windows_ms().first().copied().unwrap_or(0);
        for (side, stat) in [
            (Side::Canary, Stat::CanaryP99Ms),
            (Side::Stable, Stat::StableP99Ms),
        ] {
            let mut t = Tally::default();
            for s in &slots {
                s.window(side, window, now_ms.saturating_sub(window), now_ms, &mut t);
            }
            if let Some(micros) = t.latency.percentile(99.0) {
                tel.gauge(name, stat, (micros / 1000.0).round() as u64);
            }
        }
        self.totals_at_ms = Some(now_ms);
        slots
    }

    /// Step 5: each metric over its window of canary outcomes, and the state machine's step.
    fn run_check(
        &self,
        state: &CanaryState,
        slots: &[SlotRecord],
        gates: &Gates,
        now_ms: u64,
    ) -> (Vec<MetricResult>, CanaryState, Vec<Event>) {
        self.run_check_at(state, slots, gates, now_ms, now_ms)
    }

    /// A check as of `to_ms` (its windows end there and the state records it as the check's
    /// time) with requests in flight aged at `now_ms`. The fleet judge checks as of one
    /// publication period back, which every replica has published; a lone proxy as of now.
    fn run_check_at(
        &self,
        state: &CanaryState,
        slots: &[SlotRecord],
        gates: &Gates,
        to_ms: u64,
        now_ms: u64,
    ) -> (Vec<MetricResult>, CanaryState, Vec<Event>) {
        let a = &self.cfg.analysis;
        let results: Vec<_> = a
            .metrics
            .iter()
            .map(|m| {
                // Only this revision's outcomes: the window never reaches before its start.
                let from = to_ms.saturating_sub(m.window_ms).max(state.started_ms);
                let mut window = Tally::default();
                for s in slots {
                    s.window(Side::Canary, m.window_ms, from, to_ms, &mut window);
                    judge_in_flight(
                        s,
                        m,
                        a.request_timeout_ms,
                        state.started_ms,
                        now_ms,
                        &mut window,
                    );
                }
                if m.kind.is_vs_stable() {
                    self.vs_stable_result(m, &window)
                } else {
                    evaluate(m, a.min_requests, &window)
                }
            })
            .collect();
        let (next, events) = check(
            &self.cfg,
            state,
            &results,
            gates,
            to_ms.max(state.last_check_ms),
        );
        (results, next, events)
    }

    /// Step 6: writes the checked state and tells what happened.
    fn write(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        cas: u32,
        results: &[MetricResult],
        next: &CanaryState,
        events: &[Event],
    ) {
        if !self.write_state(store, tel, cas, next) {
            return;
        }
        tel.count(&self.cfg.name, Stat::Checks, 1);
        if events.iter().all(|e| {
            matches!(
                e,
                Event::Advance { .. } | Event::Iteration { .. } | Event::RoutedAll { .. }
            )
        }) {
            let line = format!("checks passed: {}", summary(results));
            self.log.revision(tel, Level::Debug, &line);
        }
        self.publish_state(tel, next);
        self.count_and_log(tel, events, next.phase);
    }

    /// Compare-and-swap on the value this tick read: if anyone else stepped the state since
    /// (another leader for a moment), this step is void and the next tick starts from theirs.
    fn write_state(
        &self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        cas: u32,
        next: &CanaryState,
    ) -> bool {
        match store.set(&self.keys.state, &next.encode(), cas) {
            Ok(()) => true,
            Err(SetError::CasMismatch) => {
                self.log.revision(
                    tel,
                    Level::Debug,
                    "the state changed since this tick read it (CAS mismatch): step void",
                );
                false
            }
            // Counted and logged by the store wrapper (host_errors).
            Err(SetError::Host(_)) => false,
        }
    }

    fn publish_state(&self, tel: &mut dyn Telemetry, s: &CanaryState) {
        let name = &self.cfg.name;
        tel.gauge_named(&self.revision_info, 1);
        tel.gauge(name, Stat::Weight, u64::from(s.weight));
        tel.gauge(name, Stat::Phase, s.phase as u64);
        tel.gauge(name, Stat::FailedChecks, u64::from(s.failed_checks));
        for p in Phase::ALL {
            tel.gauge(name, Stat::PhaseIs(p), u64::from(p == s.phase));
        }
    }

    /// Counts and logs the decisions, and queues them for the `event` webhooks (`phase`: the
    /// phase after them).
    fn count_and_log(&self, tel: &mut dyn Telemetry, events: &[Event], phase: Phase) {
        for e in events {
            if let Some(d) = decision_of(e) {
                tel.count(&self.cfg.name, Stat::Decisions(d), 1);
            }
            match e {
                Event::RolledBack { .. }
                | Event::ManualRollback { .. }
                | Event::Operator {
                    action: Action::Abort,
                    ..
                } => tel.count(&self.cfg.name, Stat::Rollbacks, 1),
                Event::Operator {
                    action: Action::Promote,
                    ..
                } => tel.count(&self.cfg.name, Stat::Promotions, 1),
                Event::PromotionCompleted | Event::Skipped => {
                    tel.count(&self.cfg.name, Stat::Promotions, 1)
                }
                _ => {}
            }
        }
        let lines = self.log.events(tel, &self.cfg, events);
        self.decided
            .borrow_mut()
            .extend(lines.iter().map(|(_, text)| text.clone()));
        if !self.cfg.analysis.webhooks.is_empty() {
            let mut out = self.outbox.borrow_mut();
            for (e, (level, text)) in events.iter().zip(lines) {
                let ends = matches!(
                    e,
                    Event::RolledBack { .. }
                        | Event::ManualRollback { .. }
                        | Event::PromotionCompleted
                        | Event::Skipped
                        | Event::Operator {
                            action: Action::Abort | Action::Promote,
                            ..
                        }
                );
                out.push(Outgoing {
                    text,
                    warning: level == Level::Warn,
                    phase,
                    ends,
                });
            }
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
            let line = format!("released the analyser lease (holder {})", self.holder());
            self.log.canary(tel, Level::Info, &line);
        }
    }
}

/// The `decisions.<kind>` counter an event counts in.
fn decision_of(e: &Event) -> Option<Decision> {
    Some(match e {
        Event::Started { .. } => Decision::Start,
        Event::Advance { .. }
        | Event::Lowered { .. }
        | Event::Iteration { .. }
        | Event::RoutedAll { .. } => Decision::Advance,
        Event::Halt { .. } => Decision::Halt,
        Event::Held { .. }
        | Event::AwaitingRollout { .. }
        | Event::AwaitingTrafficIncrease { .. }
        | Event::AwaitingPromotion { .. } => Decision::Wait,
        Event::PromotionCompleted | Event::Skipped => Decision::Promotion,
        Event::RolledBack { .. } | Event::ManualRollback { .. } => Decision::Rollback,
        Event::Operator { action, .. } => match action {
            Action::Abort => Decision::Rollback,
            Action::Promote => Decision::Promotion,
            Action::Approve => Decision::Start,
            Action::Pause => Decision::Wait,
            Action::Resume => return None,
        },
        Event::PromotionStarted { .. } | Event::Released { .. } => return None,
    })
}

/// Length of a shared-data value (0 when absent or unreadable).
fn value_len(store: &dyn SharedStore, key: &str) -> u64 {
    match store.get(key) {
        Ok(Some((bytes, _))) => bytes.len() as u64,
        _ => 0,
    }
}

/// Canary requests still in flight (as the slot last showed them) count at a check once they
/// have waited too long: past `requestTimeout` as an error for every metric, past a
/// request-duration metric's `max` as a slow request for that metric (its age is a lower
/// bound of its duration). Shorter ones are not judged yet. A request is either in flight or
/// finished in one slot record, never both, so a late completion is not counted twice.
fn judge_in_flight(
    slot: &SlotRecord,
    metric: &MetricCheck,
    timeout_ms: u64,
    started_ms: u64,
    now_ms: u64,
    window: &mut Tally,
) {
    let slow_ms = match metric.kind {
        MetricKind::Duration { .. } => metric.max.map(|m| m.max(0.0) as u64),
        _ => None,
    };
    for start in slot.in_flight_oldest.iter().filter(|t| **t >= started_ms) {
        let age = now_ms.saturating_sub(*start);
        let error = age > timeout_ms;
        if error || slow_ms.is_some_and(|s| age > s) {
            window.record_outcome(error, age.saturating_mul(1000));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{with, EXAMPLE};
    use crate::testkit::fake_host::{FakeStore, FakeTelemetry};
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
