//! In-memory host for tests: shared data with proxy-wasm-cpp-host's CAS semantics, a telemetry
//! sink that records stats and logs, a root-context host with a settable clock and random
//! bits, and an HTTP stream's header maps.

use crate::host::{
    HostError, HttpCalls, HttpHost, Level, OutCall, RootHost, RouteCache, SetError, SharedStore,
    Stat, Telemetry,
};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

#[derive(Default)]
pub struct FakeStore {
    data: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// When set, every call fails with this status (a host in trouble).
    pub broken: Cell<Option<u32>>,
    /// Number of `get` calls so far (what a caching reader saves).
    pub reads: Cell<u64>,
}

impl SharedStore for FakeStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        self.reads.set(self.reads.get() + 1);
        if let Some(code) = self.broken.get() {
            return Err(HostError(code));
        }
        Ok(self.data.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        if let Some(code) = self.broken.get() {
            return Err(SetError::Host(HostError(code)));
        }
        let mut data = self.data.borrow_mut();
        if let Some((_, current)) = data.get(key) {
            if cas != 0 && cas != *current {
                return Err(SetError::CasMismatch);
            }
        }
        self.next_cas.set(self.next_cas.get() + 1);
        data.insert(key.to_string(), (value.to_vec(), self.next_cas.get()));
        Ok(())
    }
}

impl FakeStore {
    pub fn raw(&self, key: &str) -> Option<Vec<u8>> {
        self.data.borrow().get(key).map(|v| v.0.clone())
    }
    pub fn put(&self, key: &str, value: &[u8]) {
        self.set(key, value, 0).unwrap();
    }
}

#[derive(Default)]
pub struct FakeTelemetry {
    pub gauges: HashMap<String, u64>,
    pub counters: HashMap<String, u64>,
    pub logs: Vec<(Level, String)>,
}

impl Telemetry for FakeTelemetry {
    fn gauge(&mut self, canary: &str, stat: Stat, value: u64) {
        self.gauges.insert(stat.full_name(canary), value);
    }
    fn count(&mut self, canary: &str, stat: Stat, delta: u64) {
        *self.counters.entry(stat.full_name(canary)).or_default() += delta;
    }
    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_string()));
    }
    fn gauge_named(&mut self, name: &str, value: u64) {
        self.gauges.insert(name.to_string(), value);
    }
    fn count_named(&mut self, name: &str, delta: u64) {
        *self.counters.entry(name.to_string()).or_default() += delta;
    }
}

impl FakeTelemetry {
    pub fn gauge_of(&self, canary: &str, stat: Stat) -> Option<u64> {
        self.gauges.get(&stat.full_name(canary)).copied()
    }
    pub fn counter_of(&self, canary: &str, stat: Stat) -> u64 {
        self.counters
            .get(&stat.full_name(canary))
            .copied()
            .unwrap_or(0)
    }
    pub fn logged(&self, needle: &str) -> bool {
        self.logs.iter().any(|(_, m)| m.contains(needle))
    }
}

/// Drops stats and logs (the log lines are still formatted by the caller, as in Envoy): for
/// benchmarks, where recording them would measure the recording.
pub struct NullTelemetry;

impl Telemetry for NullTelemetry {
    fn gauge(&mut self, _: &str, stat: Stat, value: u64) {
        std::hint::black_box((stat, value));
    }
    fn count(&mut self, _: &str, stat: Stat, delta: u64) {
        std::hint::black_box((stat, delta));
    }
    fn log(&mut self, _: Level, message: &str) {
        std::hint::black_box(message);
    }
}

/// A root context's host: the clock is set by the test, the random bits are fixed, and the tick
/// period the plugin asked for is kept for the test to honour.
#[derive(Debug, Default)]
pub struct FakeRoot {
    pub now_ms: u64,
    /// What `random_u64` returns (`None`: the host has no randomness).
    pub random: Option<u64>,
    /// The last tick period the plugin set.
    pub tick_ms: Option<u32>,
    /// The VM's environment variables.
    pub env: HashMap<String, String>,
    /// The Wasm plugin's name (`None`: the host will not tell).
    pub plugin_name: Option<String>,
    pub node_id: Option<String>,
    /// Calls made so far, and whether the host refuses new ones.
    pub calls: Vec<SentCall>,
    pub refuse_calls: bool,
    pub next_token: u32,
}

impl RootHost for FakeRoot {
    fn now_ns(&self) -> Option<u64> {
        Some(self.now_ms * 1_000_000)
    }
    fn random_u64(&self) -> Option<u64> {
        self.random
    }
    fn set_tick_period_ms(&mut self, ms: u32) -> bool {
        self.tick_ms = Some(ms);
        true
    }
    fn env_var(&self, name: &str) -> Option<String> {
        self.env.get(name).cloned()
    }
    fn plugin_name(&self) -> Option<String> {
        self.plugin_name.clone()
    }
    fn node_id(&self) -> Option<String> {
        self.node_id.clone()
    }
}

impl HttpCalls for FakeRoot {
    fn post(&mut self, call: &OutCall<'_>) -> Result<u32, HostError> {
        if self.refuse_calls {
            return Err(HostError(2));
        }
        self.next_token += 1;
        self.calls.push(SentCall {
            token: self.next_token,
            cluster: call.cluster.to_string(),
            path: call.path.to_string(),
            body: call.body.to_vec(),
            timeout_ms: call.timeout_ms,
        });
        Ok(self.next_token)
    }
}

/// A call the plugin made through `FakeRoot` (answered by the test, or never).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentCall {
    pub token: u32,
    pub cluster: String,
    pub path: String,
    pub body: Vec<u8>,
    pub timeout_ms: u64,
}

/// One HTTP stream's header maps and clock (lower-case header names).
#[derive(Debug, Default)]
pub struct FakeHttp {
    pub now_ns: u64,
    pub request: HashMap<String, Vec<u8>>,
    pub response: HashMap<String, Vec<u8>>,
    pub trailers: HashMap<String, Vec<u8>>,
    /// When set, setting a request header fails (a host in trouble).
    pub refuse_headers: bool,
    /// What `clear_route_cache` answers (`None`: cleared).
    pub route_cache: Option<RouteCache>,
    /// Request-header writes (sets and removals) so far, and how many had been made at each route-cache clear.
    pub header_writes: usize,
    pub route_cache_clears: Vec<usize>,
}

impl FakeHttp {
    pub fn request_value(&self, name: &str) -> Option<&str> {
        self.request
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl HttpHost for FakeHttp {
    fn now_ns(&self) -> Option<u64> {
        Some(self.now_ns)
    }
    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        self.request.get(name).cloned()
    }
    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        if self.refuse_headers {
            return false;
        }
        self.request
            .insert(name.to_string(), value.as_bytes().to_vec());
        self.header_writes += 1;
        true
    }
    fn remove_request_header(&mut self, name: &str) -> bool {
        if self.refuse_headers {
            return false;
        }
        self.request.remove(name);
        self.header_writes += 1;
        true
    }
    fn clear_route_cache(&mut self) -> RouteCache {
        self.route_cache_clears.push(self.header_writes);
        self.route_cache.unwrap_or(RouteCache::Cleared)
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        self.response.get(name).cloned()
    }
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        self.trailers.get(name).cloned()
    }
    fn add_response_header(&mut self, name: &str, value: &str) -> bool {
        self.response
            .insert(name.to_string(), value.as_bytes().to_vec());
        true
    }
}
