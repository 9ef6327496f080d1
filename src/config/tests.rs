//! Configuration parsing and validation tests (and the example the other unit tests start from).

use super::*;
use serde_json::Value;

/// The README example (also the core benchmark's configuration).
pub const EXAMPLE: &str = crate::testkit::EXAMPLE;

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
    assert_eq!(
        c.analysis.metrics[1].kind,
        MetricKind::Duration { percentile: 99.0 }
    );
    assert_eq!(c.analysis.windows_ms(), vec![10_000]);
}

#[test]
fn tallies_cover_the_metric_windows_not_a_longer_interval() {
    let c = with("/analysis/interval", Some(serde_json::json!("1h"))).unwrap();
    assert_eq!(c.analysis.windows_ms(), vec![10_000]);
    assert_eq!(crate::tally::bucket_ms_for(10_000), 157);
}

fn walk(steps: &Steps) -> Vec<u8> {
    let mut w = steps.first_weight();
    let mut seen = vec![w];
    while let Some(n) = steps.next_weight(w) {
        w = n;
        seen.push(w);
    }
    seen
}

fn analysis_with(fields: Value) -> Result<Config, ConfigError> {
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    let a = v["analysis"].as_object_mut().unwrap();
    for k in [
        "stepWeight",
        "maxWeight",
        "stepWeights",
        "iterations",
        "match",
    ] {
        a.remove(k);
    }
    for (k, val) in fields.as_object().unwrap() {
        a.insert(k.clone(), val.clone());
    }
    parse(v.to_string().as_bytes())
}

/// Flagger scheduler.go `runCanary`: `if canaryWeight < maxWeight { canaryWeight +=
/// nextStepWeight }` capped at 100 (totalWeight), promotion once `canaryWeight >= maxWeight`;
/// `maxWeight` defaults to 100 (`maxWeight()`).
#[test]
fn step_weight_walks_past_max_weight_as_flagger() {
    let c = analysis_with(serde_json::json!({"stepWeight": 20, "maxWeight": 50})).unwrap();
    assert_eq!(c.analysis.steps, Steps::Linear { step: 20, max: 50 });
    assert_eq!(walk(&c.analysis.steps), vec![20, 40, 60]);
    assert_eq!(c.analysis.steps.max_weight(), 60);
    let c = analysis_with(serde_json::json!({"stepWeight": 10, "maxWeight": 50})).unwrap();
    assert_eq!(walk(&c.analysis.steps), vec![10, 20, 30, 40, 50]);
    let c = analysis_with(serde_json::json!({"stepWeight": 30})).unwrap();
    assert_eq!(walk(&c.analysis.steps), vec![30, 60, 90, 100]);
    // A first step above maxWeight: Flagger takes it, then promotes.
    let c = analysis_with(serde_json::json!({"stepWeight": 60, "maxWeight": 50})).unwrap();
    assert_eq!(walk(&c.analysis.steps), vec![60]);
    assert!(c.analysis.notices.is_empty());
}

/// Flagger scheduler.go `maxWeight()`: with stepWeights the top is its last entry (at most
/// 100); `MaxWeight` is not read.
#[test]
fn step_weights_ignore_max_weight_as_flagger() {
    let c = analysis_with(serde_json::json!({"stepWeights": [1, 5, 10, 25, 50], "maxWeight": 30}))
        .unwrap();
    assert_eq!(c.analysis.steps, Steps::List(vec![1, 5, 10, 25, 50]));
    assert_eq!(walk(&c.analysis.steps), vec![1, 5, 10, 25, 50]);
    assert_eq!(c.analysis.notices.len(), 1);
    assert!(
        c.analysis.notices[0].contains("analysis.maxWeight 30 is ignored"),
        "{:?}",
        c.analysis.notices
    );
}

/// Flagger scheduler.go `nextStepWeight`: `if StepWeight > 0 || len(StepWeights) == 0 { return
/// StepWeight }`, while `maxWeight()` still returns the last stepWeights entry.
#[test]
fn step_weight_wins_over_step_weights_as_flagger() {
    let c = analysis_with(
        serde_json::json!({"stepWeight": 10, "maxWeight": 50, "stepWeights": [1, 5, 25]}),
    )
    .unwrap();
    assert_eq!(c.analysis.steps, Steps::Linear { step: 10, max: 25 });
    assert_eq!(walk(&c.analysis.steps), vec![10, 20, 30]);
    assert!(
        c.analysis.notices[0].contains("stepWeight 10"),
        "{:?}",
        c.analysis.notices
    );
    // stepWeight 0 is Flagger's "not set": the list is used.
    let c = analysis_with(serde_json::json!({"stepWeight": 0, "stepWeights": [1, 5, 25]})).unwrap();
    assert_eq!(c.analysis.steps, Steps::List(vec![1, 5, 25]));
}

/// Flagger v1beta1 canary.go `DeploymentStrategy`: match + iterations is A/B testing (before
/// anything about weights), iterations alone is Blue/Green.
#[test]
fn iterations_pick_ab_testing_or_blue_green_whatever_the_weights() {
    let m = serde_json::json!([{"headers": {"x-canary": {"exact": "insider"}}}]);
    let c = analysis_with(
        serde_json::json!({"iterations": 5, "match": m, "stepWeight": 10, "maxWeight": 50}),
    )
    .unwrap();
    assert_eq!(c.analysis.steps, Steps::Iterations(5));
    assert_eq!(c.analysis.notices.len(), 2, "{:?}", c.analysis.notices);
    assert!(c.analysis.notices[0].contains("A/B testing"));
    let c = analysis_with(serde_json::json!({"iterations": 3})).unwrap();
    assert_eq!(c.analysis.steps, Steps::BlueGreen(3));
    assert_eq!(c.analysis.steps.first_weight(), 0);
    assert_eq!(c.analysis.steps.max_weight(), 100);
    // iterations 0 is "not set".
    let c = analysis_with(serde_json::json!({"iterations": 0, "stepWeight": 10})).unwrap();
    assert_eq!(c.analysis.steps, Steps::Linear { step: 10, max: 100 });
}

/// Flagger v1beta1 `MetricInterval` ("1m"): the window of a metric without `interval`.
#[test]
fn a_metric_without_interval_uses_a_one_minute_window_as_flagger() {
    let c = with("/analysis/metrics/0/interval", None).unwrap();
    assert_eq!(c.analysis.metrics[0].window_ms, 60_000);
    assert_eq!(c.analysis.metrics[1].window_ms, 10_000);
    assert_eq!(c.analysis.windows_ms(), vec![10_000, 60_000]);
}

/// Flagger scheduler_metrics.go `runBuiltinMetricChecks`: without thresholdRange, the
/// deprecated `threshold` is the success rate's minimum and the duration's maximum.
#[test]
fn the_deprecated_metric_threshold_is_read_as_flagger_with_a_notice() {
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["analysis"]["metrics"] = serde_json::json!([
        {"name": "request-success-rate", "threshold": 99, "interval": "1m"},
        {"name": "request-duration", "threshold": 500, "interval": "30s"},
        {"name": "request-duration", "threshold": 900, "thresholdRange": {"max": 400}, "interval": "30s"}
    ]);
    let c = parse(v.to_string().as_bytes()).unwrap();
    let m = &c.analysis.metrics;
    assert_eq!((m[0].min, m[0].max), (Some(99.0), None));
    assert_eq!((m[1].min, m[1].max), (None, Some(500.0)));
    assert_eq!(
        (m[2].min, m[2].max),
        (None, Some(400.0)),
        "thresholdRange wins"
    );
    let n = &c.analysis.notices;
    assert_eq!(n.len(), 3, "{n:?}");
    assert!(
        n[0].contains("analysis.metrics[0].threshold is deprecated")
            && n[0].contains("thresholdRange.min 99"),
        "{n:?}"
    );
    assert!(n[1].contains("thresholdRange.max 500"), "{n:?}");
    assert!(n[2].contains("ignored: thresholdRange is set"), "{n:?}");
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
fn max_weight_out_of_range_is_refused() {
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["analysis"]["stepWeight"] = 10.into();
    v["analysis"]["maxWeight"] = 101.into();
    let e = parse(v.to_string().as_bytes()).unwrap_err();
    assert_eq!(e.field, "analysis.maxWeight");
    assert!(e.message.contains("101"), "{e}");
}

#[test]
fn vs_stable_metrics_take_max_ratio_and_alpha_and_nothing_of_a_threshold() {
    let c = with(
        "/analysis/metrics/0",
        Some(serde_json::json!({"name": "error-rate-vs-stable", "maxRatio": 1.5, "alpha": 0.01})),
    )
    .unwrap();
    assert_eq!(
        c.analysis.metrics[0].kind,
        MetricKind::ErrorRateVsStable {
            max_ratio: 1.5,
            alpha: 0.01
        }
    );
    assert_eq!(c.analysis.metrics[0].window_ms, 60_000);
    assert!(
        c.analysis.windows_ms().contains(&JUDGE_WINDOW_MS),
        "the judge's 100 ms buckets"
    );
    let c = with(
        "/analysis/metrics/1",
        Some(serde_json::json!({"name": "latency-vs-stable", "maxRatio": 1.2})),
    )
    .unwrap();
    assert_eq!(
        c.analysis.metrics[1].kind,
        MetricKind::LatencyVsStable {
            percentile: 99.0,
            max_ratio: 1.2,
            alpha: 0.01
        }
    );
    let m = |extra: Value| {
        let mut v = serde_json::json!({"name": "error-rate-vs-stable", "maxRatio": 1.5});
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        v
    };
    let at = "/analysis/metrics/0";
    rejects(
        at,
        serde_json::json!({"name": "error-rate-vs-stable"}),
        "analysis.metrics[0].maxRatio",
        "required",
    );
    rejects(
        at,
        m(serde_json::json!({"maxRatio": 0.5})),
        "analysis.metrics[0].maxRatio",
        "0.5",
    );
    rejects(
        at,
        m(serde_json::json!({"alpha": 0.5})),
        "analysis.metrics[0].alpha",
        "0.5",
    );
    rejects(
        at,
        m(serde_json::json!({"thresholdRange": {"max": 1}})),
        "analysis.metrics[0].thresholdRange",
        "maxRatio",
    );
    rejects(
        at,
        m(serde_json::json!({"percentile": 99})),
        "analysis.metrics[0].percentile",
        "99",
    );
    rejects(
        at,
        serde_json::json!({"name": "latency-vs-stable", "maxRatio": 1.2, "percentile": 100}),
        "analysis.metrics[0].percentile",
        "100",
    );
    rejects(
        at,
        serde_json::json!({"name": "request-success-rate", "thresholdRange": {"min": 99}, "maxRatio": 2}),
        "analysis.metrics[0].maxRatio",
        "only applies",
    );
    // Fleet mode: a series long enough for the judge to read every replica's buckets a
    // publication period (5 s at interval 1m) after they end.
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["analysis"]["metrics"][0] = m(serde_json::json!({}));
    v["analysis"]["interval"] = "1m".into();
    v["fleet"] = serde_json::json!({"etcdCluster": "etcd"});
    let c = parse(v.to_string().as_bytes()).unwrap();
    assert_eq!(c.analysis.judge_window_ms, Some(20_000));
    assert_eq!(
        with("/analysis/metrics/0", Some(m(serde_json::json!({}))))
            .unwrap()
            .analysis
            .judge_window_ms,
        Some(JUDGE_WINDOW_MS)
    );
}

#[test]
fn unsupported_metrics_list_what_is_supported() {
    rejects(
        "/analysis/metrics/0",
        serde_json::json!({"name": "error-rate", "thresholdRange": {"max": 1}}),
        "analysis.metrics[0].name",
        "supports request-success-rate, request-duration, error-rate-vs-stable and latency-vs-stable",
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
        "/analysis/alerts",
        serde_json::json!([]),
        "analysis.alerts",
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

#[test]
fn refuses_what_would_misroute_mislead_or_promote_on_no_evidence() {
    use serde_json::json;
    // A cluster name is sent as a header value: CR/LF, spaces and non-ASCII are refused.
    rejects(
        "/upstreams/canary",
        json!("web-canary\r\n"),
        "upstreams.canary",
        "visible ASCII",
    );
    rejects(
        "/upstreams/stable",
        json!("web stable"),
        "upstreams.stable",
        "visible ASCII",
    );
    rejects(
        "/upstreams/canary",
        json!("wéb"),
        "upstreams.canary",
        "visible ASCII",
    );
    assert!(with(
        "/upstreams/canary",
        Some(json!("outbound|8080|canary|web.prod.svc.cluster.local"))
    )
    .is_ok());
    // Names and revisions that would log like another one.
    rejects(
        "/revision",
        json!("v2\u{200b}"),
        "revision",
        "printable ASCII",
    );
    rejects("/revision", json!("v2 "), "revision", "printable ASCII");
    rejects("/name", json!("web\u{200b}"), "name", "[A-Za-z0-9_-]");
    // One header under two spellings in a rule can never match.
    rejects(
        "/analysis/match",
        json!([{"headers": {"X-Canary": {"exact": "a"}, "x-canary": {"exact": "a"}}}]),
        "analysis.match[0].headers.x-canary",
        "case-insensitive",
    );
    // No metrics: no evidence. Refused unless skipAnalysis or the explicit opt-in.
    rejects(
        "/analysis/metrics",
        json!([]),
        "analysis.metrics",
        "no evidence",
    );
    let e = with("/analysis/metrics", None).unwrap_err();
    assert_eq!(e.field, "analysis.metrics", "{e}");
    assert!(with("/skipAnalysis", Some(json!(true)))
        .and_then(|_| {
            let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
            v["skipAnalysis"] = json!(true);
            v["analysis"]["metrics"] = json!([]);
            parse(v.to_string().as_bytes())
        })
        .is_ok());
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["analysis"]["metrics"] = json!([]);
    v["analysis"]["promoteWithoutMetrics"] = json!(true);
    assert!(
        parse(v.to_string().as_bytes())
            .unwrap()
            .analysis
            .promote_without_metrics
    );
}

#[test]
fn fleet_defaults_and_refusals_name_the_field() {
    assert_eq!(example().fleet, None);
    let c = with("/fleet", Some(serde_json::json!({"etcdCluster": "etcd"}))).unwrap();
    assert_eq!(
        c.fleet,
        Some(Fleet {
            etcd_cluster: "etcd".into(),
            authority: "etcd".into(),
            prefix: "/canary-guard".into(),
            lease_ttl_ms: 5_000,
            max_staleness_ms: 5_000,
            timeout_ms: 1_000,
        })
    );
    let full = serde_json::json!({"etcdCluster": "outbound|2379||etcd.infra.svc.cluster.local",
        "authority": "etcd.example", "prefix": "/cg/prod", "leaseTTL": "10s",
        "maxStaleness": "3s", "timeout": "500ms"});
    let f = with("/fleet", Some(full)).unwrap().fleet.unwrap();
    assert_eq!(
        (f.authority.as_str(), f.prefix.as_str()),
        ("etcd.example", "/cg/prod")
    );
    assert_eq!(
        (f.lease_ttl_ms, f.max_staleness_ms, f.timeout_ms),
        (10_000, 3_000, 500)
    );
    use serde_json::json;
    rejects("/fleet", json!({}), "fleet.etcdCluster", "is required");
    rejects(
        "/fleet",
        json!({"etcdCluster": "a b"}),
        "fleet.etcdCluster",
        "\"a b\"",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "prefix": "cg"}),
        "fleet.prefix",
        "\"cg\"",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "prefix": "/cg/"}),
        "fleet.prefix",
        "\"/cg/\"",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "leaseTTL": "1s"}),
        "fleet.leaseTTL",
        "\"1s\"",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "leaseTTL": "2500ms"}),
        "fleet.leaseTTL",
        "whole seconds",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "timeout": "3s"}),
        "fleet.timeout",
        "a third of fleet.leaseTTL",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "maxStaleness": "soon"}),
        "fleet.maxStaleness",
        "soon",
    );
    rejects(
        "/fleet",
        json!({"etcdCluster": "e", "ttl": "5s"}),
        "fleet.ttl",
        "unknown field",
    );
}
