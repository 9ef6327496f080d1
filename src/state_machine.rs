//! The analysis state machine (Flagger semantics), pure: given the configuration, the current
//! state and the metric results of one check, it returns the next state and the events to log.

use crate::config::{Config, HookType, RestartPolicy, Steps};
use crate::metrics::{num, MetricResult, Verdict};
use crate::state::{CanaryState, Phase};
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Started {
        weight: u8,
    },
    Skipped,
    Advance {
        from: u8,
        to: u8,
    },
    /// The configuration's top step is now below the weight (maxWeight lowered): the weight
    /// comes down to it, and only a passing check there promotes.
    Lowered {
        from: u8,
        to: u8,
    },
    /// A/B testing or Blue/Green: one more passing iteration.
    Iteration {
        done: u32,
        of: u32,
    },
    /// Blue/Green: the iterations passed, every request goes to the canary now (Flagger's
    /// "Routing all traffic to canary"); one more passing check promotes.
    RoutedAll {
        after: u32,
    },
    /// A check failed below the threshold: weight held.
    Halt {
        reasons: Vec<String>,
        failed: u32,
        threshold: u32,
    },
    PromotionStarted {
        weight: u8,
    },
    PromotionCompleted,
    RolledBack {
        reasons: Vec<String>,
        failed: u32,
        threshold: u32,
        from: u8,
    },
    /// `restartPolicy: hold` and no approval: phase Waiting at weight 0.
    Held {
        cause: Cause,
        /// An `approvedUntil` that has already passed (named in the log: a common mistake).
        expired: Option<String>,
    },
    /// The analysis may start without a state for this revision (followed by `Started`).
    Released {
        cause: Cause,
        by: Release,
    },
    /// A `confirm-rollout` webhook has not approved the start: weight 0, phase Waiting.
    AwaitingRollout {
        hook: String,
    },
    /// A `confirm-traffic-increase` webhook has not approved the next weight: weight held.
    AwaitingTrafficIncrease {
        hook: String,
        weight: u8,
    },
    /// A `confirm-promotion` webhook has not approved the promotion: phase WaitingPromotion,
    /// the weight held at the last step, checks going on.
    AwaitingPromotion {
        hook: String,
        weight: u8,
    },
    /// A `rollback` webhook answered 2xx: rolled back at once.
    ManualRollback {
        hook: String,
        from: u8,
    },
    /// An operator's action through the control endpoint (`by`: the token's name or the peer).
    Operator {
        action: crate::control::Action,
        by: String,
        from: u8,
    },
}

/// What the webhooks answered for one check (`analyser::hooks` asks them), with Flagger's
/// meaning (fluxcd/flagger `pkg/controller/scheduler_hooks.go`): all `None`/empty when the
/// configuration has no such hook.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gates {
    /// `rollout` hooks (or, before the first weight, `pre-rollout` hooks) that failed, with
    /// why: each fails the check, as a broken metric does.
    pub failed: Vec<(String, String)>,
    /// The `confirm-traffic-increase` hook that did not approve the next weight.
    pub traffic_increase: Option<String>,
    /// The `confirm-promotion` hook that did not approve the promotion.
    pub promotion: Option<String>,
    /// The `rollback` hook that answered 2xx.
    pub rollback: Option<String>,
}

impl Gates {
    /// No hook objects: what a configuration without webhooks always gets.
    pub const OPEN: Gates = Gates {
        failed: Vec::new(),
        traffic_increase: None,
        promotion: None,
        rollback: None,
    };
}

/// Why the analyser had no running state for the configured revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// No state in shared data: a first load or a restarted proxy (they look the same).
    Absent,
    /// A state that does not decode (corrupt, or from an incompatible module): it may have
    /// been `Failed`, so it is treated as no state.
    Unreadable,
    /// This revision was held in phase Waiting.
    Waiting,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Cause::Absent => "no analysis state (first load or proxy restart)",
            Cause::Unreadable => "analysis state unreadable (treated as no state)",
            Cause::Waiting => "held since a first load or proxy restart",
        })
    }
}

/// What lets an analysis start without a state for its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release {
    /// `approvedUntil` (as configured) is in the future.
    Approved(String),
    /// `restartPolicy: restart`.
    RestartPolicy,
}

/// A decision, ready to log: `canary web rev v2: advance weight 10 -> 20`.
pub struct Logged<'a> {
    pub name: &'a str,
    pub revision: &'a str,
    pub event: &'a Event,
}

impl<'a> Logged<'a> {
    /// The line an event of this canary's configured revision is logged as.
    pub fn of(cfg: &'a Config, event: &'a Event) -> Self {
        Logged {
            name: &cfg.name,
            revision: &cfg.revision,
            event,
        }
    }
}

impl fmt::Display for Logged<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "canary {} rev {}: ", self.name, self.revision)?;
        match self.event {
            Event::Started { weight: 0 } => write!(
                f,
                "starting analysis, phase Progressing, weight 0 (the first step waits for the pre-rollout and confirm-traffic-increase webhooks)"
            ),
            Event::Started { weight } => {
                write!(f, "starting analysis, phase Progressing, weight 0 -> {weight}")
            }
            Event::Skipped => write!(f, "skipAnalysis is set, promoting at once: weight -> 100, phase Succeeded"),
            Event::Advance { from, to } => write!(f, "advance weight {from} -> {to}"),
            Event::Lowered { from, to } => write!(f, "the top step is now {to}: weight {from} -> {to}, promotion after a passing check at {to}"),
            Event::Iteration { done, of } => write!(f, "checks passed, iteration {done}/{of}"),
            Event::RoutedAll { after } => write!(f, "routing all traffic to the canary (Blue/Green, {after} iterations passed): weight 0 -> 100, promotion after a passing check there"),
            Event::Halt { reasons, failed, threshold } => write!(
                f,
                "halt advancement, {} (failed checks {failed}/{threshold})",
                reasons.join(", ")
            ),
            Event::PromotionStarted { weight } => {
                write!(f, "promoting, phase Promoting, weight -> {weight}")
            }
            Event::PromotionCompleted => {
                write!(f, "promotion completed, weight -> 100, phase Succeeded")
            }
            Event::RolledBack { reasons, failed, threshold, from } => write!(
                f,
                "rolling back, {} (failed checks {failed}/{threshold}), weight {from} -> 0, phase Failed",
                reasons.join(", ")
            ),
            Event::Held { cause, expired } => {
                write!(f, "halt advancement, waiting for approval: {cause}, and restartPolicy hold keeps the canary at weight 0 in phase Waiting until the revision changes or approvedUntil is a time in the future (RFC 3339)")?;
                match expired {
                    Some(t) => write!(f, "; approvedUntil {t} has passed"),
                    None => Ok(()),
                }
            }
            Event::Released { cause, by } => {
                let by = match by {
                    Release::Approved(t) => format!("approved until {t}"),
                    Release::RestartPolicy => "restartPolicy restart".to_string(),
                };
                write!(f, "{cause}, {by}: starting the analysis")
            }
            Event::AwaitingRollout { hook } => write!(
                f,
                "halt advancement, waiting for approval: confirm-rollout webhook {hook} (weight 0, phase Waiting)"
            ),
            Event::AwaitingTrafficIncrease { hook, weight } => write!(
                f,
                "halt advancement, waiting for traffic increase approval: confirm-traffic-increase webhook {hook} (weight held at {weight})"
            ),
            Event::AwaitingPromotion { hook, weight } => write!(
                f,
                "halt advancement, waiting for promotion approval: confirm-promotion webhook {hook} (weight held at {weight}, phase WaitingPromotion)"
            ),
            Event::ManualRollback { hook, from } => write!(
                f,
                "rolling back, manual webhook invoked: rollback webhook {hook} answered 2xx, weight {from} -> 0, phase Failed"
            ),
            Event::Operator { action, by, from } => {
                use crate::control::Action;
                match action {
                    Action::Abort => write!(f, "rolling back, aborted by {by}: weight {from} -> 0, phase Failed"),
                    Action::Promote => write!(f, "promotion completed, promoted by {by}: weight {from} -> 100, phase Succeeded"),
                    Action::Approve => write!(f, "approved by {by}: starting the analysis"),
                    Action::Pause => write!(f, "paused by {by}: weight held at {from}, no checks until resumed"),
                    Action::Resume => write!(f, "resumed by {by}: checks go on"),
                }
            }
        }
    }
}

/// The state a new revision starts in.
pub fn start(cfg: &Config, now_ms: u64) -> (CanaryState, Vec<Event>) {
    let mut state = CanaryState::new(&cfg.revision, now_ms);
    if cfg.skip_analysis {
        state.phase = Phase::Succeeded;
        state.weight = 100;
        return (state, vec![Event::Skipped]);
    }
    // With pre-rollout or confirm-traffic-increase webhooks the first weight is a step like any
    // other (Flagger starts at 0 and asks them before it): the first check makes it.
    let gated = matches!(cfg.analysis.steps, Steps::Linear { .. } | Steps::List(_))
        && (cfg.analysis.has_hooks(HookType::PreRollout)
            || cfg.analysis.has_hooks(HookType::ConfirmTrafficIncrease));
    state.weight = if gated {
        0
    } else {
        cfg.analysis.steps.first_weight()
    };
    (
        state.clone(),
        vec![Event::Started {
            weight: state.weight,
        }],
    )
}

/// What the analyser found in shared data for this canary.
#[derive(Debug, Clone, Copy)]
pub enum Found<'a> {
    /// No state (absent key or empty value).
    Nothing,
    /// A value that does not decode.
    Unreadable,
    State(&'a CanaryState),
}

/// The analyser's decision on each tick, before any check.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// Go on with this state (checks run when due; a held or finished one stays as it is).
    Keep(CanaryState),
    /// Write this state (compare-and-swap on what was found) and log these events.
    Write(CanaryState, Vec<Event>),
}

/// Starts, holds or keeps the configured revision's analysis given what shared data holds.
///
/// A process cannot tell its first load from a restart (shared data does not survive one), and
/// a restarted process may have rolled this revision back. So without a state the analysis
/// starts only when `approvedUntil` is in the future or `restartPolicy` is `restart`; otherwise
/// it waits at weight 0. A state of another revision means this process saw an earlier
/// revision: this one is new and starts. A state of this revision is kept (a `Failed` one stays
/// failed whatever the approval says); only a `Waiting` one starts once approved.
pub fn resume(cfg: &Config, found: Found, now_ms: u64) -> Resume {
    let cause = match found {
        Found::State(s) if s.revision != cfg.revision => {
            let (next, events) = start(cfg, now_ms);
            return Resume::Write(next, events);
        }
        Found::State(s) if s.phase != Phase::Waiting => return Resume::Keep(s.clone()),
        Found::State(_) => Cause::Waiting,
        Found::Nothing => Cause::Absent,
        Found::Unreadable => Cause::Unreadable,
    };
    match release(cfg, now_ms) {
        Some(by) => {
            let (next, mut events) = start(cfg, now_ms);
            events.insert(0, Event::Released { cause, by });
            Resume::Write(next, events)
        }
        None => match found {
            Found::State(s) => Resume::Keep(s.clone()),
            _ => {
                let mut waiting = CanaryState::new(&cfg.revision, now_ms);
                waiting.phase = Phase::Waiting;
                Resume::Write(waiting, vec![held(cfg, cause)])
            }
        },
    }
}

/// The event of a revision held in phase Waiting.
pub fn held(cfg: &Config, cause: Cause) -> Event {
    Event::Held {
        cause,
        // Without a release, a configured approval has passed.
        expired: cfg.approved_until.as_ref().map(|a| a.text.clone()),
    }
}

/// What allows an analysis to start without a state, if anything. An unknown clock (0) never
/// counts as before the approval's end.
pub fn release(cfg: &Config, now_ms: u64) -> Option<Release> {
    match &cfg.approved_until {
        Some(a) if now_ms > 0 && now_ms < a.until_ms => Some(Release::Approved(a.text.clone())),
        _ if cfg.restart_policy == RestartPolicy::Restart => Some(Release::RestartPolicy),
        _ => None,
    }
}

/// Whether a check is due: the analysis is running, not suspended, and an interval has passed
/// since the last one.
pub fn is_due(cfg: &Config, state: &CanaryState, now_ms: u64) -> bool {
    !cfg.suspend
        && state.phase.is_running()
        && now_ms >= state.last_check_ms.saturating_add(cfg.analysis.interval_ms)
}

/// When the first check after a hold (`suspend`, or an operator's pause) lifted at
/// `resumed_ms` is due: Flagger's ticker keeps ticking while a canary is suspended
/// (scheduler.go `scheduleCanaries` starts one `time.NewTicker(interval)` per canary;
/// `advanceCanary` returns early while `Spec.Suspend`), so the next check is the first tick of
/// the schedule after the resume, never the moment it is lifted. The schedule here is the
/// last check plus whole intervals.
pub fn next_check_after_hold(cfg: &Config, state: &CanaryState, resumed_ms: u64) -> u64 {
    let interval = cfg.analysis.interval_ms.max(1);
    let last = state.last_check_ms;
    let passed = resumed_ms.saturating_sub(last) / interval;
    last.saturating_add(interval.saturating_mul(passed.saturating_add(1)))
}

/// An operator's action on the configured revision's state (`None`: nothing to change, the
/// action already holds or does not apply). Pause and resume change no state: the analyser
/// holds the checks while the latest command is a pause.
pub fn operate(
    cfg: &Config,
    state: Option<&CanaryState>,
    action: crate::control::Action,
    by: &str,
    now_ms: u64,
) -> Option<(CanaryState, Vec<Event>)> {
    use crate::control::Action;
    let current = state.filter(|s| s.revision == cfg.revision);
    let event = |from: u8| Event::Operator {
        action,
        by: by.to_string(),
        from,
    };
    match (action, current) {
        (Action::Abort, Some(s)) if !matches!(s.phase, Phase::Failed | Phase::Succeeded) => {
            let mut next = s.clone();
            next.phase = Phase::Failed;
            next.weight = 0;
            next.last_check_ms = now_ms.max(s.last_check_ms);
            Some((next, vec![event(s.weight)]))
        }
        (Action::Abort, None) => {
            let mut next = CanaryState::new(&cfg.revision, now_ms);
            next.phase = Phase::Failed;
            Some((next, vec![event(0)]))
        }
        (Action::Promote, Some(s)) if !matches!(s.phase, Phase::Failed | Phase::Succeeded) => {
            let mut next = s.clone();
            next.phase = Phase::Succeeded;
            next.weight = 100;
            next.last_check_ms = now_ms.max(s.last_check_ms);
            Some((next, vec![event(s.weight)]))
        }
        (Action::Approve, Some(s)) if s.phase != Phase::Waiting => None,
        (Action::Approve, _) => {
            let (next, mut events) = start(cfg, now_ms);
            events.insert(0, event(0));
            Some((next, events))
        }
        _ => None,
    }
}

/// Whether this check is the one before the first weight (Flagger's weight 0, iteration 0):
/// it asks the `pre-rollout` webhooks instead of measuring (no traffic has reached the
/// canary yet), then makes the first step. Only with webhooks that gate that step, so a
/// configuration without them starts at its first weight as before.
pub fn is_start_check(cfg: &Config, state: &CanaryState) -> bool {
    let a = &cfg.analysis;
    state.phase == Phase::Progressing
        && state.weight == 0
        && state.iterations == 0
        && match a.steps {
            Steps::Iterations(_) | Steps::BlueGreen(_) => a.has_hooks(HookType::PreRollout),
            _ => a.has_hooks(HookType::PreRollout) || a.has_hooks(HookType::ConfirmTrafficIncrease),
        }
}

/// Applies one check's results and what the webhooks answered (`Gates::OPEN` without any).
pub fn check(
    cfg: &Config,
    state: &CanaryState,
    results: &[MetricResult],
    gates: &Gates,
    now_ms: u64,
) -> (CanaryState, Vec<Event>) {
    let a = &cfg.analysis;
    let mut next = state.clone();
    next.last_check_ms = now_ms;
    let mut events = Vec::new();
    // skipAnalysis set while the analysis runs: Flagger promotes on its next tick
    // (scheduler.go shouldSkipAnalysis, asked before anything else).
    if cfg.skip_analysis {
        next.phase = Phase::Succeeded;
        next.weight = 100;
        events.push(Event::Skipped);
        return (next, events);
    }
    // Flagger asks the rollback webhooks first: a 2xx rolls back whatever the metrics say.
    if let Some(hook) = &gates.rollback {
        next.phase = Phase::Failed;
        next.weight = 0;
        events.push(Event::ManualRollback {
            hook: hook.clone(),
            from: state.weight,
        });
        return (next, events);
    }
    let start_check = is_start_check(cfg, state);
    // Blue/Green before the switch: no request reaches the canary through the proxy (weight 0,
    // no match rules), so the metrics have nothing to judge; the webhooks (a load or acceptance
    // test against the canary itself) do. The metrics judge from the switch on.
    let blind = matches!(a.steps, Steps::BlueGreen(_)) && state.weight == 0;
    let mut failures = if start_check || blind {
        Vec::new() // before any traffic: only the pre-rollout webhooks count
    } else {
        failure_reasons(results)
    };
    for (hook, why) in &gates.failed {
        let kind = if start_check {
            "pre-rollout"
        } else {
            "rollout"
        };
        failures.push(format!("{kind} webhook {hook} failed: {why}"));
    }
    // maxWeight (or the step list) lowered below the weight: come down to the new top. This
    // check judged traffic at the old weight, so it cannot promote.
    let top = a.steps.max_weight();
    let lowered = matches!(state.phase, Phase::Progressing | Phase::WaitingPromotion)
        && a.steps.iterations().is_none()
        && state.weight > top;
    if lowered {
        next.weight = top;
        next.phase = Phase::Progressing;
        events.push(Event::Lowered {
            from: state.weight,
            to: top,
        });
    }

    if !failures.is_empty() {
        next.failed_checks = state.failed_checks.saturating_add(1);
        if next.failed_checks >= a.threshold {
            next.phase = Phase::Failed;
            next.weight = 0;
            events.push(Event::RolledBack {
                reasons: failures,
                failed: next.failed_checks,
                threshold: a.threshold,
                from: state.weight,
            });
        } else {
            events.push(Event::Halt {
                reasons: failures,
                failed: next.failed_checks,
                threshold: a.threshold,
            });
        }
        return (next, events);
    }

    if a.consecutive {
        next.failed_checks = 0;
    }
    if lowered {
        next.iterations = state.iterations.saturating_add(1);
        return (next, events);
    }

    if state.phase == Phase::Promoting {
        next.iterations = state.iterations.saturating_add(1);
        promote_step(cfg, &mut next, &mut events);
        return (next, events);
    }
    let advance = match &a.steps {
        // scheduler.go runBlueGreen: `iterations` passing checks at weight 0, then (past the
        // promotion gate) all traffic to the canary, then (past it again) promotion.
        Steps::BlueGreen(n) if state.weight == 0 => {
            next.iterations = state.iterations.saturating_add(1);
            if state.iterations < *n || start_check {
                events.push(Event::Iteration {
                    done: next.iterations.min(*n),
                    of: *n,
                });
                return (next, events);
            }
            if let Some(hook) = &gates.promotion {
                if state.phase != Phase::WaitingPromotion {
                    next.phase = Phase::WaitingPromotion;
                    events.push(Event::AwaitingPromotion {
                        hook: hook.clone(),
                        weight: 0,
                    });
                }
                return (next, events);
            }
            next.phase = Phase::Progressing;
            next.weight = 100;
            events.push(Event::RoutedAll { after: *n });
            return (next, events);
        }
        Steps::BlueGreen(_) => {
            next.iterations = state.iterations.saturating_add(1);
            None
        }
        Steps::Iterations(n) => {
            next.iterations = state.iterations.saturating_add(1);
            if next.iterations < *n || start_check {
                events.push(Event::Iteration {
                    done: next.iterations,
                    of: *n,
                });
                return (next, events);
            }
            None
        }
        steps if start_check => Some(steps.first_weight()),
        _ if state.phase == Phase::WaitingPromotion => {
            next.iterations = state.iterations.saturating_add(1);
            None
        }
        steps => {
            next.iterations = state.iterations.saturating_add(1);
            steps.next_weight(state.weight)
        }
    };
    match advance {
        Some(to) => {
            if let Some(hook) = &gates.traffic_increase {
                events.push(Event::AwaitingTrafficIncrease {
                    hook: hook.clone(),
                    weight: state.weight,
                });
                return (next, events);
            }
            next.weight = to;
            events.push(Event::Advance {
                from: state.weight,
                to,
            });
        }
        None => {
            if let Some(hook) = &gates.promotion {
                // Flagger logs the hold once, when it starts waiting.
                if state.phase != Phase::WaitingPromotion {
                    next.phase = Phase::WaitingPromotion;
                    events.push(Event::AwaitingPromotion {
                        hook: hook.clone(),
                        weight: state.weight,
                    });
                }
                return (next, events);
            }
            // A passing check at maxWeight promotes.
            next.phase = Phase::Promoting;
            promote_step(cfg, &mut next, &mut events);
        }
    }
    (next, events)
}

/// The statistical judge rejected between checks (`error-rate-vs-stable`,
/// `latency-vs-stable`): a failed check that rolls back at once, on the tick the evidence
/// arrived, whatever `threshold` says.
pub fn reject(
    cfg: &Config,
    state: &CanaryState,
    rejected: &MetricResult,
    now_ms: u64,
) -> (CanaryState, Vec<Event>) {
    let mut next = state.clone();
    next.failed_checks = state.failed_checks.saturating_add(1);
    next.phase = Phase::Failed;
    next.weight = 0;
    next.last_check_ms = now_ms.max(state.last_check_ms);
    let event = Event::RolledBack {
        reasons: vec![format!("{rejected}, rejected at once")],
        failed: next.failed_checks,
        threshold: cfg.analysis.threshold,
        from: state.weight,
    };
    (next, vec![event])
}

/// Why a check failed, one reason per broken metric; metrics without enough data are folded
/// into one "no traffic" reason (they share the window's request count).
fn failure_reasons(results: &[MetricResult]) -> Vec<String> {
    let mut reasons: Vec<String> = Vec::new();
    let mut no_data: Option<(u64, u64)> = None;
    for r in results.iter().filter(|r| !r.passed()) {
        match r.verdict {
            Verdict::NoData {
                requests,
                min_requests,
            } => {
                let (req, min) = no_data.get_or_insert((requests, min_requests));
                *req = (*req).min(requests);
                *min = (*min).max(min_requests);
            }
            _ => reasons.push(r.to_string()),
        }
    }
    if let Some((requests, min)) = no_data {
        reasons.insert(
            0,
            format!("no traffic: {requests} requests < minRequests {min}, the canary is probably not receiving traffic"),
        );
    }
    reasons
}

fn promote_step(cfg: &Config, next: &mut CanaryState, events: &mut Vec<Event>) {
    let step = cfg.analysis.promotion_step;
    let to = if step == 0 {
        100
    } else {
        next.weight.saturating_add(step).min(100)
    };
    next.weight = to;
    if to >= 100 {
        next.phase = Phase::Succeeded;
        events.push(Event::PromotionCompleted);
    } else {
        events.push(Event::PromotionStarted { weight: to });
    }
}

/// Short form of a passing check's figures for debug logs.
pub fn summary(results: &[MetricResult]) -> String {
    results
        .iter()
        .map(|r| match (&r.evidence, r.value) {
            (Some(evidence), _) => format!("{} ({evidence})", r.name),
            (None, Some(v)) => format!("{} {} ({} req)", r.name, num(v), r.requests),
            (None, None) => format!("{} n/a ({} req)", r.name, r.requests),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{example, with};
    use crate::metrics::evaluate;
    use crate::tally::Tally;

    fn healthy(cfg: &Config) -> Vec<MetricResult> {
        let mut t = Tally::default();
        (0..100).for_each(|_| t.record(200, 20_000));
        cfg.analysis
            .metrics
            .iter()
            .map(|m| evaluate(m, cfg.analysis.min_requests, &t))
            .collect()
    }

    fn failing(cfg: &Config) -> Vec<MetricResult> {
        let mut t = Tally::default();
        (0..80).for_each(|_| t.record(200, 20_000));
        (0..20).for_each(|_| t.record(500, 20_000));
        cfg.analysis
            .metrics
            .iter()
            .map(|m| evaluate(m, cfg.analysis.min_requests, &t))
            .collect()
    }

    fn text(cfg: &Config, e: &Event) -> String {
        Logged::of(cfg, e).to_string()
    }

    #[test]
    fn healthy_canary_walks_every_step_and_is_promoted() {
        let cfg = example();
        let (mut s, ev) = start(&cfg, 0);
        assert_eq!(
            text(&cfg, &ev[0]),
            "canary web rev v2: starting analysis, phase Progressing, weight 0 -> 1"
        );
        let mut weights = vec![s.weight];
        let mut now = 0;
        while s.phase != Phase::Succeeded {
            now += 1000;
            assert!(is_due(&cfg, &s, now));
            let (n, _) = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, now);
            s = n;
            weights.push(s.weight);
        }
        assert_eq!(weights, vec![1, 5, 10, 25, 50, 100]);
        assert!(!is_due(&cfg, &s, now + 10_000), "Succeeded is terminal");
    }

    #[test]
    fn advance_is_logged_with_figures() {
        let cfg = with("/analysis/stepWeight", Some(10.into())).unwrap();
        let (s, _) = start(&cfg, 0);
        let (_, ev) = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, 1000);
        assert_eq!(
            text(&cfg, &ev[0]),
            "canary web rev v2: advance weight 10 -> 20"
        );
    }

    #[test]
    fn failed_checks_accumulate_and_roll_back_at_threshold() {
        let cfg = example();
        let (s0, _) = start(&cfg, 0);
        let (s1, e1) = check(&cfg, &s0, &failing(&cfg), &Gates::OPEN, 1000);
        assert_eq!(s1.failed_checks, 1);
        assert_eq!(s1.weight, s0.weight, "weight held");
        assert_eq!(text(&cfg, &e1[0]), "canary web rev v2: halt advancement, request-success-rate 80% < 99% (failed checks 1/3)");
        let (s2, _) = check(&cfg, &s1, &healthy(&cfg), &Gates::OPEN, 2000);
        assert_eq!(
            s2.failed_checks, 1,
            "a passing check does not reset the running total"
        );
        let (s3, _) = check(&cfg, &s2, &failing(&cfg), &Gates::OPEN, 3000);
        let (s4, e4) = check(&cfg, &s3, &failing(&cfg), &Gates::OPEN, 4000);
        assert_eq!(
            (s4.phase, s4.weight, s4.failed_checks),
            (Phase::Failed, 0, 3)
        );
        assert_eq!(
            text(&cfg, &e4[0]),
            format!("canary web rev v2: rolling back, request-success-rate 80% < 99% (failed checks 3/3), weight {} -> 0, phase Failed", s3.weight)
        );
        assert!(!is_due(&cfg, &s4, 100_000), "Failed stays failed");
    }

    #[test]
    fn a_lowered_max_weight_brings_the_weight_down_and_promotes_only_after_a_check_there() {
        let mut cfg = example();
        let at_50 = CanaryState {
            weight: 50,
            phase: Phase::Progressing,
            ..CanaryState::new("v2", 0)
        };
        cfg.analysis.steps = Steps::Linear { step: 10, max: 30 };
        let (next, events) = check(&cfg, &at_50, &healthy(&cfg), &Gates::OPEN, 1_000);
        assert_eq!((next.weight, next.phase), (30, Phase::Progressing));
        assert_eq!(events, vec![Event::Lowered { from: 50, to: 30 }]);
        assert_eq!(
            text(&cfg, &events[0]),
            "canary web rev v2: the top step is now 30: weight 50 -> 30, promotion after a passing check at 30"
        );
        // The next passing check, at 30, promotes.
        let (next, _) = check(&cfg, &next, &healthy(&cfg), &Gates::OPEN, 2_000);
        assert_eq!(next.phase, Phase::Succeeded);
        // A failing check on the lowered weight counts as usual.
        let (next, events) = check(&cfg, &at_50, &failing(&cfg), &Gates::OPEN, 1_000);
        assert_eq!((next.weight, next.failed_checks), (30, 1));
        assert!(matches!(events[1], Event::Halt { .. }), "{events:?}");
    }

    #[test]
    fn consecutive_mode_resets_on_pass() {
        let cfg = with("/analysis/consecutive", Some(true.into())).unwrap();
        let (s0, _) = start(&cfg, 0);
        let (s1, _) = check(&cfg, &s0, &failing(&cfg), &Gates::OPEN, 1000);
        let (s2, _) = check(&cfg, &s1, &healthy(&cfg), &Gates::OPEN, 2000);
        assert_eq!(s2.failed_checks, 0);
    }

    #[test]
    fn no_data_fails_the_check() {
        let cfg = example();
        let (s0, _) = start(&cfg, 0);
        let none: Vec<MetricResult> = cfg
            .analysis
            .metrics
            .iter()
            .map(|m| evaluate(m, 20, &Tally::default()))
            .collect();
        assert!(matches!(none[0].verdict, Verdict::NoData { .. }));
        let (s1, ev) = check(&cfg, &s0, &none, &Gates::OPEN, 1000);
        assert_eq!(s1.failed_checks, 1);
        assert!(
            text(&cfg, &ev[0]).contains("no traffic: 0 requests < minRequests 20"),
            "{}",
            text(&cfg, &ev[0])
        );
    }

    #[test]
    fn step_weight_promotion_moves_gradually() {
        let cfg = with("/analysis/stepWeightPromotion", Some(30.into())).unwrap();
        let mut s = CanaryState {
            weight: 50,
            ..start(&cfg, 0).0
        };
        let mut seen = vec![];
        let mut now = 0;
        while s.phase != Phase::Succeeded {
            now += 1000;
            s = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, now).0;
            seen.push((s.phase, s.weight));
        }
        assert_eq!(seen, vec![(Phase::Promoting, 80), (Phase::Succeeded, 100)]);
    }

    #[test]
    fn skip_analysis_goes_straight_to_100() {
        let cfg = with("/skipAnalysis", Some(true.into())).unwrap();
        let (s, ev) = start(&cfg, 0);
        assert_eq!((s.phase, s.weight), (Phase::Succeeded, 100));
        assert_eq!(ev, vec![Event::Skipped]);
    }

    #[test]
    fn suspend_freezes_checks() {
        let cfg = with("/suspend", Some(true.into())).unwrap();
        let (s, _) = start(&cfg, 0);
        assert!(!is_due(&cfg, &s, 60_000));
    }

    /// Deliberate differences from Flagger (README, "Differences from Flagger"). Flagger's
    /// advanceCanary counts the failed check (`SetStatusFailedChecks`) and rolls back at its
    /// next tick (`FailedChecks >= GetAnalysisThreshold()` checked before the analysis), then
    /// `SyncStatus` resets failedChecks; here the check that reaches the threshold rolls back,
    /// and failedChecks stays in the state.
    #[test]
    fn the_rollback_comes_on_the_check_reaching_the_threshold_and_failed_checks_stay() {
        let cfg = example(); // threshold 3
        let (mut s, _) = start(&cfg, 0);
        for i in 1..=3u64 {
            let (n, ev) = check(&cfg, &s, &failing(&cfg), &Gates::OPEN, i * 1000);
            s = n;
            if i < 3 {
                assert_eq!(s.phase, Phase::Progressing, "{ev:?}");
            }
        }
        assert_eq!((s.phase, s.weight, s.failed_checks), (Phase::Failed, 0, 3));
    }

    /// Flagger's runPromotionTrafficShift shifts traffic while Promoting without analysing;
    /// here the stable cluster still runs the old release, so checks go on and can roll back.
    #[test]
    fn checks_keep_running_while_promoting_and_can_roll_back() {
        let cfg = with("/analysis/stepWeightPromotion", Some(20.into())).unwrap();
        let mut s = start(&cfg, 0).0;
        s.phase = Phase::Promoting;
        s.weight = 70;
        s.failed_checks = 2;
        let (n, _) = check(&cfg, &s, &failing(&cfg), &Gates::OPEN, 5000);
        assert_eq!((n.phase, n.weight), (Phase::Failed, 0));
    }

    /// Flagger scheduler.go: one ticker per canary keeps its schedule while suspended
    /// (`advanceCanary` returns early on `Spec.Suspend`).
    #[test]
    fn after_a_hold_the_next_check_keeps_the_schedule() {
        let cfg = example(); // interval 1s
        let (mut s, _) = start(&cfg, 0);
        s.last_check_ms = 10_000;
        // Lifted within the interval: the check it was waiting for.
        assert_eq!(next_check_after_hold(&cfg, &s, 10_400), 11_000);
        // Lifted 3.5 intervals later: the next tick of the schedule, not at once.
        assert_eq!(next_check_after_hold(&cfg, &s, 13_500), 14_000);
        // Lifted exactly on a tick: that tick went by while suspended.
        assert_eq!(next_check_after_hold(&cfg, &s, 13_000), 14_000);
    }

    /// Flagger scheduler.go `shouldSkipAnalysis`, asked on every tick before anything else:
    /// skipAnalysis set while the analysis runs promotes at once.
    #[test]
    fn skip_analysis_set_while_running_promotes_on_the_next_check() {
        let cfg = example();
        let (s, _) = start(&cfg, 0);
        let (s, _) = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, 1000);
        assert_eq!((s.phase, s.weight), (Phase::Progressing, 5));
        let skip = with("/skipAnalysis", Some(true.into())).unwrap();
        let (n, ev) = check(&skip, &s, &failing(&skip), &Gates::OPEN, 2000);
        assert_eq!((n.phase, n.weight), (Phase::Succeeded, 100));
        assert_eq!(ev, vec![Event::Skipped], "whatever the metrics say");
    }

    fn blue_green(n: u32, webhooks: serde_json::Value) -> Config {
        let mut v: serde_json::Value = serde_json::from_str(crate::testkit::EXAMPLE).unwrap();
        let a = v["analysis"].as_object_mut().unwrap();
        a.remove("stepWeights");
        a.remove("match");
        a.insert("iterations".into(), n.into());
        if !webhooks.is_null() {
            a.insert("webhooks".into(), webhooks);
        }
        crate::config::parse(v.to_string().as_bytes()).unwrap()
    }

    /// Flagger scheduler.go `runBlueGreen`: `iterations` passing checks at weight 0 ("Advance
    /// canary iteration i/n"), then "Routing all traffic to canary", then promotion.
    #[test]
    fn blue_green_iterates_at_weight_zero_then_routes_all_traffic_then_promotes() {
        let cfg = blue_green(3, serde_json::Value::Null);
        let (mut s, ev) = start(&cfg, 0);
        assert_eq!((s.phase, s.weight), (Phase::Progressing, 0));
        assert_eq!(ev, vec![Event::Started { weight: 0 }]);
        let mut seen = Vec::new();
        for i in 1..=5u64 {
            // The metrics see no canary traffic at weight 0 (no data): not a failed check.
            let results = if s.weight == 0 {
                failing(&cfg)
            } else {
                healthy(&cfg)
            };
            let (n, ev) = check(&cfg, &s, &results, &Gates::OPEN, i * 1000);
            seen.push((n.weight, n.phase, text(&cfg, &ev[0])));
            s = n;
        }
        let weights: Vec<(u8, Phase)> = seen.iter().map(|(w, p, _)| (*w, *p)).collect();
        assert_eq!(
            weights,
            vec![
                (0, Phase::Progressing),
                (0, Phase::Progressing),
                (0, Phase::Progressing),
                (100, Phase::Progressing),
                (100, Phase::Succeeded)
            ]
        );
        assert!(
            seen[0].2.ends_with("checks passed, iteration 1/3"),
            "{}",
            seen[0].2
        );
        assert!(
            seen[3].2.contains("routing all traffic to the canary"),
            "{}",
            seen[3].2
        );
        assert_eq!(s.failed_checks, 0);
    }

    #[test]
    fn blue_green_judges_the_metrics_after_the_switch_and_the_webhooks_before() {
        let cfg = blue_green(
            1,
            serde_json::json!([{"name": "acceptance", "type": "rollout", "url": "http://lt/"}]),
        );
        let (s, _) = start(&cfg, 0);
        // Before the switch a failing rollout webhook fails the check (threshold 3).
        let refused = gate(|g| g.failed.push(("acceptance".into(), "HTTP 500".into())));
        let (s1, ev) = check(&cfg, &s, &healthy(&cfg), &refused, 1000);
        assert_eq!((s1.weight, s1.failed_checks), (0, 1));
        assert!(matches!(ev[0], Event::Halt { .. }), "{ev:?}");
        let (s2, _) = check(&cfg, &s1, &healthy(&cfg), &Gates::OPEN, 2000);
        let (s3, ev) = check(&cfg, &s2, &healthy(&cfg), &Gates::OPEN, 3000);
        assert_eq!(s3.weight, 100, "{ev:?}");
        // At weight 100 the metrics count: failing checks roll back to stable.
        let (s4, _) = check(&cfg, &s3, &failing(&cfg), &Gates::OPEN, 4000);
        let (s5, ev) = check(&cfg, &s4, &failing(&cfg), &Gates::OPEN, 5000);
        assert_eq!((s5.phase, s5.weight), (Phase::Failed, 0), "{ev:?}");
    }

    #[test]
    fn blue_green_asks_the_promotion_gate_before_the_switch_and_before_promotion() {
        let cfg = blue_green(
            1,
            serde_json::json!([{"name": "go", "type": "confirm-promotion", "url": "http://lt/gate/check"}]),
        );
        let (s, _) = start(&cfg, 0);
        let (s, _) = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, 1000);
        let closed = gate(|g| g.promotion = Some("go".into()));
        let (held, ev) = check(&cfg, &s, &healthy(&cfg), &closed, 2000);
        assert_eq!(
            (held.phase, held.weight),
            (Phase::WaitingPromotion, 0),
            "{ev:?}"
        );
        let (switched, _) = check(&cfg, &held, &healthy(&cfg), &Gates::OPEN, 3000);
        assert_eq!((switched.phase, switched.weight), (Phase::Progressing, 100));
        let (held, _) = check(&cfg, &switched, &healthy(&cfg), &closed, 4000);
        assert_eq!((held.phase, held.weight), (Phase::WaitingPromotion, 100));
        let (done, _) = check(&cfg, &held, &healthy(&cfg), &Gates::OPEN, 5000);
        assert_eq!((done.phase, done.weight), (Phase::Succeeded, 100));
    }

    #[test]
    fn checks_are_due_once_per_interval() {
        let cfg = example();
        let (s, _) = start(&cfg, 5_000);
        assert!(!is_due(&cfg, &s, 5_999));
        assert!(is_due(&cfg, &s, 6_000));
        let (s, _) = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, 6_010);
        assert!(!is_due(&cfg, &s, 7_000));
        assert!(is_due(&cfg, &s, 7_010));
    }

    // ---- resume: start, hold or keep ------------------------------------------------------

    const NOON: u64 = 1_795_348_800_000; // 2026-11-22T12:00:00Z

    fn approved(until: &str) -> Config {
        with("/approvedUntil", Some(until.into())).unwrap()
    }

    fn stored(phase: Phase, revision: &str, weight: u8) -> CanaryState {
        CanaryState {
            phase,
            weight,
            ..CanaryState::new(revision, 1_000)
        }
    }

    fn written(r: Resume) -> (CanaryState, Vec<Event>) {
        match r {
            Resume::Write(s, e) => (s, e),
            Resume::Keep(s) => panic!("kept {s:?}"),
        }
    }

    #[test]
    fn no_state_with_hold_writes_waiting_at_weight_zero_and_says_how_to_proceed() {
        let cfg = example(); // restartPolicy defaults to hold
        for (found, cause) in [
            (Found::Nothing, Cause::Absent),
            (Found::Unreadable, Cause::Unreadable),
        ] {
            let (s, e) = written(resume(&cfg, found, NOON));
            assert_eq!(
                (s.revision.as_str(), s.phase, s.weight),
                ("v2", Phase::Waiting, 0)
            );
            assert_eq!((s.started_ms, s.last_check_ms), (NOON, NOON));
            assert_eq!(
                e,
                vec![Event::Held {
                    cause,
                    expired: None
                }]
            );
        }
        let (_, e) = written(resume(&cfg, Found::Nothing, NOON));
        assert_eq!(
            text(&cfg, &e[0]),
            "canary web rev v2: halt advancement, waiting for approval: no analysis state (first load or proxy restart), and restartPolicy hold keeps the canary at weight 0 in phase Waiting until the revision changes or approvedUntil is a time in the future (RFC 3339)"
        );
    }

    #[test]
    fn no_state_starts_with_restart_policy_or_a_current_approval() {
        let restart = with("/restartPolicy", Some("restart".into())).unwrap();
        let (s, e) = written(resume(&restart, Found::Nothing, NOON));
        assert_eq!((s.phase, s.weight), (Phase::Progressing, 1));
        assert_eq!(
            e,
            vec![
                Event::Released {
                    cause: Cause::Absent,
                    by: Release::RestartPolicy
                },
                Event::Started { weight: 1 }
            ]
        );
        assert_eq!(
            text(&restart, &e[0]),
            "canary web rev v2: no analysis state (first load or proxy restart), restartPolicy restart: starting the analysis"
        );
        let cfg = approved("2026-11-22T12:00:00.001Z");
        let (s, e) = written(resume(&cfg, Found::Nothing, NOON));
        assert_eq!(s.phase, Phase::Progressing);
        assert_eq!(
            text(&cfg, &e[0]),
            "canary web rev v2: no analysis state (first load or proxy restart), approved until 2026-11-22T12:00:00.001Z: starting the analysis"
        );
    }

    #[test]
    fn an_approval_ends_at_its_time_and_never_on_an_unknown_clock() {
        let cfg = approved("2026-11-22T12:00:00Z");
        assert!(release(&cfg, NOON - 1).is_some());
        assert_eq!(release(&cfg, NOON), None, "the end is exclusive");
        assert_eq!(release(&cfg, 0), None, "a clock reading 0 is no clock");
        let (s, e) = written(resume(&cfg, Found::Nothing, NOON + 1));
        assert_eq!(s.phase, Phase::Waiting);
        assert!(
            text(&cfg, &e[0]).ends_with("; approvedUntil 2026-11-22T12:00:00Z has passed"),
            "{}",
            text(&cfg, &e[0])
        );
        // An approval in effect wins over hold, and is named rather than the policy.
        let both = with("/restartPolicy", Some("restart".into())).unwrap();
        let both = Config {
            approved_until: cfg.approved_until.clone(),
            ..both
        };
        assert!(matches!(
            release(&both, NOON - 1),
            Some(Release::Approved(_))
        ));
        assert_eq!(release(&both, NOON), Some(Release::RestartPolicy));
    }

    #[test]
    fn waiting_stays_until_approved_then_starts_from_the_first_step() {
        let waiting = stored(Phase::Waiting, "v2", 0);
        assert_eq!(
            resume(&example(), Found::State(&waiting), NOON),
            Resume::Keep(waiting.clone())
        );
        let cfg = approved("2026-11-22T13:00:00+01:00");
        assert_eq!(
            resume(&cfg, Found::State(&waiting), NOON),
            Resume::Keep(waiting.clone()),
            "13:00+01:00 is noon UTC: over"
        );
        let cfg = approved("2026-11-22T13:00:00Z");
        let (s, e) = written(resume(&cfg, Found::State(&waiting), NOON));
        assert_eq!(
            (s.phase, s.weight, s.started_ms),
            (Phase::Progressing, 1, NOON)
        );
        assert_eq!(
            e[0],
            Event::Released {
                cause: Cause::Waiting,
                by: Release::Approved("2026-11-22T13:00:00Z".into())
            }
        );
        // Switching the policy to restart is an explicit choice too.
        let restart = with("/restartPolicy", Some("restart".into())).unwrap();
        let (s, _) = written(resume(&restart, Found::State(&waiting), NOON));
        assert_eq!(s.phase, Phase::Progressing);
    }

    #[test]
    fn another_revision_starts_and_this_revisions_state_is_kept_whatever_the_policy() {
        for other in [
            Phase::Waiting,
            Phase::Failed,
            Phase::Succeeded,
            Phase::Progressing,
        ] {
            let (s, e) = written(resume(
                &example(),
                Found::State(&stored(other, "v1", 0)),
                NOON,
            ));
            assert_eq!(
                (s.revision.as_str(), s.phase, s.weight),
                ("v2", Phase::Progressing, 1)
            );
            assert_eq!(
                e,
                vec![Event::Started { weight: 1 }],
                "a new revision needs no approval"
            );
        }
        let restart = Config {
            approved_until: approved("2026-11-22T13:00:00Z").approved_until,
            ..with("/restartPolicy", Some("restart".into())).unwrap()
        };
        for phase in [
            Phase::Failed,
            Phase::Succeeded,
            Phase::Progressing,
            Phase::Promoting,
        ] {
            let s = stored(phase, "v2", 30);
            assert_eq!(
                resume(&restart, Found::State(&s), NOON),
                Resume::Keep(s.clone())
            );
            assert_eq!(
                resume(&example(), Found::State(&s), NOON),
                Resume::Keep(s.clone())
            );
        }
    }

    /// The README example with these webhooks (each test names the Flagger code it follows).
    fn hooked(hooks: serde_json::Value) -> Config {
        with("/analysis/webhooks", Some(hooks)).unwrap()
    }

    fn gate(f: impl FnOnce(&mut Gates)) -> Gates {
        let mut g = Gates::default();
        f(&mut g);
        g
    }

    #[test]
    fn pre_rollout_runs_before_the_first_weight_and_a_failure_is_a_failed_check() {
        // scheduler.go advanceCanary: canaryWeight == 0 && iterations == 0 -> runPreRolloutHooks
        // (no metrics); a failure is SetStatusFailedChecks(+1); success goes on to the first step.
        let cfg =
            hooked(serde_json::json!([{"name": "db", "type": "pre-rollout", "url": "http://t/"}]));
        let (s, ev) = start(&cfg, 0);
        assert_eq!((s.weight, s.phase), (0, Phase::Progressing));
        assert!(text(&cfg, &ev[0]).contains("weight 0 (the first step waits"));
        assert!(is_start_check(&cfg, &s));
        let no_traffic = failing(&cfg); // not measured before the first weight
        let (s1, ev1) = check(
            &cfg,
            &s,
            &no_traffic,
            &gate(|g| g.failed.push(("db".into(), "HTTP 500".into()))),
            1000,
        );
        assert_eq!((s1.weight, s1.failed_checks), (0, 1));
        assert!(
            text(&cfg, &ev1[0]).contains("pre-rollout webhook db failed: HTTP 500"),
            "{ev1:?}"
        );
        let (s2, ev2) = check(&cfg, &s1, &no_traffic, &Gates::OPEN, 2000);
        assert_eq!(
            s2.weight, 1,
            "passed: the first step, metrics not judged yet"
        );
        assert_eq!(ev2, vec![Event::Advance { from: 0, to: 1 }]);
        assert!(!is_start_check(&cfg, &s2));
    }

    #[test]
    fn a_failing_rollout_webhook_fails_the_check_and_rolls_back_at_the_threshold() {
        // scheduler.go runAnalysis: a rollout hook error is "Halt advancement external check
        // failed", a failed check; failedChecks >= threshold rolls back.
        let cfg = hooked(serde_json::json!([{"name": "load-test", "url": "http://t/"}]));
        let (mut s, _) = start(&cfg, 0);
        assert_eq!(s.weight, 1, "no gate on the first step: starts as before");
        let broken = gate(|g| g.failed.push(("load-test".into(), "no answer".into())));
        for i in 1..=cfg.analysis.threshold {
            let (n, ev) = check(&cfg, &s, &healthy(&cfg), &broken, u64::from(i) * 1000);
            s = n;
            assert!(text(&cfg, &ev[0]).contains("rollout webhook load-test failed: no answer"));
        }
        assert_eq!((s.phase, s.weight), (Phase::Failed, 0));
    }

    #[test]
    fn confirm_traffic_increase_holds_the_weight_without_failing_the_check() {
        // scheduler_hooks.go runConfirmTrafficIncreaseHooks: false -> return before runCanary.
        let cfg = hooked(
            serde_json::json!([{"name": "up", "type": "confirm-traffic-increase", "url": "http://t/"}]),
        );
        let (s, _) = start(&cfg, 0);
        assert_eq!(s.weight, 0, "the first step is an increase too");
        let closed = gate(|g| g.traffic_increase = Some("up".into()));
        let (s1, ev) = check(&cfg, &s, &healthy(&cfg), &closed, 1000);
        assert_eq!(
            (s1.weight, s1.failed_checks, s1.phase),
            (0, 0, Phase::Progressing)
        );
        assert_eq!(
            ev,
            vec![Event::AwaitingTrafficIncrease {
                hook: "up".into(),
                weight: 0
            }]
        );
        let (s2, _) = check(&cfg, &s1, &healthy(&cfg), &Gates::OPEN, 2000);
        assert_eq!(s2.weight, 1);
        let (s3, _) = check(&cfg, &s2, &healthy(&cfg), &closed, 3000);
        assert_eq!(s3.weight, 1, "held at 1");
        // A failing check is still a failed check, gate or not.
        let (s4, _) = check(&cfg, &s3, &failing(&cfg), &closed, 4000);
        assert_eq!(s4.failed_checks, 1);
    }

    #[test]
    fn confirm_promotion_waits_in_waiting_promotion_with_checks_running() {
        // scheduler.go runCanary -> runConfirmPromotionHooks: false -> phase WaitingPromotion,
        // weight at maxWeight; the threshold still rolls back from WaitingPromotion.
        let cfg = hooked(
            serde_json::json!([{"name": "promo", "type": "confirm-promotion", "url": "http://t/"}]),
        );
        let mut s = start(&cfg, 0).0;
        let mut now = 0;
        while s.weight < 50 {
            now += 1000;
            s = check(&cfg, &s, &healthy(&cfg), &Gates::OPEN, now).0;
        }
        let closed = gate(|g| g.promotion = Some("promo".into()));
        now += 1000;
        let (w, ev) = check(&cfg, &s, &healthy(&cfg), &closed, now);
        assert_eq!((w.phase, w.weight), (Phase::WaitingPromotion, 50));
        assert!(text(&cfg, &ev[0])
            .contains("waiting for promotion approval: confirm-promotion webhook promo"));
        assert!(
            is_due(&cfg, &w, now + 1000),
            "checks keep running while waiting"
        );
        let (w2, ev2) = check(&cfg, &w, &healthy(&cfg), &closed, now + 1000);
        assert_eq!(
            (w2.phase, ev2.len()),
            (Phase::WaitingPromotion, 0),
            "logged once"
        );
        let (done, ev3) = check(&cfg, &w2, &healthy(&cfg), &Gates::OPEN, now + 2000);
        assert_eq!((done.phase, done.weight), (Phase::Succeeded, 100));
        assert_eq!(ev3, vec![Event::PromotionCompleted]);
        let mut f = w2.clone();
        for i in 0..cfg.analysis.threshold {
            f = check(&cfg, &f, &failing(&cfg), &closed, now + 3000 + u64::from(i)).0;
        }
        assert_eq!(
            (f.phase, f.weight),
            (Phase::Failed, 0),
            "rolled back from WaitingPromotion"
        );
    }

    #[test]
    fn a_rollback_webhook_rolls_back_at_once_whatever_the_metrics() {
        // scheduler.go: runRollbackHooks ok -> "Rolling back manual webhook invoked".
        let cfg = hooked(
            serde_json::json!([{"name": "rb", "type": "rollback", "url": "http://t/rollback/check"}]),
        );
        let s = start(&cfg, 0).0;
        let (n, ev) = check(
            &cfg,
            &s,
            &healthy(&cfg),
            &gate(|g| g.rollback = Some("rb".into())),
            1000,
        );
        assert_eq!((n.phase, n.weight), (Phase::Failed, 0));
        assert_eq!(
            ev,
            vec![Event::ManualRollback {
                hook: "rb".into(),
                from: 1
            }]
        );
        assert!(text(&cfg, &ev[0])
            .contains("rolling back, manual webhook invoked: rollback webhook rb"));
    }

    #[test]
    fn without_webhooks_nothing_changes() {
        let cfg = example();
        let (s, _) = start(&cfg, 0);
        assert_eq!(s.weight, 1);
        assert!(!is_start_check(&cfg, &s));
    }
}
