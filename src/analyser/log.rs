//! The analyser's log lines: every line starts with the canary (and its revision where the line
//! is about it), and conditions that hold for many ticks are logged when they start.

use crate::config::Config;
use crate::host::{Level, Telemetry};
use crate::state_machine::{Cause, Event, Logged};

/// `canary web rev v2: ...` and `canary web: ...`.
pub struct CanaryLog {
    name: String,
    revision: String,
}

impl CanaryLog {
    pub fn new(cfg: &Config) -> Self {
        CanaryLog {
            name: cfg.name.clone(),
            revision: cfg.revision.clone(),
        }
    }

    /// A line about the configured revision.
    pub fn revision(&self, tel: &mut dyn Telemetry, level: Level, text: &str) {
        tel.log(
            level,
            &format!("canary {} rev {}: {text}", self.name, self.revision),
        );
    }

    /// A line about the canary whatever its revision (leases, slots, revision changes).
    pub fn canary(&self, tel: &mut dyn Telemetry, level: Level, text: &str) {
        tel.log(level, &format!("canary {}: {text}", self.name));
    }

    /// The state machine's events, at the level an operator should see them; the lines, for
    /// the `event` webhooks.
    pub fn events(
        &self,
        tel: &mut dyn Telemetry,
        cfg: &Config,
        events: &[Event],
    ) -> Vec<(Level, String)> {
        let mut lines = Vec::with_capacity(events.len());
        for e in events {
            let level = match e {
                Event::RolledBack { .. }
                | Event::ManualRollback { .. }
                | Event::Halt { .. }
                | Event::Held { .. }
                | Event::AwaitingRollout { .. }
                | Event::AwaitingTrafficIncrease { .. }
                | Event::AwaitingPromotion { .. }
                | Event::Operator {
                    action: crate::control::Action::Abort,
                    ..
                } => Level::Warn,
                Event::Released {
                    cause: Cause::Unreadable,
                    ..
                } => Level::Warn,
                _ => Level::Info,
            };
            let line = Logged::of(cfg, e).to_string();
            tel.log(level, &line);
            lines.push((level, line));
        }
        lines
    }
}

/// A condition that is logged once when it starts to hold, not on every tick while it holds.
#[derive(Debug, Default)]
pub struct Once(bool);

impl Once {
    /// Notes whether the condition holds now; true when it just started to.
    pub fn starts(&mut self, holds: bool) -> bool {
        let first = holds && !self.0;
        self.0 = holds;
        first
    }

    /// Marks the condition as already logged (or not) by someone else.
    pub fn set(&mut self, logged: bool) {
        self.0 = logged;
    }

    pub fn is_set(&self) -> bool {
        self.0
    }
}
