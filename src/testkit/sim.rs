//! A deterministic simulation of one proxy, in the spirit of the proxy-wasm Go SDK's `proxytest`:
//! several worker root contexts and optionally the bootstrap singleton, each a real
//! `plugin::Root` configured from JSON as Envoy configures it, sharing one `FakeStore` and one
//! stats sink (Envoy's stats are process-wide), driven by a simulated clock in 10 ms steps. Each
//! step sends requests through random serving workers' HTTP streams to a simulated stable or
//! canary backend, chosen by the routing header the stream set, then ticks every root context
//! whose tick period (the one it asked the host for) has elapsed.

use crate::config::{parse, Upstreams};
use crate::hashing::{mix64, Xorshift64};
use crate::host::Stat;
use crate::outcome::Side;
use crate::plugin::{Env, Root};
use crate::state::{CanaryState, Phase};
use crate::store::lease::Lease;
use crate::store::Keys;
use crate::tally::Totals;
use crate::testkit::fake_etcd::FakeEtcd;
use crate::testkit::fake_host::{FakeHttp, FakeRoot, FakeStore, FakeTelemetry, SentCall};
use crate::testkit::EXAMPLE;
use serde_json::Value;

pub const STEP_MS: u64 = 10;
pub const NAME: &str = "web";
/// The Wasm plugin name every simulated root context reports.
pub const PLUGIN: &str = "canary-guard";
/// `config()`'s analysis interval.
pub const INTERVAL_MS: u64 = 500;
/// The bootstrap singleton's configuration.
pub const SINGLETON_CONFIG: &str = r#"{"role": "analyser"}"#;

/// EXAMPLE with short intervals (checks every 500 ms over 2 s windows, minRequests 5) and
/// `restartPolicy: restart` (as envoy/envoy.yaml ships: a fresh store starts the analysis), then
/// the given (JSON pointer, value) replacements or additions.
pub fn config(edits: &[(&str, Value)]) -> String {
    let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
    v["restartPolicy"] = "restart".into();
    v["analysis"]["interval"] = "500ms".into();
    v["analysis"]["minRequests"] = 5.into();
    for m in v["analysis"]["metrics"].as_array_mut().unwrap() {
        m["interval"] = "2s".into();
    }
    for (pointer, value) in edits {
        match v.pointer_mut(pointer) {
            Some(slot) => *slot = value.clone(),
            None => {
                let (parent, key) = pointer.rsplit_once('/').unwrap();
                v.pointer_mut(parent).unwrap()[key] = value.clone();
            }
        }
    }
    v.to_string()
}

#[derive(Clone, Copy, PartialEq)]
pub enum Mode {
    /// A bootstrap singleton analyses (the workers' analysers stand by, as in Envoy).
    Singleton,
    /// No singleton: the workers elect a leader (Istio).
    Leader,
}

/// The simulated upstreams: error percentage and latency per side.
pub struct Backend {
    pub stable_5xx_pct: u64,
    pub canary_5xx_pct: u64,
    pub canary_ms: u64,
}

/// One root context and its host.
pub struct Node {
    pub root: Root,
    pub host: FakeRoot,
    pub next_tick: u64,
    pub ticking: bool,
    /// Receives requests (a draining or crashed context does not).
    pub serving: bool,
}

impl Node {
    /// The tick period this context asked the host for.
    pub fn period(&self) -> u64 {
        u64::from(
            self.host
                .tick_ms
                .expect("configured contexts set a tick period"),
        )
    }
}

pub struct Sim {
    pub store: FakeStore,
    pub tel: FakeTelemetry,
    pub now: u64,
    rng: Xorshift64,
    contexts: u32,
    pub nodes: Vec<Node>,
    pub singleton: Option<Node>,
    /// The routing header and clusters of the last configuration (the backend's address book).
    upstreams: Option<Upstreams>,
    pub backend: Backend,
    /// Requests per step.
    pub load: u64,
    /// Outcomes recorded through the workers, per side.
    pub sent: Totals,
    /// Requests routed while the stored state said Failed.
    pub sent_after_failed: Totals,
    /// Every distinct (revision, phase, weight) the state went through.
    pub history: Vec<(String, Phase, u8)>,
    pub max_leaders: usize,
}

impl Sim {
    pub fn new(mode: Mode, workers: usize, raw: &str) -> Sim {
        Sim::starting_at(0, mode, workers, raw)
    }

    /// A fresh proxy process (empty shared data) whose clock reads `now` (Unix epoch ms).
    pub fn starting_at(now: u64, mode: Mode, workers: usize, raw: &str) -> Sim {
        let mut sim = Sim {
            store: FakeStore::default(),
            tel: FakeTelemetry::default(),
            now,
            rng: Xorshift64::from_state(0x9e37_79b9_7f4a_7c15),
            contexts: 0,
            nodes: Vec::new(),
            singleton: None,
            upstreams: None,
            backend: Backend {
                stable_5xx_pct: 0,
                canary_5xx_pct: 0,
                canary_ms: 30,
            },
            load: 50,
            sent: Totals::default(),
            sent_after_failed: Totals::default(),
            history: Vec::new(),
            max_leaders: 0,
        };
        if mode == Mode::Singleton {
            sim.start_singleton();
        }
        for _ in 0..workers {
            sim.add_worker(raw);
        }
        sim
    }

    pub fn rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A root context with this id and these random bits, configured now with `raw` (as Envoy
    /// configures it: `on_configure` must accept it).
    fn configured(&mut self, raw: &str, context_id: u32, random: u64) -> Node {
        let mut host = FakeRoot {
            now_ms: self.now,
            random: Some(random),
            plugin_name: Some(PLUGIN.to_string()),
            ..FakeRoot::default()
        };
        let mut root = Root::new(context_id);
        let mut env = Env {
            store: &self.store,
            telemetry: &mut self.tel,
            host: &mut host,
        };
        assert!(
            root.on_configure(Some(raw.as_bytes().to_vec()), &mut env),
            "configuration refused: {raw}"
        );
        Node {
            next_tick: self.now + 1 + root.token() % u64::from(host.tick_ms.unwrap()),
            root,
            host,
            ticking: true,
            serving: true,
        }
    }

    fn next_context(&mut self) -> (u32, u64) {
        self.contexts += 1;
        (self.contexts, mix64(u64::from(self.contexts)))
    }

    /// A new worker root context, configured now.
    pub fn add_worker(&mut self, raw: &str) -> usize {
        let (id, random) = self.next_context();
        self.add_node(raw, id, random)
    }

    /// A worker root context with a given id and random bits: two configured at the same time
    /// with the same ones share a token (a host whose randomness failed them both).
    pub fn add_node(&mut self, raw: &str, context_id: u32, random: u64) -> usize {
        self.upstreams = Some(parse(raw.as_bytes()).unwrap().upstreams);
        let node = self.configured(raw, context_id, random);
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    /// A bootstrap singleton, its first tick 5 ms from now.
    fn start_singleton(&mut self) {
        let (id, random) = self.next_context();
        let mut node = self.configured(SINGLETON_CONFIG, id, random);
        node.next_tick = self.now + 5;
        self.singleton = Some(node);
    }

    /// The singleton goes away (`on_done`) and a new one starts in its place.
    pub fn restart_singleton(&mut self) {
        if let Some(mut old) = self.singleton.take() {
            let mut env = Env {
                store: &self.store,
                telemetry: &mut self.tel,
                host: &mut old.host,
            };
            old.root.on_done(&mut env);
        }
        self.start_singleton();
        if let Some(s) = &mut self.singleton {
            s.next_tick = self.now;
        }
    }

    pub fn singleton_token(&self) -> Option<u64> {
        self.singleton.as_ref().map(|s| s.root.token())
    }

    /// `on_done`: the context publishes, releases its slot and lease, and stops.
    pub fn shutdown(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.host.now_ms = self.now;
        let mut env = Env {
            store: &self.store,
            telemetry: &mut self.tel,
            host: &mut n.host,
        };
        n.root.on_done(&mut env);
        n.ticking = false;
        n.serving = false;
    }

    /// An xDS update: every live context is reconfigured (shut down and rebuilt with `raw`).
    pub fn reconfigure_all(&mut self, raw: &str) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].ticking {
                self.shutdown(i);
                self.add_worker(raw);
            }
        }
    }

    /// Routes and completes `n` requests through random serving workers; returns the sides.
    pub fn send(&mut self, n: u64) -> Totals {
        let failed = self.state().is_some_and(|s| s.phase == Phase::Failed);
        let serving: Vec<usize> = (0..self.nodes.len())
            .filter(|i| self.nodes[*i].serving)
            .collect();
        let mut batch = Totals::default();
        if serving.is_empty() {
            return batch;
        }
        for _ in 0..n {
            let i = serving[(self.rand() % serving.len() as u64) as usize];
            let side = self.request(i);
            batch.record(side.0, side.1);
        }
        self.sent.add(&batch);
        if failed {
            self.sent_after_failed.add(&batch);
        }
        batch
    }

    /// One request through node `i`'s HTTP stream; the side the routing header sent it to, and
    /// the status the backend answered.
    fn request(&mut self, i: usize) -> (Side, u32) {
        let up = self.upstreams.clone().unwrap();
        let mut http = FakeHttp {
            now_ns: self.now * 1_000_000,
            ..FakeHttp::default()
        };
        let mut stream = self.nodes[i].root.new_stream();
        stream.on_request_headers(&self.store, &mut http, true);
        let side = match http.request_value(&up.header) {
            Some(c) if c == up.canary => Side::Canary,
            Some(c) if c == up.stable => Side::Stable,
            other => panic!("the filter left the routing header at {other:?}"),
        };
        let (pct, ms) = match side {
            Side::Stable => (self.backend.stable_5xx_pct, 20),
            Side::Canary => (self.backend.canary_5xx_pct, self.backend.canary_ms),
        };
        let status: u32 = if self.rand() % 100 < pct { 503 } else { 200 };
        let micros = ms * 1000 + self.rand() % 5_000;
        http.response
            .insert(":status".into(), status.to_string().into_bytes());
        http.now_ns += micros * 1000;
        stream.on_response_headers(&mut http);
        stream.on_log(&http);
        (side, status)
    }

    pub fn step(&mut self) {
        self.send(self.load);
        let now = self.now;
        for n in self
            .nodes
            .iter_mut()
            .chain(self.singleton.iter_mut())
            .filter(|n| n.ticking && n.next_tick <= now)
        {
            n.host.now_ms = now;
            let mut env = Env {
                store: &self.store,
                telemetry: &mut self.tel,
                host: &mut n.host,
            };
            n.root.on_tick(&mut env);
            n.next_tick += n.period();
        }
        if let Some(s) = self.state() {
            let seen = (s.revision, s.phase, s.weight);
            if self.history.last() != Some(&seen) {
                self.history.push(seen);
            }
        }
        self.max_leaders = self.max_leaders.max(self.leaders().len());
        self.now += STEP_MS;
    }

    /// Answers every etcd call this proxy's contexts made since the last exchange, from
    /// `etcd`, or as failed calls (no headers: unreachable, reset) when it is `None`.
    pub fn exchange(&mut self, mut etcd: Option<&mut FakeEtcd>) {
        let now = self.now;
        self.answer(|call| match etcd.as_deref_mut() {
            Some(e) => {
                let (s, b) = e.handle(&call.path, &call.body, now);
                Some((s, b))
            }
            None => None,
        });
    }

    /// Answers every call this proxy's contexts made since the last answer: `respond` gives
    /// the status and body, or `None` for a call that failed (no answer).
    pub fn answer(&mut self, mut respond: impl FnMut(&SentCall) -> Option<(u32, Vec<u8>)>) {
        let now = self.now;
        for n in self.nodes.iter_mut().chain(self.singleton.iter_mut()) {
            n.host.now_ms = now;
            for call in std::mem::take(&mut n.host.calls) {
                let answer = respond(&call);
                if !n.ticking {
                    continue; // a stopped context gets no answers
                }
                let (status, body) = match answer {
                    Some((s, b)) => (Some(s), b),
                    None => (None, Vec::new()),
                };
                let mut env = Env {
                    store: &self.store,
                    telemetry: &mut self.tel,
                    host: &mut n.host,
                };
                n.root
                    .on_http_call_response(call.token, status, &body, &mut env);
            }
        }
    }

    /// The process dies (SIGKILL): no context runs again, nothing is released.
    pub fn kill(&mut self) {
        for n in self.nodes.iter_mut().chain(self.singleton.iter_mut()) {
            n.ticking = false;
            n.serving = false;
            n.host.calls.clear();
        }
        self.load = 0;
    }

    pub fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Steps until `done` holds (true) or `limit_ms` more have passed (false).
    pub fn run_until(&mut self, limit_ms: u64, done: impl Fn(&Sim) -> bool) -> bool {
        let end = self.now + limit_ms;
        while self.now < end {
            self.step();
            if done(self) {
                return true;
            }
        }
        false
    }

    /// Stops the traffic and lets every context publish and the analyser sum it.
    pub fn settle(&mut self) {
        self.load = 0;
        self.run(1_000);
    }

    pub fn state(&self) -> Option<CanaryState> {
        CanaryState::decode(&self.store.raw(&Keys::new(NAME).state)?)
    }

    pub fn phase(&self) -> Option<Phase> {
        self.state().map(|s| s.phase)
    }

    pub fn weight(&self) -> u8 {
        self.state().map_or(0, |s| s.weight)
    }

    pub fn lease_holder(&self) -> Option<u64> {
        Lease::decode(&self.store.raw(&Keys::new(NAME).lease)?).map(|l| l.token)
    }

    /// Indices of the live worker contexts whose analyser believes it leads.
    pub fn leaders(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.nodes[*i].ticking && self.nodes[*i].root.is_leading())
            .collect()
    }

    /// The weights one revision's analysis went through, in order.
    pub fn weights(&self, revision: &str) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::new();
        for (_, _, w) in self.history.iter().filter(|h| h.0 == revision) {
            if out.last() != Some(w) {
                out.push(*w);
            }
        }
        out
    }

    pub fn counter(&self, stat: Stat) -> u64 {
        self.tel.counter_of(NAME, stat)
    }

    pub fn log_count(&self, needle: &str) -> usize {
        self.tel
            .logs
            .iter()
            .filter(|(_, m)| m.contains(needle))
            .count()
    }

    /// The analyser's tallied gauges and the workers' counters both equal what was recorded.
    pub fn assert_tallies_exact(&self) {
        let s = &self.sent;
        for (counter, gauge, want) in [
            (
                Stat::StableRequests,
                Stat::TalliedStableRequests,
                s.stable_requests,
            ),
            (Stat::Stable5xx, Stat::TalliedStable5xx, s.stable_errors),
            (
                Stat::CanaryRequests,
                Stat::TalliedCanaryRequests,
                s.canary_requests,
            ),
            (Stat::Canary5xx, Stat::TalliedCanary5xx, s.canary_errors),
        ] {
            assert_eq!(self.tel.gauge_of(NAME, gauge), Some(want), "{gauge:?}");
            assert_eq!(self.counter(counter), want, "{counter:?}");
        }
    }
}
