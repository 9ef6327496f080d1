//! The host traits implemented over the proxy-wasm ABI.

use super::ffi;
use crate::host::{
    ControlHost, HostError, HttpCalls, HttpHost, Level, OutCall, RootHost, RouteCache, SetError,
    SharedStore, Stat, Telemetry,
};
use hashbrown::HashMap;
use std::cell::Cell;

pub struct HostStore;

impl SharedStore for HostStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, HostError> {
        ffi::get_shared(key).map_err(HostError)
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), SetError> {
        match ffi::set_shared(key, value, cas) {
            ffi::OK => Ok(()),
            ffi::CAS_MISMATCH => Err(SetError::CasMismatch),
            other => Err(SetError::Host(HostError(other))),
        }
    }
}

/// Envoy stats (defined lazily, once per VM and name) and Envoy's log.
#[derive(Default)]
pub struct HostTelemetry {
    ids: HashMap<(String, Stat), Option<u32>>,
    named: HashMap<String, Option<u32>>,
}

impl HostTelemetry {
    fn id(&mut self, canary: &str, stat: Stat) -> Option<u32> {
        if let Some(id) = self.ids.get(&(canary.to_string(), stat)) {
            return *id;
        }
        let kind = if stat.is_gauge() {
            ffi::GAUGE
        } else {
            ffi::COUNTER
        };
        let id = ffi::define_metric(kind, &stat.full_name(canary));
        self.ids.insert((canary.to_string(), stat), id);
        id
    }

    /// A stat named at run time (per revision), defined on first use.
    fn named_id(&mut self, kind: u32, name: &str) -> Option<u32> {
        if let Some(id) = self.named.get(name) {
            return *id;
        }
        let id = ffi::define_metric(kind, name);
        self.named.insert(name.to_string(), id);
        id
    }
}

impl Telemetry for HostTelemetry {
    fn gauge(&mut self, canary: &str, stat: Stat, value: u64) {
        if let Some(id) = self.id(canary, stat) {
            ffi::record_metric(id, value);
        }
    }

    fn count(&mut self, canary: &str, stat: Stat, delta: u64) {
        if let Some(id) = self.id(canary, stat) {
            ffi::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }

    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Debug => 1,
            Level::Info => 2,
            Level::Warn => 3,
            Level::Error => 4,
        };
        ffi::log(level, message);
    }

    fn define_all(&mut self, canary: &str) {
        for stat in Stat::ALL {
            self.id(canary, stat);
        }
    }

    fn gauge_named(&mut self, name: &str, value: u64) {
        if let Some(id) = self.named_id(ffi::GAUGE, name) {
            ffi::record_metric(id, value);
        }
    }

    fn count_named(&mut self, name: &str, delta: u64) {
        if let Some(id) = self.named_id(ffi::COUNTER, name) {
            ffi::increment_metric(id, i64::try_from(delta).unwrap_or(i64::MAX));
        }
    }
}

pub struct HostRoot;

impl RootHost for HostRoot {
    fn now_ns(&self) -> Option<u64> {
        ffi::now_ns()
    }

    fn random_u64(&self) -> Option<u64> {
        ffi::random_u64()
    }

    fn set_tick_period_ms(&mut self, ms: u32) -> bool {
        ffi::set_tick_period_ms(ms)
    }

    fn env_var(&self, name: &str) -> Option<String> {
        // WASI environ_get: Envoy passes vm_config.environment_variables.
        std::env::var(name).ok()
    }

    fn plugin_name(&self) -> Option<String> {
        String::from_utf8(ffi::property(&["plugin_name"])?).ok()
    }

    fn node_id(&self) -> Option<String> {
        // `xds.node` since Envoy 1.33 (the top-level `node` before).
        let id =
            ffi::property(&["xds", "node", "id"]).or_else(|| ffi::property(&["node", "id"]))?;
        String::from_utf8(id).ok().filter(|s| !s.is_empty())
    }
}

impl HttpCalls for HostRoot {
    /// Through the SDK's `dispatch_http_call`, which registers the token with its dispatcher
    /// (the answer is routed to this root context by it). Envoy answers a call with
    /// Ok, BadArgument (unknown cluster, missing pseudo-header) or InternalFailure.
    fn post(&mut self, call: &OutCall<'_>) -> Result<u32, HostError> {
        let length = call.body.len().to_string();
        let headers = vec![
            (":method", "POST"),
            (":path", call.path),
            (":authority", call.authority),
            ("content-type", "application/json"),
            ("content-length", length.as_str()),
        ];
        proxy_wasm::hostcalls::dispatch_http_call(
            call.cluster,
            headers,
            Some(call.body),
            vec![],
            std::time::Duration::from_millis(call.timeout_ms),
        )
        .map_err(|status| HostError(status as u32))
    }
}

/// The status and body of the HTTP call response being delivered; no status when the call
/// failed (reset, timeout, no upstream: Envoy then delivers no headers).
pub fn http_call_response(num_headers: usize, body_size: usize) -> (Option<u32>, Vec<u8>) {
    let status = if num_headers == 0 {
        None
    } else {
        ffi::header(ffi::HTTP_CALL_RESPONSE_HEADERS, ":status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<u32>().ok())
    };
    let body = ffi::http_call_response_body(body_size).unwrap_or_default();
    (status, body)
}

thread_local! {
    /// Whether this VM's host has the `clear_route_cache` foreign function: unknown until the
    /// first call, which logs the answer once.
    static CLEAR_ROUTE_CACHE: Cell<Option<bool>> = const { Cell::new(None) };
}

pub struct HostHttp;

impl HttpHost for HostHttp {
    fn now_ns(&self) -> Option<u64> {
        ffi::now_ns()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        ffi::header(ffi::REQUEST_HEADERS, name)
    }

    fn set_request_header(&mut self, name: &str, value: &str) -> bool {
        ffi::replace_header(ffi::REQUEST_HEADERS, name, value)
    }

    fn remove_request_header(&mut self, name: &str) -> bool {
        ffi::remove_header(ffi::REQUEST_HEADERS, name)
    }

    fn clear_route_cache(&mut self) -> RouteCache {
        if CLEAR_ROUTE_CACHE.get() == Some(false) {
            return RouteCache::Unsupported;
        }
        let status = ffi::call_foreign("clear_route_cache");
        if CLEAR_ROUTE_CACHE.get().is_none() && matches!(status, ffi::OK | ffi::NOT_FOUND) {
            let found = status == ffi::OK;
            CLEAR_ROUTE_CACHE.set(Some(found));
            ffi::log(
                1,
                if found {
                    "canary-guard: the host's clear_route_cache foreign function is called after each routing header change"
                } else {
                    "canary-guard: the host has no clear_route_cache foreign function (Envoy before 1.33): the header change alone has the route matched again (ABI 0.2.1)"
                },
            );
        }
        match status {
            ffi::OK => RouteCache::Cleared,
            ffi::NOT_FOUND => RouteCache::Unsupported,
            other => RouteCache::Failed(HostError(other)),
        }
    }

    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        ffi::header(ffi::RESPONSE_HEADERS, name)
    }

    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        ffi::header(ffi::RESPONSE_TRAILERS, name)
    }

    fn add_response_header(&mut self, name: &str, value: &str) -> bool {
        ffi::add_header(ffi::RESPONSE_HEADERS, name, value)
    }
}

impl ControlHost for HostHttp {
    fn now_ns(&self) -> Option<u64> {
        ffi::now_ns()
    }

    fn request_header(&self, name: &str) -> Option<Vec<u8>> {
        ffi::header(ffi::REQUEST_HEADERS, name)
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        proxy_wasm::hostcalls::get_buffer(proxy_wasm::types::BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }

    fn peer_address(&self) -> Option<String> {
        let bytes = proxy_wasm::hostcalls::get_property(vec!["source", "address"])
            .ok()
            .flatten()?;
        String::from_utf8(bytes).ok()
    }

    fn send_response(&mut self, status: u32, body: &[u8]) -> bool {
        proxy_wasm::hostcalls::send_http_response(
            status,
            vec![("content-type", "application/json")],
            Some(body),
        )
        .is_ok()
    }
}
