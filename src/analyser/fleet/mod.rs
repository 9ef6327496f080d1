//! Fleet mode in the analyser: the proxy's analyser (the singleton, or the elected worker)
//! stands for its proxy in the fleet. Every tick, through etcd's HTTP gateway:
//! - keeps an etcd lease (`fleet.leaseTTL`, renewed every third of it);
//! - publishes the proxy's tallies under its replica key, on that lease (`fleet::record`);
//! - polls the fleet state and the judge key in one txn, validates what it read, and writes
//!   the state to this proxy's shared data in today's format, where the workers route on it;
//! - bids for the judge key (create-if-absent on its lease) when nobody holds it;
//! - as the judge: sums every live replica's record, runs the same check as a lone proxy, and
//!   writes the next state in one txn guarded by "I still hold the judge key" and "the state
//!   is at the version I read", so a deposed or partitioned judge can never write.
//!
//! Fail safe: a state not read for `fleet.maxStaleness`, or one that does not validate, makes
//! the proxy route every request to stable (a `Waiting` state at weight 0) until a good read.
//! Nothing here blocks a request: calls are asynchronous and bounded by `fleet.timeout`.
//!
//! This file is the protocol (lease, election, polls, publications, answers, fallback); the
//! judge's decisions on the fleet's records are in `judge`.

mod judge;

use super::{Analyser, Loaded};
use crate::config;
use crate::control::{decode_decisions, Command};
use crate::fleet::etcd::{self, EtcdError, Kv, Request};
use crate::fleet::record::{merge_slots, ReplicaRecord};
use crate::fleet::{poll_ms, publish_ms, replica_id, stale_states, FleetKeys, STATES_KEPT};
use crate::host::{HttpCalls, Level, OutCall, RootHost, SharedStore, Stat, Telemetry};
use crate::metrics::MetricResult;
use crate::state::{CanaryState, Phase};
use crate::state_machine::{summary, Event};
use crate::store::slots::read_all;
use std::collections::BTreeSet;
use std::rc::Rc;

/// Shared-data key of this process's replica id (one per Envoy process, whichever context
/// stands for it).
pub const REPLICA_ID_KEY: &str = "canary-guard/fleet/replica-id";

/// A call that got no answer this long after its timeout is given up (its answer, if it ever
/// comes, is ignored).
const GIVE_UP_AFTER_MS: u64 = 1_000;

/// The judge reads the replica records at least this often outside its checks.
const RECORDS_EVERY_MS: u64 = 2_000;

#[derive(Debug, Clone)]
enum Call {
    Grant,
    KeepAlive,
    Poll,
    Publish,
    Campaign,
    Records,
    Write {
        next: CanaryState,
        events: Vec<Event>,
        results: Vec<MetricResult>,
        /// The write creates the revision's state (it had none).
        created: bool,
    },
    /// An operator's command taken here, sent on to the judge.
    ForwardCommand,
    /// The judge's last decisions, for the followers' control status.
    ShareDecisions,
    /// The state keys of every revision, after this judge created its revision's.
    ListStates,
    DeleteStates(usize),
}

impl Call {
    fn kind(&self) -> &'static str {
        match self {
            Call::Grant => "lease grant",
            Call::KeepAlive => "lease keepalive",
            Call::Poll => "state read",
            Call::Publish => "tally publish",
            Call::Campaign => "judge election",
            Call::Records => "tally read",
            Call::Write { .. } => "state write",
            Call::ForwardCommand => "command forward",
            Call::ShareDecisions => "decisions write",
            Call::ListStates => "state key listing",
            Call::DeleteStates(_) => "old state clean-up",
        }
    }
}

/// A state the judge writes, fenced (`write_fleet_state`).
struct StateWrite {
    fence: i64,
    seen_mod: i64,
    next: CanaryState,
    events: Vec<Event>,
    results: Vec<MetricResult>,
}

struct Pending {
    token: u32,
    call: Call,
    sent_ms: u64,
}

/// The fleet state this replica follows, as last read (or written), with etcd's mod revision.
#[derive(Debug, Clone)]
struct Followed {
    state: CanaryState,
    mod_revision: i64,
}

pub struct Agent {
    conf: config::Fleet,
    replica: String,
    keys: Option<Rc<FleetKeys>>,
    lease: Option<i64>,
    lease_ok_ms: u64,
    renew_at_ms: u64,
    /// While this replica is the judge: its judge key's create revision (the write fence).
    judge: Option<i64>,
    holder: Option<String>,
    followed: Option<Followed>,
    /// The last good read found no state for this revision.
    absent: bool,
    last_good_ms: u64,
    fallback: bool,
    unreachable: bool,
    /// This revision was seen Failed by this process: nothing read later revives it here.
    failed_seen: bool,
    rejected_state: bool,
    rejected_records: usize,
    pending: Vec<Pending>,
    next_poll_ms: u64,
    next_publish_ms: u64,
    next_records_ms: u64,
    campaign_now: bool,
    replicas: BTreeSet<String>,
    clock_started: bool,
    /// The mod revision of the last operator command read from etcd.
    command_mod: i64,
    /// The mod revision of the judge's decisions last copied to this proxy's shared data.
    decisions_mod: i64,
}

impl Agent {
    /// A replica that has read nothing yet (its staleness clock starts at its first tick).
    pub fn new(conf: config::Fleet) -> Self {
        Agent {
            conf,
            replica: String::new(),
            keys: None,
            lease: None,
            lease_ok_ms: 0,
            renew_at_ms: 0,
            judge: None,
            holder: None,
            followed: None,
            absent: false,
            last_good_ms: 0,
            fallback: false,
            unreachable: false,
            failed_seen: false,
            rejected_state: false,
            rejected_records: 0,
            pending: Vec::new(),
            next_poll_ms: 0,
            next_publish_ms: 0,
            next_records_ms: 0,
            campaign_now: false,
            replicas: BTreeSet::new(),
            clock_started: false,
            command_mod: 0,
            decisions_mod: 0,
        }
    }

    /// Takes over another agent's etcd lease and judge key (a new configuration of the same
    /// revision in the same process), so that the fleet does not wait for them to expire.
    pub fn inherit(&mut self, from: &Agent) {
        if from.conf == self.conf {
            self.lease = from.lease;
            self.lease_ok_ms = from.lease_ok_ms;
            self.renew_at_ms = from.renew_at_ms;
            self.judge = from.judge;
            self.holder = from.holder.clone();
            self.followed = from.followed.clone();
            self.failed_seen = from.failed_seen;
            self.last_good_ms = from.last_good_ms;
            self.clock_started = from.clock_started;
        }
    }

    /// The staleness clock starts at the first tick (nothing was read before it).
    pub fn start_clock(&mut self, now_ms: u64) {
        if !self.clock_started {
            self.clock_started = true;
            self.last_good_ms = now_ms;
        }
    }

    pub fn is_judge(&self) -> bool {
        self.judge.is_some()
    }

    fn pending(&self, f: impl Fn(&Call) -> bool) -> bool {
        self.pending.iter().any(|p| f(&p.call))
    }
}

impl Analyser {
    /// One fleet-mode tick of the proxy's leading analyser.
    pub(super) fn fleet_tick(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn RootHost,
        now_ms: u64,
    ) {
        let Some(mut agent) = self.fleet.take() else {
            return;
        };
        if agent.keys.is_none() {
            agent.replica = process_replica_id(store, host, self.token);
            agent.keys = Some(Rc::new(FleetKeys::new(
                &agent.conf.prefix,
                &self.cfg.name,
                &self.cfg.revision,
                &agent.replica,
            )));
            self.log.revision(
                tel,
                Level::Info,
                &format!(
                    "fleet mode: replica {} (node id {}) follows the fleet state in etcd (cluster {}, key {})",
                    agent.replica,
                    host.node_id().unwrap_or_else(|| "unknown".into()),
                    agent.conf.etcd_cluster,
                    String::from_utf8_lossy(
                        &agent
                            .keys
                            .as_ref()
                            .map(|k| k.state.clone())
                            .unwrap_or_default()
                    )
                ),
            );
        }
        self.fleet_step(&mut agent, store, tel, host, now_ms);
        self.fleet = Some(agent);
    }

    fn fleet_step(
        &mut self,
        agent: &mut Agent,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        let Some(keys) = agent.keys.clone() else {
            return;
        };
        let name = self.cfg.name.clone();
        // Calls whose answer never came are failures.
        let give_up = agent.conf.timeout_ms + GIVE_UP_AFTER_MS;
        let (late, live): (Vec<_>, Vec<_>) = std::mem::take(&mut agent.pending)
            .into_iter()
            .partition(|p| now_ms > p.sent_ms + give_up);
        agent.pending = live;
        for p in late {
            self.store_failed(agent, tel, p.call.kind(), "no answer");
        }
        let ttl = agent.conf.lease_ttl_ms;
        // The judge stops deciding as soon as its lease may have expired.
        if agent.judge.is_some() && now_ms > agent.lease_ok_ms + ttl {
            self.lose_judge(agent, tel, "its etcd lease was not renewed in time");
        }
        if agent.lease.is_none() {
            if !agent.pending(|c| matches!(c, Call::Grant)) {
                self.send(
                    agent,
                    host,
                    tel,
                    etcd::lease_grant(ttl / 1000),
                    Call::Grant,
                    now_ms,
                );
            }
        } else if now_ms >= agent.renew_at_ms && !agent.pending(|c| matches!(c, Call::KeepAlive)) {
            if let Some(id) = agent.lease {
                agent.renew_at_ms = now_ms + 500;
                self.send(
                    agent,
                    host,
                    tel,
                    etcd::lease_keepalive(id),
                    Call::KeepAlive,
                    now_ms,
                );
            }
        }
        let interval = self.cfg.analysis.interval_ms;
        if now_ms >= agent.next_poll_ms && !agent.pending(|c| matches!(c, Call::Poll)) {
            agent.next_poll_ms = now_ms + poll_ms(interval);
            self.send(agent, host, tel, poll(&keys), Call::Poll, now_ms);
        }
        if let Some(lease) = agent.lease {
            if now_ms >= agent.next_publish_ms && !agent.pending(|c| matches!(c, Call::Publish)) {
                agent.next_publish_ms = now_ms + publish_ms(interval);
                let record = self.replica_record(agent, store, now_ms);
                let req = etcd::put(&keys.replica, &record.encode(), Some(lease));
                self.send(agent, host, tel, req, Call::Publish, now_ms);
            }
            if agent.campaign_now
                && agent.judge.is_none()
                && !agent.pending(|c| matches!(c, Call::Campaign))
            {
                agent.campaign_now = false;
                let req =
                    etcd::create_if_absent(&keys.judge, agent.replica.as_bytes(), Some(lease));
                self.send(agent, host, tel, req, Call::Campaign, now_ms);
            }
        }
        // An operator's command taken by this proxy's control endpoint goes to etcd, where the
        // judge (this proxy or another) reads it at its next poll and carries it out: one path,
        // and a judge that takes over later still knows the last command (a pause holds).
        if let Some(cmd) = self.take_command(store) {
            let req = etcd::put(&keys.command, &cmd.encode(), None);
            self.send(agent, host, tel, req, Call::ForwardCommand, now_ms);
            agent.next_poll_ms = now_ms;
        }
        let age = now_ms.saturating_sub(agent.last_good_ms);
        tel.gauge(&name, Stat::FleetStateAgeMs, age);
        if !agent.fallback && age > agent.conf.max_staleness_ms {
            let why = format!(
                "fleet state not read for {age} ms (fleet.maxStaleness {} ms)",
                agent.conf.max_staleness_ms
            );
            self.fall_back(agent, store, tel, &why, now_ms);
        }
        self.judge_step(agent, &keys, host, tel, now_ms);
    }

    /// This proxy's record: every local worker slot merged (`fleet::record`).
    fn replica_record(&self, agent: &Agent, store: &dyn SharedStore, now_ms: u64) -> ReplicaRecord {
        let (slots, _, _) = read_all(store, &self.keys);
        let origin = agent.followed.as_ref().map_or(0, |f| f.state.started_ms);
        let windows = self.cfg.analysis.windows_ms();
        ReplicaRecord {
            replica: agent.replica.clone(),
            revision: self.cfg.revision.clone(),
            at_ms: now_ms,
            tally: merge_slots(self.token, &windows, origin, &slots, now_ms),
        }
    }

    fn send(
        &self,
        agent: &mut Agent,
        host: &mut dyn HttpCalls,
        tel: &mut dyn Telemetry,
        req: Request,
        call: Call,
        now_ms: u64,
    ) {
        match host.post(&etcd_call(&agent.conf, &req)) {
            Ok(token) => agent.pending.push(Pending {
                token,
                call,
                sent_ms: now_ms,
            }),
            Err(e) => {
                let why = format!("the host refused the call (status {})", e.0);
                self.store_failed(agent, tel, call.kind(), &why);
            }
        }
    }

    /// This analyser no longer stands for its proxy (it handed the lead over, or its context
    /// is done): it gives up its etcd lease, so that its judge key and record go now rather
    /// than a lease TTL later, and the analyser that leads next can be judge at once. The
    /// revoke is best effort (its answer is not awaited; a lost one leaves the lease to expire).
    pub fn leave_fleet(&mut self, tel: &mut dyn Telemetry, host: &mut dyn HttpCalls) {
        let Some(agent) = self.fleet.as_deref_mut() else {
            return;
        };
        let Some(lease) = agent.lease.take() else {
            return;
        };
        let was_judge = agent.judge.take().is_some();
        agent.pending.clear();
        agent.holder = None;
        agent.clock_started = false;
        let req = etcd::lease_revoke(lease);
        let sent = host.post(&etcd_call(&agent.conf, &req)).is_ok();
        tel.gauge(&self.cfg.name, Stat::FleetJudge, 0);
        let line = format!(
            "left the fleet: etcd lease {}{} ({})",
            if sent { "revoked" } else { "left to expire" },
            if was_judge {
                ", judge key released"
            } else {
                ""
            },
            agent.replica
        );
        self.log.revision(tel, Level::Info, &line);
    }

    /// Whether `token` is one of this analyser's calls.
    pub fn owns_call(&self, token: u32) -> bool {
        self.hooks.owns(token)
            || self
                .fleet
                .as_ref()
                .is_some_and(|a| a.pending.iter().any(|p| p.token == token))
    }

    /// The answer to one of this analyser's calls (`status` is `None` when the call failed).
    #[allow(clippy::too_many_arguments)]
    pub fn on_http_call_response(
        &mut self,
        token: u32,
        status: Option<u32>,
        body: &[u8],
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        if self.hooks.owns(token) {
            self.on_hook_answer(tel, token, status, body, host, now_ms);
            return;
        }
        let Some(mut agent) = self.fleet.take() else {
            return;
        };
        if let Some(i) = agent.pending.iter().position(|p| p.token == token) {
            let p = agent.pending.swap_remove(i);
            tel.gauge(
                &self.cfg.name,
                Stat::FleetCallLatencyMs,
                now_ms.saturating_sub(p.sent_ms),
            );
            if let Err(e) = self.on_answer(
                &mut agent,
                p.call.clone(),
                status,
                body,
                store,
                tel,
                host,
                now_ms,
            ) {
                let why = match e {
                    EtcdError::Status(0, _) => {
                        "no answer (unreachable, reset or timed out)".to_string()
                    }
                    EtcdError::Status(s, m) if m.is_empty() => format!("HTTP {s}"),
                    EtcdError::Status(s, m) => format!("HTTP {s}: {m}"),
                    EtcdError::Malformed(m) => format!("malformed answer: {m}"),
                };
                self.store_failed(&mut agent, tel, p.call.kind(), &why);
            } else {
                tel.count(&self.cfg.name, Stat::FleetCallsOk, 1);
                if agent.unreachable {
                    agent.unreachable = false;
                    self.log.revision(tel, Level::Info, "etcd answers again");
                }
            }
        }
        self.fleet = Some(agent);
        self.flush_outbox(tel, host, now_ms);
        self.record_and_share_decisions(store, tel, host, now_ms);
    }

    /// Keeps the new decisions in this proxy's shared data and, on the judge, in etcd, where
    /// every follower copies them to its own (so any replica's control status shows them).
    pub(super) fn record_and_share_decisions(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) {
        let Some(bytes) = self.record_decisions(store, now_ms) else {
            return;
        };
        let Some(mut agent) = self.fleet.take() else {
            return;
        };
        if let (Some(keys), Some(_)) = (agent.keys.clone(), agent.judge) {
            let req = etcd::put(&keys.decisions, &bytes, None);
            self.send(&mut agent, host, tel, req, Call::ShareDecisions, now_ms);
        }
        self.fleet = Some(agent);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_answer(
        &mut self,
        agent: &mut Agent,
        call: Call,
        status: Option<u32>,
        body: &[u8],
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) -> Result<(), EtcdError> {
        match call {
            Call::Grant => {
                let lease = etcd::parse_lease(status, body)?;
                if lease.ttl_s <= 0 {
                    return Err(EtcdError::Malformed("granted a lease without TTL".into()));
                }
                agent.lease = Some(lease.id);
                agent.lease_ok_ms = now_ms;
                agent.renew_at_ms = now_ms + agent.conf.lease_ttl_ms / 3;
                agent.next_publish_ms = now_ms;
            }
            Call::KeepAlive => {
                let lease = etcd::parse_lease(status, body)?;
                if lease.ttl_s <= 0 {
                    agent.lease = None;
                    self.lose_judge(agent, tel, "its etcd lease expired");
                } else {
                    agent.lease_ok_ms = now_ms;
                    agent.renew_at_ms = now_ms + agent.conf.lease_ttl_ms / 3;
                }
            }
            Call::Publish => {
                etcd::parse_put(status, body)?;
            }
            Call::Poll => {
                let txn = etcd::parse_txn(status, body)?;
                self.on_poll(agent, &txn.kvs, store, tel, now_ms);
            }
            Call::Campaign => {
                let txn = etcd::parse_txn(status, body)?;
                let Some(keys) = agent.keys.clone() else {
                    return Ok(());
                };
                if txn.succeeded {
                    agent.judge = Some(txn.revision);
                    self.judge_changed(agent, tel, Some(agent.replica.clone()));
                } else if let Some(kv) = txn.kvs.iter().find(|kv| kv.key == keys.judge) {
                    self.follow_holder(agent, tel, kv);
                }
            }
            Call::Records => {
                let range = etcd::parse_range(status, body)?;
                self.on_records(agent, &range.kvs, store, tel, host, now_ms)?;
            }
            Call::ForwardCommand | Call::ShareDecisions => {
                etcd::parse_put(status, body)?;
            }
            Call::ListStates => {
                let range = etcd::parse_range(status, body)?;
                let Some(keys) = agent.keys.clone() else {
                    return Ok(());
                };
                let stale = stale_states(&range.kvs, &keys.state, STATES_KEPT);
                if !stale.is_empty() {
                    let siblings: Vec<Vec<u8>> =
                        stale.iter().flat_map(|(k, _)| keys.siblings(k)).collect();
                    let req = etcd::delete_unchanged(&stale, &siblings);
                    self.send(
                        agent,
                        host,
                        tel,
                        req,
                        Call::DeleteStates(stale.len()),
                        now_ms,
                    );
                }
            }
            Call::DeleteStates(n) => {
                let txn = etcd::parse_txn(status, body)?;
                if txn.succeeded {
                    let line = format!(
                        "deleted the fleet state, last command and decisions of {n} old revision(s) (a canary keeps its last {STATES_KEPT})"
                    );
                    self.log.revision(tel, Level::Info, &line);
                }
            }
            Call::Write {
                next,
                events,
                results,
                created,
            } => {
                let txn = etcd::parse_txn(status, body)?;
                let Some(keys) = agent.keys.clone() else {
                    return Ok(());
                };
                if txn.succeeded {
                    agent.followed = Some(Followed {
                        state: next.clone(),
                        mod_revision: txn.revision,
                    });
                    agent.absent = false;
                    agent.last_good_ms = now_ms;
                    if next.phase == Phase::Failed {
                        agent.failed_seen = true;
                    }
                    self.apply(agent, store, tel, &next);
                    if !results.is_empty() {
                        tel.count(&self.cfg.name, Stat::Checks, 1);
                        if events.iter().all(|e| {
                            matches!(
                                e,
                                Event::Advance { .. }
                                    | Event::Iteration { .. }
                                    | Event::RoutedAll { .. }
                            )
                        }) {
                            let line =
                                format!("checks passed on fleet totals: {}", summary(&results));
                            self.log.revision(tel, Level::Debug, &line);
                        }
                    }
                    self.count_and_log(tel, &events, next.phase);
                    if created {
                        // This judge started a revision: older revisions' states beyond
                        // STATES_KEPT go (listed first, then deleted if unchanged).
                        let req = etcd::range_prefix_keys(&keys.states);
                        self.send(agent, host, tel, req, Call::ListStates, now_ms);
                    }
                } else {
                    let guard = txn.kvs.iter().find(|kv| kv.key == keys.judge);
                    let still = guard.is_some_and(|g| Some(g.create_revision) == agent.judge);
                    if !still {
                        let holder = guard.map(|g| String::from_utf8_lossy(&g.value).into_owned());
                        self.lose_judge(agent, tel, "another replica holds the judge key");
                        self.judge_changed(agent, tel, holder);
                    } else {
                        self.log.revision(
                            tel,
                            Level::Debug,
                            "the fleet state changed since this judge read it: step void",
                        );
                    }
                    agent.next_poll_ms = now_ms;
                }
            }
        }
        Ok(())
    }

    /// A poll's answer: the judge key's holder and the fleet state of this revision.
    fn on_poll(
        &mut self,
        agent: &mut Agent,
        kvs: &[Kv],
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        now_ms: u64,
    ) {
        let Some(keys) = agent.keys.clone() else {
            return;
        };
        match kvs.iter().find(|kv| kv.key == keys.judge) {
            Some(kv) => self.follow_holder(agent, tel, kv),
            None => {
                if agent.judge.is_some() {
                    self.lose_judge(agent, tel, "the judge key is gone");
                }
                if agent.holder.take().is_some() {
                    self.log.revision(
                        tel,
                        Level::Info,
                        "fleet judge left; bidding for the judge key",
                    );
                }
                agent.campaign_now = true;
            }
        }
        if let Some(kv) = kvs.iter().find(|kv| kv.key == keys.command) {
            if agent.judge.is_some() && kv.mod_revision > agent.command_mod {
                agent.command_mod = kv.mod_revision;
                match Command::decode(&kv.value) {
                    Some(cmd) if cmd.revision == self.cfg.revision => {
                        self.pending_fleet_command = Some(cmd);
                    }
                    _ => self.log.revision(
                        tel,
                        Level::Warn,
                        "ignored an operator command in etcd that does not validate",
                    ),
                }
            }
        }
        if let Some(kv) = kvs.iter().find(|kv| kv.key == keys.decisions) {
            if agent.judge.is_none() && kv.mod_revision > agent.decisions_mod {
                agent.decisions_mod = kv.mod_revision;
                if decode_decisions(&kv.value).is_some() {
                    let _copied = store.set(&self.keys.decisions, &kv.value, 0);
                } else {
                    self.log.revision(
                        tel,
                        Level::Warn,
                        "ignored the judge's decisions in etcd: they do not validate",
                    );
                }
            }
        }
        let read = kvs.iter().find(|kv| kv.key == keys.state);
        let state = match read {
            None => None,
            Some(kv) => match self.validate_fleet_state(agent, &kv.value) {
                Ok(s) => Some((s, kv.mod_revision)),
                Err(why) => {
                    if !agent.rejected_state {
                        agent.rejected_state = true;
                        let line = format!(
                            "fleet state at {} rejected: {why}; routing every request to stable (delete the key to start this revision's analysis again)",
                            String::from_utf8_lossy(&keys.state)
                        );
                        self.log.revision(tel, Level::Error, &line);
                    }
                    self.fall_back(
                        agent,
                        store,
                        tel,
                        "the fleet state does not validate",
                        now_ms,
                    );
                    return;
                }
            },
        };
        agent.rejected_state = false;
        agent.last_good_ms = now_ms;
        if agent.fallback {
            agent.fallback = false;
            tel.gauge(&self.cfg.name, Stat::FleetFallback, 0);
            self.log.revision(
                tel,
                Level::Info,
                "fleet state read again: following the fleet",
            );
        }
        match state {
            Some((s, mod_revision)) => {
                if s.phase == Phase::Failed {
                    agent.failed_seen = true;
                }
                agent.absent = false;
                self.apply(agent, store, tel, &s);
                agent.followed = Some(Followed {
                    state: s,
                    mod_revision,
                });
            }
            None => {
                agent.absent = true;
                agent.followed = None;
                if agent.failed_seen {
                    // Gone after a rollback: this process keeps it failed (it never revives).
                    let mut failed = CanaryState::new(&self.cfg.revision, now_ms);
                    failed.phase = Phase::Failed;
                    self.apply(agent, store, tel, &failed);
                }
            }
        }
    }

    /// What a read state must be to be followed: this revision's, decodable (magic, version,
    /// checksum, ranges), within the configured steps, and never a revival of a Failed one.
    fn validate_fleet_state(&self, agent: &Agent, bytes: &[u8]) -> Result<CanaryState, String> {
        let s = CanaryState::decode(bytes)
            .ok_or("not a valid state record (magic, version, checksum or ranges)")?;
        if s.revision != self.cfg.revision {
            return Err(format!("it is revision {:?}'s", s.revision));
        }
        let top = self.cfg.analysis.steps.max_weight();
        if matches!(s.phase, Phase::Progressing | Phase::WaitingPromotion) && s.weight > top {
            return Err(format!("weight {} above the last step {top}", s.weight));
        }
        if agent.failed_seen && s.phase != Phase::Failed {
            return Err(format!(
                "phase {} for a revision this proxy saw Failed",
                s.phase.name()
            ));
        }
        Ok(s)
    }

    fn follow_holder(&mut self, agent: &mut Agent, tel: &mut dyn Telemetry, kv: &Kv) {
        let holder = String::from_utf8_lossy(&kv.value).into_owned();
        let mine = holder == agent.replica && agent.lease == Some(kv.lease) && kv.lease != 0;
        if mine {
            // Ours on this lease (also after a hand-over): its create revision is the fence.
            agent.judge = Some(kv.create_revision);
        } else {
            self.lose_judge(agent, tel, "another replica holds the judge key");
        }
        self.judge_changed(agent, tel, Some(holder));
    }

    fn judge_changed(&self, agent: &mut Agent, tel: &mut dyn Telemetry, holder: Option<String>) {
        tel.gauge(
            &self.cfg.name,
            Stat::FleetJudge,
            u64::from(agent.judge.is_some()),
        );
        if holder == agent.holder {
            return;
        }
        agent.holder = holder.clone();
        if let Some(h) = holder {
            let line = if agent.judge.is_some() && h == agent.replica {
                format!("fleet judge acquired (holder {h})")
            } else {
                format!("fleet judge is replica {h}")
            };
            self.log.revision(tel, Level::Info, &line);
        }
    }

    fn lose_judge(&self, agent: &mut Agent, tel: &mut dyn Telemetry, why: &str) {
        if agent.judge.take().is_some() {
            tel.gauge(&self.cfg.name, Stat::FleetJudge, 0);
            let line = format!("fleet judge lost by {}: {why}; not deciding", agent.replica);
            self.log.revision(tel, Level::Warn, &line);
        }
    }

    fn store_failed(&self, agent: &mut Agent, tel: &mut dyn Telemetry, what: &str, why: &str) {
        tel.count(&self.cfg.name, Stat::FleetCallsFailed, 1);
        if !agent.unreachable {
            agent.unreachable = true;
            let line = format!(
                "etcd {what} failed ({why}); keeping the last fleet state for at most {} ms",
                agent.conf.max_staleness_ms
            );
            self.log.revision(tel, Level::Warn, &line);
        }
    }

    /// Routes every request of this proxy to stable until the fleet state is read again.
    fn fall_back(
        &self,
        agent: &mut Agent,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        why: &str,
        now_ms: u64,
    ) {
        tel.gauge(&self.cfg.name, Stat::FleetFallback, 1);
        let failed = agent
            .followed
            .as_ref()
            .is_some_and(|f| f.state.phase == Phase::Failed);
        if !failed {
            let mut held = CanaryState::new(&self.cfg.revision, now_ms);
            if let Some(f) = &agent.followed {
                held.started_ms = f.state.started_ms.min(now_ms);
                held.last_check_ms = f.state.last_check_ms.max(held.started_ms);
            }
            held.phase = Phase::Waiting;
            self.apply_local(store, tel, &held);
        }
        if !agent.fallback {
            agent.fallback = true;
            let line = format!("{why}: routing every request to stable until etcd answers");
            self.log.revision(tel, Level::Error, &line);
        }
        self.lose_judge(agent, tel, "the fleet state is stale");
    }

    /// Follows `s`: unless this proxy has fallen back, the workers route on it.
    fn apply(
        &self,
        agent: &Agent,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        s: &CanaryState,
    ) {
        if !agent.fallback {
            self.apply_local(store, tel, s);
        }
    }

    /// Writes `s` to this proxy's shared data when it differs from what is there.
    fn apply_local(&self, store: &dyn SharedStore, tel: &mut dyn Telemetry, s: &CanaryState) {
        let Some(Loaded { state, cas, .. }) = self.load_state(store) else {
            return;
        };
        if state.as_ref() != Some(s) {
            let _written = self.write_state(store, tel, cas, s);
        }
        self.publish_state(tel, s);
    }
}

/// A request to the fleet's etcd cluster, bounded by `fleet.timeout`.
fn etcd_call<'a>(conf: &'a config::Fleet, req: &'a Request) -> OutCall<'a> {
    OutCall {
        cluster: &conf.etcd_cluster,
        authority: &conf.authority,
        path: req.path,
        body: &req.body,
        timeout_ms: conf.timeout_ms,
    }
}

/// One txn that reads the state, the judge key, the operator's command and the judge's last
/// decisions (no compare: its success branch runs).
fn poll(keys: &FleetKeys) -> Request {
    etcd::read_keys(&[&keys.state, &keys.judge, &keys.command, &keys.decisions])
}

/// This process's replica id, made once and kept in shared data.
fn process_replica_id(store: &dyn SharedStore, host: &dyn RootHost, token: u64) -> String {
    if let Ok(Some((bytes, _))) = store.get(REPLICA_ID_KEY) {
        if let Ok(id) = String::from_utf8(bytes) {
            if !id.is_empty() && id.len() <= 80 {
                return id;
            }
        }
    }
    let random = host.random_u64().unwrap_or(token);
    let id = replica_id(host.node_id().as_deref(), random);
    let _ignored = store.set(REPLICA_ID_KEY, id.as_bytes(), 0);
    match store.get(REPLICA_ID_KEY) {
        Ok(Some((bytes, _))) => String::from_utf8(bytes).unwrap_or(id),
        _ => id,
    }
}
