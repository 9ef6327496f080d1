//! Raw proxy-wasm ABI calls with every status handled. The SDK's `hostcalls` panic on statuses
//! they do not expect (and on non-UTF-8 header values); a panic traps the VM and fails every
//! request of the worker, so the calls we make go through these wrappers instead.

use std::ptr::{null, null_mut};

/// proxy_log level for a panic message (critical).
pub const LOG_CRITICAL: u32 = 5;

pub const OK: u32 = 0;
pub const NOT_FOUND: u32 = 1;
pub const CAS_MISMATCH: u32 = 8;

pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_HEADERS: u32 = 2;
pub const RESPONSE_TRAILERS: u32 = 3;
const PLUGIN_CONFIGURATION: u32 = 7;
const HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_call_foreign_function(
        function_name_data: *const u8,
        function_name_size: usize,
        arguments_data: *const u8,
        arguments_size: usize,
        results_data: *mut *mut u8,
        results_size: *mut usize,
    ) -> u32;
}

#[link(wasm_import_module = "wasi_snapshot_preview1")]
extern "C" {
    fn random_get(buf: *mut u8, buf_len: usize) -> u16;
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate`.
///
/// Safety: `data`/`size` must come from a host call that returned OK.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

pub fn log(level: u32, message: &str) {
    // Nothing sensible to do if logging fails.
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

pub fn now_ns() -> Option<u64> {
    let mut t: u64 = 0;
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
    (status == OK).then_some(t)
}

pub fn set_tick_period_ms(ms: u32) -> bool {
    unsafe { proxy_set_tick_period_milliseconds(ms) == OK }
}

pub fn plugin_configuration(size: usize) -> Option<Vec<u8>> {
    buffer(PLUGIN_CONFIGURATION, size)
}

/// The body of the HTTP call response being delivered (`on_http_call_response`).
pub fn http_call_response_body(size: usize) -> Option<Vec<u8>> {
    if size == 0 {
        return Some(Vec::new());
    }
    buffer(HTTP_CALL_RESPONSE_BODY, size)
}

fn buffer(kind: u32, size: usize) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    let status = unsafe { proxy_get_buffer_bytes(kind, 0, size, &mut data, &mut len) };
    match status {
        OK => Some(unsafe { owned(data, len) }),
        _ => None,
    }
}

/// A header value as raw bytes (any bytes, UTF-8 or not); `None` when absent or on error.
pub fn header(map: u32, name: &str) -> Option<Vec<u8>> {
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    let status =
        unsafe { proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut len) };
    match status {
        OK => Some(unsafe { owned(data, len) }),
        _ => None,
    }
}

pub fn replace_header(map: u32, name: &str, value: &str) -> bool {
    unsafe {
        proxy_replace_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
            == OK
    }
}

pub fn remove_header(map: u32, name: &str) -> bool {
    unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) == OK }
}

pub fn add_header(map: u32, name: &str, value: &str) -> bool {
    unsafe {
        proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
            == OK
    }
}

/// Shared data: `Ok(None)` absent, `Err(status)` on any other failure.
pub fn get_shared(key: &str) -> Result<Option<(Vec<u8>, u32)>, u32> {
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    let mut cas: u32 = 0;
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas) };
    match status {
        OK => Ok(Some((unsafe { owned(data, len) }, cas))),
        NOT_FOUND => Ok(None),
        other => Err(other),
    }
}

pub fn set_shared(key: &str, value: &[u8], cas: u32) -> u32 {
    let ptr = if value.is_empty() {
        null()
    } else {
        value.as_ptr()
    };
    unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), ptr, value.len(), cas) }
}

pub fn define_metric(kind: u32, name: &str) -> Option<u32> {
    let mut id: u32 = 0;
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    (status == OK).then_some(id)
}

pub fn increment_metric(id: u32, delta: i64) {
    unsafe {
        proxy_increment_metric(id, delta);
    }
}

pub fn record_metric(id: u32, value: u64) {
    unsafe {
        proxy_record_metric(id, value);
    }
}

/// Eight random bytes from the host (WASI `random_get`), if it provides them.
pub fn random_u64() -> Option<u64> {
    let mut buf = [0u8; 8];
    let errno = unsafe { random_get(buf.as_mut_ptr(), buf.len()) };
    (errno == 0).then(|| u64::from_le_bytes(buf))
}

/// A host property (path segments joined by NUL, as the ABI wants); `None` when absent or on
/// error.
pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let path = path.join("\0");
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut len) };
    match status {
        OK => Some(unsafe { owned(data, len) }),
        _ => None,
    }
}

/// Calls a host foreign function without arguments; its status (NOT_FOUND: the host has no
/// function of that name). Any result bytes are freed.
pub fn call_foreign(name: &str) -> u32 {
    let mut data: *mut u8 = null_mut();
    let mut len: usize = 0;
    let status = unsafe {
        proxy_call_foreign_function(name.as_ptr(), name.len(), null(), 0, &mut data, &mut len)
    };
    if status == OK {
        drop(unsafe { owned(data, len) });
    }
    status
}
