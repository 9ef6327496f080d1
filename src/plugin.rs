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
//!   filters registered in this proxy;
//! - `Inert` (an invalid configuration that Envoy must not refuse, see `invalid_config`): sends
//!   every request to stable and repeats its error.

use crate::analyser::{Analyser, Singleton};
use crate::config::{parse_plugin, Config, ConfigError, Plugin};
use crate::control::{self, ControlConfig};
use crate::hashing::mix64;
use crate::host::{
    ControlHost, HostError, HostErrors, HttpHost, Level, RootHost, RouteCache, SharedStore, Stat,
    Telemetry, Watched,
};
use crate::invalid_config::{
    decide, Inert, InertRoute, Policy, Verdict, INERT_TICK_MS, POLICY_ENV,
};
use crate::outcome::{answer_is_error, grpc_status_from_header, status_from_header, Outcome, Side};
use crate::store::live::{self, Live};
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
    Inert(Inert),
    /// The control endpoint: answers operators, routes nothing.
    Control(Rc<ControlConfig>),
}

/// The heartbeat a filter with a valid configuration keeps in `store::live`.
struct Beat {
    key: String,
    record: Live,
    next_ms: u64,
}

/// One root context (one per plugin configuration and worker thread, or the singleton's).
pub struct Root {
    context_id: u32,
    role: Role,
    /// The token of the current configuration's worker and analyser (0 before one).
    token: u64,
    /// Host failures of this context and its streams, reported on each tick.
    errors: Rc<HostErrors>,
    /// Set while this context serves a valid filter configuration (and knows its plugin name).
    beat: Option<Beat>,
}

impl Root {
    pub fn new(context_id: u32) -> Self {
        Root {
            context_id,
            role: Role::Unconfigured,
            token: 0,
            errors: Rc::default(),
            beat: None,
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
        let now = now_ms(env.host.now_ns());
        // Istio sends an empty configuration for a WasmPlugin without pluginConfig.
        let Some(bytes) = config.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) else {
            let e = ConfigError {
                field: String::new(),
                message: "no plugin configuration".into(),
            };
            return self.on_invalid(&e, &[], now, env);
        };
        match parse_plugin(&bytes) {
            Err(e) => self.on_invalid(&e, &bytes, now, env),
            Ok(Plugin::Analyser) => {
                self.on_done(env);
                self.token = self.new_token(env.host, now);
                self.role = Role::Singleton(Singleton::new(self.token));
                env.telemetry
                    .log(Level::Info, "canary-guard: analyser singleton configured");
                env.host.set_tick_period_ms(SINGLETON_TICK_MS)
            }
            Ok(Plugin::Control(cfg)) => {
                self.on_done(env);
                self.role = Role::Control(Rc::new(cfg));
                env.telemetry
                    .log(Level::Info, "canary-guard: control endpoint configured");
                true
            }
            Ok(Plugin::Filter(cfg)) => {
                self.on_done(env);
                let cfg = *cfg;
                env.telemetry.define_all(&cfg.name);
                // A gauge outlives the context that set it: clear an earlier inert one's mark.
                env.telemetry.gauge(&cfg.name, Stat::ConfigInvalid, 0);
                env.telemetry.log(
                    Level::Debug,
                    &format!("canary {} rev {}: filter configured (routing header {}, stable {}, canary {})",
                        cfg.name, cfg.revision, cfg.upstreams.header, cfg.upstreams.stable, cfg.upstreams.canary),
                );
                for notice in &cfg.analysis.notices {
                    env.telemetry.log(
                        Level::Warn,
                        &format!(
                            "canary {} rev {}: configuration notice: {notice}",
                            cfg.name, cfg.revision
                        ),
                    );
                }
                let tick = filter_tick_ms(&cfg);
                self.token = self.new_token(env.host, now);
                self.beat = env.host.plugin_name().map(|plugin| Beat {
                    key: live::key(&plugin),
                    record: Live {
                        at_ms: now,
                        canary: cfg.name.clone(),
                        revision: cfg.revision.clone(),
                    },
                    next_ms: now,
                });
                beat_if_due(&mut self.beat, env.store, now);
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

    /// An invalid configuration: refused where Envoy keeps serving without it, else run inert
    /// (`invalid_config`). Either way one error line names the field and the value.
    fn on_invalid(&mut self, e: &ConfigError, bytes: &[u8], now: u64, env: &mut Env<'_>) -> bool {
        let policy =
            Policy::from_env(env.host.env_var(POLICY_ENV).as_deref()).unwrap_or_else(|msg| {
                env.telemetry
                    .log(Level::Warn, &format!("canary-guard: {msg}"));
                Policy::Auto
            });
        let serving = env
            .host
            .plugin_name()
            .and_then(|plugin| live::serving(env.store, &live::key(&plugin), now));
        match decide(policy, serving.is_some()) {
            Verdict::Refuse => {
                let why = match &serving {
                    Some(s) => format!(
                        "refused: canary {} rev {} keeps serving",
                        s.canary, s.revision
                    ),
                    None => format!("refused ({POLICY_ENV}=refuse)"),
                };
                env.telemetry.log(Level::Error, &format!("{e}; {why}"));
                false
            }
            Verdict::Inert => {
                self.on_done(env);
                let inert = Inert::new(e, bytes, now);
                inert.announce(env.telemetry);
                self.role = Role::Inert(inert);
                self.beat = None;
                env.host.set_tick_period_ms(INERT_TICK_MS)
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
                analyser.tick_with(&store, env.telemetry, env.host, now);
                self.errors.report(&analyser.cfg.name, env.telemetry);
                beat_if_due(&mut self.beat, &store, now);
            }
            Role::Inert(inert) => {
                if inert.repeat_due(now) {
                    inert.announce(env.telemetry);
                }
                self.errors.report(&inert.canary, env.telemetry);
            }
            // The singleton counts host failures per canary it analyses.
            Role::Singleton(s) => s.tick(env.store, env.telemetry, env.host, now),
            Role::Unconfigured | Role::Control(_) => {}
        }
    }

    /// The answer to a call this context made (fleet mode's etcd calls); `status` is `None`
    /// when the call failed (no upstream, reset, timeout).
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        env: &mut Env<'_>,
    ) {
        let now = now_ms(env.host.now_ns());
        match &mut self.role {
            Role::Filter { analyser, .. } => {
                let store = Watched {
                    store: env.store,
                    errors: &self.errors,
                };
                analyser.on_http_call_response(
                    token,
                    status,
                    body,
                    &store,
                    env.telemetry,
                    env.host,
                    now,
                );
            }
            Role::Singleton(s) => s.on_http_call_response(
                token,
                status,
                body,
                env.store,
                env.telemetry,
                env.host,
                now,
            ),
            Role::Inert(_) | Role::Unconfigured | Role::Control(_) => {}
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
                analyser.leave_fleet(env.telemetry, env.host);
            }
            Role::Singleton(s) => {
                s.shutdown(env.store, env.telemetry);
                s.leave_fleet(env.telemetry, env.host);
            }
            Role::Inert(_) | Role::Unconfigured | Role::Control(_) => {}
        }
    }

    /// A new HTTP stream of this context: a filter's routes and tallies, an inert one's sends
    /// everything to stable, any other routes nothing.
    pub fn new_stream(&self) -> Stream {
        let (worker, inert_route) = match &self.role {
            Role::Filter { worker, .. } => (Some(worker.clone()), None),
            Role::Inert(inert) => (None, Some(inert.route.clone())),
            _ => (None, None),
        };
        Stream {
            worker,
            inert_route,
            errors: self.errors.clone(),
            side: None,
            set_cookie: None,
            started_ns: 0,
            request_end_ns: None,
            response_ns: None,
            status: 0,
            grpc_status: None,
            in_flight_ms: None,
        }
    }

    /// A control endpoint's HTTP stream (`None` unless this context is the control role).
    pub fn new_control_stream(&self) -> Option<ControlStream> {
        match &self.role {
            Role::Control(cfg) => Some(ControlStream {
                cfg: cfg.clone(),
                method: String::new(),
                path: String::new(),
                authorization: None,
                peer: None,
                answered: false,
            }),
            _ => None,
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

/// Renews a filter's `store::live` heartbeat once every `live::BEAT_EVERY_MS`.
fn beat_if_due(beat: &mut Option<Beat>, store: &dyn SharedStore, now: u64) {
    if let Some(b) = beat {
        if now >= b.next_ms {
            b.record.at_ms = now;
            live::beat(store, &b.key, &b.record);
            b.next_ms = now.saturating_add(live::BEAT_EVERY_MS);
        }
    }
}

fn now_ms(now_ns: Option<u64>) -> u64 {
    now_ns.map_or(0, |ns| ns / 1_000_000)
}

/// One HTTP stream: routes at request headers, captures the outcome, records it at stream end.
/// One request to the control endpoint: answered locally once its body is in.
pub struct ControlStream {
    cfg: Rc<ControlConfig>,
    method: String,
    path: String,
    authorization: Option<String>,
    peer: Option<String>,
    answered: bool,
}

impl ControlStream {
    /// Request headers; answers at once when there is no body. `false`: stop the request
    /// here (it is answered locally, never forwarded).
    pub fn on_request_headers(
        &mut self,
        store: &dyn SharedStore,
        http: &mut dyn ControlHost,
        end_of_stream: bool,
    ) {
        let text = |name: &str| {
            http.request_header(name)
                .map(|v| String::from_utf8_lossy(&v).into_owned())
        };
        self.method = text(":method").unwrap_or_default();
        self.path = text(":path").unwrap_or_default();
        self.authorization = text("authorization");
        self.peer = http.peer_address();
        if end_of_stream {
            self.answer(store, http, &[], false);
        }
    }

    /// Request body so far (`size` bytes); answers at its end, or as soon as it is too large.
    pub fn on_request_body(
        &mut self,
        store: &dyn SharedStore,
        http: &mut dyn ControlHost,
        size: usize,
        end_of_stream: bool,
    ) {
        if size > control::MAX_BODY {
            self.answer(store, http, &[], true);
        } else if end_of_stream {
            let body = http.request_body(size).unwrap_or_default();
            self.answer(store, http, &body, false);
        }
    }

    fn answer(
        &mut self,
        store: &dyn SharedStore,
        http: &mut dyn ControlHost,
        body: &[u8],
        too_large: bool,
    ) {
        if self.answered {
            return;
        }
        self.answered = true;
        let req = control::Request {
            method: &self.method,
            path: &self.path,
            authorization: self.authorization.as_deref(),
            peer: self.peer.as_deref(),
            body,
            too_large,
        };
        let now = now_ms(http.now_ns());
        let resp = control::handle(&self.cfg, &req, store, now);
        let mut bytes = resp.body.to_string().into_bytes();
        bytes.push(b'\n');
        let _sent = http.send_response(resp.status, &bytes);
    }
}

pub struct Stream {
    worker: Option<Rc<RefCell<Worker>>>,
    /// An inert configuration's treatment of the routing header.
    inert_route: Option<Rc<InertRoute>>,
    errors: Rc<HostErrors>,
    side: Option<Side>,
    set_cookie: Option<String>,
    started_ns: u64,
    /// When the request was complete (its last byte, headers or body or trailers), and when
    /// the response headers came: the upstream's time is between the two.
    request_end_ns: Option<u64>,
    response_ns: Option<u64>,
    /// Response status; stays 0 when no response headers were sent (the client went away).
    status: u32,
    /// `grpc-status` of a trailers-only response, or of the trailers.
    grpc_status: Option<u32>,
    /// Since when (ms) this canary request is complete and unanswered (shown to the analyser).
    in_flight_ms: Option<u64>,
}

impl Stream {
    /// Decides stable or canary and sets the routing header to that side's cluster.
    pub fn on_request_headers(
        &mut self,
        store: &dyn SharedStore,
        http: &mut dyn HttpHost,
        end_of_stream: bool,
    ) {
        let Some(worker) = &self.worker else {
            match self.inert_route.as_deref() {
                Some(InertRoute::Stable { header, stable }) => {
                    self.set_routing_header(http, header, stable);
                }
                Some(InertRoute::Remove { header }) => {
                    if http.remove_request_header(header) {
                        self.clear_route_cache(http);
                    } else {
                        self.errors.set_header_failed(header);
                    }
                }
                None => {}
            }
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        let now = http.now_ns();
        self.started_ns = now.unwrap_or(0);
        if end_of_stream {
            self.request_end_ns = now;
        }
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
        if !self.set_routing_header(http, &up.header, cluster) {
            // Could not set ours: make sure the client's is not used either (the failure is
            // counted once).
            if http.set_request_header(&up.header, &up.stable) {
                self.clear_route_cache(http);
            }
            self.side = Some(Side::Stable);
            return;
        }
        self.side = Some(decision.side);
        self.set_cookie = decision.set_cookie;
        drop(w);
        if end_of_stream {
            self.awaiting_answer(now);
        }
    }

    /// The request is complete (the canary has all of it): from now until the answer it is a
    /// canary request in flight, which the analysis judges if it waits too long. A request
    /// still uploading is not: a slow client is not a slow canary.
    fn awaiting_answer(&mut self, now_ns: Option<u64>) {
        if self.side != Some(Side::Canary) || self.response_ns.is_some() {
            return;
        }
        let (Some(ns), Some(worker)) = (now_ns, &self.worker) else {
            return;
        };
        if let Ok(mut w) = worker.try_borrow_mut() {
            let ms = ns / 1_000_000;
            w.begin_canary(ms);
            self.in_flight_ms = Some(ms);
        }
    }

    /// The canary answered (or the stream ended): no longer in flight.
    fn answered(&mut self) {
        if let (Some(ms), Some(worker)) = (self.in_flight_ms.take(), &self.worker) {
            if let Ok(mut w) = worker.try_borrow_mut() {
                w.end_canary(ms);
            }
        }
    }

    /// Sets the routing header (always overwriting: a client-sent value must never pick the
    /// canary) and has the route matched again on it. For ABI 0.2.1 modules Envoy clears the
    /// route cache on the header change itself; it stops doing so for newer ABIs, so the
    /// explicit `clear_route_cache` keeps routing right if a later SDK exports one. False (and
    /// counted) when the host refused the header.
    fn set_routing_header(&self, http: &mut dyn HttpHost, header: &str, value: &str) -> bool {
        if !http.set_request_header(header, value) {
            self.errors.set_header_failed(header);
            return false;
        }
        self.clear_route_cache(http);
        true
    }

    fn clear_route_cache(&self, http: &mut dyn HttpHost) {
        if let RouteCache::Failed(HostError(status)) = http.clear_route_cache() {
            self.errors.clear_route_cache_failed(status);
        }
    }

    /// The request body (or trailers) arrived: at its end the request is complete.
    pub fn on_request_end(&mut self, http: &dyn HttpHost, end_of_stream: bool) {
        if end_of_stream && self.side.is_some() && self.request_end_ns.is_none() {
            self.request_end_ns = http.now_ns();
            self.awaiting_answer(self.request_end_ns);
        }
    }

    /// Captures the status (local replies such as 503 or 504 pass here too), a trailers-only
    /// gRPC status, when the answer came, and hands out the affinity cookie. Reading `:status`
    /// here costs far less than the `response.code` property at stream end.
    pub fn on_response_headers(&mut self, http: &mut dyn HttpHost) {
        if self.side.is_some() {
            self.answered();
            self.response_ns = http.now_ns();
            self.status = status_from_header(http.response_header(":status").as_deref());
            if self.status == 200 {
                self.grpc_status =
                    grpc_status_from_header(http.response_header("grpc-status").as_deref());
            }
        }
        if let Some(cookie) = self.set_cookie.take() {
            http.add_response_header("set-cookie", &cookie);
        }
    }

    /// A gRPC response's status comes in its trailers.
    pub fn on_response_trailers(&mut self, http: &dyn HttpHost) {
        if self.side.is_some() {
            if let Some(code) =
                grpc_status_from_header(http.response_trailer("grpc-status").as_deref())
            {
                self.grpc_status = Some(code);
            }
        }
    }

    /// Records the outcome (`outcome`'s attribution). Times are the host clock's, read in the
    /// callbacks, without the cost of the `request.duration` property: an answered request
    /// from its last byte to the response headers (the upstream's time, not the client's
    /// upload or download); an abandoned one, how long its client waited after it was complete.
    pub fn on_log(&mut self, http: &dyn HttpHost) {
        self.answered();
        let (Some(side), Some(worker)) = (self.side, &self.worker) else {
            return;
        };
        let Ok(mut w) = worker.try_borrow_mut() else {
            return;
        };
        let outcome = match self.response_ns {
            Some(answered) if self.status != 0 => {
                // A response before the request was complete (an early 413) is timed from
                // the request headers.
                let from = self
                    .request_end_ns
                    .filter(|e| *e <= answered)
                    .unwrap_or(self.started_ns);
                Outcome::Answered {
                    error: answer_is_error(self.status, self.grpc_status, w.cfg.grpc_error_codes),
                    micros: answered.saturating_sub(from) / 1000,
                }
            }
            _ => Outcome::Abandoned {
                waited_micros: self
                    .request_end_ns
                    .map_or(0, |e| http.now_ns().unwrap_or(e).saturating_sub(e) / 1000),
            },
        };
        w.record_outcome(side, outcome);
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
                    plugin_name: Some("istio-system.canary-guard".into()),
                    ..FakeRoot::default()
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

        /// Configures another root context of this proxy (Envoy's update of a plugin).
        fn configure_another(&mut self, context_id: u32, raw: &str) -> bool {
            let mut env = Env {
                store: &self.store,
                telemetry: &mut self.tel,
                host: &mut self.host,
            };
            Root::new(context_id).on_configure(Some(raw.as_bytes().to_vec()), &mut env)
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
            stream.on_request_headers(&self.store, http, true);
            http.response.insert(":status".into(), b"200".to_vec());
            stream.on_response_headers(http);
            stream.on_log(http);
            http.request_value("x-canary-upstream").map(str::to_string)
        }
    }

    /// The example configuration with strictly decreasing step weights: invalid, but with a
    /// usable name and routing header.
    fn invalid() -> String {
        config(&[("/analysis/stepWeights", serde_json::json!([30, 10, 50]))])
    }

    fn error_lines(tel: &FakeTelemetry) -> Vec<&str> {
        tel.logs
            .iter()
            .filter(|(l, _)| *l == Level::Error)
            .map(|(_, m)| m.as_str())
            .collect()
    }

    #[test]
    fn with_the_refuse_policy_an_invalid_configuration_is_refused_with_one_error_line() {
        let mut rig = Rig::new();
        rig.host.env.insert(POLICY_ENV.into(), "refuse".into());
        assert!(!rig.configure(r#"{"name": "web"}"#));
        assert_eq!(rig.tel.logs.len(), 1);
        let (level, line) = &rig.tel.logs[0];
        assert_eq!(*level, Level::Error);
        assert!(
            line.starts_with("invalid canary-guard configuration: "),
            "{line}"
        );
        assert!(
            line.ends_with("refused (CANARY_GUARD_INVALID_CONFIG=refuse)"),
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
    fn a_first_invalid_configuration_runs_inert_and_sends_everything_to_stable() {
        let mut rig = Rig::new();
        assert!(rig.configure(&invalid()), "accepted inert");
        let errors = error_lines(&rig.tel);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].starts_with(
                "invalid canary-guard configuration: analysis.stepWeights: [30, 10, 50]"
            ),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("every request gets x-canary-upstream: web-stable"));
        assert_eq!(rig.tel.gauge_of("web", Stat::ConfigInvalid), Some(1));
        assert_eq!(rig.host.tick_ms, Some(INERT_TICK_MS));
        // A client's canary value is overwritten and the route matched again on ours.
        let mut http = FakeHttp::default();
        http.request
            .insert("x-canary-upstream".into(), b"web-canary".to_vec());
        assert_eq!(rig.request(&mut http).as_deref(), Some("web-stable"));
        assert_eq!(http.route_cache_clears, vec![1]);
        // Nothing is tallied, nothing analysed: no state, no lease, no slot.
        rig.tick();
        assert_eq!(rig.tel.counter_of("web", Stat::StableRequests), 0);
        assert!(!rig.root.is_leading());
        // The error is repeated every INERT_LOG_EVERY_MS.
        rig.host.now_ms += crate::invalid_config::INERT_LOG_EVERY_MS;
        rig.tick();
        assert_eq!(error_lines(&rig.tel).len(), 2);
    }

    #[test]
    fn an_inert_configuration_without_a_usable_routing_header_removes_the_default_one() {
        let mut rig = Rig::new();
        let mut env = Env {
            store: &rig.store,
            telemetry: &mut rig.tel,
            host: &mut rig.host,
        };
        assert!(rig.root.on_configure(Some(b" ".to_vec()), &mut env));
        assert!(rig.tel.logged("no plugin configuration; not applied"));
        assert_eq!(rig.tel.gauge_of("unnamed", Stat::ConfigInvalid), Some(1));
        // The default routing header is removed: a client cannot pick the canary with it.
        let mut http = FakeHttp::default();
        http.request
            .insert("x-canary-upstream".into(), b"web-canary".to_vec());
        assert_eq!(rig.request(&mut http), None);
        assert_eq!(http.route_cache_clears, vec![1]);
    }

    #[test]
    fn an_invalid_update_is_refused_while_a_valid_configuration_of_the_plugin_serves() {
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        rig.tick();
        // Envoy configures the update in a new root context of the same plugin.
        assert!(!rig.configure_another(2, &invalid()));
        assert!(rig.tel.logged("refused: canary web rev v2 keeps serving"));
        // Another plugin has nothing serving: its first configuration runs inert.
        rig.host.plugin_name = Some("istio-system.other".into());
        assert!(rig.configure_another(3, &invalid()));
        // Once the valid one has stopped serving (no beat for LIVE_FOR_MS), the same plugin's
        // invalid configuration runs inert too.
        rig.host.plugin_name = Some("istio-system.canary-guard".into());
        rig.host.now_ms += live::LIVE_FOR_MS + live::BEAT_EVERY_MS;
        assert!(rig.configure_another(4, &invalid()));
    }

    #[test]
    fn a_host_that_will_not_name_the_plugin_gets_inert_rather_than_a_refusal() {
        let mut rig = Rig::new();
        rig.host.plugin_name = None;
        assert!(rig.configure(&config(&[])));
        assert!(rig.configure_another(2, &invalid()));
    }

    #[test]
    fn a_valid_configuration_after_an_inert_one_clears_config_invalid_and_routes() {
        let mut rig = Rig::new();
        assert!(rig.configure(&invalid()));
        assert_eq!(rig.tel.gauge_of("web", Stat::ConfigInvalid), Some(1));
        assert!(rig.configure(&config(&[])));
        assert_eq!(rig.tel.gauge_of("web", Stat::ConfigInvalid), Some(0));
        let mut http = FakeHttp::default();
        assert_eq!(rig.request(&mut http).as_deref(), Some("web-stable"));
        rig.tick();
        assert_eq!(rig.tel.counter_of("web", Stat::StableRequests), 1);
    }

    #[test]
    fn an_unknown_policy_value_is_named_and_auto_applies() {
        let mut rig = Rig::new();
        rig.host.env.insert(POLICY_ENV.into(), "strict".into());
        assert!(rig.configure(&invalid()));
        assert!(rig
            .tel
            .logs
            .iter()
            .any(|(l, m)| *l == Level::Warn && m.contains("\"strict\"")));
    }

    /// One request through a fresh stream, driven by `steps` on a clock in ms.
    fn drive(rig: &mut Rig, steps: &[(u64, Step)]) {
        let mut http = FakeHttp::default();
        let mut stream = rig.root.new_stream();
        for (at_ms, step) in steps {
            http.now_ns = at_ms * 1_000_000;
            match step {
                Step::Headers { end } => stream.on_request_headers(&rig.store, &mut http, *end),
                Step::BodyEnd => stream.on_request_end(&http, true),
                Step::Response(status, grpc) => {
                    http.response
                        .insert(":status".into(), status.to_string().into_bytes());
                    if let Some(g) = grpc {
                        http.response
                            .insert("grpc-status".into(), g.to_string().into_bytes());
                    }
                    stream.on_response_headers(&mut http);
                }
                Step::Trailer(grpc) => {
                    http.trailers
                        .insert("grpc-status".into(), grpc.to_string().into_bytes());
                    stream.on_response_trailers(&http);
                }
                Step::Log => stream.on_log(&http),
            }
        }
    }

    enum Step {
        Headers { end: bool },
        BodyEnd,
        Response(u32, Option<u32>),
        Trailer(u32),
        Log,
    }

    fn counts(rig: &mut Rig) -> (u64, u64, u64) {
        rig.tick();
        (
            rig.tel.counter_of("web", Stat::StableRequests),
            rig.tel.counter_of("web", Stat::Stable5xx),
            rig.tel.counter_of("web", Stat::StableAbandoned),
        )
    }

    #[test]
    fn a_client_that_goes_away_is_not_evidence_unless_it_had_waited_too_long() {
        use Step::*;
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        // Reset at once, or during a slow upload: abandoned, not an error.
        drive(&mut rig, &[(0, Headers { end: true }), (1, Log)]);
        drive(&mut rig, &[(0, Headers { end: false }), (800, Log)]);
        assert_eq!(counts(&mut rig), (0, 0, 2));
        // Waited 600 ms for an answer (request-duration max 500): a slow request, no error.
        drive(&mut rig, &[(0, Headers { end: true }), (600, Log)]);
        assert_eq!(counts(&mut rig), (1, 0, 2));
        // Waited past requestTimeout (10 s): an error.
        drive(&mut rig, &[(0, Headers { end: true }), (10_001, Log)]);
        assert_eq!(counts(&mut rig), (2, 1, 2));
    }

    #[test]
    fn latency_runs_from_the_requests_last_byte_to_the_response_headers() {
        use Step::*;
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        // An 800 ms upload, a 10 ms answer, a slow download: 10 ms.
        drive(
            &mut rig,
            &[
                (0, Headers { end: false }),
                (800, BodyEnd),
                (810, Response(200, None)),
                (5_000, Log),
            ],
        );
        rig.tick();
        let slot = rig.store.raw("canary-guard/web/slot/0").unwrap();
        let record = crate::tally::SlotRecord::decode(&slot).unwrap();
        let latency = &record.series[0].buckets[0].stable.latency;
        let p = latency.percentile(100.0).unwrap();
        assert!((9_000.0..=11_000.0).contains(&p), "{p} µs");
    }

    #[test]
    fn grpc_server_failures_count_as_errors_from_trailers_or_a_trailers_only_response() {
        use Step::*;
        // A gRPC call: its status in the trailers, or in the headers (trailers-only).
        fn call(rig: &mut Rig, in_headers: Option<u32>, trailer: Option<u32>) {
            let mut steps = vec![(0, Headers { end: true }), (5, Response(200, in_headers))];
            steps.extend(trailer.map(|t| (6, Trailer(t))));
            steps.push((6, Log));
            drive(rig, &steps);
        }
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        call(&mut rig, None, Some(13));
        call(&mut rig, Some(14), None);
        call(&mut rig, None, Some(5));
        call(&mut rig, None, Some(0));
        assert_eq!(
            counts(&mut rig),
            (4, 2, 0),
            "INTERNAL and UNAVAILABLE, not NOT_FOUND or OK"
        );
        // Configurable per canary.
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[(
            "/grpcErrorCodes",
            serde_json::json!(["NOT_FOUND"])
        )])));
        call(&mut rig, None, Some(13));
        call(&mut rig, None, Some(5));
        assert_eq!(counts(&mut rig), (2, 1, 0));
    }

    #[test]
    fn a_canary_request_is_in_flight_from_its_last_byte_to_its_answer() {
        use crate::state::{CanaryState, Phase};
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        let all_canary = CanaryState {
            weight: 100,
            phase: Phase::Progressing,
            ..CanaryState::new("v2", 0)
        };
        rig.store
            .put("canary-guard/web/state", &all_canary.encode());
        let in_flight = |rig: &mut Rig| {
            rig.tick();
            rig.store
                .raw("canary-guard/web/slot/0")
                .and_then(|b| crate::tally::SlotRecord::decode(&b))
                .map_or(0, |r| r.in_flight)
        };
        let (mut ha, mut hb) = (FakeHttp::default(), FakeHttp::default());
        let (mut a, mut b) = (rig.root.new_stream(), rig.root.new_stream());
        a.on_request_headers(&rig.store, &mut ha, true);
        assert_eq!(ha.request_value("x-canary-upstream"), Some("web-canary"));
        assert_eq!(in_flight(&mut rig), 1, "a: complete, unanswered");
        b.on_request_headers(&rig.store, &mut hb, false);
        assert_eq!(
            in_flight(&mut rig),
            1,
            "b: still uploading, not the canary's wait"
        );
        b.on_request_end(&hb, true);
        assert_eq!(in_flight(&mut rig), 2);
        ha.response.insert(":status".into(), b"200".to_vec());
        a.on_response_headers(&mut ha);
        assert_eq!(in_flight(&mut rig), 1, "a answered");
        a.on_log(&ha);
        b.on_log(&hb);
        assert_eq!(in_flight(&mut rig), 0, "b ended without an answer");
    }

    #[test]
    fn the_route_cache_is_cleared_after_the_routing_header_is_set() {
        let mut rig = Rig::new();
        assert!(rig.configure(&config(&[])));
        let mut http = FakeHttp::default();
        rig.request(&mut http);
        assert_eq!(
            http.route_cache_clears,
            vec![1],
            "one clear, after the write"
        );
        // A host without the function is fine; one that fails it is counted.
        let mut old = FakeHttp {
            route_cache: Some(RouteCache::Unsupported),
            ..FakeHttp::default()
        };
        assert_eq!(rig.request(&mut old).as_deref(), Some("web-stable"));
        let mut failing = FakeHttp {
            route_cache: Some(RouteCache::Failed(HostError(10))),
            ..FakeHttp::default()
        };
        assert_eq!(rig.request(&mut failing).as_deref(), Some("web-stable"));
        rig.tick();
        assert_eq!(
            rig.tel.counter_of("web", Stat::HostErrorsClearRouteCache),
            1
        );
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
