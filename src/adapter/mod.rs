//! The proxy-wasm adapter: root and HTTP contexts that wire Envoy's callbacks to the core.
//! Host calls live in `ffi` and `host_impl`; everything else is in the pure modules.

mod ffi;
mod host_impl;

use crate::analyser::{Analyser, Singleton};
use crate::config::{parse_plugin, Plugin};
use crate::routing::{mix64, Side};
use crate::tally::status_from_header;
use crate::worker::Worker;
use host_impl::{HostStore, HostTelemetry};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

const LOG_DEBUG: u32 = 1;
const LOG_INFO: u32 = 2;
const LOG_ERROR: u32 = 4;
/// The singleton's tick: checks fall due at most this late.
const SINGLETON_TICK_MS: u32 = 100;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(Root { context_id, role: Role::Unconfigured, telemetry: HostTelemetry::default() })
    });
}}

enum Role {
    Unconfigured,
    /// HTTP filter on a worker: routes and tallies; analyses when elected leader.
    Filter {
        worker: Rc<RefCell<Worker>>,
        analyser: Box<Analyser>,
    },
    /// Bootstrap singleton: analyses every registered canary.
    Singleton(Singleton),
}

struct Root {
    context_id: u32,
    role: Role,
    telemetry: HostTelemetry,
}

fn now_ms() -> u64 {
    ffi::now_ms().unwrap_or(0)
}

impl Root {
    /// A token that tells this root context's writes from every other's.
    fn token(&self) -> u64 {
        let fallback =
            mix64(now_ms() ^ (u64::from(self.context_id) << 40) ^ (self as *const Root as u64));
        ffi::random_u64()
            .map_or(fallback, |r| mix64(r ^ fallback))
            .max(1)
    }

    fn shutdown(&mut self) {
        match &mut self.role {
            Role::Filter { worker, analyser } => {
                if let Ok(mut w) = worker.try_borrow_mut() {
                    w.shutdown(&HostStore, &mut self.telemetry);
                }
                analyser.shutdown(&HostStore, &mut self.telemetry);
            }
            Role::Singleton(s) => s.shutdown(&HostStore, &mut self.telemetry),
            Role::Unconfigured => {}
        }
    }
}

impl Context for Root {
    fn on_done(&mut self) -> bool {
        self.shutdown();
        true
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let Some(bytes) = ffi::plugin_configuration(size) else {
            ffi::log(
                LOG_ERROR,
                "invalid canary-guard configuration: no plugin configuration",
            );
            return false;
        };
        let now = now_ms();
        match parse_plugin(&bytes) {
            Err(e) => {
                // One line naming the field and the value; false makes Envoy refuse the config.
                ffi::log(LOG_ERROR, &e.to_string());
                false
            }
            Ok(Plugin::Analyser) => {
                self.shutdown();
                self.role = Role::Singleton(Singleton::new(self.token()));
                ffi::log(LOG_INFO, "canary-guard: analyser singleton configured");
                ffi::set_tick_period_ms(SINGLETON_TICK_MS)
            }
            Ok(Plugin::Filter(cfg)) => {
                self.shutdown();
                let cfg = *cfg;
                let tick = (cfg.analysis.interval_ms / 10).clamp(20, 100) as u32;
                self.telemetry.define_all(&cfg.name);
                ffi::log(
                    LOG_DEBUG,
                    &format!("canary {} rev {}: filter configured (routing header {}, stable {}, canary {})",
                        cfg.name, cfg.revision, cfg.upstreams.header, cfg.upstreams.stable, cfg.upstreams.canary),
                );
                let token = self.token();
                let analyser = Box::new(Analyser::for_worker(cfg.clone(), token, bytes.clone()));
                let worker = Worker::new(cfg, bytes, token, now);
                self.role = Role::Filter {
                    worker: Rc::new(RefCell::new(worker)),
                    analyser,
                };
                ffi::set_tick_period_ms(tick)
            }
        }
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        match &mut self.role {
            Role::Filter { worker, analyser } => {
                if let Ok(mut w) = worker.try_borrow_mut() {
                    w.tick(&HostStore, &mut self.telemetry, now);
                }
                analyser.tick(&HostStore, &mut self.telemetry, now);
            }
            Role::Singleton(s) => s.tick(&HostStore, &mut self.telemetry, now),
            Role::Unconfigured => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = match &self.role {
            Role::Filter { worker, .. } => Some(worker.clone()),
            _ => None,
        };
        Some(Box::new(Http {
            worker,
            side: None,
            set_cookie: None,
            started_ns: 0,
            status: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Http {
    worker: Option<Rc<RefCell<Worker>>>,
    side: Option<Side>,
    set_cookie: Option<String>,
    started_ns: u64,
    /// Response status; stays 0 when no response headers were sent (counted as an error).
    status: u32,
}

impl Context for Http {}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = &self.worker else {
            return Action::Continue;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return Action::Continue;
        };
        let now = ffi::now_ns();
        self.started_ns = now.unwrap_or(0);
        let decision = w.route(
            &HostStore,
            &mut |name| ffi::header(ffi::REQUEST_HEADERS, name),
            now.map(|ns| ns / 1000),
        );
        let up = &w.cfg.upstreams;
        let cluster = match decision.side {
            Side::Stable => &up.stable,
            Side::Canary => &up.canary,
        };
        // Always overwrite: a client-sent value must never pick the canary. Setting the header
        // clears Envoy's route cache (ABI 0.2.1), so the route is matched again on it.
        if !ffi::replace_header(ffi::REQUEST_HEADERS, &up.header, cluster) {
            // Could not set ours: make sure the client's is not used either.
            ffi::replace_header(ffi::REQUEST_HEADERS, &up.header, &up.stable);
            self.side = Some(Side::Stable);
            return Action::Continue;
        }
        self.side = Some(decision.side);
        self.set_cookie = decision.set_cookie;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Local replies (503 no upstream, 504 timeout) pass here too. Reading `:status` here
        // costs far less than the `response.code` property at stream end.
        if self.side.is_some() {
            self.status =
                status_from_header(ffi::header(ffi::RESPONSE_HEADERS, ":status").as_deref());
        }
        if let Some(cookie) = self.set_cookie.take() {
            ffi::add_header(ffi::RESPONSE_HEADERS, "set-cookie", &cookie);
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(side), Some(worker)) = (self.side, &self.worker) else {
            return;
        };
        // Request headers to stream end on the host clock: the same span the analysis judges,
        // without the cost of the request.duration property.
        let micros = ffi::now_ns().unwrap_or(0).saturating_sub(self.started_ns) / 1000;
        if let Ok(mut w) = worker.try_borrow_mut() {
            w.record(side, self.status, micros);
        }
    }
}
