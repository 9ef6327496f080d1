//! The fleet judge's decisions: with a fresh fleet state it starts the revision or reads every
//! replica's record (`judge_step`), runs the statistical judge and the check on the fleet's
//! totals (`on_records`), carries out operators' commands (`fleet_command`), and writes each
//! next state in one fenced txn (`write_fleet_state`). The protocol around it (lease, election,
//! polls, publications, fallback) is in `fleet`.

use super::{Agent, Call, StateWrite, RECORDS_EVERY_MS};
use crate::analyser::Analyser;
use crate::config::{Config, RestartPolicy};
use crate::control::Command;
use crate::fleet::etcd::{self, EtcdError, Kv};
use crate::fleet::record::ReplicaRecord;
use crate::fleet::{escape, poll_ms, publish_ms, FleetKeys};
use crate::host::{HttpCalls, Level, SharedStore, Stat, Telemetry};
use crate::judge::READ_LAG_MS;
use crate::state_machine::{is_due, reject, resume, Found, Resume};
use crate::tally::Totals;
use std::collections::BTreeSet;

/// The configuration the judge starts a revision with: in fleet mode a restart is told from
/// a first load (the state is durable), so a revision without state starts, unless an
/// `approvedUntil` is set, which still gates the start.
fn judge_config(cfg: &Config) -> Config {
    let mut c = cfg.clone();
    c.restart_policy = if c.approved_until.is_some() {
        RestartPolicy::Hold
    } else {
        RestartPolicy::Restart
    };
    c
}

impl Analyser {
    /// As the judge, with a fresh state: start the revision, or read the tallies for a check.
    pub(super) fn judge_step(
        &mut self,
        agent: &mut Agent,
        keys: &FleetKeys,
        host: &mut dyn HttpCalls,
        tel: &mut dyn Telemetry,
        now_ms: u64,
    ) {
        let fresh = !agent.fallback
            && now_ms <= agent.last_good_ms + 2 * poll_ms(self.cfg.analysis.interval_ms);
        if agent.judge.is_none()
            || !fresh
            || agent.pending(|c| matches!(c, Call::Records | Call::Write { .. }))
        {
            return;
        }
        let Some(fence) = agent.judge else {
            return;
        };
        if let Some(cmd) = self.pending_fleet_command.take() {
            self.fleet_command(agent, keys, host, tel, &cmd, now_ms);
            return;
        }
        let jcfg = judge_config(&self.cfg);
        let (found, seen_mod) = match (&agent.followed, agent.absent) {
            (Some(f), _) => (Found::State(&f.state), f.mod_revision),
            (None, true) => (Found::Nothing, 0),
            (None, false) => return,
        };
        match resume(&jcfg, found, now_ms) {
            Resume::Write(next, events) => {
                // A start waits for the confirm-rollout webhooks, as on a lone proxy.
                let Some((next, events)) = self.confirm_start(tel, host, next, events, now_ms)
                else {
                    return;
                };
                let write = StateWrite {
                    fence,
                    seen_mod,
                    next,
                    events,
                    results: Vec::new(),
                };
                self.write_fleet_state(agent, keys, host, tel, write, now_ms);
            }
            Resume::Keep(state) => {
                if self.hold_while_suspended(tel, &state, now_ms) {
                    return;
                }
                if self.hooks_pending() {
                    return; // the check's webhooks are answering; records are read after
                }
                let as_of = now_ms.saturating_sub(publish_ms(self.cfg.analysis.interval_ms));
                // Between checks (and after the analysis) the judge still reads the records
                // now and then: the replica count and the fleet totals stay current.
                // The statistical judge reads them every publication period while it runs.
                let every = if self.judging(&state) {
                    publish_ms(self.cfg.analysis.interval_ms)
                } else {
                    self.cfg.analysis.interval_ms.max(RECORDS_EVERY_MS)
                };
                if is_due(&self.cfg, &state, as_of) || now_ms >= agent.next_records_ms {
                    agent.next_records_ms = now_ms + every;
                    let req = etcd::range_prefix(&keys.replicas);
                    self.send(agent, host, tel, req, Call::Records, now_ms);
                }
            }
        }
    }

    /// The judge carries out an operator's command on the fleet state (pause and resume hold
    /// or free its checks; the others are one fenced state write, which every replica follows).
    pub(super) fn fleet_command(
        &mut self,
        agent: &mut Agent,
        keys: &FleetKeys,
        host: &mut dyn HttpCalls,
        tel: &mut dyn Telemetry,
        cmd: &Command,
        now_ms: u64,
    ) {
        let Some(fence) = agent.judge else {
            return;
        };
        let (state, seen_mod) = match &agent.followed {
            Some(f) => (Some(f.state.clone()), f.mod_revision),
            None => (None, 0),
        };
        let Some((next, events)) = self.carry_out(tel, cmd, state.as_ref(), now_ms) else {
            return;
        };
        let write = StateWrite {
            fence,
            seen_mod,
            next,
            events,
            results: Vec::new(),
        };
        self.write_fleet_state(agent, keys, host, tel, write, now_ms);
    }

    /// The judge's state write: one txn fenced on its judge key's create revision and on the
    /// state's mod revision as read (0: absent, which creates the revision's state).
    pub(super) fn write_fleet_state(
        &self,
        agent: &mut Agent,
        keys: &FleetKeys,
        host: &mut dyn HttpCalls,
        tel: &mut dyn Telemetry,
        w: StateWrite,
        now_ms: u64,
    ) {
        let req = etcd::fenced_put(
            &keys.judge,
            w.fence,
            &keys.state,
            w.seen_mod,
            &w.next.encode(),
        );
        let call = Call::Write {
            next: w.next,
            events: w.events,
            results: w.results,
            created: w.seen_mod == 0,
        };
        self.send(agent, host, tel, req, call, now_ms);
    }

    /// The judge's check on the fleet's records.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_records(
        &mut self,
        agent: &mut Agent,
        kvs: &[Kv],
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        host: &mut dyn HttpCalls,
        now_ms: u64,
    ) -> Result<(), EtcdError> {
        let Some(keys) = agent.keys.clone() else {
            return Ok(());
        };
        let mut records = Vec::with_capacity(kvs.len());
        let mut rejected = 0;
        for kv in kvs {
            match ReplicaRecord::decode(&kv.value) {
                Some(r)
                    if r.revision == self.cfg.revision
                        && kv.key
                            == [keys.replicas.as_slice(), escape(&r.replica).as_bytes()]
                                .concat() =>
                {
                    records.push(r)
                }
                _ => rejected += 1,
            }
        }
        if rejected != agent.rejected_records {
            agent.rejected_records = rejected;
            if rejected > 0 {
                let line = format!("ignored {rejected} replica record(s) that do not validate");
                self.log.revision(tel, Level::Warn, &line);
            }
        }
        self.note_replicas(agent, tel, &records);
        let name = self.cfg.name.clone();
        let mut totals = Totals::default();
        records.iter().for_each(|r| totals.add(&r.tally.totals));
        tel.gauge(&name, Stat::FleetReplicas, records.len() as u64);
        tel.gauge(
            &name,
            Stat::FleetTalliedCanaryRequests,
            totals.canary_requests,
        );
        tel.gauge(&name, Stat::FleetTalliedCanary5xx, totals.canary_errors);
        tel.gauge(
            &name,
            Stat::FleetTalliedStableRequests,
            totals.stable_requests,
        );
        tel.gauge(&name, Stat::FleetTalliedStable5xx, totals.stable_errors);
        let (Some(fence), Some(f)) = (agent.judge, agent.followed.clone()) else {
            return Ok(());
        };
        let slots: Vec<_> = records.into_iter().map(|r| r.tally).collect();
        let publish = publish_ms(self.cfg.analysis.interval_ms);
        // The statistical judge on the fleet's buckets, a publication period after they end
        // (every replica has published them by then).
        if self.judging(&f.state) {
            let lag = publish + READ_LAG_MS;
            if let Some(rejected) = self.judge_tick(store, tel, &f.state, &slots, now_ms, lag) {
                let (next, events) = reject(&self.cfg, &f.state, &rejected, now_ms);
                let write = StateWrite {
                    fence,
                    seen_mod: f.mod_revision,
                    next,
                    events,
                    results: vec![rejected],
                };
                self.write_fleet_state(agent, &keys, host, tel, write, now_ms);
                return Ok(());
            }
        }
        // The check is as of one publication period back: every replica has published it.
        let to = now_ms.saturating_sub(publish);
        if !self.due(&f.state, to) {
            return Ok(());
        }
        // The check's webhooks first (rounds answered on later ticks; the records are read
        // again once they are done).
        let Some(gates) = self.checked(tel, host, &f.state, &slots, to, now_ms) else {
            return Ok(());
        };
        let (results, next, events) = self.run_check_at(&f.state, &slots, &gates, to, now_ms);
        let write = StateWrite {
            fence,
            seen_mod: f.mod_revision,
            next,
            events,
            results,
        };
        // Sent from here: the check's outcome should not wait for the next tick.
        self.write_fleet_state(agent, &keys, host, tel, write, now_ms);
        Ok(())
    }

    pub(super) fn note_replicas(
        &self,
        agent: &mut Agent,
        tel: &mut dyn Telemetry,
        records: &[ReplicaRecord],
    ) {
        let now: BTreeSet<String> = records.iter().map(|r| r.replica.clone()).collect();
        let joined: Vec<_> = now.difference(&agent.replicas).cloned().collect();
        let left: Vec<_> = agent.replicas.difference(&now).cloned().collect();
        if !joined.is_empty() {
            let line = format!(
                "replica(s) joined the fleet: {} ({} live)",
                joined.join(", "),
                now.len()
            );
            self.log.revision(tel, Level::Info, &line);
        }
        if !left.is_empty() {
            let line = format!(
                "replica(s) left the fleet (their records expired with their lease): {}; fleet traffic now counts {} replica(s)",
                left.join(", "),
                now.len()
            );
            self.log.revision(tel, Level::Warn, &line);
        }
        agent.replicas = now;
    }
}
