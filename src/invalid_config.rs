//! What a configuration that fails validation does: refused, or accepted inert.
//!
//! Refusing (`on_configure` returns false) is safe only where Envoy has something else to
//! serve with. It has, for an update of a plugin that already runs a valid configuration
//! (Envoy keeps that one), and for a static bootstrap or `envoy --mode validate` (Envoy does
//! not start, the old process or pod keeps serving). It has not for a first delivery by ECDS,
//! which is how istiod delivers every WasmPlugin (no default config): Envoy NACKs it and then
//! answers every request of the listener with 500 (NoFilterConfigFound), whatever the
//! failure policy. There the configuration is accepted *inert*: every request goes to stable,
//! the error is logged on each configure and every `INERT_LOG_EVERY_MS`, and the canary's
//! `config_invalid` gauge is 1.
//!
//! The module cannot see how a configuration was delivered, so:
//! - `auto` (the default): refuse when a valid configuration of this plugin is serving in this
//!   proxy (`store::live`), else run inert;
//! - `refuse`: always refuse; set by the operator (`CANARY_GUARD_INVALID_CONFIG=refuse` in
//!   `vm_config.environment_variables`) where the configuration is static, as `envoy/envoy.yaml`.

use crate::config::{salvage, ConfigError};
use crate::host::{Level, Stat, Telemetry};
use std::rc::Rc;

/// The VM environment variable that chooses the policy.
pub const POLICY_ENV: &str = "CANARY_GUARD_INVALID_CONFIG";
/// An inert context repeats its error this often, so that it stays visible in the log.
pub const INERT_LOG_EVERY_MS: u64 = 30_000;
/// An inert context's tick: it only has its error to repeat.
pub const INERT_TICK_MS: u32 = 1_000;
/// The stats label of an inert configuration without a usable canary name.
pub const UNNAMED: &str = "unnamed";
/// The routing header of every shipped configuration: an inert configuration that names no
/// usable one removes this one, so that a client cannot pick the canary with it.
pub const DEFAULT_HEADER: &str = "x-canary-upstream";

/// What an inert configuration does to each request's routing header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InertRoute {
    /// Set it to the stable cluster (the configuration names both usably).
    Stable { header: String, stable: String },
    /// Remove it: the route's default (stable) applies.
    Remove { header: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Auto,
    Refuse,
}

impl Policy {
    /// The policy the environment variable asks for; an unknown value is named in the error
    /// and the caller falls back to `Auto` (it never takes traffic down).
    pub fn from_env(value: Option<&str>) -> Result<Policy, String> {
        match value.map(str::trim) {
            None | Some("") | Some("auto") => Ok(Policy::Auto),
            Some("refuse") => Ok(Policy::Refuse),
            Some(other) => Err(format!(
                "{POLICY_ENV}: {other:?} must be \"auto\" (the default) or \"refuse\"; using \"auto\""
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Refuse,
    Inert,
}

/// `serving`: a valid configuration of this plugin is serving in this proxy.
pub fn decide(policy: Policy, serving: bool) -> Verdict {
    match (policy, serving) {
        (Policy::Refuse, _) | (Policy::Auto, true) => Verdict::Refuse,
        (Policy::Auto, false) => Verdict::Inert,
    }
}

/// An accepted invalid configuration: routes everything to stable, repeats its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inert {
    /// The error line, as a refusal would log it (`invalid canary-guard configuration: ...`).
    pub error: String,
    /// The stats label: the configuration's canary name if it is usable, else `UNNAMED`.
    pub canary: String,
    /// Applied to every request, whatever the client sent.
    pub route: Rc<InertRoute>,
    next_log_ms: u64,
}

impl Inert {
    pub fn new(error: &ConfigError, bytes: &[u8], now_ms: u64) -> Inert {
        let parts = salvage(bytes);
        Inert {
            error: error.to_string(),
            canary: parts.name.unwrap_or_else(|| UNNAMED.to_string()),
            route: Rc::new(match parts.stable_route {
                Some((header, stable)) => InertRoute::Stable { header, stable },
                None => InertRoute::Remove {
                    header: DEFAULT_HEADER,
                },
            }),
            next_log_ms: now_ms.saturating_add(INERT_LOG_EVERY_MS),
        }
    }

    /// The line logged at error level on configure and on every repeat.
    pub fn line(&self) -> String {
        let routing = match self.route.as_ref() {
            InertRoute::Stable { header, stable } => format!("every request gets {header}: {stable}"),
            InertRoute::Remove { header } => format!(
                "it names no usable routing header, so {header} is removed from every request and the route's default (stable) applies"
            ),
        };
        format!(
            "{}; not applied, running inert until a valid configuration arrives: {routing}",
            self.error
        )
    }

    /// Logs the error line at error level and sets the canary's `config_invalid` gauge (on
    /// configure and on every repeat).
    pub fn announce(&self, tel: &mut dyn Telemetry) {
        tel.log(Level::Error, &self.line());
        tel.gauge(&self.canary, Stat::ConfigInvalid, 1);
    }

    /// True once every `INERT_LOG_EVERY_MS`: time to repeat the error.
    pub fn repeat_due(&mut self, now_ms: u64) -> bool {
        if now_ms < self.next_log_ms {
            return false;
        }
        self.next_log_ms = now_ms.saturating_add(INERT_LOG_EVERY_MS);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    #[test]
    fn the_policy_comes_from_the_environment_variable() {
        assert_eq!(Policy::from_env(None), Ok(Policy::Auto));
        assert_eq!(Policy::from_env(Some("auto")), Ok(Policy::Auto));
        assert_eq!(Policy::from_env(Some(" refuse ")), Ok(Policy::Refuse));
        let e = Policy::from_env(Some("strict")).unwrap_err();
        assert!(e.contains("\"strict\""), "{e}");
    }

    #[test]
    fn auto_refuses_only_while_a_valid_configuration_serves() {
        assert_eq!(decide(Policy::Auto, false), Verdict::Inert);
        assert_eq!(decide(Policy::Auto, true), Verdict::Refuse);
        assert_eq!(decide(Policy::Refuse, false), Verdict::Refuse);
        assert_eq!(decide(Policy::Refuse, true), Verdict::Refuse);
    }

    #[test]
    fn an_inert_configuration_names_its_error_and_repeats_it() {
        let bytes = br#"{"name":"web","revision":"v2","upstreams":{"header":"x-up","stable":"s","canary":"c"},"analysis":{"stepWeights":[30,10,50]}}"#;
        let e = parse(bytes).unwrap_err();
        let mut inert = Inert::new(&e, bytes, 1_000);
        assert_eq!(inert.canary, "web");
        assert!(inert.line().starts_with(&e.to_string()), "{}", inert.line());
        assert!(inert.line().contains("every request gets x-up: s"));
        assert!(!inert.repeat_due(1_000 + INERT_LOG_EVERY_MS - 1));
        assert!(inert.repeat_due(1_000 + INERT_LOG_EVERY_MS));
        assert!(!inert.repeat_due(1_000 + INERT_LOG_EVERY_MS + 1));
        let inert = Inert::new(&e, b"{", 0);
        assert_eq!(inert.canary, UNNAMED);
        assert_eq!(
            *inert.route,
            InertRoute::Remove {
                header: DEFAULT_HEADER
            }
        );
    }
}
