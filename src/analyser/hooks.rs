//! Flagger's webhooks (`analysis.webhooks`), called by the analyser through the host's
//! `dispatch_http_call`, never waited for: a check that needs webhooks sends them in a round
//! and is decided on a later tick, once every one has answered or given up (its timeout). What
//! each type means is Flagger's (fluxcd/flagger `pkg/controller/scheduler_hooks.go`); the
//! state machine applies the answers (`state_machine::Gates`).
//!
//! - a round per check: `rollback` + `rollout` (or `pre-rollout` before the first weight);
//!   then, only when the check would advance or promote, `confirm-traffic-increase` or
//!   `confirm-promotion`; before the analysis starts, `confirm-rollout` + `rollback` every
//!   interval until approved;
//! - `post-rollout` after promotion or rollback and `event` for every decision: sent, their
//!   failures logged, nothing waits for them.
//!
//! A webhook passes when it answers 200-202 (Flagger: "StatusCode > 202" is an error); no
//! answer (unreachable, reset, timeout) or any other status fails it, after `retries` more
//! attempts when it got no answer, 429 or 5xx (as Flagger's retrying client).

use crate::config::{Config, HookType, Webhook};
use crate::host::{HttpCalls, OutCall};
use crate::state_machine::Gates;
use serde_json::{json, Map, Value};

/// A call whose answer has not come this long after its timeout is given up.
const GIVE_UP_AFTER_MS: u64 = 1_000;
/// Fire-and-forget calls (events, post-rollout) in flight at most; more are dropped (and
/// counted) rather than queued without bound behind a slow sink.
pub const MAX_FIRE_IN_FLIGHT: usize = 64;
/// Longest answer text kept for a log line.
const MAX_WHY: usize = 200;

/// What a round is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Before the start: `confirm-rollout` and `rollback`.
    Confirm,
    /// A check's first round: `rollback` and `rollout` / `pre-rollout`.
    Check,
    /// A check's second round: `confirm-traffic-increase` or `confirm-promotion`.
    Confirmations,
}

#[derive(Debug, Clone)]
struct HookCall {
    /// Index into `analysis.webhooks`.
    hook: usize,
    token: Option<u32>,
    attempts: u32,
    sent_ms: u64,
    result: Option<Result<(), String>>,
    /// What was POSTed (sent again on a retry).
    body: Vec<u8>,
}

/// One round of webhooks, answered in any order.
#[derive(Debug, Clone)]
pub struct Round {
    pub purpose: Purpose,
    /// The state's `last_check_ms` the round was started for (a round for a state that has
    /// moved on since is void).
    pub for_check_ms: u64,
    calls: Vec<HookCall>,
}

#[derive(Debug, Clone)]
struct Fired {
    token: u32,
    hook: usize,
    sent_ms: u64,
}

/// The analyser's webhook calls: at most one round, and fire-and-forget calls.
#[derive(Debug, Default)]
pub struct Hooks {
    pub round: Option<Round>,
    fired: Vec<Fired>,
    /// Fire-and-forget calls dropped because MAX_FIRE_IN_FLIGHT were in flight.
    pub dropped: u64,
}

/// A line for the analyser to log about a webhook (failures of fire-and-forget calls, hosts
/// refusing a call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub warn: bool,
    pub text: String,
}

/// The JSON body Flagger POSTs (`CanaryWebhookPayload`): name, namespace, phase, checksum
/// (here the revision) and the webhook's metadata; plus `type`, the webhook's type.
pub fn payload(
    cfg: &Config,
    kind: HookType,
    phase: &str,
    metadata: &std::collections::BTreeMap<String, String>,
) -> Vec<u8> {
    let mut v = Map::new();
    v.insert("name".into(), json!(cfg.name));
    v.insert("namespace".into(), json!(cfg.namespace));
    v.insert("phase".into(), json!(phase));
    v.insert("checksum".into(), json!(cfg.revision));
    v.insert("type".into(), json!(kind.name()));
    if !metadata.is_empty() {
        let meta: Map<String, Value> = metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        v.insert("metadata".into(), Value::Object(meta));
    }
    let v = Value::Object(v);
    v.to_string().into_bytes()
}

/// Flagger's event webhook body: the event's text, `Normal` or `Warning`, and the time in
/// Unix milliseconds in `metadata`, with the webhook's own metadata where it does not clash.
pub fn event_payload(
    cfg: &Config,
    hook: &Webhook,
    phase: &str,
    message: &str,
    warning: bool,
    now_ms: u64,
) -> Vec<u8> {
    let mut meta = hook.metadata.clone();
    meta.insert("eventMessage".into(), message.to_string());
    meta.insert(
        "eventType".into(),
        if warning { "Warning" } else { "Normal" }.into(),
    );
    meta.insert("timestamp".into(), now_ms.to_string());
    payload(cfg, HookType::Event, phase, &meta)
}

/// Whether an answer passes (Flagger: a status above 202 is an error) and why not.
pub fn verdict(status: Option<u32>, body: &[u8], timeout_ms: u64) -> Result<(), String> {
    match status {
        Some(s) if (200..=202).contains(&s) => Ok(()),
        Some(s) => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_WHY)
                .collect();
            if text.trim().is_empty() {
                Err(format!("HTTP {s}"))
            } else {
                Err(format!("HTTP {s}: {}", text.trim()))
            }
        }
        None => Err(format!(
            "no answer (unreachable, reset, or past its {timeout_ms} ms timeout)"
        )),
    }
}

/// Whether a failed attempt is tried again (Flagger's retrying client: connection errors,
/// 429 and 5xx).
fn retryable(status: Option<u32>) -> bool {
    match status {
        None => true,
        Some(s) => s == 429 || s >= 500,
    }
}

fn send(host: &mut dyn HttpCalls, hook: &Webhook, body: &[u8]) -> Option<u32> {
    let call = OutCall {
        cluster: &hook.cluster,
        authority: &hook.authority,
        path: &hook.path,
        body,
        timeout_ms: hook.timeout_ms,
    };
    host.post(&call).ok()
}

impl Hooks {
    /// Starts a round of the webhooks of these types (none configured: no round, `false`).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &mut self,
        cfg: &Config,
        purpose: Purpose,
        kinds: &[HookType],
        phase: &str,
        for_check_ms: u64,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) -> bool {
        let hooks: Vec<usize> = cfg
            .analysis
            .webhooks
            .iter()
            .enumerate()
            .filter(|(_, w)| kinds.contains(&w.kind))
            .map(|(i, _)| i)
            .collect();
        if hooks.is_empty() {
            return false;
        }
        let mut round = Round {
            purpose,
            for_check_ms,
            calls: Vec::with_capacity(hooks.len()),
        };
        for i in hooks {
            let Some(w) = cfg.analysis.webhooks.get(i) else {
                continue;
            };
            let body = payload(cfg, w.kind, phase, &w.metadata);
            let token = send(host, w, &body);
            round.calls.push(HookCall {
                hook: i,
                token,
                attempts: 1,
                sent_ms: now_ms,
                // A call the host refused fails at once (no retry: the host will refuse again).
                result: token
                    .is_none()
                    .then(|| Err("the host refused the call (is the cluster defined?)".into())),
                body,
            });
        }
        self.round = Some(round);
        true
    }

    /// Whether `token` is one of these calls.
    pub fn owns(&self, token: u32) -> bool {
        self.round
            .as_ref()
            .is_some_and(|r| r.calls.iter().any(|c| c.token == Some(token)))
            || self.fired.iter().any(|f| f.token == token)
    }

    /// An answer (`status` `None`: the call failed). A fire-and-forget failure comes back as
    /// a note to log.
    pub fn on_answer(
        &mut self,
        cfg: &Config,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) -> Option<Note> {
        if let Some(i) = self.fired.iter().position(|f| f.token == token) {
            let f = self.fired.swap_remove(i);
            let w = cfg.analysis.webhooks.get(f.hook)?;
            return verdict(status, body, w.timeout_ms).err().map(|why| Note {
                warn: true,
                text: format!("{} webhook {} failed: {why}", w.kind.name(), w.name),
            });
        }
        let round = self.round.as_mut()?;
        let call = round.calls.iter_mut().find(|c| c.token == Some(token))?;
        let w = cfg.analysis.webhooks.get(call.hook)?;
        let result = verdict(status, body, w.timeout_ms);
        if result.is_err() && retryable(status) && call.attempts <= w.retries {
            call.attempts += 1;
            call.sent_ms = now_ms;
            call.token = send(host, w, &call.body);
            if call.token.is_some() {
                return None;
            }
        }
        call.result = Some(result);
        None
    }

    /// Gives up calls that never answered (counted as failed) and fire-and-forget ones.
    pub fn expire(&mut self, cfg: &Config, now_ms: u64) {
        let timeout = |hook: usize| {
            cfg.analysis
                .webhooks
                .get(hook)
                .map_or(0, |w| w.timeout_ms)
                .saturating_add(GIVE_UP_AFTER_MS)
        };
        if let Some(round) = self.round.as_mut() {
            for c in round.calls.iter_mut().filter(|c| c.result.is_none()) {
                if now_ms > c.sent_ms.saturating_add(timeout(c.hook)) {
                    c.result = Some(verdict(None, b"", timeout(c.hook)));
                    c.token = None;
                }
            }
        }
        self.fired
            .retain(|f| now_ms <= f.sent_ms.saturating_add(timeout(f.hook)));
    }

    /// The finished round, taken: every call has a result.
    pub fn finished(&mut self) -> Option<Round> {
        let done = self.round.as_ref().is_some_and(Round::is_done);
        if done {
            self.round.take()
        } else {
            None
        }
    }

    /// Sends a fire-and-forget call to every webhook of `kind` (events, post-rollout).
    pub fn fire(
        &mut self,
        cfg: &Config,
        kind: HookType,
        mut body_for: impl FnMut(&Webhook) -> Vec<u8>,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) -> Vec<Note> {
        let mut notes = Vec::new();
        for (i, w) in cfg.analysis.webhooks.iter().enumerate() {
            if w.kind != kind {
                continue;
            }
            if self.fired.len() >= MAX_FIRE_IN_FLIGHT {
                self.dropped += 1;
                continue;
            }
            match send(host, w, &body_for(w)) {
                Some(token) => self.fired.push(Fired {
                    token,
                    hook: i,
                    sent_ms: now_ms,
                }),
                None => notes.push(Note {
                    warn: true,
                    text: format!(
                        "{} webhook {} not sent: the host refused the call (is cluster {} defined?)",
                        kind.name(),
                        w.name,
                        w.cluster
                    ),
                }),
            }
        }
        notes
    }
}

impl Round {
    /// Every call has its result.
    pub fn is_done(&self) -> bool {
        self.calls.iter().all(|c| c.result.is_some())
    }

    /// What this round's answers mean for the check (or the start), and the lines to log
    /// about webhooks that passed.
    pub fn gates(&self, cfg: &Config) -> (Gates, Vec<String>) {
        let mut gates = Gates::default();
        let mut passed = Vec::new();
        for c in &self.calls {
            let Some(w) = cfg.analysis.webhooks.get(c.hook) else {
                continue;
            };
            let ok = matches!(c.result, Some(Ok(())));
            let why = match &c.result {
                Some(Err(e)) => e.clone(),
                _ => String::new(),
            };
            match w.kind {
                HookType::Rollback if ok && gates.rollback.is_none() => {
                    gates.rollback = Some(w.name.clone())
                }
                HookType::Rollout | HookType::PreRollout if !ok => {
                    gates.failed.push((w.name.clone(), why))
                }
                HookType::ConfirmTrafficIncrease if !ok && gates.traffic_increase.is_none() => {
                    gates.traffic_increase = Some(w.name.clone())
                }
                HookType::ConfirmPromotion if !ok && gates.promotion.is_none() => {
                    gates.promotion = Some(w.name.clone())
                }
                HookType::ConfirmRollout
                | HookType::PreRollout
                | HookType::ConfirmTrafficIncrease
                | HookType::ConfirmPromotion
                    if ok =>
                {
                    passed.push(format!("{} webhook {} passed", w.kind.name(), w.name))
                }
                _ => {}
            }
        }
        (gates, passed)
    }

    /// The first `confirm-rollout` webhook that did not approve the start, if any.
    pub fn refused_start(&self, cfg: &Config) -> Option<String> {
        self.calls.iter().find_map(|c| {
            let w = cfg.analysis.webhooks.get(c.hook)?;
            (w.kind == HookType::ConfirmRollout && !matches!(c.result, Some(Ok(()))))
                .then(|| w.name.clone())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::with;
    use crate::testkit::fake_host::FakeRoot;
    use serde_json::json;

    fn cfg(hooks: Value) -> Config {
        with("/analysis/webhooks", Some(hooks)).unwrap()
    }

    #[test]
    fn the_payload_is_flaggers_with_the_revision_as_checksum() {
        let c = cfg(json!([{"name": "load", "url": "http://lt/", "metadata": {"cmd": "hey"}}]));
        let v: Value = serde_json::from_slice(&payload(
            &c,
            HookType::Rollout,
            "Progressing",
            &c.analysis.webhooks[0].metadata,
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"name": "web", "namespace": "default", "phase": "Progressing",
                   "checksum": "v2", "type": "rollout", "metadata": {"cmd": "hey"}})
        );
        let e: Value = serde_json::from_slice(&event_payload(
            &c,
            &c.analysis.webhooks[0],
            "Failed",
            "canary web rev v2: rolling back",
            true,
            1_700_000_000_123,
        ))
        .unwrap();
        assert_eq!(
            e["metadata"],
            json!({"cmd": "hey", "eventMessage": "canary web rev v2: rolling back",
                   "eventType": "Warning", "timestamp": "1700000000123"})
        );
    }

    #[test]
    fn flaggers_verdict_passes_200_to_202_only() {
        for s in [200, 201, 202] {
            assert!(verdict(Some(s), b"", 1).is_ok());
        }
        assert_eq!(verdict(Some(204), b"", 1).unwrap_err(), "HTTP 204");
        assert_eq!(
            verdict(Some(403), b"Forbidden\n", 1).unwrap_err(),
            "HTTP 403: Forbidden"
        );
        assert!(verdict(None, b"", 5000).unwrap_err().contains("5000 ms"));
    }

    #[test]
    fn a_round_waits_for_every_answer_retries_and_gives_up_on_silence() {
        let c = cfg(json!([
            {"name": "rb", "type": "rollback", "url": "http://lt/rollback/check"},
            {"name": "load", "url": "http://lt/", "retries": 1, "timeout": "2s"},
            {"name": "ev", "type": "event", "url": "http://sink/"},
        ]));
        let mut host = FakeRoot::default();
        let mut hooks = Hooks::default();
        assert!(hooks.start(
            &c,
            Purpose::Check,
            &[HookType::Rollback, HookType::Rollout],
            "Progressing",
            0,
            &mut host,
            0
        ));
        assert_eq!(
            host.calls.len(),
            2,
            "the event webhook is not part of a check"
        );
        assert_eq!(host.calls[0].path, "/rollback/check");
        assert_eq!(host.calls[1].timeout_ms, 2_000);
        let (rb, load) = (host.calls[0].token, host.calls[1].token);
        hooks.on_answer(&c, rb, Some(403), b"Forbidden", &mut host, 10);
        assert!(
            hooks.finished().is_none(),
            "the rollout hook has not answered"
        );
        hooks.on_answer(&c, load, Some(503), b"", &mut host, 20);
        assert_eq!(host.calls.len(), 3, "a 503 is tried again (retries 1)");
        assert!(hooks.finished().is_none());
        hooks.expire(&c, 20 + 2_000 + GIVE_UP_AFTER_MS + 1);
        let round = hooks.finished().expect("given up");
        let (gates, _) = round.gates(&c);
        assert_eq!(
            gates.rollback, None,
            "403 from a rollback hook: no rollback"
        );
        assert_eq!(gates.failed.len(), 1);
        assert_eq!(gates.failed[0].0, "load");
        assert!(gates.failed[0].1.starts_with("no answer"));
    }

    #[test]
    fn gates_follow_flagger_per_type() {
        let c = cfg(json!([
            {"name": "rb", "type": "rollback", "url": "http://lt/rollback/check"},
            {"name": "up", "type": "confirm-traffic-increase", "url": "http://lt/gate/check"},
            {"name": "promo", "type": "confirm-promotion", "url": "http://lt/gate/halt"},
            {"name": "go", "type": "confirm-rollout", "url": "http://lt/gate/approve"},
        ]));
        let mut host = FakeRoot::default();
        let mut hooks = Hooks::default();
        let all = [
            HookType::Rollback,
            HookType::ConfirmTrafficIncrease,
            HookType::ConfirmPromotion,
            HookType::ConfirmRollout,
        ];
        hooks.start(&c, Purpose::Check, &all, "Progressing", 0, &mut host, 0);
        let answers = [Some(200), Some(403), Some(403), Some(202)];
        for (call, status) in host.calls.clone().iter().zip(answers) {
            hooks.on_answer(&c, call.token, status, b"", &mut host, 5);
        }
        let round = hooks.finished().unwrap();
        let (gates, passed) = round.gates(&c);
        assert_eq!(gates.rollback.as_deref(), Some("rb"));
        assert_eq!(gates.traffic_increase.as_deref(), Some("up"));
        assert_eq!(gates.promotion.as_deref(), Some("promo"));
        assert!(gates.failed.is_empty());
        assert_eq!(round.refused_start(&c), None);
        assert_eq!(passed, ["confirm-rollout webhook go passed"]);
    }

    #[test]
    fn fire_and_forget_is_bounded_and_reports_failures() {
        let c = cfg(json!([{"name": "ev", "type": "event", "url": "http://sink/events"}]));
        let mut host = FakeRoot::default();
        let mut hooks = Hooks::default();
        for _ in 0..MAX_FIRE_IN_FLIGHT + 3 {
            hooks.fire(&c, HookType::Event, |_| b"{}".to_vec(), &mut host, 0);
        }
        assert_eq!(host.calls.len(), MAX_FIRE_IN_FLIGHT);
        assert_eq!(hooks.dropped, 3);
        let t = host.calls[0].token;
        let note = hooks
            .on_answer(&c, t, Some(500), b"boom", &mut host, 1)
            .unwrap();
        assert_eq!(note.text, "event webhook ev failed: HTTP 500: boom");
        hooks.expire(&c, 10_000 + GIVE_UP_AFTER_MS + 1);
        assert!(
            !hooks.owns(host.calls[1].token),
            "given up after the timeout"
        );
    }
}
