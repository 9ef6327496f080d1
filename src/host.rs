//! The small traits through which the logic reaches the host. The proxy-wasm adapter implements
//! them over Envoy's ABI; tests implement them with an in-memory fake (`testkit::fake_host`).

use crate::state::Phase;
use std::cell::{Cell, RefCell};

/// Proxy shared data (one process-wide table per `vm_id`). Semantics follow proxy-wasm-cpp-host:
/// every successful write gets a new non-zero cas; a write with cas 0 is unconditional; a write
/// with a stale cas fails with `CasMismatch`; a write to an absent key always succeeds.
pub trait SharedStore {
    /// `Ok(None)` when the key does not exist. An existing key may hold an empty value.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError>;
}

/// A host call failed with this proxy-wasm status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetError {
    CasMismatch,
    Host(HostError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// Envoy stats of one canary, named `canary_guard.<name>.<stat>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stat {
    Weight,
    Phase,
    FailedChecks,
    CanaryRequests,
    Canary5xx,
    StableRequests,
    Stable5xx,
    /// Requests whose client went away before any response, too soon to be evidence.
    CanaryAbandoned,
    StableAbandoned,
    Promotions,
    Rollbacks,
    Checks,
    /// What the analyser sums from all workers' tallies (cumulative): proves none is lost.
    TalliedCanaryRequests,
    TalliedCanary5xx,
    TalliedStableRequests,
    TalliedStable5xx,
    /// Bytes of this canary's shared-data values the analyser read (slots, state, lease,
    /// config): bounded by the window, not by the request count.
    SharedBytes,
    /// Requests that found a state value they could not decode (and went to stable): a torn
    /// or corrupt read would show here.
    StateUnreadable,
    /// Requests on which a match regex was skipped: it would have cost more than the
    /// per-request regex budget (`matcher`), so that rule did not match.
    MatchBudgetExhausted,
    /// Host calls that failed (not a CAS mismatch, which is contention, not failure), by kind.
    HostErrorsGetSharedData,
    HostErrorsSetSharedData,
    HostErrorsSetHeader,
    HostErrorsClearRouteCache,
    /// 1 while this canary's filter runs an invalid configuration inert (everything to stable).
    ConfigInvalid,
    /// Fleet mode: live replica records the judge summed at its last check.
    FleetReplicas,
    /// 1 while this proxy holds the fleet's judge key.
    FleetJudge,
    /// etcd calls answered as expected, and failed (no answer, timeout, error, malformed).
    FleetCallsOk,
    FleetCallsFailed,
    /// Duration of the last etcd call (ms).
    FleetCallLatencyMs,
    /// Age of the fleet state this proxy follows (ms since it was last read).
    FleetStateAgeMs,
    /// 1 while this proxy routes everything to stable because the fleet state is stale or invalid.
    FleetFallback,
    /// The fleet totals of the live replicas' records, summed by the judge.
    FleetTalliedCanaryRequests,
    FleetTalliedCanary5xx,
    FleetTalliedStableRequests,
    FleetTalliedStable5xx,
    /// 1 for the current phase, 0 for the others: `phase_is.<Phase>`, which Envoy's stats_tags
    /// turn into a `phase` label (a dashboard's "phase over time").
    PhaseIs(Phase),
    /// Decisions by kind: `decisions.<kind>` (a `decision` label).
    Decisions(Decision),
    /// The analyser's p99 request duration (ms) over the shortest metric window, per side.
    CanaryP99Ms,
    StableP99Ms,
}

/// What the analyser decided, counted in `decisions.<kind>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Start,
    Advance,
    Halt,
    Wait,
    Promotion,
    Rollback,
}

impl Decision {
    pub const ALL: [Decision; 6] = [
        Decision::Start,
        Decision::Advance,
        Decision::Halt,
        Decision::Wait,
        Decision::Promotion,
        Decision::Rollback,
    ];
}

impl Stat {
    pub const ALL: [Stat; 50] = [
        Stat::Weight,
        Stat::Phase,
        Stat::FailedChecks,
        Stat::CanaryRequests,
        Stat::Canary5xx,
        Stat::StableRequests,
        Stat::Stable5xx,
        Stat::CanaryAbandoned,
        Stat::StableAbandoned,
        Stat::Promotions,
        Stat::Rollbacks,
        Stat::Checks,
        Stat::TalliedCanaryRequests,
        Stat::TalliedCanary5xx,
        Stat::TalliedStableRequests,
        Stat::TalliedStable5xx,
        Stat::SharedBytes,
        Stat::StateUnreadable,
        Stat::MatchBudgetExhausted,
        Stat::HostErrorsGetSharedData,
        Stat::HostErrorsSetSharedData,
        Stat::HostErrorsSetHeader,
        Stat::HostErrorsClearRouteCache,
        Stat::ConfigInvalid,
        Stat::FleetReplicas,
        Stat::FleetJudge,
        Stat::FleetCallsOk,
        Stat::FleetCallsFailed,
        Stat::FleetCallLatencyMs,
        Stat::FleetStateAgeMs,
        Stat::FleetFallback,
        Stat::FleetTalliedCanaryRequests,
        Stat::FleetTalliedCanary5xx,
        Stat::FleetTalliedStableRequests,
        Stat::FleetTalliedStable5xx,
        Stat::PhaseIs(Phase::Initializing),
        Stat::PhaseIs(Phase::Progressing),
        Stat::PhaseIs(Phase::Promoting),
        Stat::PhaseIs(Phase::Succeeded),
        Stat::PhaseIs(Phase::Failed),
        Stat::PhaseIs(Phase::Waiting),
        Stat::PhaseIs(Phase::WaitingPromotion),
        Stat::Decisions(Decision::Start),
        Stat::Decisions(Decision::Advance),
        Stat::Decisions(Decision::Halt),
        Stat::Decisions(Decision::Wait),
        Stat::Decisions(Decision::Promotion),
        Stat::Decisions(Decision::Rollback),
        Stat::CanaryP99Ms,
        Stat::StableP99Ms,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Stat::Weight => "weight",
            Stat::Phase => "phase",
            Stat::FailedChecks => "failed_checks",
            Stat::CanaryRequests => "canary_requests",
            Stat::Canary5xx => "canary_5xx",
            Stat::StableRequests => "stable_requests",
            Stat::Stable5xx => "stable_5xx",
            Stat::CanaryAbandoned => "canary_abandoned",
            Stat::StableAbandoned => "stable_abandoned",
            Stat::Promotions => "promotions",
            Stat::Rollbacks => "rollbacks",
            Stat::Checks => "checks",
            Stat::TalliedCanaryRequests => "tallied_canary_requests",
            Stat::TalliedCanary5xx => "tallied_canary_5xx",
            Stat::TalliedStableRequests => "tallied_stable_requests",
            Stat::TalliedStable5xx => "tallied_stable_5xx",
            Stat::SharedBytes => "shared_bytes",
            Stat::StateUnreadable => "state_unreadable",
            Stat::MatchBudgetExhausted => "match_budget_exhausted",
            Stat::HostErrorsGetSharedData => "host_errors.get_shared_data",
            Stat::HostErrorsSetSharedData => "host_errors.set_shared_data",
            Stat::HostErrorsSetHeader => "host_errors.set_header",
            Stat::HostErrorsClearRouteCache => "host_errors.clear_route_cache",
            Stat::ConfigInvalid => "config_invalid",
            Stat::FleetReplicas => "fleet.replicas",
            Stat::FleetJudge => "fleet.judge",
            Stat::FleetCallsOk => "fleet.calls_ok",
            Stat::FleetCallsFailed => "fleet.calls_failed",
            Stat::FleetCallLatencyMs => "fleet.call_latency_ms",
            Stat::FleetStateAgeMs => "fleet.state_age_ms",
            Stat::FleetFallback => "fleet.fallback",
            Stat::FleetTalliedCanaryRequests => "fleet.tallied_canary_requests",
            Stat::FleetTalliedCanary5xx => "fleet.tallied_canary_5xx",
            Stat::FleetTalliedStableRequests => "fleet.tallied_stable_requests",
            Stat::FleetTalliedStable5xx => "fleet.tallied_stable_5xx",
            Stat::PhaseIs(p) => match p {
                Phase::Initializing => "phase_is.Initializing",
                Phase::Progressing => "phase_is.Progressing",
                Phase::Promoting => "phase_is.Promoting",
                Phase::Succeeded => "phase_is.Succeeded",
                Phase::Failed => "phase_is.Failed",
                Phase::Waiting => "phase_is.Waiting",
                Phase::WaitingPromotion => "phase_is.WaitingPromotion",
            },
            Stat::Decisions(d) => match d {
                Decision::Start => "decisions.start",
                Decision::Advance => "decisions.advance",
                Decision::Halt => "decisions.halt",
                Decision::Wait => "decisions.wait",
                Decision::Promotion => "decisions.promotion",
                Decision::Rollback => "decisions.rollback",
            },
            Stat::CanaryP99Ms => "canary_p99_ms",
            Stat::StableP99Ms => "stable_p99_ms",
        }
    }

    pub fn is_gauge(self) -> bool {
        matches!(
            self,
            Stat::Weight
                | Stat::Phase
                | Stat::FailedChecks
                | Stat::TalliedCanaryRequests
                | Stat::TalliedCanary5xx
                | Stat::TalliedStableRequests
                | Stat::TalliedStable5xx
                | Stat::SharedBytes
                | Stat::ConfigInvalid
                | Stat::FleetReplicas
                | Stat::FleetJudge
                | Stat::FleetCallLatencyMs
                | Stat::FleetStateAgeMs
                | Stat::FleetFallback
                | Stat::FleetTalliedCanaryRequests
                | Stat::FleetTalliedCanary5xx
                | Stat::FleetTalliedStableRequests
                | Stat::FleetTalliedStable5xx
                | Stat::PhaseIs(_)
                | Stat::CanaryP99Ms
                | Stat::StableP99Ms
        )
    }

    pub fn full_name(self, canary: &str) -> String {
        format!("canary_guard.{canary}.{}", self.suffix())
    }
}

/// Stats and logs.
pub trait Telemetry {
    fn gauge(&mut self, canary: &str, stat: Stat, value: u64);
    fn count(&mut self, canary: &str, stat: Stat, delta: u64);
    fn log(&mut self, level: Level, message: &str);
    /// Defines every stat of a canary up front, so that all show in /stats from the start.
    fn define_all(&mut self, _canary: &str) {}
    /// A gauge whose name is made at run time (`canary_guard.<name>.revision_info.<rev>`).
    fn gauge_named(&mut self, _name: &str, _value: u64) {}
    /// A counter whose name is made at run time (`canary_guard.<name>.revision.<rev>.<stat>`).
    fn count_named(&mut self, _name: &str, _delta: u64) {}
}

/// The name of a canary's revision info gauge: 1 while that revision is the one analysed (the
/// `revision` stats_tag makes it `canary_guard_revision_info{canary, revision}`, the label a
/// dashboard joins the request counters with). The revision is kept to `[A-Za-z0-9_.-]`.
pub fn revision_info_name(canary: &str, revision: &str) -> String {
    format!(
        "canary_guard.{canary}.revision_info.{}",
        stat_safe(revision)
    )
}

/// A per-revision stat's name, `canary_guard.<canary>.revision.<rev>.<suffix>` (the `revision`
/// stats_tag takes `<rev>` out as a label).
pub fn revision_stat_name(canary: &str, revision: &str, suffix: &str) -> String {
    format!(
        "canary_guard.{canary}.revision.{}.{suffix}",
        stat_safe(revision)
    )
}

/// A revision kept to `[A-Za-z0-9_.-]` for a stat name.
fn stat_safe(revision: &str) -> String {
    revision
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One call out of the proxy: POST `path` with a JSON `body` to an Envoy cluster.
#[derive(Debug, Clone, Copy)]
pub struct OutCall<'a> {
    pub cluster: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub body: &'a [u8],
    pub timeout_ms: u64,
}

/// Calls out of the proxy (`dispatch_http_call`). The answer comes later, to the same root
/// context, with the token returned here (`plugin::Root::on_http_call_response`); a call that
/// fails or times out comes back without a status.
pub trait HttpCalls {
    fn post(&mut self, call: &OutCall<'_>) -> Result<u32, HostError>;
}

/// A root host that offers nothing: no clock, no randomness, no calls (the analyser's
/// `tick` outside fleet mode, which needs none of them).
pub struct NoHost;

impl HttpCalls for NoHost {
    fn post(&mut self, _: &OutCall<'_>) -> Result<u32, HostError> {
        Err(HostError(0))
    }
}

impl RootHost for NoHost {
    fn now_ns(&self) -> Option<u64> {
        None
    }
    fn random_u64(&self) -> Option<u64> {
        None
    }
    fn set_tick_period_ms(&mut self, _: u32) -> bool {
        false
    }
    fn env_var(&self, _: &str) -> Option<String> {
        None
    }
    fn plugin_name(&self) -> Option<String> {
        None
    }
    fn node_id(&self) -> Option<String> {
        None
    }
}

/// What a root context asks of the host besides shared data and telemetry.
pub trait RootHost: HttpCalls {
    /// Host clock (Unix epoch), `None` when the host cannot tell.
    fn now_ns(&self) -> Option<u64>;
    /// Random bits from the host, `None` when it has none.
    fn random_u64(&self) -> Option<u64>;
    /// Asks for `on_tick` every `ms`; false when the host refused.
    fn set_tick_period_ms(&mut self, ms: u32) -> bool;
    /// An environment variable of the VM (Envoy's `vm_config.environment_variables`).
    fn env_var(&self, name: &str) -> Option<String>;
    /// The Wasm plugin's name (Envoy's `PluginConfig.name`; `<namespace>.<name>` in Istio).
    fn plugin_name(&self) -> Option<String>;
    /// Envoy's node id (`node.id`), part of a replica's identity in fleet mode.
    fn node_id(&self) -> Option<String>;
}

/// What asking the host to clear the route cache did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteCache {
    Cleared,
    /// The host has no `clear_route_cache` foreign function (Envoy before 1.33).
    Unsupported,
    Failed(HostError),
}

/// What one HTTP stream asks of the host: its header maps and the clock.
pub trait HttpHost {
    fn now_ns(&self) -> Option<u64>;
    /// A request header's value as raw bytes; `None` when absent or on error.
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// Sets (replaces) a request header; false when the host refused.
    fn set_request_header(&mut self, name: &str, value: &str) -> bool;
    /// Removes a request header; false when the host refused.
    fn remove_request_header(&mut self, name: &str) -> bool;
    /// Makes Envoy match the route again (its `clear_route_cache` foreign function).
    fn clear_route_cache(&mut self) -> RouteCache;
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
    fn add_response_header(&mut self, name: &str, value: &str) -> bool;
}

/// What the control endpoint's HTTP stream reaches the host through (`control`).
pub trait ControlHost {
    fn now_ns(&self) -> Option<u64>;
    fn request_header(&self, name: &str) -> Option<Vec<u8>>;
    /// The first `size` bytes of the request body received so far.
    fn request_body(&self, size: usize) -> Option<Vec<u8>>;
    /// The downstream peer's `ip:port`.
    fn peer_address(&self) -> Option<String>;
    /// Answers the request locally (JSON); false when the host refused.
    fn send_response(&mut self, status: u32, body: &[u8]) -> bool;
}

/// Host calls that failed since they were last reported, and the last one in words (for the
/// debug log). Shared by a root context and its HTTP streams, hence the cells.
#[derive(Debug, Default)]
pub struct HostErrors {
    get_shared_data: Cell<u64>,
    set_shared_data: Cell<u64>,
    set_header: Cell<u64>,
    clear_route_cache: Cell<u64>,
    last: RefCell<Option<String>>,
}

impl HostErrors {
    fn bump(&self, counter: &Cell<u64>, what: impl FnOnce() -> String) {
        counter.set(counter.get() + 1);
        *self.last.borrow_mut() = Some(what());
    }

    pub fn set_header_failed(&self, name: &str) {
        self.bump(&self.set_header, || {
            format!("replace request header {name}")
        });
    }

    pub fn clear_route_cache_failed(&self, status: u32) {
        self.bump(&self.clear_route_cache, || {
            format!("clear_route_cache: status {status}")
        });
    }

    /// Reports and clears the counts: the counters of `canary`, and one debug line.
    pub fn report(&self, canary: &str, tel: &mut dyn Telemetry) {
        let mut any = 0;
        for (stat, counter) in [
            (Stat::HostErrorsGetSharedData, &self.get_shared_data),
            (Stat::HostErrorsSetSharedData, &self.set_shared_data),
            (Stat::HostErrorsSetHeader, &self.set_header),
            (Stat::HostErrorsClearRouteCache, &self.clear_route_cache),
        ] {
            let n = counter.replace(0);
            if n > 0 {
                tel.count(canary, stat, n);
                any += n;
            }
        }
        if let Some(last) = self.last.borrow_mut().take() {
            tel.log(
                Level::Debug,
                &format!("canary {canary}: {any} host call(s) failed since the last report, the last: {last}"),
            );
        }
    }
}

/// A store that counts the host failures of another (a CAS mismatch is not one) in `errors`.
pub struct Watched<'a> {
    pub store: &'a dyn SharedStore,
    pub errors: &'a HostErrors,
}

impl SharedStore for Watched<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        let got = self.store.get(key);
        if let Err(HostError(status)) = got {
            let e = self.errors;
            e.bump(&e.get_shared_data, || {
                format!("get_shared_data {key}: status {status}")
            });
        }
        got
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        let set = self.store.set(key, value, cas);
        if let Err(SetError::Host(HostError(status))) = set {
            let e = self.errors;
            e.bump(&e.set_shared_data, || {
                format!("set_shared_data {key}: status {status}")
            });
        }
        set
    }
}
