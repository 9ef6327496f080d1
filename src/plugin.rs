//! The plugin's root and HTTP contexts, host-free: what `on_configure`, `on_tick`, `on_done` and
//! the HTTP callbacks do. The proxy-wasm adapter only forwards Envoy's callbacks here with its
//! implementations of the `host` traits; the simulation (`testkit::sim`) drives this same code
//! with fake ones, so the wiring is tested on the host.
//!
//! A root context plays one role, chosen by its configuration:
//! - `Filter` (the HTTP filter on each worker): routes and tallies through its `Worker`, and
//!   analyses through its `Analyser` when it wins the analyser lease (where no singleton holds
//!   it, as in Istio);
//! - `Singleton` (a bootstrap Wasm service, `{"role": "analyser"}`): analyses every canary whose
//!   filters registered in this proxy.

use crate::analyser::{Analyser, Singleton};
use crate::config::{parse_plugin, Config, Plugin};
use crate::hashing::mix64;
use crate::host::{HostErrors, HttpHost, Level, RootHost, SharedStore, Telemetry, Watched};
use crate::outcome::{status_from_header, Side};
use crate::worker::Worker;
use std::cell::RefCell;
use std::rc::Rc;

/// The singleton's tick: checks fall due at most this late.
pub const SINGLETON_TICK_MS: u32 = 100;

/// A filter's tick: a tenth of the analysis interval, between 20 and 100 ms. It paces the
/// publication of tallies and, on the leader, the checks (a check falls due at most one tick
/// late), so a short interval needs a short tick, and no interval needs one below 20 ms.
pub fn filter_tick_ms(cfg: &Config) -> u32 {
    (cfg.analysis.interval_ms / 10).clamp(20, 100) as u32
}

/// What a root context's callbacks reach the host through.
pub struct Env<'a> {
    pub store: &'a dyn SharedStore,
    pub telemetry: &'a mut dyn Telemetry,
    pub host: &'a mut dyn RootHost,
}

enum Role {
    Unconfigured,
    Filter {
        worker: Rc<RefCell<Worker>>,
        analyser: Box<Analyser>,
    },
    Singleton(Singleton),
}

/// One root context (one per plugin configuration and worker thread, or the singleton's).
pub struct Root {
    context_id: u32,
    role: Role,
    /// The token of the current configuration's worker and analyser (0 before one).
    token: u64,
    /// Host failures of this context and its streams, reported on each tick.
    errors: Rc<HostErrors>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root {
            context_id,
            role: Role::Unconfigured,
            token: 0,
            errors: Rc::default(),
        }
    }

    /// A token that tells this root context's writes from every other's: the host's random
    /// bits, mixed with the clock and the context id in case the host has none.
    fn new_token(&self, host: &dyn RootHost, now_ms: u64) -> u64 {
        let fallback = mix64(now_ms ^ (u64::from(self.context_id) << 40));
        host.random_u64()
            .map_or(fallback, |r| mix64(r ^ fallback))
            .max(1)
    }

    /// `on_configure`: false refuses the configuration (Envoy then rejects it).
    pub fn on_configure(&mut self, config: Option<Vec<u8>>, env: &mut Env<'_>) -> bool {
        let Some(bytes) = config else {
            env.telemetry.log(
                Level::Error,
                "invalid canary-guard configuration: no plugin configuration",
            );
            return false;
        };
        let now = now_ms(env.host.now_ns());
        match parse_plugin(&bytes) {
            Err(e) => {
                // One line naming the field and the value; false makes Envoy refuse the config.
                env.telemetry.log(Level::Error, &e.to_string());
                false
            }
            Ok(Plugin::Analyser) => {
                self.on_done(env);
                self.token = self.new_token(env.host, now);
                self.role = Role::Singleton(Singleton::new(self.token));
                env.telemetry
                    .log(Level::Info, "canary-guard: analyser singleton configured");
                env.host.set_tick_period_ms(SINGLETON_TICK_MS)
            }
            Ok(Plugin::Filter(cfg)) => {
                self.on_done(env);
                let cfg = *cfg;
                env.telemetry.define_all(&cfg.name);
                env.telemetry.log(
                    Level::Debug,
                    &format!("canary {} rev {}: filter configured (routing header {}, stable {}, canary {})",
                        cfg.name, cfg.revision, cfg.upstreams.header, cfg.upstreams.stable, cfg.upstreams.canary),
                );
                let tick = filter_tick_ms(&cfg);
                self.token = self.new_token(env.host, now);
                let analyser =
                    Box::new(Analyser::for_worker(cfg.clone(), self.token, bytes.clone()));
                let worker = Worker::new(cfg, bytes, self.token, now);
                self.role = Role::Filter {
                    worker: Rc::new(RefCell::new(worker)),
                    analyser,
                };
                env.host.set_tick_period_ms(tick)
            }
        }
    }

    /// `on_tick`: the worker publishes, then the analyser (if this context leads) analyses.
    pub fn on_tick(&mut self, env: &mut Env<'_>) {
        let now = now_ms(env.host.now_ns());
        match &mut self.role {
            Role::Filter { worker, analyser } => {
                let store = Watched {
                    store: env.store,
                    errors: &self.errors,
                };
                if let Ok(mut w) = worker.try_borrow_mut() {
                    w.tick(&store, env.telemetry, now);
                }
                analyser.tick(&store, env.telemetry, now);
                self.errors.report(&analyser.cfg.name, env.telemetry);
            }
            // The singleton counts host failures per canary it analyses.
            Role::Singleton(s) => s.tick(env.store, env.telemetry, now),
            Role::Unconfigured => {}
        }
    }

    /// `on_done` (and a reconfiguration): publish what is left, free the slot and the lease.
    pub fn on_done(&mut self, env: &mut Env<'_>) {
        match &mut self.role {
            Role::Filter { worker, analyser } => {
                if let Ok(mut w) = worker.try_borrow_mut() {
                    w.shutdown(env.store, env.telemetry);
                }
                analyser.shutdown(env.store, env.telemetry);
            }
            Role::Singleton(s) => s.shutdown(env.store, env.telemetry),
            Role::Unconfigured => {}
        }
    }

    /// A new HTTP stream of this context (one that routes nothing unless this is a filter).
    pub fn new_stream(&self) -> Stream {
        let worker = match &self.role {
            Role::Filter { worker, .. } => Some(worker.clone()),
            _ => None,
        };
        Stream {
            worker,
            errors: self.errors.clone(),
            side: None,
            set_cookie: None,
            started_ns: 0,
            status: 0,
        }
    }

    /// This context's token (for tests: which context holds a lease or a slot).
    pub fn token(&self) -> u64 {
        self.token
    }

    /// Whether this context's analyser holds the analyser lease of its canary.
    pub fn is_leading(&self) -> bool {
        match &self.role {
            Role::Filter { analyser, .. } => analyser.is_leading(),
            _ => false,
        }
    }

    /// The tally slot this context's worker publishes in, once it has one.
    pub fn slot_index(&self) -> Option<u32> {
        match &self.role {
            Role::Filter { worker, .. } => worker.try_borrow().ok()?.slot_index(),
            _ => None,
        }
    }
}

fn now_ms(now_ns: Option<u64>) -> u64 {
    now_ns.map_or(0, |ns| ns / 1_000_000)
}

/// One HTTP stream: routes at request headers, captures the outcome, records it at stream end.
pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    errors: Rc<HostErrors>,
    side: Option<Side>,
    set_cookie: Option<String>,
    started_ns: u64,
    /// Response status; stays 0 when no response headers were sent (counted as an error).
    status: u32,
}

impl Stream {
    /// Decides stable or canary and sets the routing header to that side's cluster.
    pub fn on_request_headers(&mut self, store: &dyn SharedStore, http: &mut dyn HttpHost) {
        let Some(worker) = &self.worker else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        let now = http.now_ns();
        self.started_ns = now.unwrap_or(0);
        let store = Watched {
            store,
            errors: &self.errors,
        };
        let decision = w.route(
            &store,
            &mut |name| http.request_header(name),
            now.map(|ns| ns / 1000),
        );
        let up = &w.cfg.upstreams;
        let cluster = match decision.side {
            Side::Stable => &up.stable,
            Side::Canary => &up.canary,
        };
        // Always overwrite: a client-sent value must never pick the canary. Setting the header
        // clears Envoy's route cache (ABI 0.2.1), so the route is matched again on it.
        if !http.set_request_header(&up.header, cluster) {
            self.errors.set_header_failed(&up.header);
            // Could not set ours: make sure the client's is not used either.
            http.set_request_header(&up.header, &up.stable);
            self.side = Some(Side::Stable);
            return;
        }
        self.side = Some(decision.side);
        self.set_cookie = decision.set_cookie;
    }

    /// Captures the status (local replies such as 503 or 504 pass here too) and hands out the
    /// affinity cookie. Reading `:status` here costs far less than the `response.code`
    /// property at stream end.
    pub fn on_response_headers(&mut self, http: &mut dyn HttpHost) {
        if self.side.is_some() {
            self.status = status_from_header(http.response_header(":status").as_deref());
        }
        if let Some(cookie) = self.set_cookie.take() {
            http.add_response_header("set-cookie", &cookie);
        }
    }

    /// Records the outcome. The duration runs from request headers to stream end on the host
    /// clock: the span the analysis judges, without the cost of the `request.duration` property.
    pub fn on_log(&mut self, http: &dyn HttpHost) {
        let (Some(side), Some(worker)) = (self.side, &self.worker) else {
            return;
        };
        let micros = http.now_ns().unwrap_or(0).saturating_sub(self.started_ns) / 1000;
        if let Ok(mut w) = worker.try_borrow_mut() {
            w.record(side, self.status, micros);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Stat;
    use crate::testkit::fake_host::{FakeHttp, FakeRoot, FakeStore, FakeTelemetry};
    use crate::testkit::sim::config;

    struct Rig {
        store: FakeStore,
        tel: FakeTelemetry,
        host: FakeRoot,
        root: Root,
    }

    impl Rig {
        fn new() -> Rig {
            Rig {
                store: FakeStore::default(),
                tel: FakeTelemetry::default(),
                host: FakeRoot {
                    now_ms: 1_000,
                    random: Some(42),
                    tick_ms: None,
                },
                root: Root::new(1),
            }
        }

        fn configure(&mut self, raw: &str) -> bool {
            let mut env = Env {
                store: &self.store,
                telemetry: &mut self.tel,
                host: &mut self.host,
            };
            self.root
                .on_configure(Some(raw.as_bytes().to_vec()), &mut env)
        }

        fn tick(&mut self) {
            let mut env = Env {
                store: &self.store,
                telemetry: &mut self.tel,
                host: &mut self.host,
            };
            self.root.on_tick(&mut env);
        }

        /// One request; the routing header the stream left.
        fn request(&mut self, http: &mut FakeHttp) -> Option<String> {
            let mut stream = self.root.new_stream();
            stream.on_request_headers(&self.store, http);
            http.response.insert(":status".into(), b"200".to_vec());
            stream.on_response_headers(http);
            stream.on_log(http);
            http.request_value("x-canary-upstream").map(str::to_string)
        }
    }

    #[test]
    fn a_refused_configuration_is_logged_as_one_error_line_and_returns_false() {
        let mut rig = Rig::new();
        assert!(!rig.configure(r#"{"name": "web"}"#));
        assert_eq!(rig.tel.logs.len(), 1);
        let (level, line) = &rig.tel.logs[0];
        assert_eq!(*level, Level::Error);
        assert!(
            line.starts_with("invalid canary-guard configuration: "),
            "{line}"
        );
        assert_eq!(
            rig.host.tick_ms, None,
            "no tick for a refused configuration"
        );
        let mut env = Env {
            store: &rig.store,
            telemetry: &mut rig.tel,
            host: &mut rig.host,
        };
        assert!(!rig.root.on_configure(None, &mut env));
        assert!(rig.tel.logged("no plugin configuration"));
    }

    #[test]
    fn the_role_sets_the_tick_period() {
        let mut rig = Rig::new();
        assert!(rig.configure(r#"{"role": "analyser"}"#));
        assert_eq!(rig.host.tick_ms, Some(SINGLETON_TICK_MS));
        for (interval, tick) in [("100ms", 20), ("500ms", 50), ("1s", 100), ("1h", 100)] {
            let mut rig = Rig::new();
            assert!(rig.configure(&config(&[("/analysis/interval", interval.into())])));
            assert_eq!(rig.host.tick_ms, Some(tick), "interval {interval}");
        }
    }

    #[test]
    fn a_stream_of_an_analyser_or_unconfigured_context_routes_nothing() {
        let mut rig = Rig::new();
        let mut http = FakeHttp::default();
        http.request
            .insert("x-canary-upstream".into(), b"web-canary".to_vec());
        assert_eq!(rig.request(&mut http).as_deref(), Some("web-canary"));
        assert!(rig.configure(r#"{"role": "analyser"}"#));
        assert_eq!(rig.request(&mut http).as_deref(), Some("web-canary"));
    }

    #[test]
    fn a_filter_overwrites_the_client_routing_header_and_counts_the_outcome() {
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        let mut http = FakeHttp::default();
        http.request
            .insert("x-canary-upstream".into(), b"web-canary".to_vec());
        // No analysis state yet: stable, whatever the client sent.
        assert_eq!(rig.request(&mut http).as_deref(), Some("web-stable"));
        rig.tick();
        assert_eq!(rig.tel.counter_of("web", Stat::StableRequests), 1);
    }

    #[test]
    fn a_header_the_host_will_not_set_sends_stable_and_is_counted_as_a_host_error() {
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        let mut http = FakeHttp {
            refuse_headers: true,
            ..FakeHttp::default()
        };
        rig.request(&mut http);
        rig.store.broken.set(Some(10));
        rig.tick();
        assert_eq!(rig.tel.counter_of("web", Stat::HostErrorsSetHeader), 1);
        assert!(rig.tel.counter_of("web", Stat::HostErrorsGetSharedData) > 0);
        // The request still counts, as stable.
        assert_eq!(rig.tel.counter_of("web", Stat::StableRequests), 1);
        assert!(
            rig.tel.logs.iter().any(|(l, m)| *l == Level::Debug
                && m.contains("host call(s) failed")
                && m.contains("status 10")),
            "{:?}",
            rig.tel.logs
        );
    }
}
