//! `analysis.webhooks`: Flagger's webhook list, pasted as is (`name`, `type`, `url`, `timeout`,
//! `metadata`, `retries`, `muteAlert`, `disableTLS`), plus `cluster`: the Envoy cluster the
//! call goes through (default: the URL's `host[:port]`). Flagger's defaults: type `rollout`,
//! timeout 10s, no retries (fluxcd/flagger `pkg/controller/webhook.go`).

use super::duration::parse_millis;
use super::error::{err, ConfigError};
use super::types::{HookType, Webhook};
use super::validate::is_cluster_name;
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;

/// Flagger's default webhook timeout.
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Longest webhook timeout: a hook stalls its check until it answers.
pub const MAX_TIMEOUT_MS: u64 = 300_000;
pub const MAX_WEBHOOKS: usize = 32;
pub const MAX_RETRIES: u32 = 10;
const MAX_METADATA: usize = 64;
const MAX_TEXT: usize = 4096;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawWebhook {
    pub(super) name: Option<String>,
    #[serde(rename = "type")]
    pub(super) kind: Option<String>,
    pub(super) url: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) metadata: Option<Value>,
    pub(super) retries: Option<i64>,
    pub(super) mute_alert: Option<bool>,
    #[serde(rename = "disableTLS")]
    pub(super) disable_tls: Option<bool>,
    /// Not Flagger's: the Envoy cluster the call goes through.
    pub(super) cluster: Option<String>,
}

impl HookType {
    /// Flagger's name of the type (`HookType` in `pkg/apis/flagger/v1beta1/canary.go`).
    pub fn name(self) -> &'static str {
        match self {
            HookType::ConfirmRollout => "confirm-rollout",
            HookType::PreRollout => "pre-rollout",
            HookType::Rollout => "rollout",
            HookType::ConfirmTrafficIncrease => "confirm-traffic-increase",
            HookType::ConfirmPromotion => "confirm-promotion",
            HookType::PostRollout => "post-rollout",
            HookType::Rollback => "rollback",
            HookType::Event => "event",
        }
    }

    const ALL: [HookType; 8] = [
        HookType::ConfirmRollout,
        HookType::PreRollout,
        HookType::Rollout,
        HookType::ConfirmTrafficIncrease,
        HookType::ConfirmPromotion,
        HookType::PostRollout,
        HookType::Rollback,
        HookType::Event,
    ];

    fn parse(text: &str) -> Option<HookType> {
        // Flagger: an empty type is a rollout hook.
        if text.is_empty() {
            return Some(HookType::Rollout);
        }
        HookType::ALL.into_iter().find(|t| t.name() == text)
    }
}

/// Where a webhook URL goes: scheme, `host[:port]`, and the path with its query.
struct Target {
    host_port: String,
    path: String,
}

fn parse_url(url: &str) -> Option<Target> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (host_port, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes().get(i) == Some(&b'/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    let path = path.split('#').next().unwrap_or("/").to_string();
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, port)| {
        if port.parse::<u16>().is_ok() {
            h
        } else {
            host_port
        }
    });
    let host_ok = !host.is_empty()
        && !host_port.contains('@')
        && host_port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b));
    let path_ok = path.bytes().all(|b| (0x21..=0x7e).contains(&b));
    (host_ok && path_ok && path.len() <= MAX_TEXT).then(|| Target {
        host_port: host_port.to_string(),
        path,
    })
}

pub(super) fn check_webhooks(raw: Option<Vec<Value>>) -> Result<Vec<Webhook>, ConfigError> {
    let Some(list) = raw else {
        return Ok(Vec::new());
    };
    if list.len() > MAX_WEBHOOKS {
        return err(
            "analysis.webhooks",
            format!("{} webhooks: at most {MAX_WEBHOOKS}", list.len()),
        );
    }
    list.into_iter()
        .enumerate()
        .map(|(i, v)| check_webhook(i, v))
        .collect()
}

fn check_webhook(i: usize, v: Value) -> Result<Webhook, ConfigError> {
    let at = |field: &str| format!("analysis.webhooks[{i}].{field}");
    let raw: RawWebhook = match serde_json::from_value(v) {
        Ok(r) => r,
        Err(e) => return err(format!("analysis.webhooks[{i}]"), e.to_string()),
    };
    let name = match raw.name {
        Some(n) if !n.trim().is_empty() && n.len() <= 253 && n.chars().all(|c| !c.is_control()) => {
            n
        }
        Some(n) => return err(at("name"), format!("{n:?} must be 1 to 253 characters")),
        None => return err(at("name"), "is required"),
    };
    let kind_text = raw.kind.unwrap_or_default();
    let Some(kind) = HookType::parse(&kind_text) else {
        let names: Vec<&str> = HookType::ALL.iter().map(|t| t.name()).collect();
        return err(
            at("type"),
            format!(
                "{kind_text:?} is not a webhook type: one of {}",
                names.join(", ")
            ),
        );
    };
    let Some(url) = raw.url else {
        return err(at("url"), "is required");
    };
    let Some(target) = parse_url(&url) else {
        return err(
            at("url"),
            format!(
                "{url:?} is not an http:// or https:// URL with a host (http://host[:port]/path)"
            ),
        );
    };
    let cluster = match raw.cluster {
        Some(c) if is_cluster_name(&c) => c,
        Some(c) => {
            return err(
                at("cluster"),
                format!("{c:?} is not an Envoy cluster name (1 to 255 visible ASCII characters)"),
            )
        }
        None => target.host_port.clone(),
    };
    let timeout_ms = match raw.timeout.as_deref() {
        // Flagger: a timeout shorter than two characters is the default.
        None => DEFAULT_TIMEOUT_MS,
        Some(t) if t.len() < 2 => DEFAULT_TIMEOUT_MS,
        Some(t) => match parse_millis(t) {
            Ok(ms) if (1..=MAX_TIMEOUT_MS).contains(&ms) => ms,
            Ok(_) => {
                return err(
                    at("timeout"),
                    format!("{t:?} must be between 1ms and {}s", MAX_TIMEOUT_MS / 1000),
                )
            }
            Err(e) => return err(at("timeout"), e),
        },
    };
    let retries = match raw.retries {
        None => 0,
        Some(n) if (0..=i64::from(MAX_RETRIES)).contains(&n) => n as u32,
        Some(n) => {
            return err(
                at("retries"),
                format!("{n} must be between 0 and {MAX_RETRIES}"),
            )
        }
    };
    let metadata = match raw.metadata {
        None | Some(Value::Null) => BTreeMap::new(),
        Some(Value::Object(map)) => {
            if map.len() > MAX_METADATA {
                return err(
                    at("metadata"),
                    format!("{} entries: at most {MAX_METADATA}", map.len()),
                );
            }
            let mut out = BTreeMap::new();
            for (k, v) in map {
                match v {
                    Value::String(s) if s.len() <= MAX_TEXT => {
                        out.insert(k, s);
                    }
                    other => {
                        return err(
                            format!("analysis.webhooks[{i}].metadata.{k}"),
                            format!("{other} must be a string (Flagger's metadata is a map of strings) of at most {MAX_TEXT} bytes"),
                        )
                    }
                }
            }
            out
        }
        Some(other) => {
            return err(
                at("metadata"),
                format!("{other} must be an object of strings"),
            )
        }
    };
    Ok(Webhook {
        name,
        kind,
        url,
        authority: target.host_port,
        path: target.path,
        cluster,
        timeout_ms,
        retries,
        metadata,
        mute_alert: raw.mute_alert.unwrap_or(false),
        disable_tls: raw.disable_tls.unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(v: Value) -> Result<Webhook, ConfigError> {
        check_webhooks(Some(vec![v])).map(|mut l| l.remove(0))
    }

    #[test]
    fn flaggers_webhook_list_is_accepted_as_pasted_with_its_defaults() {
        let w = one(json!({"name": "load-test", "url": "http://flagger-loadtester.test/",
                            "timeout": "5s", "metadata": {"cmd": "hey -z 1m http://podinfo-canary.test:9898/"}}))
        .unwrap();
        assert_eq!(
            w.kind,
            HookType::Rollout,
            "Flagger: no type is a rollout hook"
        );
        assert_eq!(
            (w.cluster.as_str(), w.authority.as_str(), w.path.as_str()),
            ("flagger-loadtester.test", "flagger-loadtester.test", "/")
        );
        assert_eq!(w.timeout_ms, 5_000);
        assert_eq!(
            w.metadata["cmd"],
            "hey -z 1m http://podinfo-canary.test:9898/"
        );
        let g = one(json!({"name": "gate", "type": "confirm-promotion",
                            "url": "http://flagger-loadtester.test:8080/gate/check?x=1", "retries": 2,
                            "muteAlert": true, "disableTLS": true})).unwrap();
        assert_eq!(g.kind, HookType::ConfirmPromotion);
        assert_eq!(
            (g.cluster.as_str(), g.path.as_str()),
            ("flagger-loadtester.test:8080", "/gate/check?x=1")
        );
        assert_eq!(
            (g.timeout_ms, g.retries, g.mute_alert),
            (DEFAULT_TIMEOUT_MS, 2, true)
        );
        let istio = one(
            json!({"name": "g", "type": "rollback", "url": "http://loadtester.test/rollback/check",
                               "cluster": "outbound|80||loadtester.test.svc.cluster.local"}),
        )
        .unwrap();
        assert_eq!(
            istio.cluster,
            "outbound|80||loadtester.test.svc.cluster.local"
        );
        assert_eq!(istio.authority, "loadtester.test");
        for t in HookType::ALL {
            assert_eq!(
                one(json!({"name": "x", "type": t.name(), "url": "http://a/"}))
                    .unwrap()
                    .kind,
                t
            );
        }
    }

    #[test]
    fn bad_webhooks_are_refused_naming_the_field() {
        let cases = [
            (json!({"url": "http://a/"}), "analysis.webhooks[0].name"),
            (
                json!({"name": "x", "type": "pre-promotion", "url": "http://a/"}),
                "analysis.webhooks[0].type",
            ),
            (json!({"name": "x"}), "analysis.webhooks[0].url"),
            (
                json!({"name": "x", "url": "ftp://a/"}),
                "analysis.webhooks[0].url",
            ),
            (
                json!({"name": "x", "url": "http:///path"}),
                "analysis.webhooks[0].url",
            ),
            (
                json!({"name": "x", "url": "http://a/", "timeout": "soon"}),
                "analysis.webhooks[0].timeout",
            ),
            (
                json!({"name": "x", "url": "http://a/", "timeout": "10m"}),
                "analysis.webhooks[0].timeout",
            ),
            (
                json!({"name": "x", "url": "http://a/", "retries": -1}),
                "analysis.webhooks[0].retries",
            ),
            (
                json!({"name": "x", "url": "http://a/", "metadata": {"n": 1}}),
                "analysis.webhooks[0].metadata.n",
            ),
            (
                json!({"name": "x", "url": "http://a/", "cluster": ""}),
                "analysis.webhooks[0].cluster",
            ),
            (
                json!({"name": "x", "url": "http://a/", "headers": {}}),
                "analysis.webhooks[0]",
            ),
        ];
        for (v, field) in cases {
            let e = one(v.clone()).unwrap_err();
            assert_eq!(e.field, field, "{v}: {e}");
        }
        let many = vec![json!({"name": "x", "url": "http://a/"}); MAX_WEBHOOKS + 1];
        assert_eq!(
            check_webhooks(Some(many)).unwrap_err().field,
            "analysis.webhooks"
        );
    }
}
