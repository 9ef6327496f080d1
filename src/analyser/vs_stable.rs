//! The statistical judge in the analyser (`error-rate-vs-stable`, `latency-vs-stable`): on
//! every tick while the analysis runs, the workers' new buckets go to the sequential tests
//! (`judge`), whose state is kept in shared data; a test that rejects rolls back at once, on the
//! tick the evidence arrives. At a scheduled check, each vs-stable metric passes when its test
//! has not rejected and its window holds `minRequests` canary requests.

use super::Analyser;
use crate::config::{MetricCheck, MetricKind};
use crate::host::{Level, SharedStore, Telemetry};
use crate::judge::{
    batch_of, completed_buckets, cursor_after, rejection, result, slow_threshold, JudgeState,
    SequentialTest,
};
use crate::metrics::MetricResult;
use crate::outcome::Side;
use crate::state::CanaryState;
use crate::tally::{SlotRecord, Tally};

impl Analyser {
    fn vs_stable(&self) -> impl Iterator<Item = &MetricCheck> {
        self.cfg
            .analysis
            .metrics
            .iter()
            .filter(|m| m.kind.is_vs_stable())
    }

    /// Whether the statistical judge runs on this state: a vs-stable metric, a running
    /// analysis, and no hold (`suspend`, an operator's pause).
    pub(super) fn judging(&self, state: &CanaryState) -> bool {
        self.cfg.analysis.judge_window_ms.is_some()
            && state.phase.is_running()
            && !(self.cfg.suspend || self.paused)
    }

    /// This revision's judge state: the one this analyser holds, else the one in shared data
    /// (a new leader, a reload), else a fresh one from the analysis start. One that does not
    /// validate, or is another revision's, starts afresh: evidence lost is never a rollback.
    fn judge_state(&mut self, store: &dyn SharedStore, state: &CanaryState) -> JudgeState {
        let tests = self.vs_stable().count();
        let fits = |j: &JudgeState| j.revision == self.cfg.revision && j.tests.len() == tests;
        if let Some(j) = self.judge.take().filter(|j| fits(j)) {
            return j;
        }
        store
            .get(&self.keys.judge)
            .ok()
            .flatten()
            .and_then(|(bytes, _)| JudgeState::decode(&bytes))
            .filter(|j| fits(j))
            .unwrap_or_else(|| JudgeState::new(&self.cfg.revision, tests, state.started_ms))
    }

    /// Feeds the buckets completed since the last tick to every vs-stable test; the first
    /// rejection, if any, as a failed metric result. `slots`: this proxy's worker slots, or in
    /// fleet mode (the judge) every replica's record, read `lag_ms` after a bucket ends.
    pub(super) fn judge_tick(
        &mut self,
        store: &dyn SharedStore,
        tel: &mut dyn Telemetry,
        state: &CanaryState,
        slots: &[SlotRecord],
        now_ms: u64,
        lag_ms: u64,
    ) -> Option<MetricResult> {
        let window = self.cfg.analysis.judge_window_ms?;
        let mut judge = self.judge_state(store, state);
        let buckets = completed_buckets(slots, window, judge.cursor_ms, now_ms, lag_ms);
        if buckets.is_empty() {
            self.judge = Some(judge);
            return None;
        }
        let metrics: Vec<MetricCheck> = self.vs_stable().cloned().collect();
        for (m, test) in metrics.iter().zip(judge.tests.iter_mut()) {
            let (max_ratio, slow_above) = match m.kind {
                MetricKind::ErrorRateVsStable { max_ratio, .. } => (max_ratio, None),
                MetricKind::LatencyVsStable {
                    percentile,
                    max_ratio,
                    ..
                } => {
                    // Stable's tail over the metric window before these buckets: the threshold
                    // never depends on the traffic it judges.
                    let to = judge.cursor_ms.saturating_sub(1);
                    let from = to.saturating_sub(m.window_ms).max(state.started_ms);
                    let mut stable = Tally::default();
                    for s in slots {
                        s.window(Side::Stable, m.window_ms, from, to, &mut stable);
                    }
                    match slow_threshold(&stable, percentile) {
                        Some(index) => (max_ratio, Some(index)),
                        None => continue,
                    }
                }
                _ => continue,
            };
            for (_, canary, stable) in &buckets {
                test.update(max_ratio, &batch_of(canary, stable, slow_above));
            }
        }
        judge.cursor_ms = cursor_after(&buckets, judge.cursor_ms);
        if store.set(&self.keys.judge, &judge.encode(), 0).is_err() {
            self.log.revision(
                tel,
                Level::Debug,
                "the judge's state could not be written to shared data (kept in memory)",
            );
        }
        let rejected = metrics
            .iter()
            .zip(&judge.tests)
            .find_map(|(m, t)| rejection(m, t));
        self.judge = Some(judge);
        rejected
    }

    /// A vs-stable metric's result at a scheduled check.
    pub(super) fn vs_stable_result(
        &self,
        metric: &MetricCheck,
        canary_window: &Tally,
    ) -> MetricResult {
        let index = self
            .vs_stable()
            .position(|m| std::ptr::eq(m, metric))
            .unwrap_or(0);
        let fresh = SequentialTest::default();
        let test = self
            .judge
            .as_ref()
            .and_then(|j| j.tests.get(index))
            .unwrap_or(&fresh);
        result(metric, self.cfg.analysis.min_requests, canary_window, test)
    }
}
