//! The JSON shape of the configuration as serde reads it, before validation. Field names follow
//! Flagger's `Canary.spec.analysis` (camelCase), so an operator can paste theirs.

use serde::de::value::MapAccessDeserializer;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

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

/// A JSON object only. serde's derived structs also take an array, fields by position, which
/// would let `"upstreams": ["x-up", "a", "b"]` through (found by the fuzz harness).
pub(super) struct Obj<T>(pub(super) T);

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
pub(super) struct RawConfig {
    pub(super) name: String,
    #[serde(default)]
    pub(super) namespace: Option<String>,
    pub(super) revision: String,
    pub(super) upstreams: Obj<RawUpstreams>,
    #[serde(default)]
    pub(super) session_affinity: Option<Obj<RawAffinity>>,
    pub(super) analysis: Obj<RawAnalysis>,
    #[serde(default)]
    pub(super) skip_analysis: bool,
    #[serde(default)]
    pub(super) suspend: bool,
    #[serde(default)]
    pub(super) restart_policy: Option<String>,
    #[serde(default)]
    pub(super) approved_until: Option<String>,
    #[serde(default)]
    pub(super) role: Role,
    /// gRPC codes counted as errors, by name or number (default: the server failures).
    #[serde(default)]
    pub(super) grpc_error_codes: Option<Vec<Value>>,
    /// Fleet mode: one decision for every replica, kept in etcd.
    #[serde(default)]
    pub(super) fleet: Option<Obj<RawFleet>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawFleet {
    pub(super) etcd_cluster: Option<String>,
    pub(super) authority: Option<String>,
    pub(super) prefix: Option<String>,
    #[serde(rename = "leaseTTL")]
    pub(super) lease_ttl: Option<String>,
    pub(super) max_staleness: Option<String>,
    pub(super) timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstreams {
    pub(super) header: String,
    pub(super) stable: String,
    pub(super) canary: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAffinity {
    pub(super) header: Option<String>,
    pub(super) cookie_name: Option<String>,
    pub(super) max_age: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawAnalysis {
    pub(super) interval: Option<String>,
    pub(super) threshold: Option<u32>,
    pub(super) step_weight: Option<u32>,
    pub(super) max_weight: Option<u32>,
    pub(super) step_weights: Option<Vec<u32>>,
    pub(super) step_weight_promotion: Option<u32>,
    pub(super) min_requests: Option<u64>,
    pub(super) consecutive: Option<bool>,
    pub(super) iterations: Option<u32>,
    #[serde(rename = "match")]
    pub(super) matches: Option<Vec<Obj<RawMatch>>>,
    pub(super) metrics: Option<Vec<Obj<RawMetric>>>,
    /// The opt-in to an analysis without metrics (it would promote on no evidence).
    pub(super) promote_without_metrics: Option<bool>,
    /// A canary request unanswered this long counts as an error.
    pub(super) request_timeout: Option<String>,
    /// Flagger's webhooks (`config::webhooks`).
    pub(super) webhooks: Option<Vec<Value>>,
    // Flagger fields that need a controller; refused by name rather than silently ignored.
    pub(super) alerts: Option<Value>,
    pub(super) mirror: Option<Value>,
    pub(super) mirror_weight: Option<Value>,
    pub(super) primary_ready_threshold: Option<Value>,
    pub(super) canary_ready_threshold: Option<Value>,
    pub(super) session_affinity: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMatch {
    pub(super) headers: BTreeMap<String, Obj<RawStringMatch>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStringMatch {
    pub(super) exact: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) suffix: Option<String>,
    pub(super) regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct RawMetric {
    pub(super) name: String,
    pub(super) threshold_range: Option<Obj<RawRange>>,
    /// Flagger's deprecated single bound (success rate: min, duration: max).
    pub(super) threshold: Option<f64>,
    pub(super) interval: Option<String>,
    pub(super) percentile: Option<f64>,
    /// The vs-stable metrics: the canary may be this many times worse than stable...
    pub(super) max_ratio: Option<f64>,
    /// ...at this level (false rollbacks of a canary within the ratio at most alpha).
    pub(super) alpha: Option<f64>,
    pub(super) template_ref: Option<Value>,
    pub(super) template_variables: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRange {
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
}
