//! The plugin configuration parser, on arbitrary bytes and on structure-aware mutations of valid
//! JSON (numbers, types, strings, deleted and duplicated keys, deep nesting, huge strings).
//!
//! Properties: `parse_plugin` never panics; every error is one line that names a field or says
//! what is wrong, and what an inert filter salvages from it passes the same checks; an accepted configuration satisfies every invariant the rest of the module
//! relies on, parses the same twice, and drives the analysis and the routing without panicking.
//! Inputs that give a new outcome (accepted shape or error field) join the pool of inputs to
//! mutate: a cheap stand-in for coverage feedback.

use crate::mutate::{havoc, MAX_INPUT};
use crate::rng::Rng;
use crate::{corpus, Target};
use canary_guard::config::{
    parse, parse_plugin, salvage, Affinity, Config, MetricKind, Plugin, Salvage, Steps,
    MAX_WINDOW_MS, MIN_INTERVAL_MS,
};
use canary_guard::metrics::evaluate;
use canary_guard::routing::decide;
use canary_guard::state::{CanaryState, Phase};
use canary_guard::state_machine::{check, is_due, start, Gates};
use canary_guard::tally::{bucket_ms_for, Tally};
use serde_json::{Map, Value};
use std::collections::HashSet;

/// Every key of the configuration schema (and the Flagger fields it refuses by name).
const KEYS: &[&str] = &[
    "name",
    "revision",
    "upstreams",
    "header",
    "stable",
    "canary",
    "sessionAffinity",
    "cookieName",
    "maxAge",
    "analysis",
    "interval",
    "threshold",
    "stepWeight",
    "maxWeight",
    "stepWeights",
    "stepWeightPromotion",
    "minRequests",
    "consecutive",
    "iterations",
    "match",
    "headers",
    "exact",
    "prefix",
    "suffix",
    "regex",
    "metrics",
    "thresholdRange",
    "min",
    "max",
    "percentile",
    "templateRef",
    "templateVariables",
    "webhooks",
    "alerts",
    "mirror",
    "mirrorWeight",
    "primaryReadyThreshold",
    "canaryReadyThreshold",
    "skipAnalysis",
    "suspend",
    "role",
];

const STRINGS: &[&str] = &[
    "",
    " ",
    "0",
    "0s",
    "99ms",
    "100ms",
    "1s",
    "1m30s",
    "1.5h",
    "24h",
    "24h0m0.001s",
    "8760h",
    "1e3s",
    "-1s",
    ".s",
    "1..5s",
    "5µs",
    "9999999999999999999999h",
    "request-success-rate",
    "request-duration",
    "analyser",
    "filter",
    "web",
    "web-stable",
    "web-canary",
    "x-canary-upstream",
    "X-User-Id",
    ":authority",
    "bad header",
    "(a+)+$",
    "^(.*?;)?(canary=always)(;.*)?$",
    "[",
    "\u{0}",
    "line\nbreak",
    "é€😀",
    "\u{202e}",
];

fn random_number(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => Value::from(rng.interesting_u64()),
        1 => Value::from(-(rng.below(1000) as i64) - 1),
        2 => Value::from(rng.below(102) as u64),
        3 => serde_json::Number::from_f64(*rng.pick(&[
            0.5,
            99.9,
            100.0001,
            -0.0,
            1e308,
            -1e308,
            1e-300,
            4294967296.5,
        ]))
        .map_or(Value::Null, Value::Number),
        4 => Value::from(rng.u64() as f64 / 7.0),
        _ => Value::from(1 + rng.below(10) as u64),
    }
}

fn random_string(rng: &mut Rng) -> String {
    match rng.below(8) {
        0 => {
            let max = if rng.one_in(20) { 200_000 } else { 300 };
            "a".repeat(rng.len(max))
        }
        1 => {
            let n = rng.len(40);
            (0..n)
                .map(|_| char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('?'))
                .collect()
        }
        _ => rng.pick(STRINGS).to_string(),
    }
}

fn random_value(rng: &mut Rng, depth: usize) -> Value {
    match rng.below(if depth > 3 { 4 } else { 7 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => random_number(rng),
        3 => Value::String(random_string(rng)),
        4 => Value::Array(
            (0..rng.len(6))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.len(4) {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

/// Every node of the tree as a JSON pointer.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let key = k.replace('~', "~0").replace('/', "~1");
                pointers(child, format!("{at}/{key}"), out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                pointers(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn mutate_tree(rng: &mut Rng, root: &mut Value, donor: &Value) {
    let mut all = Vec::new();
    pointers(root, String::new(), &mut all);
    let at = rng.pick(&all).clone();
    let mut donors = Vec::new();
    pointers(donor, String::new(), &mut donors);
    let from: &String = rng.pick(&donors);
    let donated = donor.pointer(from).cloned().unwrap_or(Value::Null);
    let Some(node) = root.pointer_mut(&at) else {
        return;
    };
    match rng.below(9) {
        0 => *node = random_number(rng),
        1 => *node = Value::String(random_string(rng)),
        2 => *node = random_value(rng, 0),
        3 => *node = donated,
        4 => match node {
            Value::Object(m) if !m.is_empty() => {
                let k = m
                    .keys()
                    .nth(rng.below(m.len()))
                    .cloned()
                    .unwrap_or_default();
                m.remove(&k);
            }
            Value::Array(a) if !a.is_empty() => {
                a.remove(rng.below(a.len()));
            }
            _ => *node = Value::Null,
        },
        5 => match node {
            Value::Object(m) => {
                m.insert(rng.pick(KEYS).to_string(), random_value(rng, 1));
            }
            Value::Array(a) => {
                let dup = a.get(rng.below(a.len().max(1))).cloned();
                a.push(dup.unwrap_or_else(|| random_value(rng, 1)));
            }
            _ => *node = Value::Array(vec![node.clone()]),
        },
        6 => {
            // Deep nesting: serde_json refuses past 128 levels; nothing may overflow the stack.
            let mut v = node.clone();
            for _ in 0..rng.len(300) {
                v = if rng.one_in(2) {
                    Value::Array(vec![v])
                } else {
                    let mut m = Map::new();
                    m.insert(rng.pick(KEYS).to_string(), v);
                    Value::Object(m)
                };
            }
            *node = v;
        }
        7 => {
            // Rename a key: a typo, another field, or a different case.
            if let Value::Object(m) = node {
                if let Some(k) = m.keys().nth(rng.below(m.len().max(1))).cloned() {
                    let v = m.remove(&k).unwrap_or(Value::Null);
                    let new = match rng.below(3) {
                        0 => rng.pick(KEYS).to_string(),
                        1 => k.to_uppercase(),
                        _ => format!("{k}x"),
                    };
                    m.insert(new, v);
                }
            }
        }
        _ => {
            if let Value::Number(_) = node {
                *node = Value::from(rng.interesting_u64());
            } else {
                *node = random_number(rng);
            }
        }
    }
}

/// Text-level edits JSON trees cannot express: duplicate keys, nesting beyond what
/// serde_json's tree allows, unbalanced input.
fn mutate_text(rng: &mut Rng, text: &mut Vec<u8>) {
    let braces: Vec<usize> = text
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'{')
        .map(|(i, _)| i + 1)
        .collect();
    match rng.below(3) {
        0 if !braces.is_empty() => {
            let at = *rng.pick(&braces);
            let value = serde_json::to_string(&random_value(rng, 2)).unwrap_or_default();
            let entry = format!("\"{}\":{value},", rng.pick(KEYS));
            text.splice(at..at, entry.into_bytes());
        }
        1 => {
            let depth = rng.len(100_000);
            let at = rng.below(text.len() + 1);
            let open = if rng.one_in(2) { b'[' } else { b'{' };
            text.splice(at..at, std::iter::repeat_n(open, depth));
        }
        _ => {
            let at = rng.below(text.len() + 1);
            text.truncate(at);
        }
    }
}

/// Whether an error names where it is: a field path whose head is a schema key or appears in
/// the input (an unknown field is named as written), or no field and a message.
fn names_the_problem(field: &str, message: &str, input: &[u8]) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err(format!("empty message for field {field:?}"));
    }
    if field.is_empty() {
        return Ok(());
    }
    // serde_path_to_error's "?" (a place it could not name) is not a field name.
    let unnamed = field == "?" || field.ends_with(".?");
    if unnamed && !input.windows(3).any(|w| w == b"\"?\"") {
        return Err(format!("field {field:?} has an unnamed segment"));
    }
    // The field's first key: a schema key, or a key as written in the input (keys may hold
    // '.' or '[' themselves, so try every prefix that ends at a separator).
    let ends = field
        .char_indices()
        .filter(|(_, c)| *c == '.' || *c == '[')
        .map(|(i, _)| i)
        .take(8) // a key made of thousands of '[' would make this quadratic
        .chain([field.len()]);
    let named = ends.map(|end| &field[..end]).any(|head| {
        let quoted = format!("\"{head}\"");
        KEYS.contains(&head) || input.windows(quoted.len()).any(|w| w == quoted.as_bytes())
    });
    if named || input.contains(&b'\\') {
        Ok(())
    } else {
        Err(format!(
            "field {field:?} is neither a schema key nor in the input"
        ))
    }
}

/// Where the configuration holds something other than an object where the schema has one
/// (serde would read an array as a struct, by position).
fn struct_not_an_object(tree: &Value) -> Option<String> {
    let mut objects = vec![String::new(), "/upstreams".into(), "/analysis".into()];
    objects.push("/sessionAffinity".into());
    let list = |p: &str| {
        tree.pointer(p)
            .and_then(Value::as_array)
            .map_or(0, Vec::len)
    };
    for i in 0..list("/analysis/metrics") {
        objects.push(format!("/analysis/metrics/{i}"));
        objects.push(format!("/analysis/metrics/{i}/thresholdRange"));
    }
    for i in 0..list("/analysis/match") {
        objects.push(format!("/analysis/match/{i}"));
        let at = format!("/analysis/match/{i}/headers");
        if let Some(headers) = tree.pointer(&at).and_then(Value::as_object) {
            for k in headers.keys() {
                objects.push(format!("{at}/{}", k.replace('~', "~0").replace('/', "~1")));
            }
        }
    }
    objects
        .into_iter()
        .find(|p| {
            tree.pointer(p)
                .is_some_and(|v| !v.is_object() && !v.is_null())
        })
        .map(|p| if p.is_empty() { "the root".into() } else { p })
}

fn header_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Everything `config.rs` promises about an accepted configuration.
fn invariants(c: &Config) -> Result<(), String> {
    let fail = |what: &str| Err(format!("accepted with {what}: {c:?}"));
    let name_ok = !c.name.is_empty()
        && c.name.len() <= 63
        && c.name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !name_ok {
        return fail("a bad name");
    }
    if c.revision.is_empty() || c.revision.len() > 128 || c.revision.chars().any(char::is_control) {
        return fail("a bad revision");
    }
    let u = &c.upstreams;
    if !header_name_ok(&u.header) || u.header != u.header.to_ascii_lowercase() {
        return fail("a bad routing header");
    }
    if u.stable.trim().is_empty() || u.canary.trim().is_empty() || u.stable == u.canary {
        return fail("bad upstreams");
    }
    match &c.affinity {
        Affinity::None => {}
        Affinity::Header(h) if header_name_ok(h) && *h == h.to_ascii_lowercase() => {}
        Affinity::Cookie { name, max_age_s } if header_name_ok(name) && *max_age_s >= 1 => {}
        _ => return fail("bad session affinity"),
    }
    let a = &c.analysis;
    if !(MIN_INTERVAL_MS..=MAX_WINDOW_MS).contains(&a.interval_ms) {
        return fail("an interval out of range");
    }
    if a.threshold < 1 || a.min_requests < 1 || a.promotion_step > 100 {
        return fail("threshold, minRequests or stepWeightPromotion out of range");
    }
    match &a.steps {
        // Flagger's walk: a first step above maxWeight is taken, then promotion.
        Steps::Linear { step, max } if (1..=100).contains(step) && (1..=100).contains(max) => {}
        Steps::List(list)
            if !list.is_empty()
                && list.iter().all(|w| (1..=100).contains(w))
                && list.windows(2).all(|w| w[0] < w[1]) => {}
        Steps::Iterations(n) if *n >= 1 && !a.matches.is_empty() => {}
        Steps::BlueGreen(n) if *n >= 1 && a.matches.is_empty() => {}
        other => return fail(&format!("bad steps {other:?}")),
    }
    for m in &a.metrics {
        if !(MIN_INTERVAL_MS..=MAX_WINDOW_MS).contains(&m.window_ms) {
            return fail("a metric window out of range");
        }
        if m.kind.is_vs_stable() {
            let (ratio, alpha, percentile) = match m.kind {
                MetricKind::ErrorRateVsStable { max_ratio, alpha } => (max_ratio, alpha, 50.0),
                MetricKind::LatencyVsStable {
                    percentile,
                    max_ratio,
                    alpha,
                } => (max_ratio, alpha, percentile),
                _ => (0.0, 0.0, 0.0),
            };
            let ok = (1.0..=100.0).contains(&ratio)
                && (1e-6..=0.2).contains(&alpha)
                && percentile > 0.0
                && percentile < 100.0
                && m.min.is_none()
                && m.max.is_none();
            if !ok {
                return fail("a vs-stable metric out of range");
            }
            continue;
        }
        if m.min.is_none() && m.max.is_none() {
            return fail("a metric without bounds");
        }
        if let (Some(lo), Some(hi)) = (m.min, m.max) {
            if lo > hi {
                return fail("min above max");
            }
        }
        let bounds_ok = [m.min, m.max].into_iter().flatten().all(|v| match m.kind {
            MetricKind::SuccessRate => (0.0..=100.0).contains(&v),
            _ => v.is_finite() && v >= 0.0,
        });
        let percentile_ok = match m.kind {
            MetricKind::Duration { percentile } => percentile > 0.0 && percentile <= 100.0,
            _ => true,
        };
        if !bounds_ok || !percentile_ok {
            return fail("a metric bound or percentile out of range");
        }
    }
    for rule in &a.matches {
        if rule.headers.is_empty() {
            return fail("an empty match rule");
        }
    }
    // Every window gets a tally series of its own.
    if a.windows_ms()
        .iter()
        .any(|w| *w > MAX_WINDOW_MS || bucket_ms_for(*w) < 100)
    {
        return fail("a window the tallies cannot hold");
    }
    Ok(())
}

/// The accepted configuration drives the rest of the core without panicking, and the weights
/// it produces stay in 0..=100.
fn drive(c: &Config, rng_bits: u64) -> Result<(), String> {
    let (mut s, _) = start(c, 1_000);
    if CanaryState::decode(&s.encode()).as_ref() != Some(&s) {
        return Err(format!("the first state does not round-trip: {s:?}"));
    }
    let mut healthy = Tally::default();
    (0..50).for_each(|_| healthy.record(200, 1_000));
    let mut now = 1_000;
    for i in 0..12u64 {
        now += c.analysis.interval_ms;
        if !is_due(c, &s, now) {
            break;
        }
        let window = if (rng_bits >> i) & 1 == 0 {
            healthy.clone()
        } else {
            Tally::default()
        };
        let results: Vec<_> = c
            .analysis
            .metrics
            .iter()
            .map(|m| evaluate(m, c.analysis.min_requests, &window))
            .collect();
        s = check(c, &s, &results, &Gates::OPEN, now).0;
        if s.weight > 100 || (s.phase == Phase::Failed && s.weight != 0) {
            return Err(format!("the analysis reached {s:?}"));
        }
        let mut headers = |name: &str| Some(format!("{name}-{i}").into_bytes());
        let _ = decide(c, Some(&s), &mut headers, rng_bits.rotate_left(i as u32));
    }
    Ok(())
}

pub struct ConfigTarget {
    pool: Vec<Vec<u8>>,
    /// Parsed trees to mutate; the first `valid_trees` are the valid seeds.
    trees: Vec<Value>,
    valid_trees: usize,
    seen: HashSet<String>,
    accepted: u64,
    refused: u64,
}

impl ConfigTarget {
    pub fn new() -> Self {
        let files = corpus("config");
        for (name, bytes) in &files {
            if name.starts_with("valid-") {
                if let Err(e) = parse_plugin(bytes) {
                    panic!("fuzz/corpus/config/{name} is refused: {e}");
                }
            }
        }
        let seeds: Vec<Vec<u8>> = files.iter().map(|(_, b)| b.clone()).collect();
        let trees: Vec<Value> = files
            .iter()
            .filter(|(name, _)| name.starts_with("valid-"))
            .filter_map(|(_, b)| serde_json::from_slice(b).ok())
            .collect();
        ConfigTarget {
            pool: seeds,
            valid_trees: trees.len(),
            trees,
            seen: HashSet::new(),
            accepted: 0,
            refused: 0,
        }
    }

    /// A coarse outcome: which error field (indices erased) or which accepted shape.
    fn outcome(result: &Result<Plugin, canary_guard::config::ConfigError>) -> String {
        match result {
            Ok(Plugin::Analyser) => "analyser".into(),
            Ok(Plugin::Control(_)) => "control".into(),
            Ok(Plugin::Filter(c)) => format!(
                "ok {:?} {} {} {}",
                std::mem::discriminant(&c.analysis.steps),
                c.analysis.metrics.len().min(3),
                c.analysis.matches.len().min(2),
                matches!(c.affinity, Affinity::None)
            ),
            Err(e) => {
                let field: String = e.field.chars().filter(|c| !c.is_ascii_digit()).collect();
                format!("err {}", field.chars().take(60).collect::<String>())
            }
        }
    }
}

impl Target for ConfigTarget {
    fn name(&self) -> &'static str {
        "config"
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        match rng.below(10) {
            0..=4 if !self.trees.is_empty() => {
                // Mostly from the valid seeds: small edits of a valid configuration reach the
                // validation and the accepted path far more often than edits of refused ones.
                let from = if rng.one_in(3) {
                    &self.trees
                } else {
                    &self.trees[..self.valid_trees]
                };
                let mut tree = rng.pick(from).clone();
                let donor = rng.pick(&self.trees).clone();
                for _ in 0..1 + rng.below(3) {
                    mutate_tree(rng, &mut tree, &donor);
                }
                let mut text = if rng.one_in(2) {
                    serde_json::to_vec(&tree)
                } else {
                    serde_json::to_vec_pretty(&tree)
                }
                .unwrap_or_default();
                if rng.one_in(4) {
                    mutate_text(rng, &mut text);
                }
                text.truncate(MAX_INPUT);
                text
            }
            5..=8 => {
                let mut v = rng.pick(&self.pool).clone();
                let other = rng.pick(&self.pool).clone();
                havoc(rng, &mut v, &other);
                v
            }
            _ => (0..rng.len(200))
                .map(|_| (rng.u64() & 0xff) as u8)
                .collect(),
        }
    }

    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let result = parse_plugin(input);
        match &result {
            Err(e) => {
                self.refused += 1;
                names_the_problem(&e.field, &e.message, input)?;
                let line = e.to_string();
                if !line.starts_with("invalid canary-guard configuration: ") {
                    return Err(format!("error line {line:?}"));
                }
                if line.chars().any(char::is_control) {
                    return Err(format!("error line with a control character: {line:?}"));
                }
                salvaged_parts_are_usable(&salvage(input))?;
            }
            Ok(Plugin::Analyser) => {
                self.accepted += 1;
                let v: Value = serde_json::from_slice(input).map_err(|e| e.to_string())?;
                let only_role = v.as_object().is_some_and(|m| {
                    m.keys().all(|k| k == "role") && m.get("role") == Some(&"analyser".into())
                });
                if !only_role {
                    return Err(
                        "accepted as the analyser without being {\"role\":\"analyser\"}".into(),
                    );
                }
            }
            Ok(Plugin::Control(_)) => {
                self.accepted += 1;
                let v: Value = serde_json::from_slice(input).map_err(|e| e.to_string())?;
                if v.get("role") != Some(&"control".into()) {
                    return Err("accepted as the control endpoint without role control".into());
                }
            }
            Ok(Plugin::Filter(c)) => {
                self.accepted += 1;
                let tree: Value = serde_json::from_slice(input).map_err(|e| e.to_string())?;
                if let Some(at) = struct_not_an_object(&tree) {
                    return Err(format!(
                        "accepted a configuration with {at} not a JSON object"
                    ));
                }
                invariants(c)?;
                if parse(input).as_ref() != Ok(c.as_ref()) {
                    return Err("parses differently the second time".into());
                }
                drive(c, input.len() as u64 * 0x9E37_79B9)?;
            }
        }
        // Feedback: an input with an outcome not seen before is worth mutating further.
        if self.seen.insert(Self::outcome(&result)) && self.pool.len() < 512 {
            self.pool.push(input.to_vec());
            if let Ok(tree) = serde_json::from_slice::<Value>(input) {
                self.trees.push(tree);
            }
        }
        Ok(())
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        self.pool.clone()
    }

    fn summary(&self) -> String {
        format!(
            "{} accepted, {} refused, {} distinct outcomes",
            self.accepted,
            self.refused,
            self.seen.len()
        )
    }
}

/// What an inert filter takes from a refused configuration (its stats label, the header it sets
/// to the stable cluster) must be as safe to use as the same fields of a valid one.
fn salvaged_parts_are_usable(s: &Salvage) -> Result<(), String> {
    if let Some(name) = &s.name {
        let ok = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!("salvaged name {name:?}"));
        }
    }
    if let Some((header, stable)) = &s.stable_route {
        let header_ok = !header.is_empty()
            && header.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b)
            });
        if !header_ok || stable.trim().is_empty() || stable.chars().any(char::is_control) {
            return Err(format!("salvaged route {header:?}: {stable:?}"));
        }
    }
    Ok(())
}
