//! canary-guard-check: validates plugin configurations before they are applied, with the
//! module's own parser (`canary_guard::config::parse_plugin`), so that a configuration the
//! module would not apply is caught in CI or before `kubectl apply` instead of in the proxy.
//!
//!     canary-guard-check FILE... (or - for standard input)
//!
//! A FILE holds JSON (the `configuration` string Envoy hands the module) or YAML documents:
//! an Istio `WasmPlugin` (its `spec.pluginConfig`, converted as istiod converts it: through a
//! protobuf Struct, so every number becomes a float64, and protobuf's JSON marshaller, which
//! sorts the keys), or a plugin configuration written as YAML. Other documents (a
//! VirtualService next to the WasmPlugin) are skipped. One line per configuration:
//! `ok` with the canary and revision, or the error line the module would log.
//!
//! Exit status: 0 when every configuration is valid, 1 when one is not (or the files hold
//! none), 2 when a file cannot be read or parsed.

use canary_guard::config::{parse_plugin, Plugin};
use serde_json::{Number, Value};
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: canary-guard-check FILE... (- for standard input)\nValidates canary-guard plugin configurations (JSON, YAML, or Istio WasmPlugin manifests) with the module's own parser.");
        return ExitCode::from(2);
    }
    let (mut worst, mut checked) = (0u8, 0usize);
    for path in &args {
        let (status, n) = check_file(path);
        worst = worst.max(status);
        checked += n;
    }
    if checked == 0 && worst == 0 {
        println!("no WasmPlugin or plugin configuration found");
        worst = 1;
    }
    ExitCode::from(worst)
}

/// (0 valid, 1 invalid, 2 unreadable; how many configurations were checked).
fn check_file(path: &str) -> (u8, usize) {
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => {
            println!("{path}: cannot read: {e}");
            return (2, 0);
        }
    };
    if text.trim_start().starts_with('{') {
        // JSON: exactly the bytes Envoy would hand the module.
        return (report(path, "configuration", Some(text.as_bytes())), 1);
    }
    let mut worst = 0;
    let mut checked = 0;
    for (i, doc) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                println!("{path}#{i}: not YAML: {e}");
                return (2, checked);
            }
        };
        let Some(map) = value.as_mapping() else {
            continue;
        };
        let kind = map.get("kind").and_then(serde_yaml::Value::as_str);
        let (what, config) = match kind {
            Some("WasmPlugin") => {
                let meta = |k: &str| {
                    value
                        .get("metadata")
                        .and_then(|m| m.get(k))
                        .and_then(serde_yaml::Value::as_str)
                        .unwrap_or("default")
                        .to_string()
                };
                let what = format!("WasmPlugin {}/{}", meta("namespace"), meta("name"));
                // istiod sends no configuration at all for an absent or empty pluginConfig.
                let config = value
                    .get("spec")
                    .and_then(|s| s.get("pluginConfig"))
                    .filter(|c| c.as_mapping().is_some_and(|m| !m.is_empty()))
                    .map(|c| istiod_json(c).to_string().into_bytes());
                (what, config)
            }
            Some(_) => continue,
            None => (
                "configuration".to_string(),
                Some(yaml_json(&value).to_string().into_bytes()),
            ),
        };
        checked += 1;
        worst = worst.max(report(&format!("{path}#{i}"), &what, config.as_deref()));
    }
    (worst, checked)
}

fn read(path: &str) -> std::io::Result<String> {
    if path == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        Ok(s)
    } else {
        std::fs::read_to_string(path)
    }
}

fn report(at: &str, what: &str, config: Option<&[u8]>) -> u8 {
    let Some(bytes) = config else {
        println!("{at}: {what}: invalid canary-guard configuration: no plugin configuration");
        return 1;
    };
    match parse_plugin(bytes) {
        Ok(Plugin::Filter(c)) => {
            println!("{at}: {what}: ok: canary {} rev {}", c.name, c.revision);
            for notice in &c.analysis.notices {
                println!("{at}: {what}: notice: {notice}");
            }
            0
        }
        Ok(Plugin::Analyser) => {
            println!("{at}: {what}: ok: the analyser singleton");
            0
        }
        Ok(Plugin::Control(_)) => {
            println!("{at}: {what}: ok: the control endpoint");
            0
        }
        Err(e) => {
            println!("{at}: {what}: {e}");
            1
        }
    }
}

/// A YAML value as JSON, numbers kept as written.
fn yaml_json(v: &serde_yaml::Value) -> Value {
    convert(v, &|n| {
        if let Some(i) = n.as_i64() {
            Value::from(i)
        } else if let Some(u) = n.as_u64() {
            Value::from(u)
        } else {
            n.as_f64()
                .and_then(Number::from_f64)
                .map_or(Value::Null, Value::Number)
        }
    })
}

/// What the module receives from istiod: the pluginConfig through a protobuf Struct (every
/// number a float64) and protobuf's JSON marshaller (an integral float printed without a
/// fraction; keys sorted, as serde_json's map keeps them).
fn istiod_json(v: &serde_yaml::Value) -> Value {
    convert(v, &|n| {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // Integral floats print without a fraction; `as i64` is exact below 2^63 (larger ones
        // stay floats: the same number to the module's parser).
        if f.fract() == 0.0 && f.abs() < 9.2e18 {
            Value::from(f as i64)
        } else {
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
    })
}

fn convert(v: &serde_yaml::Value, number: &dyn Fn(&serde_yaml::Number) -> Value) -> Value {
    use serde_yaml::Value as Y;
    match v {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(*b),
        Y::Number(n) => number(n),
        Y::String(s) => Value::String(s.clone()),
        Y::Sequence(items) => Value::Array(items.iter().map(|i| convert(i, number)).collect()),
        Y::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Y::String(s) => s.clone(),
                        other => serde_yaml::to_string(other)
                            .unwrap_or_default()
                            .trim()
                            .to_string(),
                    };
                    (key, convert(v, number))
                })
                .collect(),
        ),
        Y::Tagged(t) => convert(&t.value, number),
    }
}
