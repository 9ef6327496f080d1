//! Plugin configuration: JSON parsing and validation.
//!
//! The `analysis` block follows Flagger's `Canary.spec.analysis`, so an operator can paste theirs.
//! Every error names the field (as a JSON path) and the offending value; `plugin` logs it and
//! either refuses the configuration or runs it inert (`invalid_config` decides which).

pub mod duration;
mod error;
mod salvage;
pub mod timestamp;
mod types;
mod validate;
mod webhooks;
mod wire;

pub use error::ConfigError;
pub use salvage::{salvage, Salvage};
pub use types::*;
pub use webhooks::{DEFAULT_TIMEOUT_MS as DEFAULT_WEBHOOK_TIMEOUT_MS, MAX_WEBHOOKS};
pub use wire::Role;

use error::{err, field_of};
use serde_json::Value;
use wire::Obj;

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
        if map.get("role").and_then(Value::as_str) == Some("control") {
            return crate::control::parse_config(&map)
                .map(Plugin::Control)
                .or_else(|(field, message)| err(field, message));
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
    validate::validate(raw)
}

#[cfg(test)]
pub(crate) mod tests;
