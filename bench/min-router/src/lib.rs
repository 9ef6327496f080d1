//! min-router: a minimal Proxy-Wasm router used as a benchmark baseline (`make bench`).
//!
//! Per request it does what every Wasm canary router has to do: read one shared-data key
//! (`canary-guard/web/state`), take a weight from it (decoded trivially; 10 when the key is
//! absent or unreadable), and set `x-canary-upstream` to `web-canary` with probability
//! weight/100, else `web-stable`. No tallies, no analysis, no configuration parsing.
//!
//! Plugin configuration `noop` turns it into an empty filter (no host call per request),
//! the benchmark's arm D: the floor of merely having a Wasm filter in the chain.

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
        Box::new(Root { noop: false, rng: Rc::new(Cell::new(0x9e37_79b9_7f4a_7c15 ^ u64::from(context_id))) })
    });
}}

struct Root {
    noop: bool,
    rng: Rc<Cell<u64>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.noop = matches!(self.get_plugin_configuration().as_deref(), Some(b"noop"));
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        if self.noop {
            Some(Box::new(Noop))
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
