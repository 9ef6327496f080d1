//! Operators' commands (`control`): the analyser carries out the canary's latest command for
//! its revision (pause and resume hold or free the checks; promote, abort and approve change
//! the state), and keeps the last decisions in shared data for the control endpoint's status.

use super::Analyser;
use crate::control::{decode_decisions, Action, Command, DECISION_TEXT_MAX};
use crate::host::{SharedStore, Telemetry};
use crate::state::{CanaryState, Phase};
use crate::state_machine::{operate, Event};

impl Analyser {
    /// Keeps the last decisions in shared data, for the control endpoint's status; the list
    /// written when there were new ones.
    pub(super) fn record_decisions(&self, store: &dyn SharedStore, now_ms: u64) -> Option<Vec<u8>> {
        let new = std::mem::take(&mut *self.decided.borrow_mut());
        if new.is_empty() {
            return None;
        }
        let mut list: Vec<serde_json::Value> = store
            .get(&self.keys.decisions)
            .ok()
            .flatten()
            .and_then(|(b, _)| decode_decisions(&b))
            .unwrap_or_default();
        for mut text in new {
            let mut end = text.len().min(DECISION_TEXT_MAX);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
            list.push(serde_json::json!({"atMs": now_ms, "text": text}));
        }
        let keep = list.len().saturating_sub(crate::control::DECISIONS_KEPT);
        list.drain(..keep);
        let bytes = serde_json::Value::Array(list).to_string().into_bytes();
        let _written = store.set(&self.keys.decisions, &bytes, 0);
        Some(bytes)
    }

    /// The operator's command for this revision taken by this proxy's control endpoint and
    /// not taken by this analyser yet; marked taken. (Commands the fleet judge reads from etcd
    /// carry other proxies' ids and do not count here.)
    pub(super) fn take_command(&mut self, store: &dyn SharedStore) -> Option<Command> {
        let (bytes, _) = store.get(&self.keys.command).ok().flatten()?;
        let cmd = Command::decode(&bytes)?;
        if cmd.revision != self.cfg.revision || cmd.id <= self.command_seen {
            return None;
        }
        self.command_seen = cmd.id;
        Some(cmd)
    }

    /// Carries out an operator's command: pause and resume hold or free the checks (logged);
    /// the others give the state to write, when they change it.
    pub(super) fn carry_out(
        &mut self,
        tel: &mut dyn Telemetry,
        cmd: &Command,
        state: Option<&CanaryState>,
        now_ms: u64,
    ) -> Option<(CanaryState, Vec<Event>)> {
        let weight = state.map_or(0, |s| s.weight);
        let phase = state.map_or(Phase::Initializing, |s| s.phase);
        match cmd.action {
            Action::Pause | Action::Resume => {
                self.paused = cmd.action == Action::Pause;
                let e = Event::Operator {
                    action: cmd.action,
                    by: cmd.by.clone(),
                    from: weight,
                };
                self.count_and_log(tel, &[e], phase);
                None
            }
            action => operate(&self.cfg, state, action, &cmd.by, now_ms),
        }
    }
}
