//! The control endpoint (`{"role": "control"}` on a listener the operator configures): the
//! status of every canary as JSON, and the operator's actions, `promote`, `abort`, `pause`,
//! `resume`, `approve`, written as a command to the canary's shared data for its analyser to
//! carry out on its next tick (`analyser::commands`); in fleet mode the analyser sends it on
//! to the judge through etcd, so every replica follows. Pure: the adapter reads the request
//! and sends the response.
//!
//! Callers: only from loopback unless `allowRemote`; with a `token`, only with
//! `Authorization: Bearer <token>` (401 without one, 403 with a wrong one). Actions are logged
//! and sent to the event webhooks with who asked: the token's name, else the peer address.

use crate::config::duration::parse_millis;
use crate::host::SharedStore;
use crate::state::CanaryState;
use crate::store::registry::registered;
use crate::store::Keys;
use serde_json::{json, Value};

/// Largest request body read (an action takes none; a JSON body is optional).
pub const MAX_BODY: usize = 4096;
/// Decisions kept per canary for the status (`decisions` in shared data).
pub const DECISIONS_KEPT: usize = 10;
/// Longest decision text kept (a longer one is cut).
pub const DECISION_TEXT_MAX: usize = 2048;
const COMMAND_VERSION: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    pub token: Option<String>,
    /// Who a caller with the token is, in logs and events.
    pub token_name: String,
    pub allow_remote: bool,
}

/// Parses `{"role": "control", "token": "...", "tokenName": "...", "allowRemote": false}`.
pub fn parse_config(v: &serde_json::Map<String, Value>) -> Result<ControlConfig, (String, String)> {
    for k in v.keys() {
        if !["role", "token", "tokenName", "allowRemote"].contains(&k.as_str()) {
            return Err((
                k.clone(),
                "unknown field: the control role takes token, tokenName and allowRemote".into(),
            ));
        }
    }
    let token = match v.get("token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t))
            if t.len() >= 16 && t.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Some(t.clone())
        }
        Some(_) => {
            return Err((
                "token".into(),
                "must be at least 16 visible ASCII characters (a bearer token)".into(),
            ))
        }
    };
    let token_name = match v.get("tokenName") {
        None => "token".to_string(),
        Some(Value::String(n)) if !n.is_empty() && n.len() <= 64 => n.clone(),
        Some(other) => {
            return Err((
                "tokenName".into(),
                format!("{other} must be 1 to 64 characters"),
            ))
        }
    };
    let allow_remote = match v.get("allowRemote") {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err((
                "allowRemote".into(),
                format!("{other} must be true or false"),
            ))
        }
    };
    if allow_remote && token.is_none() {
        return Err((
            "allowRemote".into(),
            "true needs a token: callers from other hosts must authenticate".into(),
        ));
    }
    Ok(ControlConfig {
        token,
        token_name,
        allow_remote,
    })
}

/// One request to the control endpoint.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authorization: Option<&'a str>,
    /// The downstream peer, `ip:port` (Envoy's `source.address`).
    pub peer: Option<&'a str>,
    pub body: &'a [u8],
    /// More body than MAX_BODY came.
    pub too_large: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u32,
    pub body: Value,
}

fn error(status: u32, message: impl Into<String>) -> Response {
    Response {
        status,
        body: json!({"error": message.into()}),
    }
}

/// The actions an operator can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Promote,
    Abort,
    Pause,
    Resume,
    Approve,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Promote => "promote",
            Action::Abort => "abort",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Approve => "approve",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        [
            Action::Promote,
            Action::Abort,
            Action::Pause,
            Action::Resume,
            Action::Approve,
        ]
        .into_iter()
        .find(|a| a.name() == s)
    }
}

/// An operator's command, in shared data under `canary-guard/<name>/command` (and in etcd in
/// fleet mode): versioned JSON, validated when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub id: u64,
    pub action: Action,
    pub revision: String,
    pub by: String,
    pub at_ms: u64,
}

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        json!({"v": COMMAND_VERSION, "id": self.id, "action": self.action.name(),
               "revision": self.revision, "by": self.by, "atMs": self.at_ms})
        .to_string()
        .into_bytes()
    }

    pub fn decode(bytes: &[u8]) -> Option<Command> {
        if bytes.len() > 1024 {
            return None;
        }
        let v: Value = serde_json::from_slice(bytes).ok()?;
        if v.get("v")?.as_u64()? != COMMAND_VERSION {
            return None;
        }
        let revision = v.get("revision")?.as_str()?.to_string();
        let by = v.get("by")?.as_str()?.to_string();
        if revision.is_empty() || revision.len() > 128 || by.len() > 128 {
            return None;
        }
        Some(Command {
            id: v.get("id")?.as_u64()?,
            action: Action::parse(v.get("action")?.as_str()?)?,
            revision,
            by,
            at_ms: v.get("atMs")?.as_u64()?,
        })
    }
}

/// Whether a peer address (`127.0.0.1:5678`, `[::1]:5678`) is loopback.
fn is_loopback(peer: &str) -> bool {
    let host = peer
        .rsplit_once(':')
        .map_or(peer, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    host.starts_with("127.") || host == "::1" || host == "localhost"
}

/// Who asked: the token's name, or the peer's address.
fn caller(cfg: &ControlConfig, req: &Request) -> String {
    if cfg.token.is_some() {
        cfg.token_name.clone()
    } else {
        req.peer.unwrap_or("unknown peer").to_string()
    }
}

fn authorize(cfg: &ControlConfig, req: &Request) -> Option<Response> {
    let local = req.peer.is_some_and(is_loopback);
    if !local && !cfg.allow_remote {
        return Some(error(
            403,
            format!(
                "callers from {} are refused: the control endpoint takes loopback callers only (allowRemote is false)",
                req.peer.unwrap_or("an unknown address")
            ),
        ));
    }
    if let Some(token) = &cfg.token {
        match req.authorization.and_then(|a| a.strip_prefix("Bearer ")) {
            None => {
                return Some(error(
                    401,
                    "an Authorization: Bearer <token> header is required",
                ))
            }
            // Compare without stopping at the first difference.
            Some(given) => {
                let same = given.len() == token.len()
                    && given
                        .bytes()
                        .zip(token.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0;
                if !same {
                    return Some(error(403, "wrong token"));
                }
            }
        }
    }
    None
}

/// One canary's status: what `canary-guard status` prints.
pub fn status_of(store: &dyn SharedStore, name: &str) -> Value {
    let keys = Keys::new(name);
    let state = store
        .get(&keys.state)
        .ok()
        .flatten()
        .and_then(|(b, _)| CanaryState::decode(&b));
    let revision = crate::config::parse(
        &store
            .get(&keys.config)
            .ok()
            .flatten()
            .map(|(b, _)| b)
            .unwrap_or_default(),
    )
    .map(|c| c.revision)
    .ok();
    let decisions: Vec<Value> = store
        .get(&keys.decisions)
        .ok()
        .flatten()
        .and_then(|(b, _)| decode_decisions(&b))
        .unwrap_or_default();
    let command = store
        .get(&keys.command)
        .ok()
        .flatten()
        .and_then(|(b, _)| Command::decode(&b));
    let current = state
        .as_ref()
        .filter(|s| Some(&s.revision) == revision.as_ref());
    json!({
        "name": name,
        "revision": revision,
        "phase": current.map_or("Initializing", |s| s.phase.name()),
        "weight": current.map_or(0, |s| s.weight),
        "failedChecks": current.map_or(0, |s| s.failed_checks),
        "lastCheckMs": current.map(|s| s.last_check_ms),
        "paused": command.as_ref().is_some_and(|c| c.action == Action::Pause && Some(&c.revision) == revision.as_ref()),
        "lastDecision": decisions.last().cloned(),
        "decisions": decisions,
    })
}

/// A canary's last decisions as written by its analyser (or copied from the fleet judge's in
/// etcd): at most `DECISIONS_KEPT` objects `{"atMs": <ms>, "text": "<line>"}`, nothing else;
/// `None` for anything that does not validate.
pub fn decode_decisions(bytes: &[u8]) -> Option<Vec<Value>> {
    let list: Vec<Value> = serde_json::from_slice(bytes).ok()?;
    let valid = |d: &Value| {
        d.as_object().is_some_and(|o| {
            o.len() == 2
                && o.get("atMs").is_some_and(Value::is_u64)
                && o.get("text")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.len() <= DECISION_TEXT_MAX)
        })
    };
    (list.len() <= DECISIONS_KEPT && list.iter().all(valid)).then_some(list)
}

/// Answers one request; an accepted action is written as the canary's command.
pub fn handle(
    cfg: &ControlConfig,
    req: &Request,
    store: &dyn SharedStore,
    now_ms: u64,
) -> Response {
    if let Some(refused) = authorize(cfg, req) {
        return refused;
    }
    if req.too_large {
        return error(413, format!("a request body is at most {MAX_BODY} bytes"));
    }
    let path = req.path.split('?').next().unwrap_or("");
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let known = registered(store);
    match (req.method, parts.as_slice()) {
        ("GET", ["canaries"]) => Response {
            status: 200,
            body: Value::Array(known.iter().map(|n| status_of(store, n)).collect()),
        },
        ("GET", ["canaries", name]) if known.iter().any(|k| k == name) => Response {
            status: 200,
            body: status_of(store, name),
        },
        ("GET", ["canaries", name]) => error(404, format!("no canary {name:?} in this proxy")),
        ("POST", ["canaries", name, verb]) => {
            if !known.iter().any(|k| k == name) {
                return error(404, format!("no canary {name:?} in this proxy"));
            }
            let Some(action) = Action::parse(verb) else {
                return error(
                    400,
                    format!("unknown action {verb:?}: promote, abort, pause, resume or approve"),
                );
            };
            if !req.body.is_empty() && serde_json::from_slice::<Value>(req.body).is_err() {
                return error(400, "the body, when given, must be JSON");
            }
            act(cfg, req, store, name, action, now_ms)
        }
        (_, ["canaries", ..]) => error(405, format!("method {} not allowed here", req.method)),
        _ => error(
            404,
            "not found: GET /canaries, GET /canaries/<name>, POST /canaries/<name>/<action>",
        ),
    }
}

fn act(
    cfg: &ControlConfig,
    req: &Request,
    store: &dyn SharedStore,
    name: &str,
    action: Action,
    now_ms: u64,
) -> Response {
    let status = status_of(store, name);
    let Some(revision) = status
        .get("revision")
        .and_then(Value::as_str)
        .map(str::to_string)
    else {
        return error(
            409,
            format!("canary {name} has no valid configuration published"),
        );
    };
    let phase = status.get("phase").and_then(Value::as_str).unwrap_or("");
    let refused = match (action, phase) {
        (_, "Failed") => Some(format!(
            "revision {revision} of canary {name} is Failed: only a new revision runs again"
        )),
        (Action::Promote | Action::Abort | Action::Pause | Action::Resume, "Succeeded") => Some(
            format!("revision {revision} of canary {name} is already Succeeded"),
        ),
        (Action::Approve, p) if p != "Waiting" && p != "Initializing" => Some(format!(
            "revision {revision} of canary {name} is {p}: approve starts a held (Waiting) revision"
        )),
        _ => None,
    };
    if let Some(why) = refused {
        return error(409, why);
    }
    let keys = Keys::new(name);
    let (prev, cas) = match store.get(&keys.command) {
        Ok(Some((b, cas))) => (Command::decode(&b), cas),
        Ok(None) => (None, 0),
        Err(_) => return error(503, "shared data unreadable: try again"),
    };
    let cmd = Command {
        id: prev.map_or(1, |p| p.id.saturating_add(1)),
        action,
        revision,
        by: caller(cfg, req),
        at_ms: now_ms,
    };
    match store.set(&keys.command, &cmd.encode(), cas) {
        Ok(()) => Response {
            status: 202,
            body: json!({"accepted": action.name(), "canary": name, "revision": cmd.revision,
                         "id": cmd.id, "by": cmd.by}),
        },
        Err(_) => error(
            409,
            "another action was taken at the same moment: try again",
        ),
    }
}

/// `?wait=5s`-style durations are not supported; kept for the CLI's `watch` interval parsing.
pub fn interval_ms(text: &str) -> Option<u64> {
    parse_millis(text).ok().filter(|ms| *ms >= 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Phase;
    use crate::testkit::fake_host::FakeStore;
    use crate::testkit::EXAMPLE;

    #[test]
    fn decisions_validate_as_shared_data_does() {
        let ok = br#"[{"atMs": 5, "text": "advance weight 0 -> 10"}]"#;
        assert_eq!(decode_decisions(ok).map(|l| l.len()), Some(1));
        assert_eq!(decode_decisions(b"[]").map(|l| l.len()), Some(0));
        for bad in [
            &br#"{"atMs": 5}"#[..],
            br#"[{"atMs": -1, "text": "x"}]"#,
            br#"[{"atMs": 5, "text": 7}]"#,
            br#"[{"atMs": 5, "text": "x", "by": "mallory"}]"#,
            b"not json",
        ] {
            assert!(
                decode_decisions(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"[{{"atMs": 5, "text": "{}"}}]"#,
            "x".repeat(DECISION_TEXT_MAX + 1)
        );
        assert!(decode_decisions(long.as_bytes()).is_none());
        let many = format!(
            "[{}]",
            [r#"{"atMs": 5, "text": "x"}"#; DECISIONS_KEPT + 1].join(",")
        );
        assert!(decode_decisions(many.as_bytes()).is_none());
    }

    fn store_with_canary(phase: Phase) -> FakeStore {
        let store = FakeStore::default();
        let keys = Keys::new("web");
        store.put(crate::store::REGISTRY, b"web\n");
        store.put(&keys.config, EXAMPLE.as_bytes());
        let mut s = CanaryState::new("v2", 1000);
        s.phase = phase;
        s.weight = if phase == Phase::Progressing {
            10
        } else if phase == Phase::Succeeded {
            100
        } else {
            0
        };
        store.put(&keys.state, &s.encode());
        store
    }

    fn req<'a>(
        method: &'a str,
        path: &'a str,
        auth: Option<&'a str>,
        peer: &'a str,
    ) -> Request<'a> {
        Request {
            method,
            path,
            authorization: auth,
            peer: Some(peer),
            body: b"",
            too_large: false,
        }
    }

    fn open() -> ControlConfig {
        ControlConfig {
            token: None,
            token_name: "token".into(),
            allow_remote: false,
        }
    }

    #[test]
    fn status_lists_every_canary() {
        let store = store_with_canary(Phase::Progressing);
        let r = handle(
            &open(),
            &req("GET", "/canaries", None, "127.0.0.1:4000"),
            &store,
            5,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body[0]["name"], "web");
        assert_eq!(r.body[0]["revision"], "v2");
        assert_eq!(
            (r.body[0]["phase"].as_str(), r.body[0]["weight"].as_u64()),
            (Some("Progressing"), Some(10))
        );
        let one = handle(
            &open(),
            &req("GET", "/canaries/web", None, "127.0.0.1:1"),
            &store,
            5,
        );
        assert_eq!(one.body["name"], "web");
        assert_eq!(
            handle(
                &open(),
                &req("GET", "/canaries/nope", None, "127.0.0.1:1"),
                &store,
                5
            )
            .status,
            404
        );
    }

    #[test]
    fn an_action_is_written_as_a_command_with_who_asked() {
        let store = store_with_canary(Phase::Progressing);
        let r = handle(
            &open(),
            &req("POST", "/canaries/web/abort", None, "127.0.0.1:4000"),
            &store,
            7,
        );
        assert_eq!(r.status, 202, "{:?}", r.body);
        let cmd = Command::decode(&store.raw("canary-guard/web/command").unwrap()).unwrap();
        assert_eq!(
            (cmd.id, cmd.action, cmd.revision.as_str(), cmd.by.as_str()),
            (1, Action::Abort, "v2", "127.0.0.1:4000")
        );
        let again = handle(
            &open(),
            &req("POST", "/canaries/web/pause", None, "127.0.0.1:4000"),
            &store,
            8,
        );
        assert_eq!(again.body["id"], 2);
    }

    #[test]
    fn callers_and_actions_are_refused_clearly() {
        let store = store_with_canary(Phase::Progressing);
        let tok = ControlConfig {
            token: Some("0123456789abcdef".into()),
            token_name: "ops".into(),
            allow_remote: false,
        };
        assert_eq!(
            handle(
                &open(),
                &req("GET", "/canaries", None, "10.0.0.5:1"),
                &store,
                1
            )
            .status,
            403
        );
        assert_eq!(
            handle(
                &tok,
                &req("GET", "/canaries", None, "127.0.0.1:1"),
                &store,
                1
            )
            .status,
            401
        );
        assert_eq!(
            handle(
                &tok,
                &req("GET", "/canaries", Some("Bearer nope"), "127.0.0.1:1"),
                &store,
                1
            )
            .status,
            403
        );
        let ok = handle(
            &tok,
            &req(
                "POST",
                "/canaries/web/pause",
                Some("Bearer 0123456789abcdef"),
                "127.0.0.1:1",
            ),
            &store,
            1,
        );
        assert_eq!((ok.status, ok.body["by"].as_str()), (202, Some("ops")));
        assert_eq!(
            handle(
                &open(),
                &req("POST", "/canaries/web/explode", None, "127.0.0.1:1"),
                &store,
                1
            )
            .status,
            400
        );
        assert_eq!(
            handle(
                &open(),
                &req("DELETE", "/canaries/web", None, "127.0.0.1:1"),
                &store,
                1
            )
            .status,
            405
        );
        let mut bad = req("POST", "/canaries/web/abort", None, "127.0.0.1:1");
        bad.body = b"{not json";
        assert_eq!(handle(&open(), &bad, &store, 1).status, 400);
        bad.too_large = true;
        assert_eq!(handle(&open(), &bad, &store, 1).status, 413);
        let failed = store_with_canary(Phase::Failed);
        let r = handle(
            &open(),
            &req("POST", "/canaries/web/promote", None, "127.0.0.1:1"),
            &failed,
            1,
        );
        assert_eq!(r.status, 409);
        assert!(r.body["error"]
            .as_str()
            .unwrap()
            .contains("is Failed: only a new revision runs again"));
        assert!(
            failed.raw("canary-guard/web/command").is_none(),
            "a refused action changes nothing"
        );
    }

    #[test]
    fn the_config_is_validated() {
        let parse = |v: Value| parse_config(v.as_object().unwrap());
        assert!(parse(json!({"role": "control"})).is_ok());
        assert_eq!(
            parse(json!({"role": "control", "token": "short"}))
                .unwrap_err()
                .0,
            "token"
        );
        assert_eq!(
            parse(json!({"role": "control", "allowRemote": true}))
                .unwrap_err()
                .0,
            "allowRemote"
        );
        assert_eq!(
            parse(json!({"role": "control", "port": 1})).unwrap_err().0,
            "port"
        );
        assert!(Command::decode(b"{\"v\":2}").is_none());
    }
}
