//! The small traits through which the logic reaches the host. The proxy-wasm adapter implements
//! them over Envoy's ABI; tests implement them with an in-memory fake (see `fake_host`).

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
}

impl Stat {
    pub const ALL: [Stat; 16] = [
        Stat::Weight,
        Stat::Phase,
        Stat::FailedChecks,
        Stat::CanaryRequests,
        Stat::Canary5xx,
        Stat::StableRequests,
        Stat::Stable5xx,
        Stat::Promotions,
        Stat::Rollbacks,
        Stat::Checks,
        Stat::TalliedCanaryRequests,
        Stat::TalliedCanary5xx,
        Stat::TalliedStableRequests,
        Stat::TalliedStable5xx,
        Stat::SharedBytes,
        Stat::StateUnreadable,
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
            Stat::Promotions => "promotions",
            Stat::Rollbacks => "rollbacks",
            Stat::Checks => "checks",
            Stat::TalliedCanaryRequests => "tallied_canary_requests",
            Stat::TalliedCanary5xx => "tallied_canary_5xx",
            Stat::TalliedStableRequests => "tallied_stable_requests",
            Stat::TalliedStable5xx => "tallied_stable_5xx",
            Stat::SharedBytes => "shared_bytes",
            Stat::StateUnreadable => "state_unreadable",
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
}
