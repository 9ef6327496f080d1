//! From the wire shape to the validated configuration: every rule, each error naming the field
//! and the offending value.

use super::duration::parse_millis;
use super::error::{err, ConfigError};
use super::timestamp::parse_rfc3339_ms;
use super::types::*;
use super::wire::*;
use crate::matcher::{MatchRule, StringMatch};
use serde_json::Value;

pub(super) fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let name = check_name(&raw.name)?;
    let revision = raw.revision;
    // Printable ASCII only: an invisible or look-alike character (`v2\u{200b}`) would log
    // like another revision while being a different one.
    let printable = revision.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if revision.trim().len() != revision.len()
        || revision.is_empty()
        || revision.len() > 128
        || !printable
    {
        return err(
            "revision",
            format!("{revision:?} must be 1 to 128 printable ASCII characters (no leading or trailing space)"),
        );
    }
    let namespace = raw.namespace.unwrap_or_else(|| "default".into());
    if !is_dns_label(&namespace) {
        return err(
            "namespace",
            format!("{namespace:?} must be a Kubernetes namespace name (1 to 63 of [a-z0-9-], starting and ending alphanumeric)"),
        );
    }
    let upstreams = check_upstreams(raw.upstreams.0)?;
    let affinity = check_affinity(raw.session_affinity.map(|a| a.0))?;
    let mut analysis = check_analysis(raw.analysis.0)?;
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
    if analysis.metrics.is_empty() && !raw.skip_analysis && !analysis.promote_without_metrics {
        return err(
            "analysis.metrics",
            "is empty: the analysis would promote on no evidence; add request-success-rate and/or request-duration, set skipAnalysis, or set analysis.promoteWithoutMetrics: true",
        );
    }
    if raw.role == Role::Analyser {
        return err("role", "\"analyser\" takes no other fields: use {\"role\": \"analyser\"} for the bootstrap singleton");
    }
    let grpc_error_codes = check_grpc_codes(raw.grpc_error_codes)?;
    let fleet = raw.fleet.map(|f| check_fleet(f.0)).transpose()?;
    if fleet.is_some() && analysis.judge_window_ms.is_some() {
        analysis.judge_window_ms = Some(judge_window_ms(analysis.interval_ms, true));
    }
    Ok(Config {
        namespace,
        grpc_error_codes,
        fleet,
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

fn check_grpc_codes(raw: Option<Vec<Value>>) -> Result<GrpcCodes, ConfigError> {
    let Some(list) = raw else {
        return Ok(GrpcCodes::SERVER_ERRORS);
    };
    let mut codes = GrpcCodes(0);
    for (i, v) in list.iter().enumerate() {
        let code = match v {
            Value::String(name) => GrpcCodes::code(name),
            Value::Number(n) => n.as_u64().filter(|c| *c <= 16).map(|c| c as u32),
            _ => None,
        };
        match code {
            Some(c) if c != 0 => codes.0 |= 1 << c,
            _ => {
                return err(
                    format!("grpcErrorCodes[{i}]"),
                    format!(
                    "{v} is not a gRPC error code: a name such as \"INTERNAL\" or a number 1 to 16"
                ),
                )
            }
        }
    }
    Ok(codes)
}

/// `fleet`: etcdCluster required; the durations bounded so that a lease outlives its renewals
/// (renewed every third of its TTL) and a call ends before the next is due.
fn check_fleet(raw: RawFleet) -> Result<Fleet, ConfigError> {
    let etcd_cluster = match raw.etcd_cluster {
        Some(c) if is_cluster_name(&c) => c,
        Some(c) => {
            return err(
                "fleet.etcdCluster",
                format!("{c:?} is not an Envoy cluster name (1 to 255 visible ASCII characters)"),
            )
        }
        None => {
            return err(
                "fleet.etcdCluster",
                "is required: the Envoy cluster that reaches etcd's client port",
            )
        }
    };
    let authority = match raw.authority {
        None => etcd_cluster.clone(),
        Some(a) if is_cluster_name(&a) => a,
        Some(a) => {
            return err(
                "fleet.authority",
                format!("{a:?} must be 1 to 255 visible ASCII characters (a host name)"),
            )
        }
    };
    let prefix = raw.prefix.unwrap_or_else(|| "/canary-guard".into());
    let prefix_ok = prefix.starts_with('/')
        && !prefix.ends_with('/')
        && prefix.len() <= 128
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
    if !prefix_ok {
        return err(
            "fleet.prefix",
            format!("{prefix:?} must start with '/', not end with '/', and be at most 128 characters of [A-Za-z0-9/._-]"),
        );
    }
    let ms = |field: &str, v: Option<String>, default: u64, min: u64, max: u64| {
        let Some(text) = v else {
            return Ok(default);
        };
        match parse_millis(&text) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            Ok(_) => err(
                field,
                format!(
                    "{text:?} must be between {}s and {}s",
                    min as f64 / 1000.0,
                    max / 1000
                ),
            ),
            Err(e) => err(field, e),
        }
    };
    let lease_ttl_ms = ms("fleet.leaseTTL", raw.lease_ttl, 5_000, 2_000, 3_600_000)?;
    if lease_ttl_ms % 1000 != 0 {
        return err(
            "fleet.leaseTTL",
            format!("{lease_ttl_ms}ms is not whole seconds (etcd leases are granted in seconds)"),
        );
    }
    let max_staleness_ms = ms(
        "fleet.maxStaleness",
        raw.max_staleness,
        5_000,
        500,
        3_600_000,
    )?;
    let timeout_ms = ms("fleet.timeout", raw.timeout, 1_000, 50, 60_000)?;
    if timeout_ms * 3 > lease_ttl_ms {
        return err(
            "fleet.timeout",
            format!("{timeout_ms}ms must be at most a third of fleet.leaseTTL ({lease_ttl_ms}ms): the lease is renewed every third of its TTL"),
        );
    }
    Ok(Fleet {
        etcd_cluster,
        authority,
        prefix,
        lease_ttl_ms,
        max_staleness_ms,
        timeout_ms,
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

pub(super) fn check_name(name: &str) -> Result<String, ConfigError> {
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

/// A cluster name that is also a valid header value: visible ASCII, no space or control
/// character (a CR/LF would make Envoy refuse every canary-routed request), at most 255 bytes.
/// Istio's `outbound|8080|canary|web.prod.svc.cluster.local` passes.
fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub(super) fn is_cluster_name(name: &str) -> bool {
    (1..=255).contains(&name.len()) && name.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

pub(super) fn is_header_name(name: &str) -> bool {
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
    for (field, cluster) in [
        ("upstreams.stable", &raw.stable),
        ("upstreams.canary", &raw.canary),
    ] {
        if !is_cluster_name(cluster) {
            return err(
                field,
                format!("{cluster:?} must name a cluster: 1 to 255 visible ASCII characters (it is sent as a header value)"),
            );
        }
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

    let mut notices = Vec::new();
    let has_match = raw.matches.as_ref().is_some_and(|m| !m.is_empty());
    let steps = check_steps(
        raw.step_weight,
        raw.max_weight,
        raw.step_weights,
        raw.iterations,
        has_match,
        &mut notices,
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
    let mut metrics = Vec::new();
    for (i, m) in raw.metrics.unwrap_or_default().into_iter().enumerate() {
        metrics.push(check_metric(i, m.0, &mut notices)?);
    }
    let judged = metrics.iter().filter(|m| m.kind.is_vs_stable()).count();
    if judged > crate::judge::MAX_TESTS {
        return err(
            "analysis.metrics",
            format!(
                "{judged} vs-stable metrics: at most {}",
                crate::judge::MAX_TESTS
            ),
        );
    }

    let request_timeout_ms = match raw.request_timeout {
        Some(text) => check_interval("analysis.requestTimeout", &text)?,
        None => DEFAULT_REQUEST_TIMEOUT_MS,
    };
    let webhooks = super::webhooks::check_webhooks(raw.webhooks)?;
    let judge_window_ms = (judged > 0).then(|| judge_window_ms(interval_ms, false));
    Ok(Analysis {
        judge_window_ms,
        notices,
        webhooks,
        request_timeout_ms,
        promote_without_metrics: raw.promote_without_metrics.unwrap_or(false),
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

/// Flagger's choice of strategy and steps (`Canary.DeploymentStrategy`, `scheduler.go`
/// `nextStepWeight` and `maxWeight`): `iterations` (> 0) first, A/B testing with `match`,
/// Blue/Green without; else `stepWeight` (> 0), its top `maxWeight`, or the last
/// `stepWeights` entry when both are set; else `stepWeights`, whose last entry is the top
/// (`maxWeight` ignored). A field Flagger would ignore is accepted with a notice.
fn check_steps(
    step_weight: Option<u32>,
    max_weight: Option<u32>,
    step_weights: Option<Vec<u32>>,
    iterations: Option<u32>,
    has_match: bool,
    notices: &mut Vec<String>,
) -> Result<Steps, ConfigError> {
    // Flagger's zero values are "not set".
    let step_weight = step_weight.filter(|v| *v > 0);
    let iterations = iterations.filter(|v| *v > 0);
    let max = max_weight
        .filter(|v| *v > 0)
        .map(|v| weight("analysis.maxWeight", v))
        .transpose()?;
    let list = match step_weights.filter(|l| !l.is_empty()) {
        Some(list) => {
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
            Some(out)
        }
        None => None,
    };
    let step = step_weight
        .map(|v| weight("analysis.stepWeight", v))
        .transpose()?;
    if let Some(n) = iterations {
        let (name, steps) = if has_match {
            ("A/B testing", Steps::Iterations(n))
        } else {
            ("Blue/Green", Steps::BlueGreen(n))
        };
        for (field, set) in [
            ("stepWeight", step.is_some()),
            ("maxWeight", max.is_some()),
            ("stepWeights", list.is_some()),
        ] {
            if set {
                notices.push(format!(
                    "analysis.{field} is ignored: iterations {}makes this {name} (as Flagger)",
                    if has_match {
                        "with match "
                    } else {
                        "without match "
                    }
                ));
            }
        }
        return Ok(steps);
    }
    match (step, list) {
        (Some(step), Some(list)) => {
            let top = list.last().copied().unwrap_or(100);
            notices.push(format!(
                "analysis.stepWeights is used only for its last entry {top} as the top weight: with stepWeight set, the weight moves by stepWeight {step} (as Flagger){}",
                if max.is_some() { "; analysis.maxWeight is ignored" } else { "" }
            ));
            Ok(Steps::Linear { step, max: top })
        }
        (Some(step), None) => Ok(Steps::Linear {
            step,
            max: max.unwrap_or(100),
        }),
        (None, Some(list)) => {
            if let Some(max) = max {
                let top = list.last().copied().unwrap_or(0);
                notices.push(format!(
                    "analysis.maxWeight {max} is ignored: with stepWeights the last entry {top} is the top weight (as Flagger)"
                ));
            }
            Ok(Steps::List(list))
        }
        (None, None) => err(
            "analysis",
            "needs stepWeight, stepWeights or iterations (A/B testing with match, Blue/Green without) to know how to progress",
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
        // Header names are case-insensitive: two spellings of one name in a rule could never
        // both match (the rule ANDs them), so one must go.
        if headers.iter().any(|(n, _)| *n == lower) {
            return err(
                hfield,
                format!("{name:?} is the same header as another name in this rule (header names are case-insensitive)"),
            );
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

/// `error-rate-vs-stable` and `latency-vs-stable`: `maxRatio` (required), `alpha` (default
/// 0.01), for latency `percentile` (default 99); no thresholds (the test is the threshold).
fn check_vs_stable(field: &str, raw: RawMetric) -> Result<MetricCheck, ConfigError> {
    if raw.template_ref.is_some() || raw.template_variables.is_some() {
        return err(
            format!("{field}.templateRef"),
            "does not apply to a vs-stable metric",
        );
    }
    if raw.threshold_range.is_some() || raw.threshold.is_some() {
        return err(
            format!("{field}.thresholdRange"),
            format!(
                "does not apply to {}: the canary is judged against stable with maxRatio and alpha",
                raw.name
            ),
        );
    }
    let max_ratio = match raw.max_ratio {
        Some(r) if r.is_finite() && (1.0..=100.0).contains(&r) => r,
        Some(r) => {
            return err(
                format!("{field}.maxRatio"),
                format!("{r} must be between 1 and 100 (how many times stable's rate the canary may have)"),
            )
        }
        None => {
            return err(
                format!("{field}.maxRatio"),
                "is required: how many times stable's rate the canary may have (1.5: at most 50% worse)",
            )
        }
    };
    let alpha = match raw.alpha {
        None => 0.01,
        Some(a) if a.is_finite() && (1e-6..=0.2).contains(&a) => a,
        Some(a) => {
            return err(
                format!("{field}.alpha"),
                format!("{a} must be between 0.000001 and 0.2 (the false rollback rate allowed)"),
            )
        }
    };
    let window_ms = match raw.interval {
        Some(text) => check_interval(&format!("{field}.interval"), &text)?,
        None => DEFAULT_METRIC_WINDOW_MS,
    };
    let kind = if raw.name == "latency-vs-stable" {
        let percentile = match raw.percentile {
            None => 99.0,
            Some(p) if p > 0.0 && p < 100.0 => p,
            Some(p) => {
                return err(
                    format!("{field}.percentile"),
                    format!("{p} must be in (0, 100): slow is above stable's percentile"),
                )
            }
        };
        MetricKind::LatencyVsStable {
            percentile,
            max_ratio,
            alpha,
        }
    } else {
        if let Some(p) = raw.percentile {
            return err(
                format!("{field}.percentile"),
                format!("{p} only applies to request-duration and latency-vs-stable"),
            );
        }
        MetricKind::ErrorRateVsStable { max_ratio, alpha }
    };
    Ok(MetricCheck {
        name: raw.name,
        kind,
        min: None,
        max: None,
        window_ms,
    })
}

/// Flagger's default metric window (`v1beta1.MetricInterval`) for a metric without `interval`.
pub const DEFAULT_METRIC_WINDOW_MS: u64 = 60_000;

fn check_metric(
    i: usize,
    raw: RawMetric,
    notices: &mut Vec<String>,
) -> Result<MetricCheck, ConfigError> {
    let field = format!("analysis.metrics[{i}]");
    if raw.template_ref.is_some() || raw.template_variables.is_some() {
        return err(
            format!("{field}.templateRef"),
            format!("metric {:?} uses a MetricTemplate; canary-guard measures in the proxy and supports only the built-in request-success-rate and request-duration", raw.name),
        );
    }
    let duration = match raw.name.as_str() {
        "request-success-rate" => false,
        "request-duration" => true,
        "error-rate-vs-stable" | "latency-vs-stable" => return check_vs_stable(&field, raw),
        other => {
            return err(
                format!("{field}.name"),
                format!("{other:?} is not supported; canary-guard supports request-success-rate, request-duration, error-rate-vs-stable and latency-vs-stable"),
            )
        }
    };
    for (set, name) in [
        (raw.max_ratio.is_some(), "maxRatio"),
        (raw.alpha.is_some(), "alpha"),
    ] {
        if set {
            return err(
                format!("{field}.{name}"),
                "only applies to error-rate-vs-stable and latency-vs-stable",
            );
        }
    }
    // Flagger (scheduler_metrics.go runBuiltinMetricChecks): thresholdRange when set, else
    // the deprecated `threshold`, a minimum for the success rate and a maximum for the duration.
    let range = match (raw.threshold_range, raw.threshold) {
        (Some(Obj(range)), deprecated) => {
            if deprecated.is_some() {
                notices.push(format!(
                    "{field}.threshold is ignored: thresholdRange is set (as Flagger)"
                ));
            }
            range
        }
        (None, Some(t)) => {
            let bound = if duration { "max" } else { "min" };
            notices.push(format!(
                "{field}.threshold is deprecated (Flagger): read as thresholdRange.{bound} {t}; write thresholdRange instead"
            ));
            if duration {
                RawRange {
                    min: None,
                    max: Some(t),
                }
            } else {
                RawRange {
                    min: Some(t),
                    max: None,
                }
            }
        }
        (None, None) => {
            return err(
                format!("{field}.thresholdRange"),
                "is required (min, max or both)",
            )
        }
    };
    let rfield = format!("{field}.thresholdRange");
    if range.min.is_none() && range.max.is_none() {
        return err(rfield, "needs min, max or both");
    }
    for (bound, v) in [("min", range.min), ("max", range.max)] {
        if let Some(v) = v {
            let in_range = if duration {
                v.is_finite() && v >= 0.0
            } else {
                (0.0..=100.0).contains(&v)
            };
            if !in_range {
                let allowed = if duration {
                    "milliseconds, at least 0"
                } else {
                    "a percentage between 0 and 100"
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
        None => DEFAULT_METRIC_WINDOW_MS,
    };
    // The percentile is part of the request-duration kind, not a field every metric carries.
    let kind = match (duration, raw.percentile) {
        (true, Some(p)) if p > 0.0 && p <= 100.0 => MetricKind::Duration { percentile: p },
        (true, Some(p)) => {
            return err(
                format!("{field}.percentile"),
                format!("{p} must be in (0, 100]"),
            )
        }
        (true, None) => MetricKind::Duration { percentile: 99.0 },
        (false, Some(p)) => {
            return err(
                format!("{field}.percentile"),
                format!("{p} only applies to request-duration"),
            )
        }
        (false, None) => MetricKind::SuccessRate,
    };
    Ok(MetricCheck {
        name: raw.name,
        kind,
        min: range.min,
        max: range.max,
        window_ms,
    })
}
