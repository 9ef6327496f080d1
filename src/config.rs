//! Plugin configuration: JSON parsing and validation.
//!
//! The `analysis` block follows Flagger's `Canary.spec.analysis`, so an operator can paste theirs.
//! Every error names the field (as a JSON path) and the offending value; the adapter logs it and
//! returns `false` from `on_configure`, which makes Envoy refuse the plugin configuration.

use crate::duration::parse_millis;
use crate::matcher::{MatchRule, StringMatch};
use crate::timestamp::parse_rfc3339_ms;
use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use serde_path_to_error::Segment;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

/// Shortest analysis interval and metric window we accept: below this the tick and the
/// publication period of the workers would be as long as the interval itself.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest metric window: tallies are kept for the longest window, in at most ~64 buckets.
pub const MAX_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Longest regex source in a match rule; the compiled program is bounded too.
pub const MAX_REGEX_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    /// JSON path of the bad field, e.g. `analysis.stepWeights`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, message) = (one_line(&self.field), one_line(&self.message));
        if field.is_empty() {
            write!(f, "invalid canary-guard configuration: {message}")
        } else {
            write!(f, "invalid canary-guard configuration: {field}: {message}")
        }
    }
}

/// Escapes control characters (an unknown key or a header name may hold a newline), so that an
/// error stays one log line.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn err<T>(field: impl Into<String>, message: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError {
        field: field.into(),
        message: message.into(),
    })
}

/// Which part of the loop a root context plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// HTTP filter on the workers: routes and tallies; elects a leader to analyse when no
    /// singleton holds the analyser lease (Istio).
    #[default]
    Filter,
    /// Bootstrap singleton service (`envoy.bootstrap.wasm`, `singleton: true`): always analyses.
    Analyser,
}

/// What an analyser does when shared data holds no analysis state for the canary: a first
/// load and a restarted proxy look the same (Envoy keeps no Wasm state across restarts), and a
/// restarted proxy may have rolled this revision back before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestartPolicy {
    /// Phase `Waiting` at weight 0 until the revision changes or an approval is in effect.
    #[default]
    Hold,
    /// Start the analysis from the first step (the revision may get traffic again).
    Restart,
}

/// `approvedUntil`: while the host clock is before it, a missing state may start the analysis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approval {
    /// As configured, for the logs.
    pub text: String,
    /// Unix epoch milliseconds.
    pub until_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub name: String,
    pub revision: String,
    pub upstreams: Upstreams,
    pub affinity: Affinity,
    pub analysis: Analysis,
    pub skip_analysis: bool,
    pub suspend: bool,
    pub restart_policy: RestartPolicy,
    pub approved_until: Option<Approval>,
}

/// What a root context was configured as.
#[derive(Debug, Clone, PartialEq)]
pub enum Plugin {
    Filter(Box<Config>),
    Analyser,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstreams {
    pub header: String,
    pub stable: String,
    pub canary: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Affinity {
    None,
    Header(String),
    Cookie { name: String, max_age_s: u64 },
}

/// How the canary weight moves through the analysis.
#[derive(Debug, Clone, PartialEq)]
pub enum Steps {
    /// `stepWeight` up to `maxWeight`.
    Linear { step: u8, max: u8 },
    /// `stepWeights`, each capped at `maxWeight`, strictly increasing.
    List(Vec<u8>),
    /// Flagger's A/B testing: weight stays 0, only `match` traffic reaches the canary, promote
    /// after this many passing checks.
    Iterations(u32),
}

impl Steps {
    pub fn first_weight(&self) -> u8 {
        match self {
            Steps::Linear { step, max } => (*step).min(*max),
            Steps::List(list) => list.first().copied().unwrap_or(0),
            Steps::Iterations(_) => 0,
        }
    }

    /// The weight after a passing check at `current`, or `None` when `current` is the last step
    /// (the next passing check promotes).
    pub fn next_weight(&self, current: u8) -> Option<u8> {
        match self {
            Steps::Linear { step, max } => {
                (current < *max).then(|| current.saturating_add(*step).min(*max))
            }
            Steps::List(list) => list.iter().copied().find(|w| *w > current),
            Steps::Iterations(_) => None,
        }
    }

    /// Highest weight before promotion.
    pub fn max_weight(&self) -> u8 {
        match self {
            Steps::Linear { max, .. } => *max,
            Steps::List(list) => list.last().copied().unwrap_or(0),
            Steps::Iterations(_) => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    /// Percentage of canary responses that are not 5xx.
    SuccessRate,
    /// Percentile of canary request duration, in milliseconds.
    Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricCheck {
    pub name: String,
    pub kind: MetricKind,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub window_ms: u64,
    /// Only for `request-duration`.
    pub percentile: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Analysis {
    pub interval_ms: u64,
    pub threshold: u32,
    pub steps: Steps,
    /// Weight added per interval while promoting; 0 = straight to 100.
    pub promotion_step: u8,
    pub min_requests: u64,
    pub consecutive: bool,
    pub matches: Vec<MatchRule>,
    pub metrics: Vec<MetricCheck>,
}

impl Analysis {
    /// The longest window any metric looks at: tallies must cover it, and their buckets are cut
    /// from it. Not the analysis interval: checks read only metric windows, and an interval
    /// much longer than the windows (1h vs 10s) would cut buckets too coarse for a window.
    pub fn longest_window_ms(&self) -> u64 {
        self.metrics
            .iter()
            .map(|m| m.window_ms)
            .max()
            .unwrap_or(self.interval_ms)
    }
}

// ---- raw JSON shape -------------------------------------------------------------------------

/// A JSON object only. serde's derived structs also take an array, fields by position, which
/// would let `"upstreams": ["x-up", "a", "b"]` through (found by the fuzz harness).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectOnly<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjectOnly<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjectOnly(PhantomData))
            .map(Obj)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    name: String,
    revision: String,
    upstreams: Obj<RawUpstreams>,
    #[serde(default)]
    session_affinity: Option<Obj<RawAffinity>>,
    analysis: Obj<RawAnalysis>,
    #[serde(default)]
    skip_analysis: bool,
    #[serde(default)]
    suspend: bool,
    #[serde(default)]
    restart_policy: Option<String>,
    #[serde(default)]
    approved_until: Option<String>,
    #[serde(default)]
    role: Role,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreams {
    header: String,
    stable: String,
    canary: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAffinity {
    header: Option<String>,
    cookie_name: Option<String>,
    max_age: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAnalysis {
    interval: Option<String>,
    threshold: Option<u32>,
    step_weight: Option<u32>,
    max_weight: Option<u32>,
    step_weights: Option<Vec<u32>>,
    step_weight_promotion: Option<u32>,
    min_requests: Option<u64>,
    consecutive: Option<bool>,
    iterations: Option<u32>,
    #[serde(rename = "match")]
    matches: Option<Vec<Obj<RawMatch>>>,
    metrics: Option<Vec<Obj<RawMetric>>>,
    // Flagger fields that need a controller; refused by name rather than silently ignored.
    webhooks: Option<Value>,
    alerts: Option<Value>,
    mirror: Option<Value>,
    mirror_weight: Option<Value>,
    primary_ready_threshold: Option<Value>,
    canary_ready_threshold: Option<Value>,
    session_affinity: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    headers: BTreeMap<String, Obj<RawStringMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStringMatch {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawMetric {
    name: String,
    threshold_range: Option<Obj<RawRange>>,
    interval: Option<String>,
    percentile: Option<f64>,
    template_ref: Option<Value>,
    template_variables: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRange {
    min: Option<f64>,
    max: Option<f64>,
}

// ---- parsing and validation ---------------------------------------------------------------------

/// Parses a root context's configuration: the canary configuration for the HTTP filter, or
/// exactly `{"role": "analyser"}` for the bootstrap singleton (which reads each canary's
/// configuration from its filters, so that an xDS update of the filter reaches it).
pub fn parse_plugin(bytes: &[u8]) -> Result<Plugin, ConfigError> {
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) {
        if map.get("role").and_then(Value::as_str) == Some("analyser") {
            if let Some(other) = map.keys().find(|k| *k != "role") {
                return err(
                    other.clone(),
                    "the analyser singleton takes each canary's configuration from its filters: configure it with {\"role\": \"analyser\"} only",
                );
            }
            return Ok(Plugin::Analyser);
        }
    }
    parse(bytes).map(|c| Plugin::Filter(Box::new(c)))
}

/// Parses and validates the canary (filter) configuration bytes.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let Obj(raw) = serde_path_to_error::deserialize(&mut de).map_err(|e| ConfigError {
        field: field_of(e.path()),
        message: e.into_inner().to_string(),
    })?;
    if let Err(e) = de.end() {
        return err("", e.to_string());
    }
    validate(raw)
}

/// The JSON path as `analysis.metrics[0].name`. serde_path_to_error writes "?" for a place it
/// could not name (a syntax error where a key was due): that names the object around it instead.
fn field_of(path: &serde_path_to_error::Path) -> String {
    let mut field = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => field.push_str(&format!("[{index}]")),
            Segment::Map { key: name } | Segment::Enum { variant: name } => {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(name);
            }
            Segment::Unknown => {}
        }
    }
    field
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let name = check_name(&raw.name)?;
    let revision = raw.revision;
    if revision.is_empty() || revision.len() > 128 || revision.chars().any(|c| c.is_control()) {
        return err(
            "revision",
            format!("{revision:?} must be 1 to 128 printable characters"),
        );
    }
    let upstreams = check_upstreams(raw.upstreams.0)?;
    let affinity = check_affinity(raw.session_affinity.map(|a| a.0))?;
    let analysis = check_analysis(raw.analysis.0)?;
    let restart_policy = match raw.restart_policy.as_deref() {
        None | Some("hold") => RestartPolicy::Hold,
        Some("restart") => RestartPolicy::Restart,
        Some(other) => {
            return err(
                "restartPolicy",
                format!("{other:?} must be \"hold\" (the default) or \"restart\""),
            )
        }
    };
    let approved_until = raw.approved_until.map(check_approval).transpose()?;
    if raw.role == Role::Analyser {
        return err("role", "\"analyser\" takes no other fields: use {\"role\": \"analyser\"} for the bootstrap singleton");
    }
    Ok(Config {
        name,
        revision,
        upstreams,
        affinity,
        analysis,
        skip_analysis: raw.skip_analysis,
        suspend: raw.suspend,
        restart_policy,
        approved_until,
    })
}

fn check_approval(text: String) -> Result<Approval, ConfigError> {
    match parse_rfc3339_ms(&text) {
        Some(until_ms) => Ok(Approval { text, until_ms }),
        None => err(
            "approvedUntil",
            format!("{text:?} is not an RFC 3339 time after 1970 such as \"2026-11-22T12:00:00Z\" (Z or a numeric offset like +01:00)"),
        ),
    }
}

fn check_name(name: &str) -> Result<String, ConfigError> {
    // The name goes into shared-data keys and stat names (dot-separated): keep it a plain token.
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return err(
            "name",
            format!("{name:?} must be 1 to 63 characters of [A-Za-z0-9_-]"),
        );
    }
    Ok(name.to_string())
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn check_upstreams(raw: RawUpstreams) -> Result<Upstreams, ConfigError> {
    let header = raw.header.to_ascii_lowercase();
    if !is_header_name(&header) {
        return err(
            "upstreams.header",
            format!("{:?} is not a valid header name", raw.header),
        );
    }
    if raw.stable.trim().is_empty() {
        return err(
            "upstreams.stable",
            format!("{:?} must name a cluster", raw.stable),
        );
    }
    if raw.canary.trim().is_empty() {
        return err(
            "upstreams.canary",
            format!("{:?} must name a cluster", raw.canary),
        );
    }
    if raw.stable == raw.canary {
        return err(
            "upstreams.canary",
            format!("{:?} is the same as upstreams.stable", raw.canary),
        );
    }
    Ok(Upstreams {
        header,
        stable: raw.stable,
        canary: raw.canary,
    })
}

fn check_affinity(raw: Option<RawAffinity>) -> Result<Affinity, ConfigError> {
    let Some(raw) = raw else {
        return Ok(Affinity::None);
    };
    match (raw.header, raw.cookie_name) {
        (Some(h), None) => {
            if raw.max_age.is_some() {
                return err(
                    "sessionAffinity.maxAge",
                    "only applies with sessionAffinity.cookieName",
                );
            }
            let lower = h.to_ascii_lowercase();
            if !is_header_name(&lower) {
                return err(
                    "sessionAffinity.header",
                    format!("{h:?} is not a valid header name"),
                );
            }
            Ok(Affinity::Header(lower))
        }
        (None, Some(c)) => {
            if !is_header_name(&c) {
                return err(
                    "sessionAffinity.cookieName",
                    format!("{c:?} is not a valid cookie name"),
                );
            }
            let max_age_s = raw.max_age.unwrap_or(86_400);
            if max_age_s == 0 {
                return err("sessionAffinity.maxAge", "0 must be at least 1 second");
            }
            Ok(Affinity::Cookie { name: c, max_age_s })
        }
        (Some(_), Some(_)) => err(
            "sessionAffinity",
            "set either header or cookieName, not both",
        ),
        (None, None) => err("sessionAffinity", "needs header or cookieName"),
    }
}

fn weight(field: &str, value: u32) -> Result<u8, ConfigError> {
    if value == 0 || value > 100 {
        return err(field, format!("{value} must be between 1 and 100"));
    }
    Ok(value as u8)
}

fn check_analysis(raw: RawAnalysis) -> Result<Analysis, ConfigError> {
    let refused = [
        ("analysis.webhooks", raw.webhooks.is_some()),
        ("analysis.alerts", raw.alerts.is_some()),
        ("analysis.mirror", raw.mirror.is_some()),
        ("analysis.mirrorWeight", raw.mirror_weight.is_some()),
        (
            "analysis.primaryReadyThreshold",
            raw.primary_ready_threshold.is_some(),
        ),
        (
            "analysis.canaryReadyThreshold",
            raw.canary_ready_threshold.is_some(),
        ),
    ];
    if let Some((field, _)) = refused.iter().find(|(_, set)| *set) {
        return err(*field, "is a Flagger field that canary-guard does not support (it needs a controller); remove it");
    }
    if raw.session_affinity.is_some() {
        return err(
            "analysis.sessionAffinity",
            "set sessionAffinity at the top level of the canary-guard configuration",
        );
    }

    let interval_text = raw.interval.unwrap_or_else(|| "1m".to_string());
    let interval_ms = check_interval("analysis.interval", &interval_text)?;

    let threshold = raw.threshold.unwrap_or(1);
    if threshold == 0 {
        return err("analysis.threshold", "0 must be at least 1");
    }

    let steps = check_steps(
        raw.step_weight,
        raw.max_weight,
        raw.step_weights,
        raw.iterations,
    )?;

    let promotion_step = match raw.step_weight_promotion {
        None | Some(0) => 0,
        Some(v) => weight("analysis.stepWeightPromotion", v)?,
    };

    let min_requests = raw.min_requests.unwrap_or(1);
    if min_requests == 0 {
        return err(
            "analysis.minRequests",
            "0 must be at least 1 (no data fails a check)",
        );
    }

    let mut matches = Vec::new();
    for (i, m) in raw.matches.unwrap_or_default().into_iter().enumerate() {
        matches.push(check_match(i, m.0)?);
    }
    if matches!(steps, Steps::Iterations(_)) && matches.is_empty() {
        return err(
            "analysis.iterations",
            "A/B testing with iterations needs analysis.match rules",
        );
    }

    let mut metrics = Vec::new();
    for (i, m) in raw.metrics.unwrap_or_default().into_iter().enumerate() {
        metrics.push(check_metric(i, m.0, interval_ms)?);
    }

    Ok(Analysis {
        interval_ms,
        threshold,
        steps,
        promotion_step,
        min_requests,
        consecutive: raw.consecutive.unwrap_or(false),
        matches,
        metrics,
    })
}

fn check_interval(field: &str, text: &str) -> Result<u64, ConfigError> {
    let ms = parse_millis(text).or_else(|e| err(field, e))?;
    if ms < MIN_INTERVAL_MS {
        return err(
            field,
            format!("{text:?} must be at least {MIN_INTERVAL_MS}ms"),
        );
    }
    if ms > MAX_WINDOW_MS {
        return err(field, format!("{text:?} must be at most 24h"));
    }
    Ok(ms)
}

fn check_steps(
    step_weight: Option<u32>,
    max_weight: Option<u32>,
    step_weights: Option<Vec<u32>>,
    iterations: Option<u32>,
) -> Result<Steps, ConfigError> {
    let max = max_weight
        .map(|v| weight("analysis.maxWeight", v))
        .transpose()?;
    match (step_weight, step_weights, iterations) {
        (_, Some(list), _) => {
            if list.is_empty() {
                return err("analysis.stepWeights", "[] must list at least one weight");
            }
            let mut out: Vec<u8> = Vec::with_capacity(list.len());
            for (i, v) in list.iter().enumerate() {
                let w = weight(&format!("analysis.stepWeights[{i}]"), *v)?;
                if out.last().is_some_and(|prev| *prev >= w) {
                    return err(
                        "analysis.stepWeights",
                        format!("{list:?} must be strictly increasing"),
                    );
                }
                out.push(w);
            }
            if let Some(max) = max {
                let first = out.first().copied().unwrap_or(0);
                if max < first {
                    return err(
                        "analysis.maxWeight",
                        format!("{max} is below the first step {first}"),
                    );
                }
                // Steps above maxWeight are capped to it (the analysis never passes maxWeight).
                out.retain(|w| *w < max);
                out.push(max);
            }
            Ok(Steps::List(out))
        }
        (Some(step), None, _) => {
            let step = weight("analysis.stepWeight", step)?;
            let max = max.unwrap_or(100);
            if max < step {
                return err(
                    "analysis.maxWeight",
                    format!("{max} is below the first step {step}"),
                );
            }
            Ok(Steps::Linear { step, max })
        }
        (None, None, Some(n)) => {
            if n == 0 {
                return err("analysis.iterations", "0 must be at least 1");
            }
            if max.is_some() {
                return err(
                    "analysis.maxWeight",
                    "does not apply to A/B testing with iterations",
                );
            }
            Ok(Steps::Iterations(n))
        }
        (None, None, None) => err(
            "analysis",
            "needs stepWeight, stepWeights or iterations (A/B testing) to know how to progress",
        ),
    }
}

fn check_match(i: usize, raw: RawMatch) -> Result<MatchRule, ConfigError> {
    let field = format!("analysis.match[{i}].headers");
    if raw.headers.is_empty() {
        return err(field, "{} must list at least one header");
    }
    let mut headers = Vec::new();
    for (name, Obj(m)) in raw.headers {
        let hfield = format!("{field}.{name}");
        let lower = name.to_ascii_lowercase();
        if !is_header_name(&lower) && !lower.starts_with(':') {
            return err(hfield, format!("{name:?} is not a valid header name"));
        }
        let set = [&m.exact, &m.prefix, &m.suffix, &m.regex]
            .iter()
            .filter(|v| v.is_some())
            .count();
        if set != 1 {
            return err(hfield, "needs exactly one of exact, prefix, suffix, regex");
        }
        let matcher = match (m.exact, m.prefix, m.suffix, m.regex) {
            (Some(v), _, _, _) => StringMatch::Exact(v),
            (_, Some(v), _, _) => StringMatch::Prefix(v),
            (_, _, Some(v), _) => StringMatch::Suffix(v),
            (_, _, _, Some(v)) => {
                StringMatch::regex(&v, MAX_REGEX_LEN).map_err(|e| ConfigError {
                    field: format!("{hfield}.regex"),
                    message: e,
                })?
            }
            _ => return err(hfield, "needs exactly one of exact, prefix, suffix, regex"),
        };
        headers.push((lower, matcher));
    }
    Ok(MatchRule { headers })
}

fn check_metric(i: usize, raw: RawMetric, interval_ms: u64) -> Result<MetricCheck, ConfigError> {
    let field = format!("analysis.metrics[{i}]");
    if raw.template_ref.is_some() || raw.template_variables.is_some() {
        return err(
            format!("{field}.templateRef"),
            format!("metric {:?} uses a MetricTemplate; canary-guard measures in the proxy and supports only the built-in request-success-rate and request-duration", raw.name),
        );
    }
    let kind = match raw.name.as_str() {
        "request-success-rate" => MetricKind::SuccessRate,
        "request-duration" => MetricKind::Duration,
        other => {
            return err(
                format!("{field}.name"),
                format!("{other:?} is not supported; canary-guard supports request-success-rate and request-duration"),
            )
        }
    };
    let Some(Obj(range)) = raw.threshold_range else {
        return err(
            format!("{field}.thresholdRange"),
            "is required (min, max or both)",
        );
    };
    let rfield = format!("{field}.thresholdRange");
    if range.min.is_none() && range.max.is_none() {
        return err(rfield, "needs min, max or both");
    }
    for (bound, v) in [("min", range.min), ("max", range.max)] {
        if let Some(v) = v {
            let in_range = match kind {
                MetricKind::SuccessRate => (0.0..=100.0).contains(&v),
                MetricKind::Duration => v.is_finite() && v >= 0.0,
            };
            if !in_range {
                let allowed = match kind {
                    MetricKind::SuccessRate => "a percentage between 0 and 100",
                    MetricKind::Duration => "milliseconds, at least 0",
                };
                return err(
                    format!("{rfield}.{bound}"),
                    format!("{v} must be {allowed}"),
                );
            }
        }
    }
    if let (Some(lo), Some(hi)) = (range.min, range.max) {
        if lo > hi {
            return err(rfield, format!("min {lo} is above max {hi}"));
        }
    }
    let window_ms = match raw.interval {
        Some(text) => check_interval(&format!("{field}.interval"), &text)?,
        None => interval_ms,
    };
    let percentile = match (kind, raw.percentile) {
        (MetricKind::Duration, Some(p)) if p > 0.0 && p <= 100.0 => p,
        (MetricKind::Duration, Some(p)) => {
            return err(
                format!("{field}.percentile"),
                format!("{p} must be in (0, 100]"),
            )
        }
        (MetricKind::Duration, None) => 99.0,
        (MetricKind::SuccessRate, Some(p)) => {
            return err(
                format!("{field}.percentile"),
                format!("{p} only applies to request-duration"),
            )
        }
        (MetricKind::SuccessRate, None) => 0.0,
    };
    Ok(MetricCheck {
        name: raw.name,
        kind,
        min: range.min,
        max: range.max,
        window_ms,
        percentile,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The README example (also the core benchmark's configuration).
    pub const EXAMPLE: &str = include_str!("../tests/data/example-config.json");

    pub fn example() -> Config {
        parse(EXAMPLE.as_bytes()).unwrap()
    }

    /// Parses EXAMPLE with one JSON pointer replaced (or removed when `value` is None).
    pub fn with(pointer: &str, value: Option<Value>) -> Result<Config, ConfigError> {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let obj = v.pointer_mut(parent).unwrap();
        match (obj, value) {
            (Value::Object(map), Some(val)) => {
                map.insert(key.to_string(), val);
            }
            (Value::Object(map), None) => {
                map.remove(key);
            }
            (Value::Array(arr), Some(val)) => arr[key.parse::<usize>().unwrap()] = val,
            _ => panic!("bad pointer {pointer}"),
        }
        parse(v.to_string().as_bytes())
    }

    fn rejects(pointer: &str, value: Value, field: &str, mentions: &str) {
        let e = with(pointer, Some(value)).unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(
            e.to_string().contains(mentions),
            "{e} should mention {mentions}"
        );
    }

    #[test]
    fn parses_the_documented_example() {
        let c = example();
        assert_eq!(c.name, "web");
        assert_eq!(c.revision, "v2");
        assert_eq!(c.upstreams.header, "x-canary-upstream");
        assert_eq!(c.affinity, Affinity::Header("x-user-id".into()));
        assert_eq!(c.analysis.interval_ms, 1000);
        assert_eq!(c.analysis.threshold, 3);
        assert_eq!(c.analysis.steps, Steps::List(vec![1, 5, 10, 25, 50]));
        assert_eq!(c.analysis.min_requests, 20);
        assert_eq!(c.analysis.metrics.len(), 2);
        assert_eq!(c.analysis.metrics[0].kind, MetricKind::SuccessRate);
        assert_eq!(c.analysis.metrics[0].min, Some(99.0));
        assert_eq!(c.analysis.metrics[1].window_ms, 10_000);
        assert_eq!(c.analysis.metrics[1].percentile, 99.0);
        assert_eq!(c.analysis.longest_window_ms(), 10_000);
    }

    #[test]
    fn tallies_cover_the_metric_windows_not_a_longer_interval() {
        let c = with("/analysis/interval", Some(serde_json::json!("1h"))).unwrap();
        assert_eq!(c.analysis.longest_window_ms(), 10_000);
        assert_eq!(
            crate::tally::bucket_ms_for(c.analysis.longest_window_ms()),
            157
        );
    }

    #[test]
    fn linear_steps_walk_to_max_weight() {
        let c = with("/analysis/stepWeights", None).unwrap();
        let steps = &c.analysis.steps;
        assert_eq!(steps, &Steps::Linear { step: 10, max: 50 });
        let mut w = steps.first_weight();
        let mut seen = vec![w];
        while let Some(n) = steps.next_weight(w) {
            w = n;
            seen.push(w);
        }
        assert_eq!(seen, vec![10, 20, 30, 40, 50]);
    }

    #[test]
    fn step_list_is_capped_at_max_weight() {
        let c = with("/analysis/maxWeight", Some(30.into())).unwrap();
        assert_eq!(c.analysis.steps, Steps::List(vec![1, 5, 10, 25, 30]));
        assert_eq!(c.analysis.steps.next_weight(25), Some(30));
        assert_eq!(c.analysis.steps.next_weight(30), None);
    }

    #[test]
    fn syntax_errors_are_refused() {
        let e = parse(b"{\"name\": ").unwrap_err();
        assert!(e.to_string().contains("EOF"), "{e}");
        assert!(parse(b"{} trailing").is_err());
    }

    /// Found by the fuzz harness (tests/fuzz): a "?" field, a JSON array read as a struct, and
    /// control characters from a key that broke the one-line log.
    #[test]
    fn errors_name_a_field_and_stay_one_line() {
        let e = parse(b"{\"analysis\": {x").unwrap_err();
        assert_eq!(e.field, "analysis", "{e}");
        assert_eq!(parse(b"{l").unwrap_err().field, "");
        let e = parse(b" [\"web\", \"v2\"]").unwrap_err();
        assert_eq!(e.field, "");
        assert!(e.message.contains("expected a JSON object"), "{e}");
        let e = with("/upstreams", Some(serde_json::json!(["x-up", "a", "b"]))).unwrap_err();
        assert_eq!(e.field, "upstreams");
        assert!(e.message.contains("expected a JSON object"), "{e}");
        let e = with(
            "/analysis/metrics/0/thresholdRange",
            Some(serde_json::json!([99, null])),
        )
        .unwrap_err();
        assert_eq!(e.field, "analysis.metrics[0].thresholdRange");
        let e = parse(b"{\"na\\nme\": 1}").unwrap_err();
        assert_eq!(e.field, "na\nme");
        let line = e.to_string();
        assert!(
            line.starts_with("invalid canary-guard configuration: na\\nme: unknown field"),
            "{line}"
        );
        assert!(!line.chars().any(char::is_control), "{line}");
    }

    #[test]
    fn unknown_fields_name_the_field() {
        let e = with("/analysis/stepWieght", Some(10.into())).unwrap_err();
        assert_eq!(e.field, "analysis.stepWieght");
        assert!(e.message.contains("unknown field `stepWieght`"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = with("/analysis/threshold", Some("3".into())).unwrap_err();
        assert_eq!(e.field, "analysis.threshold", "{e}");
        assert!(e.message.contains("\"3\""), "{e}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        rejects(
            "/analysis/stepWeights",
            serde_json::json!([1, 5, 101]),
            "analysis.stepWeights[2]",
            "101",
        );
        rejects(
            "/analysis/stepWeights",
            serde_json::json!([10, 5]),
            "analysis.stepWeights",
            "[10, 5]",
        );
        rejects(
            "/analysis/stepWeights",
            serde_json::json!([10, 10]),
            "analysis.stepWeights",
            "increasing",
        );
        rejects("/analysis/maxWeight", 0.into(), "analysis.maxWeight", "0");
        rejects(
            "/analysis/maxWeight",
            150.into(),
            "analysis.maxWeight",
            "150",
        );
        rejects("/analysis/threshold", 0.into(), "analysis.threshold", "0");
        rejects(
            "/analysis/interval",
            "0s".into(),
            "analysis.interval",
            "\"0s\"",
        );
        rejects(
            "/analysis/interval",
            "soon".into(),
            "analysis.interval",
            "soon",
        );
        rejects("/upstreams/stable", "".into(), "upstreams.stable", "\"\"");
        rejects(
            "/upstreams/canary",
            "web-stable".into(),
            "upstreams.canary",
            "web-stable",
        );
        rejects("/name", "web.prod".into(), "name", "web.prod");
        rejects(
            "/analysis/minRequests",
            0.into(),
            "analysis.minRequests",
            "0",
        );
        rejects(
            "/analysis/stepWeightPromotion",
            120.into(),
            "analysis.stepWeightPromotion",
            "120",
        );
    }

    #[test]
    fn max_weight_below_first_step_is_refused() {
        let e = with("/analysis/maxWeight", Some(0.into())).unwrap_err();
        assert_eq!(e.field, "analysis.maxWeight");
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        v["analysis"]["stepWeights"] = serde_json::json!([20, 40]);
        v["analysis"]["maxWeight"] = 10.into();
        let e = parse(v.to_string().as_bytes()).unwrap_err();
        assert_eq!(e.field, "analysis.maxWeight");
        assert!(e.message.contains("10") && e.message.contains("20"), "{e}");
    }

    #[test]
    fn unsupported_metrics_list_what_is_supported() {
        rejects(
            "/analysis/metrics/0",
            serde_json::json!({"name": "error-rate", "thresholdRange": {"max": 1}}),
            "analysis.metrics[0].name",
            "supports request-success-rate and request-duration",
        );
        rejects(
            "/analysis/metrics/1",
            serde_json::json!({"name": "latency", "templateRef": {"name": "latency"}, "thresholdRange": {"max": 1}}),
            "analysis.metrics[1].templateRef",
            "request-success-rate and request-duration",
        );
        rejects(
            "/analysis/metrics/0",
            serde_json::json!({"name": "request-success-rate", "thresholdRange": {"min": 101}}),
            "analysis.metrics[0].thresholdRange.min",
            "101",
        );
    }

    #[test]
    fn flagger_controller_fields_are_refused_by_name() {
        rejects(
            "/analysis/webhooks",
            serde_json::json!([]),
            "analysis.webhooks",
            "does not support",
        );
    }

    #[test]
    fn bad_match_rules_are_refused() {
        rejects(
            "/analysis/match",
            serde_json::json!([{"headers": {"x-a": {"exact": "1", "prefix": "2"}}}]),
            "analysis.match[0].headers.x-a",
            "exactly one",
        );
        rejects(
            "/analysis/match",
            serde_json::json!([{"headers": {"x-a": {"regex": "("}}}]),
            "analysis.match[0].headers.x-a.regex",
            "(",
        );
    }

    #[test]
    fn cookie_affinity_and_defaults() {
        let c = with(
            "/sessionAffinity",
            Some(serde_json::json!({"cookieName": "flagger-cookie"})),
        )
        .unwrap();
        assert_eq!(
            c.affinity,
            Affinity::Cookie {
                name: "flagger-cookie".into(),
                max_age_s: 86_400
            }
        );
        rejects(
            "/sessionAffinity",
            serde_json::json!({"cookieName": "a", "header": "b"}),
            "sessionAffinity",
            "not both",
        );
    }

    #[test]
    fn ab_testing_with_iterations() {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        let a = v["analysis"].as_object_mut().unwrap();
        a.remove("stepWeight");
        a.remove("stepWeights");
        a.remove("maxWeight");
        a.insert("iterations".into(), 5.into());
        let c = parse(v.to_string().as_bytes()).unwrap();
        assert_eq!(c.analysis.steps, Steps::Iterations(5));
        assert_eq!(c.analysis.steps.first_weight(), 0);
    }

    #[test]
    fn restart_policy_defaults_to_hold() {
        assert_eq!(example().restart_policy, RestartPolicy::Hold);
        assert_eq!(example().approved_until, None);
        let c = with("/restartPolicy", Some("restart".into())).unwrap();
        assert_eq!(c.restart_policy, RestartPolicy::Restart);
        let c = with("/restartPolicy", Some("hold".into())).unwrap();
        assert_eq!(c.restart_policy, RestartPolicy::Hold);
        rejects("/restartPolicy", "Hold".into(), "restartPolicy", "\"Hold\"");
        rejects(
            "/restartPolicy",
            "always".into(),
            "restartPolicy",
            "\"always\" must be \"hold\" (the default) or \"restart\"",
        );
        rejects("/restartPolicy", true.into(), "restartPolicy", "true");
    }

    #[test]
    fn approved_until_takes_rfc3339_times_with_z_or_an_offset() {
        let at = |text: &str| {
            with("/approvedUntil", Some(text.into())).map(|c| c.approved_until.unwrap().until_ms)
        };
        let noon = at("2026-11-22T12:00:00Z").unwrap();
        assert_eq!(noon, 1_795_348_800_000);
        assert_eq!(
            with("/approvedUntil", Some("2026-11-22T12:00:00Z".into()))
                .unwrap()
                .approved_until
                .unwrap()
                .text,
            "2026-11-22T12:00:00Z",
            "kept as written, for the logs"
        );
        assert_eq!(at("2026-11-22T14:00:00+02:00"), Ok(noon));
        assert_eq!(at("2026-11-22T06:30:00-05:30"), Ok(noon));
        assert_eq!(at("2026-11-22T12:00:00.250Z"), Ok(noon + 250));
        // Leap days: 2028 and 2000 have one, 2027 and 2100 do not.
        assert_eq!(
            at("2028-03-01T00:00:00Z").unwrap() - at("2028-02-29T00:00:00Z").unwrap(),
            86_400_000
        );
        assert!(at("2000-02-29T23:59:59Z").is_ok());
        for bad in [
            "2027-02-29T00:00:00Z",
            "2100-02-29T00:00:00Z",
            "2026-11-22T12:00:00",
            "2026-11-22 12:00:00Z",
            "2026-11-22T12:00:00+0200",
            "2026-11-22T12:00:00 UTC",
            "22/11/2026 12:00",
            "1969-12-31T23:59:59Z",
            "",
        ] {
            rejects(
                "/approvedUntil",
                bad.into(),
                "approvedUntil",
                &format!("{bad:?}"),
            );
        }
        rejects(
            "/approvedUntil",
            "tomorrow".into(),
            "approvedUntil",
            "RFC 3339",
        );
        rejects(
            "/approvedUntil",
            1_795_348_800.into(),
            "approvedUntil",
            "1795348800",
        );
    }

    #[test]
    fn plugin_role_selects_filter_or_singleton() {
        assert_eq!(
            parse_plugin(br#"{"role": "analyser"}"#),
            Ok(Plugin::Analyser)
        );
        assert!(matches!(
            parse_plugin(EXAMPLE.as_bytes()),
            Ok(Plugin::Filter(_))
        ));
        assert!(with("/role", Some("filter".into())).is_ok());
        let e = with("/role", Some("analyser".into())).unwrap_err();
        assert_eq!(e.field, "role", "{e}");
        let mut full: Value = serde_json::from_str(EXAMPLE).unwrap();
        full["role"] = "analyser".into();
        let e = parse_plugin(full.to_string().as_bytes()).unwrap_err();
        assert!(e.message.contains("{\"role\": \"analyser\"} only"), "{e}");
        let e = with("/role", Some("boss".into())).unwrap_err();
        assert_eq!(e.field, "role");
    }
}
