//! min-router: a minimal Proxy-Wasm router used as a benchmark baseline (`make bench`).
//!
//! Per request it does what every Wasm canary router has to do: read one shared-data key
//! (`canary-guard/web/state`, which its root context writes once with weight 10, so the read
//! finds a value as canary-guard's does), take a weight from it (decoded trivially; 10 when the
//! key is absent or unreadable), and set `x-canary-upstream` to `web-canary` with probability
//! weight/100, else `web-stable`. No tallies, no analysis, no configuration parsing.
//!
//! Plugin configuration `noop` turns it into an empty filter (no host call per request),
//! the benchmark's arm D: the floor of merely having a Wasm filter in the chain.
//!
//! Plugin configuration `calibrate` times each kind of host call a router makes, in a loop on
//! the first request (and `:status` on its response), and logs one line per kind in ns/call:
//! what the Wasm floor is made of, measured inside the real Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use std::cell::Cell;
use std::rc::Rc;

const STATE_KEY: &str = "canary-guard/web/state";
const HEADER: &str = "x-canary-upstream";
const DEFAULT_WEIGHT: u64 = 10;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { noop: false, calibrate: false, rng: Rc::new(Cell::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(context_id))) })
    });
}}

struct Root {
    noop: bool,
    calibrate: bool,
    rng: Rc<Cell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let cfg = self.get_plugin_configuration();
        self.noop = matches!(cfg.as_deref(), Some(b"noop"));
        self.calibrate = matches!(cfg.as_deref(), Some(b"calibrate"));
        if !self.noop && matches!(self.get_shared_data(STATE_KEY), (None, _)) {
            // Like for like with canary-guard, whose analyser keeps this key written: reading an
            // existing value costs more than a miss (the host allocates its copy in the VM).
            let _ = self.set_shared_data(STATE_KEY, Some(&state_record(DEFAULT_WEIGHT as u8)), None);
        }
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.noop {
            Some(Box::new(Noop))
        } else if self.calibrate {
            Some(Box::new(calibrate::Calibrate::default()))
        } else {
            Some(Box::new(Router {
                rng: self.rng.clone(),
            }))
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Noop;
impl Context for Noop {}
impl HttpContext for Noop {}

struct Router {
    rng: Rc<Cell<u64>>,
}

impl Context for Router {}

/// A state record shaped like canary-guard's (same prefix, same size): version 2, revision
/// "v2", phase Progressing, `weight`, then counters, times and the checksum left at zero.
fn state_record(weight: u8) -> Vec<u8> {
    let mut r = b"CGst\x02\x02v2\x01".to_vec();
    r.push(weight);
    r.resize(42, 0);
    r
}

/// canary-guard's state record: magic(4) version(1) revision(len u8 + bytes) phase(1) weight(1),
/// then counters and (since version 2) a checksum trailer, neither read here.
fn weight_of(bytes: &[u8]) -> Option<u64> {
    let len = usize::from(*bytes.get(5)?);
    let w = u64::from(*bytes.get(5 + 1 + len + 1)?);
    (bytes.get(..4)? == b"CGst" && w <= 100).then_some(w)
}

impl HttpContext for Router {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let weight = match self.get_shared_data(STATE_KEY) {
            (Some(bytes), _) => weight_of(&bytes).unwrap_or(DEFAULT_WEIGHT),
            (None, _) => DEFAULT_WEIGHT,
        };
        // xorshift64*: cheap and good enough for a 0..100 draw.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        let draw = x.wrapping_mul(0x2545_f491_4f6c_dd1d) % 100;
        let cluster = if draw < weight {
            "web-canary"
        } else {
            "web-stable"
        };
        self.set_http_request_header(HEADER, Some(cluster));
        Action::Continue
    }
}

/// Host-call cost calibration (`calibrate` configuration): see the crate comment.
mod calibrate {
    use proxy_wasm::hostcalls;
    use proxy_wasm::traits::{Context, HttpContext};
    use proxy_wasm::types::{Action, MapType};
    use std::cell::Cell;
    use std::time::{Duration, SystemTime};

    const N: u32 = 20_000;

    thread_local! {
        static DONE: Cell<bool> = const { Cell::new(false) };
    }

    #[derive(Default)]
    pub struct Calibrate {
        active: bool,
    }

    impl Context for Calibrate {}

    fn now() -> SystemTime {
        hostcalls::get_current_time().unwrap_or(SystemTime::UNIX_EPOCH)
    }

    /// Runs `f` N times; the best of 5 runs, in ns per call, minus nothing (the loop itself is
    /// reported as "empty loop").
    fn time(label: &str, mut f: impl FnMut()) {
        let mut best = u128::MAX;
        for _ in 0..5 {
            let start = now();
            for _ in 0..N {
                f();
            }
            let took = now().duration_since(start).unwrap_or(Duration::ZERO);
            best = best.min(took.as_nanos());
        }
        let msg = format!("calibrate {label}: {} ns/call", best / u128::from(N));
        let _ = hostcalls::log(proxy_wasm::types::LogLevel::Warn, &msg);
    }

    impl HttpContext for Calibrate {
        fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
            if DONE.with(|d| d.replace(true)) {
                return Action::Continue;
            }
            self.active = true;
            let mut sink = 0u64;
            time("empty loop", || sink = sink.wrapping_add(1));
            time("clock (proxy_get_current_time_nanoseconds)", || {
                let _ = hostcalls::get_current_time();
            });
            time("request header, absent", || {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, "x-user-id");
            });
            time("request header, present (:path)", || {
                let _ = hostcalls::get_map_value_bytes(MapType::HttpRequestHeaders, ":path");
            });
            time("all request headers (get_header_map_pairs)", || {
                let _ = hostcalls::get_map_bytes(MapType::HttpRequestHeaders);
            });
            time("shared data read (30 B)", || {
                let _ = hostcalls::get_shared_data("canary-guard/web/state");
            });
            time("property request.time", || {
                let _ = hostcalls::get_property(vec!["request", "time"]);
            });
            time("header replace (x-calibrate)", || {
                let _ = hostcalls::set_map_value_bytes(
                    MapType::HttpRequestHeaders,
                    "x-calibrate",
                    Some(b"web-stable"),
                );
            });
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
            if self.active {
                time("response :status", || {
                    let _ = hostcalls::get_map_value_bytes(MapType::HttpResponseHeaders, ":status");
                });
            }
            Action::Continue
        }

        fn on_log(&mut self) {
            if self.active {
                time("property request.duration (on_log)", || {
                    let _ = hostcalls::get_property(vec!["request", "duration"]);
                });
                time("property response.code (on_log)", || {
                    let _ = hostcalls::get_property(vec!["response", "code"]);
                });
            }
        }
    }
}
