//! Flagger's webhooks in the analyser's steps (`hooks` makes the calls): the rounds a due check
//! needs before it is decided (`checked`), the `confirm-rollout` gate before a start
//! (`confirm_start`), and the decisions sent on to the `event` and `post-rollout` webhooks
//! (`flush_outbox`). A round never blocks a tick: the check is decided on the tick after its
//! last answer (or its timeout).

use super::hooks::{self, Purpose};
use super::{Analyser, PendingCheck};
use crate::config::HookType;
use crate::host::{HttpCalls, Level, Telemetry};
use crate::state::{CanaryState, Phase};
use crate::state_machine::{is_start_check, Event, Gates};
use crate::tally::SlotRecord;

impl Analyser {
    /// The webhooks of the check now due, in Flagger's order: first `rollback` and `rollout`
    /// (`pre-rollout` before the first weight); then, if the check would advance or promote,
    /// `confirm-traffic-increase` or `confirm-promotion`. `None` while a round is answering;
    /// the gates once every round this check needs is done (at once without webhooks).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn checked(
        &mut self,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        state: &CanaryState,
        slots: &[SlotRecord],
        check_ms: u64,
        now_ms: u64,
    ) -> Option<Gates> {
        if self.cfg.analysis.webhooks.is_empty() {
            return Some(Gates::OPEN);
        }
        if self.pending.as_ref().map(|p| p.for_check_ms) != Some(state.last_check_ms) {
            // A new check (or the state moved on under a round): start over.
            self.hooks.round = None;
            self.pending = Some(PendingCheck {
                for_check_ms: state.last_check_ms,
                ..PendingCheck::default()
            });
        }
        if let Some(round) = self.hooks.finished() {
            let (gates, passed) = round.gates(&self.cfg);
            for line in passed {
                self.log.revision(tel, Level::Info, &line);
            }
            if let Some(p) = self.pending.as_mut() {
                merge(&mut p.gates, gates);
                match round.purpose {
                    hooks::Purpose::Confirmations => p.second_done = true,
                    _ => p.first_done = true,
                }
            }
        }
        if self.hooks.round.is_some() {
            return None;
        }
        let mut p = self.pending.clone()?;
        let phase = state.phase.name();
        if !p.first_done {
            let first = if is_start_check(&self.cfg, state) {
                [HookType::Rollback, HookType::PreRollout]
            } else {
                [HookType::Rollback, HookType::Rollout]
            };
            let at = state.last_check_ms;
            if self
                .hooks
                .start(&self.cfg, Purpose::Check, &first, phase, at, host, now_ms)
            {
                return None;
            }
            p.first_done = true;
        }
        if !p.second_done {
            // What this check would do with the answers so far decides which gate to ask.
            let (_, _, events) = self.run_check_at(state, slots, &p.gates, check_ms, now_ms);
            let kind = if events.iter().any(|e| matches!(e, Event::Advance { .. })) {
                Some(HookType::ConfirmTrafficIncrease)
            } else if state.phase != Phase::Promoting
                && events.iter().any(|e| {
                    matches!(
                        e,
                        Event::PromotionStarted { .. } | Event::PromotionCompleted
                    )
                })
            {
                Some(HookType::ConfirmPromotion)
            } else {
                None
            };
            if let Some(kind) = kind {
                let at = state.last_check_ms;
                if self.hooks.start(
                    &self.cfg,
                    Purpose::Confirmations,
                    &[kind],
                    "Progressing",
                    at,
                    host,
                    now_ms,
                ) {
                    self.pending = Some(p);
                    return None;
                }
            }
            p.second_done = true;
        }
        self.pending = None;
        Some(p.gates)
    }

    /// A round is out and not every webhook has answered yet.
    pub(super) fn hooks_pending(&self) -> bool {
        self.hooks.round.as_ref().is_some_and(|r| !r.is_done())
    }

    /// Sends the decisions logged since the last flush to the `event` webhooks, and asks the
    /// `post-rollout` ones after a promotion or a rollback. Nothing waits for them.
    pub(super) fn flush_outbox(
        &mut self,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        let out = std::mem::take(&mut *self.outbox.borrow_mut());
        if self.cfg.analysis.webhooks.is_empty() {
            return;
        }
        let dropped = self.hooks.dropped;
        for o in out {
            let cfg = &self.cfg;
            let mut notes = self.hooks.fire(
                cfg,
                HookType::Event,
                |w| hooks::event_payload(cfg, w, o.phase.name(), &o.text, o.warning, now_ms),
                host,
                now_ms,
            );
            if o.ends {
                notes.extend(self.hooks.fire(
                    cfg,
                    HookType::PostRollout,
                    |w| hooks::payload(cfg, w.kind, o.phase.name(), &w.metadata),
                    host,
                    now_ms,
                ));
            }
            for n in notes {
                let level = if n.warn { Level::Warn } else { Level::Info };
                self.log.revision(tel, level, &n.text);
            }
        }
        if self.hooks.dropped > dropped {
            let line = format!(
                "{} webhook call(s) dropped: {} already in flight",
                self.hooks.dropped - dropped,
                hooks::MAX_FIRE_IN_FLIGHT
            );
            self.log.revision(tel, Level::Warn, &line);
        }
    }

    /// The answer to a webhook call (`status` `None`: no answer). Rounds are picked up on the
    /// next tick; failures of fire-and-forget calls are logged here.
    pub(super) fn on_hook_answer(
        &mut self,
        tel: &mut dyn Telemetry,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        if let Some(note) = self
            .hooks
            .on_answer(&self.cfg, token, status, body, host, now_ms)
        {
            let level = if note.warn { Level::Warn } else { Level::Info };
            self.log.revision(tel, level, &note.text);
        }
    }

    /// Flagger's `confirm-rollout`: a start (`Started`, `Skipped`) waits, at weight 0 in
    /// phase Waiting, until every such webhook approves; asked every interval, with the
    /// `rollback` webhooks (a 2xx fails the revision before it starts). `Some` to write now.
    pub(super) fn confirm_start(
        &mut self,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        next: CanaryState,
        events: Vec<Event>,
        now_ms: u64,
    ) -> Option<(CanaryState, Vec<Event>)> {
        let starts = events
            .iter()
            .any(|e| matches!(e, Event::Started { .. } | Event::Skipped));
        if !starts || self.start_approved || !self.cfg.analysis.has_hooks(HookType::ConfirmRollout)
        {
            return Some((next, events));
        }
        // Nothing is written while waiting: the workers route this revision to stable (no
        // state of it), and the gauges say Waiting.
        let mut waiting = CanaryState::new(&self.cfg.revision, now_ms);
        waiting.phase = Phase::Waiting;
        self.publish_state(tel, &waiting);
        if let Some(round) = self.hooks.finished() {
            let (gates, passed) = round.gates(&self.cfg);
            if let Some(hook) = gates.rollback {
                let mut failed = waiting.clone();
                failed.phase = Phase::Failed;
                return Some((failed, vec![Event::ManualRollback { hook, from: 0 }]));
            }
            match round.refused_start(&self.cfg) {
                Some(hook) => {
                    if self.awaiting_rollout.starts(true) {
                        self.count_and_log(tel, &[Event::AwaitingRollout { hook }], Phase::Waiting);
                    }
                    self.next_confirm_ms = now_ms + self.cfg.analysis.interval_ms;
                }
                None => {
                    for line in passed {
                        self.log.revision(tel, Level::Info, &line);
                    }
                    self.start_approved = true;
                    return Some((next, events));
                }
            }
        }
        if self.hooks.round.is_none() && now_ms >= self.next_confirm_ms {
            let kinds = [HookType::ConfirmRollout, HookType::Rollback];
            self.hooks.start(
                &self.cfg,
                Purpose::Confirm,
                &kinds,
                "Waiting",
                0,
                host,
                now_ms,
            );
        }
        None
    }
}

/// Adds a round's answers to the gates of the check so far.
fn merge(into: &mut Gates, from: Gates) {
    into.failed.extend(from.failed);
    into.traffic_increase = into.traffic_increase.take().or(from.traffic_increase);
    into.promotion = into.promotion.take().or(from.promotion);
    into.rollback = into.rollback.take().or(from.rollback);
}
