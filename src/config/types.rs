//! The validated configuration: what the rest of the module reads. Built only by `validate`.

use crate::matcher::MatchRule;
pub use crate::outcome::GrpcCodes;

/// Shortest analysis interval and metric window we accept: below this the tick and the
/// publication period of the workers would be as long as the interval itself.
pub const MIN_INTERVAL_MS: u64 = 100;
/// Longest metric window: tallies are kept for the longest window, in at most ~64 buckets.
pub const MAX_WINDOW_MS: u64 = 24 * 3600 * 1000;
/// Default `analysis.requestTimeout`: a canary request still unanswered after this is an error.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Longest regex source in a match rule; the compiled program is bounded too.
pub const MAX_REGEX_LEN: usize = 1024;

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
    /// The canary's namespace in webhook payloads (Flagger's load tester keys its gates by
    /// `name.namespace`); default "default".
    pub namespace: String,
    pub revision: String,
    pub upstreams: Upstreams,
    pub affinity: Affinity,
    pub analysis: Analysis,
    pub skip_analysis: bool,
    pub suspend: bool,
    pub restart_policy: RestartPolicy,
    pub approved_until: Option<Approval>,
    /// gRPC status codes that count as errors.
    pub grpc_error_codes: GrpcCodes,
    /// Fleet mode (`fleet`): the decision is kept in etcd and shared by every replica.
    pub fleet: Option<Fleet>,
}

/// `fleet`: where the fleet's shared decision is kept (etcd v3 through its HTTP gateway).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    /// The Envoy cluster that reaches etcd's client port.
    pub etcd_cluster: String,
    /// `:authority` of the calls (default: the cluster name).
    pub authority: String,
    /// Key prefix, starts with '/', no trailing '/'.
    pub prefix: String,
    pub lease_ttl_ms: u64,
    pub max_staleness_ms: u64,
    pub timeout_ms: u64,
}

/// What a root context was configured as.
#[derive(Debug, Clone, PartialEq)]
pub enum Plugin {
    Filter(Box<Config>),
    Analyser,
    /// The control endpoint (`{"role": "control"}`).
    Control(crate::control::ControlConfig),
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

/// How the canary weight moves through the analysis: Flagger's deployment strategies
/// (`Canary.DeploymentStrategy` and `scheduler.go`: `nextStepWeight`, `maxWeight`,
/// `runCanary`, `runAB`, `runBlueGreen`).
#[derive(Debug, Clone, PartialEq)]
pub enum Steps {
    /// `stepWeight`: add `step` after each passing check while the weight is below `max`
    /// (capped at 100, not at `max`: step 20, max 50 walks 20, 40, 60, then promotes).
    Linear { step: u8, max: u8 },
    /// `stepWeights` (strictly increasing): each entry in turn, the last one is the top.
    List(Vec<u8>),
    /// Flagger's A/B testing (`iterations` with `match`): weight stays 0, only `match`
    /// traffic reaches the canary, promote after this many passing checks.
    Iterations(u32),
    /// Flagger's Blue/Green (`iterations` without `match`): weight 0 for this many passing
    /// checks (the canary gets no traffic through the proxy: only webhooks are judged), then
    /// every request to the canary (weight 100) and, after one more passing check there,
    /// promotion.
    BlueGreen(u32),
}

impl Steps {
    pub fn first_weight(&self) -> u8 {
        match self {
            Steps::Linear { step, .. } => (*step).min(100),
            Steps::List(list) => list.first().copied().unwrap_or(0),
            Steps::Iterations(_) | Steps::BlueGreen(_) => 0,
        }
    }

    /// The weight after a passing check at `current`, or `None` when `current` is the last step
    /// (the next passing check promotes).
    pub fn next_weight(&self, current: u8) -> Option<u8> {
        match self {
            // runCanary: `if canaryWeight < maxWeight { canaryWeight += step (at most 100) }`.
            Steps::Linear { step, max } => {
                (current < *max).then(|| current.saturating_add(*step).min(100))
            }
            Steps::List(list) => list.iter().copied().find(|w| *w > current),
            Steps::Iterations(_) | Steps::BlueGreen(_) => None,
        }
    }

    /// Highest weight before promotion (the weight the walk ends on).
    pub fn max_weight(&self) -> u8 {
        match self {
            Steps::Linear { step, max } => {
                let mut w = (*step).min(100);
                while w < *max {
                    w = w.saturating_add(*step).min(100);
                }
                w
            }
            Steps::List(list) => list.last().copied().unwrap_or(0),
            Steps::Iterations(_) => 0,
            Steps::BlueGreen(_) => 100,
        }
    }

    /// The iteration strategies (A/B testing, Blue/Green) count passing checks, not weights.
    pub fn iterations(&self) -> Option<u32> {
        match self {
            Steps::Iterations(n) | Steps::BlueGreen(n) => Some(*n),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MetricKind {
    /// `request-success-rate`: percentage of canary responses that are not errors.
    SuccessRate,
    /// `request-duration`: this percentile (0, 100] of canary request duration, in milliseconds.
    Duration { percentile: f64 },
    /// `error-rate-vs-stable`: the sequential test (`judge`) that the canary's error rate is
    /// more than `max_ratio` times stable's, at level `alpha`.
    ErrorRateVsStable { max_ratio: f64, alpha: f64 },
    /// `latency-vs-stable`: the same test on slow requests, those above stable's `percentile`.
    LatencyVsStable {
        percentile: f64,
        max_ratio: f64,
        alpha: f64,
    },
}

impl MetricKind {
    /// The statistical judge's metrics (compared with stable, on every tick).
    pub fn is_vs_stable(self) -> bool {
        matches!(
            self,
            MetricKind::ErrorRateVsStable { .. } | MetricKind::LatencyVsStable { .. }
        )
    }
}

/// The bucket series the statistical judge reads on a single proxy (`bucket_ms_for` gives
/// 100 ms buckets), kept beside the metric windows when a vs-stable metric is configured.
pub const JUDGE_WINDOW_MS: u64 = 6_400;

/// The judge's series window: `JUDGE_WINDOW_MS` on a single proxy; in fleet mode long enough
/// that every replica's record still holds a bucket when the judge reads it, a publication
/// period (and the read lag) after it ended: four publication periods.
pub fn judge_window_ms(interval_ms: u64, fleet: bool) -> u64 {
    if fleet {
        JUDGE_WINDOW_MS.max(4 * crate::fleet::publish_ms(interval_ms))
    } else {
        JUDGE_WINDOW_MS
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricCheck {
    pub name: String,
    pub kind: MetricKind,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub window_ms: u64,
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
    /// `promoteWithoutMetrics`: the explicit opt-in to an analysis without metrics.
    pub promote_without_metrics: bool,
    /// `requestTimeout`: a canary request unanswered (or abandoned by its client after
    /// waiting) this long counts as an error.
    pub request_timeout_ms: u64,
    /// `webhooks`: Flagger's gates, hooks and event sinks (`config::webhooks`).
    pub webhooks: Vec<Webhook>,
    /// What the configuration says that Flagger would ignore or has deprecated, one line
    /// each, logged when the filter takes the configuration (and printed by the check CLI).
    pub notices: Vec<String>,
    /// The statistical judge's bucket series (`judge_window_ms`), with a vs-stable metric.
    pub judge_window_ms: Option<u64>,
}

/// Flagger's webhook types (`HookType`), with Flagger's semantics (`analyser::hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookType {
    /// Before the analysis starts: weight 0, phase Waiting, asked every interval until 2xx.
    ConfirmRollout,
    /// Before the first weight: a failure is a failed check.
    PreRollout,
    /// Every check, before the metrics (the load-test hook): a failure is a failed check.
    Rollout,
    /// Before each weight increase: a refusal holds the weight (not a failed check).
    ConfirmTrafficIncrease,
    /// Before promotion: a refusal holds at the last step (phase WaitingPromotion).
    ConfirmPromotion,
    /// After promotion or rollback: failures are logged only.
    PostRollout,
    /// Asked every check while the analysis runs or waits: 2xx rolls back at once.
    Rollback,
    /// Every decision, with its log line (the audit trail).
    Event,
}

/// One entry of `analysis.webhooks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub name: String,
    pub kind: HookType,
    /// As configured (for the logs).
    pub url: String,
    /// The Envoy cluster the POST goes through, its `:authority` and `:path`.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    pub timeout_ms: u64,
    /// Extra attempts after a failed one (no answer, or 5xx), as Flagger's retrying client.
    pub retries: u32,
    pub metadata: std::collections::BTreeMap<String, String>,
    /// No warning event for this webhook's refusals (Flagger: no alert).
    pub mute_alert: bool,
    /// Accepted from pasted configs; TLS is the Envoy cluster's (its transport socket).
    pub disable_tls: bool,
}

impl Analysis {
    /// Whether a metric compares the canary with stable (the statistical judge runs).
    pub fn has_vs_stable(&self) -> bool {
        self.metrics.iter().any(|m| m.kind.is_vs_stable())
    }

    /// The webhooks of one type, in configuration order.
    pub fn hooks(&self, kind: HookType) -> impl Iterator<Item = &Webhook> {
        self.webhooks.iter().filter(move |w| w.kind == kind)
    }

    pub fn has_hooks(&self, kind: HookType) -> bool {
        self.hooks(kind).next().is_some()
    }
}

impl Analysis {
    /// How long a canary request may wait before it is evidence of slowness: the smallest
    /// `max` of the request-duration metrics, else `requestTimeout`.
    pub fn slow_after_ms(&self) -> u64 {
        self.metrics
            .iter()
            .filter(|m| matches!(m.kind, MetricKind::Duration { .. }))
            .filter_map(|m| m.max)
            .map(|max| max.max(0.0) as u64)
            .min()
            .unwrap_or(self.request_timeout_ms)
            .min(self.request_timeout_ms)
    }

    /// Every metric window (each gets its own tally series), else the interval. Not the
    /// interval when there are metrics: checks read only metric windows, and an interval much
    /// longer than the windows (1h vs 10s) would cut buckets too coarse for a window.
    pub fn windows_ms(&self) -> Vec<u64> {
        let mut w: Vec<u64> = self.metrics.iter().map(|m| m.window_ms).collect();
        if w.is_empty() {
            w.push(self.interval_ms);
        }
        if let Some(judge) = self.judge_window_ms {
            w.push(judge);
        }
        w.sort_unstable();
        w.dedup();
        w
    }
}
