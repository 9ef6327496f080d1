//! The statistical judge against stable (`error-rate-vs-stable`, `latency-vs-stable`): an
//! anytime-valid sequential test that the canary is worse than `maxRatio` times stable,
//! evaluated on every tick without inflating false rollbacks. Pure: the analyser feeds it the
//! workers' tallies and keeps its state in shared data (`JudgeState`).
//!
//! ## The test
//! Both sides' outcomes are seen in the same proxy at the same moment. Take the "events" of a
//! batch of traffic (errors, or slow requests): the canary served `n_c` requests, stable `n_s`.
//! If the canary's event rate is `r` times stable's, whatever stable's rate is at that moment
//! (a shared outage raises both: it cancels out), an event is the canary's with probability
//! `q(r) = r·n_c / (r·n_c + n_s)`: of `e` events, `c` are the canary's, binomially. So each batch
//! is a Bernoulli trial per event with log-odds `log(n_c/n_s) + log r`: one exponential family
//! in `β = log r` whose offset changes with the traffic split (weights, match rules and session
//! affinity included: the split is measured, not assumed). This is the setting of Lindon &
//! Malek (NeurIPS 2022, multinomial count data under a time-varying background), here with a
//! discrete mixture over the alternative rather than their Dirichlet conjugate, because the
//! null probability moves with every weight change.
//!
//! Null `r ≤ ρ` (`maxRatio`). For each alternative `r_k = ρ·g_k` (`g_k > 1`, weights `π_k`),
//! `L_k = Π_batches q(r_k)^c (1-q(r_k))^(e-c) / (q(ρ)^c (1-q(ρ))^(e-c))`. Under `r = ρ` each
//! factor has expectation 1; under any `r < ρ` at most 1 (the log-partition function of the
//! family is convex, so its increments grow with β). So `M = Σ π_k L_k` is a nonnegative
//! supermartingale under the whole null, with `M_0 = 1`, and by Ville's inequality
//! `P(ever M ≥ 1/α) ≤ α`: the test may be looked at after every batch, for as long as the
//! analysis runs, and a weight change needs no restart (the next batch's `q` uses its own split).
//! Conditioning on each batch's totals also keeps it valid when both sides' rates change
//! together, and with finite requests (a hypergeometric split is dominated by the binomial one
//! in convex order).
//!
//! For latency the events are "slow" requests: above stable's `percentile` over the metric
//! window before the batch (so the threshold never peeks at the batch it judges), on both sides.

use crate::codec::{Reader, Writer};
use crate::config::{MetricCheck, MetricKind};
use crate::metrics::{Bound, MetricResult, Verdict};
use crate::tally::{SlotRecord, Tally};

/// The alternatives `g_k` (multiples of `maxRatio`) and their mixture weights `π_k` (sum 1):
/// most weight on the moderate regressions that are hard to see, some on gross ones, which
/// the test then rejects from a handful of events.
pub const ALTERNATIVES: [(f64, f64); 6] = [
    (1.5, 0.25),
    (2.0, 0.25),
    (3.0, 0.2),
    (5.0, 0.15),
    (10.0, 0.1),
    (100.0, 0.05),
];
const K: usize = ALTERNATIVES.len();

/// One batch of traffic: requests and events (errors, or slow requests) per side.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Batch {
    pub canary_requests: u64,
    pub canary_events: u64,
    pub stable_requests: u64,
    pub stable_events: u64,
}

impl Batch {
    pub fn add(&mut self, o: &Batch) {
        self.canary_requests = self.canary_requests.saturating_add(o.canary_requests);
        self.canary_events = self.canary_events.saturating_add(o.canary_events);
        self.stable_requests = self.stable_requests.saturating_add(o.stable_requests);
        self.stable_events = self.stable_events.saturating_add(o.stable_events);
    }
}

/// The mixture e-process of one metric, and what it has seen.
#[derive(Debug, Clone, PartialEq)]
pub struct SequentialTest {
    /// `log L_k` per alternative.
    pub log_lr: [f64; K],
    pub seen: Batch,
}

impl Default for SequentialTest {
    fn default() -> Self {
        SequentialTest {
            log_lr: [0.0; K],
            seen: Batch::default(),
        }
    }
}

/// `q(r)`: the probability that an event of the batch is the canary's when its rate is `r`
/// times stable's.
fn canary_share(r: f64, canary_requests: f64, stable_requests: f64) -> f64 {
    let c = r * canary_requests;
    c / (c + stable_requests)
}

impl SequentialTest {
    /// Adds one batch under the null `r ≤ max_ratio`. A batch without requests on both sides,
    /// or without events, carries no evidence about the ratio and changes nothing.
    pub fn update(&mut self, max_ratio: f64, b: &Batch) {
        self.seen.add(b);
        let events = b.canary_events.saturating_add(b.stable_events);
        if b.canary_requests == 0 || b.stable_requests == 0 || events == 0 {
            return;
        }
        let (nc, ns) = (b.canary_requests as f64, b.stable_requests as f64);
        let (c, s) = (b.canary_events as f64, b.stable_events as f64);
        let q0 = canary_share(max_ratio, nc, ns);
        for (lr, (g, _)) in self.log_lr.iter_mut().zip(ALTERNATIVES) {
            let q = canary_share(max_ratio * g, nc, ns);
            *lr += c * (q / q0).ln() + s * ((1.0 - q) / (1.0 - q0)).ln();
        }
    }

    /// The e-value `M = Σ π_k L_k` (1 before any evidence).
    pub fn e_value(&self) -> f64 {
        self.log_lr
            .iter()
            .zip(ALTERNATIVES)
            .map(|(lr, (_, w))| w * lr.exp())
            .sum()
    }

    /// Whether the evidence that the canary is worse than `maxRatio` times stable is at level
    /// `alpha`: `M ≥ 1/alpha`.
    pub fn rejects(&self, alpha: f64) -> bool {
        self.e_value() >= 1.0 / alpha
    }

    /// The canary's event rate over stable's, on everything seen (`None` without both sides'
    /// requests); half an event added to each side so that zero counts stay finite.
    pub fn ratio_estimate(&self) -> Option<f64> {
        let s = &self.seen;
        if s.canary_requests == 0 || s.stable_requests == 0 {
            return None;
        }
        let canary = (s.canary_events as f64 + 0.5) / s.canary_requests as f64;
        let stable = (s.stable_events as f64 + 0.5) / s.stable_requests as f64;
        Some(canary / stable)
    }

    /// The evidence, for the logs: `canary 12/1000, stable 30/9000, ratio 3.6, e-value 142`.
    pub fn evidence(&self, what: &str) -> String {
        let s = &self.seen;
        let ratio = self
            .ratio_estimate()
            .map_or("n/a".to_string(), |r| format!("{r:.2}"));
        format!(
            "canary {} {what} in {} requests, stable {} in {}, ratio {ratio}, e-value {}",
            s.canary_events,
            s.canary_requests,
            s.stable_events,
            s.stable_requests,
            fmt_e(self.e_value())
        )
    }

    fn encode(&self, w: &mut Writer) {
        for lr in self.log_lr {
            w.u64(lr.to_bits());
        }
        for v in [
            self.seen.canary_requests,
            self.seen.canary_events,
            self.seen.stable_requests,
            self.seen.stable_events,
        ] {
            w.u64(v);
        }
    }

    fn decode(r: &mut Reader) -> Option<Self> {
        let mut log_lr = [0.0; K];
        for lr in log_lr.iter_mut() {
            let v = f64::from_bits(r.u64()?);
            // A log likelihood ratio is finite; one above the rejection of any alpha we accept
            // (1e-6) by far, or absurdly low, is not something this code wrote.
            if !v.is_finite() || v.abs() > 1e12 {
                return None;
            }
            *lr = v;
        }
        let seen = Batch {
            canary_requests: r.u64()?,
            canary_events: r.u64()?,
            stable_requests: r.u64()?,
            stable_events: r.u64()?,
        };
        let sane = seen.canary_events <= seen.canary_requests
            && seen.stable_events <= seen.stable_requests;
        sane.then_some(SequentialTest { log_lr, seen })
    }
}

/// An e-value for the logs: `3.2`, `142`, `1.6e9`.
pub fn fmt_e(e: f64) -> String {
    if e >= 1e6 {
        format!("{e:.1e}")
    } else if e >= 100.0 {
        format!("{e:.0}")
    } else {
        format!("{e:.2}")
    }
}

const MAGIC: &[u8; 4] = b"CGjd";
const VERSION: u8 = 1;

/// The judge's state for one revision, in shared data (`canary-guard/<name>/judge`): one test
/// per vs-stable metric, in configuration order, and the end of the traffic already fed to them.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct JudgeState {
    pub revision: String,
    /// Buckets starting before this (ms) have been fed to the tests.
    pub cursor_ms: u64,
    pub tests: Vec<SequentialTest>,
}

/// At most this many vs-stable metrics (the configuration refuses more).
pub const MAX_TESTS: usize = 8;

impl JudgeState {
    pub fn new(revision: &str, tests: usize, cursor_ms: u64) -> Self {
        JudgeState {
            revision: revision.to_string(),
            cursor_ms,
            tests: vec![SequentialTest::default(); tests],
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.short_str(&self.revision);
        w.u64(self.cursor_ms);
        w.u8(self.tests.len().min(MAX_TESTS) as u8);
        for t in self.tests.iter().take(MAX_TESTS) {
            t.encode(&mut w);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let revision = r.short_str()?;
        let cursor_ms = r.u64()?;
        let n = usize::from(r.u8()?);
        if n > MAX_TESTS {
            return None;
        }
        let mut tests = Vec::with_capacity(n);
        for _ in 0..n {
            tests.push(SequentialTest::decode(&mut r)?);
        }
        r.is_done().then_some(JudgeState {
            revision,
            cursor_ms,
            tests,
        })
    }
}

/// How long after a bucket ends the judge waits before it reads it: a worker publishes its
/// slot on its own tick, so a bucket read at its end could still miss a worker's last requests.
pub const READ_LAG_MS: u64 = 200;

/// The judge's buckets (its series, `window_ms`, of every worker's slot or replica's record)
/// that ended `lag_ms` before `now_ms` and start at or after `cursor_ms`, summed and sorted by
/// start: `(start, canary, stable)`. Buckets are cut from the analysis start everywhere, so
/// equal starts are the same span of time.
pub fn completed_buckets(
    slots: &[SlotRecord],
    window_ms: u64,
    cursor_ms: u64,
    now_ms: u64,
    lag_ms: u64,
) -> Vec<(u64, Tally, Tally)> {
    let mut out: Vec<(u64, Tally, Tally)> = Vec::new();
    for slot in slots {
        let Some(series) = slot.series.iter().find(|s| s.window_ms == window_ms) else {
            continue;
        };
        for b in &series.buckets {
            let ended = b.start_ms.saturating_add(series.bucket_ms);
            if b.start_ms < cursor_ms || ended.saturating_add(lag_ms) > now_ms {
                continue;
            }
            match out.binary_search_by_key(&b.start_ms, |e| e.0) {
                Ok(i) => {
                    if let Some(e) = out.get_mut(i) {
                        e.1.merge(&b.canary);
                        e.2.merge(&b.stable);
                    }
                }
                Err(i) => out.insert(i, (b.start_ms, b.canary.clone(), b.stable.clone())),
            }
        }
    }
    out
}

/// The first cursor after these buckets (unchanged when there are none).
pub fn cursor_after(buckets: &[(u64, Tally, Tally)], cursor_ms: u64) -> u64 {
    buckets
        .last()
        .map_or(cursor_ms, |(start, _, _)| start.saturating_add(1))
}

/// Least stable requests behind a slow threshold: fewer say too little about stable's tail.
pub const MIN_STABLE_FOR_THRESHOLD: u64 = 50;

/// A batch of one metric's events from one bucket: errors, or requests slower than the
/// threshold bucket (`slow_above`: a histogram bucket index; both sides by the same rule).
pub fn batch_of(canary: &Tally, stable: &Tally, slow_above: Option<u16>) -> Batch {
    let events = |t: &Tally| match slow_above {
        None => t.errors,
        Some(index) => t
            .latency
            .entries()
            .iter()
            .filter(|(i, _)| *i > index)
            .map(|(_, c)| u64::from(*c))
            .sum(),
    };
    Batch {
        canary_requests: canary.requests,
        canary_events: events(canary).min(canary.requests),
        stable_requests: stable.requests,
        stable_events: events(stable).min(stable.requests),
    }
}

/// Stable's `percentile` as a histogram bucket index, from its tally over the metric window
/// before the batch; `None` with too few stable requests to tell.
pub fn slow_threshold(stable_window: &Tally, percentile: f64) -> Option<u16> {
    if stable_window.latency.count() < MIN_STABLE_FOR_THRESHOLD {
        return None;
    }
    let micros = stable_window.latency.percentile(percentile)?;
    Some(crate::histogram::bucket_of(micros as u64))
}

/// A vs-stable metric's result at a check: no data below `minRequests` canary requests in its
/// window, failed when the test rejects, else passed (not rejecting with enough data lets the
/// step advance). `value` is the ratio estimate.
pub fn result(
    metric: &MetricCheck,
    min_requests: u64,
    canary_window: &Tally,
    test: &SequentialTest,
) -> MetricResult {
    let (max_ratio, alpha, what) = match metric.kind {
        MetricKind::ErrorRateVsStable { max_ratio, alpha } => (max_ratio, alpha, "errors"),
        MetricKind::LatencyVsStable {
            max_ratio, alpha, ..
        } => (max_ratio, alpha, "slow requests"),
        _ => (1.0, 0.01, "events"),
    };
    let requests = canary_window.requests;
    // A rejection is evidence whatever the window holds; passing needs enough data.
    let verdict = if test.rejects(alpha) {
        Verdict::OutOfRange {
            bound: Bound::Max,
            limit: max_ratio,
        }
    } else if requests < min_requests || requests == 0 {
        Verdict::NoData {
            requests,
            min_requests,
        }
    } else {
        Verdict::Pass
    };
    MetricResult {
        name: metric.name.clone(),
        kind: metric.kind,
        value: test.ratio_estimate(),
        requests,
        verdict,
        evidence: Some(test.evidence(what)),
    }
}

/// The metric's test rejects: the reason the analysis rolls back at once.
pub fn rejection(metric: &MetricCheck, test: &SequentialTest) -> Option<MetricResult> {
    let r = result(metric, 0, &Tally::default(), test);
    matches!(r.verdict, Verdict::OutOfRange { .. }).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(nc: u64, c: u64, ns: u64, s: u64) -> Batch {
        Batch {
            canary_requests: nc,
            canary_events: c,
            stable_requests: ns,
            stable_events: s,
        }
    }

    #[test]
    fn mixture_weights_sum_to_one_and_alternatives_are_above_the_null() {
        let total: f64 = ALTERNATIVES.iter().map(|(_, w)| w).sum();
        assert!((total - 1.0).abs() < 1e-12);
        assert!(ALTERNATIVES.iter().all(|(g, w)| *g > 1.0 && *w > 0.0));
    }

    #[test]
    fn a_batch_without_both_sides_or_events_is_no_evidence() {
        let mut t = SequentialTest::default();
        t.update(1.0, &batch(0, 0, 100, 5));
        t.update(1.0, &batch(10, 3, 0, 0));
        t.update(1.0, &batch(10, 0, 90, 0));
        assert_eq!(t.log_lr, [0.0; K]);
        assert!((t.e_value() - 1.0).abs() < 1e-12);
    }

    #[test]
    fn errors_in_the_split_of_traffic_lower_the_evidence_and_a_canary_share_above_raises_it() {
        // At weight 10%, 10% of the errors being the canary's is what the null r = 1 predicts.
        let mut fair = SequentialTest::default();
        for _ in 0..50 {
            fair.update(1.0, &batch(100, 1, 900, 9));
        }
        assert!(fair.e_value() < 1.0, "{}", fair.e_value());
        let mut bad = SequentialTest::default();
        for _ in 0..50 {
            bad.update(1.0, &batch(100, 3, 900, 9)); // 3x
        }
        assert!(bad.rejects(0.01), "{}", bad.evidence("errors"));
        let r = bad.ratio_estimate().unwrap();
        assert!((r - 3.0).abs() < 0.3, "{r}");
    }

    #[test]
    fn a_shared_outage_cancels_out() {
        // Both sides at 30% errors for a while: no evidence against the canary.
        let mut t = SequentialTest::default();
        for _ in 0..200 {
            t.update(1.5, &batch(100, 30, 900, 270));
        }
        assert!(!t.rejects(0.01), "{}", t.evidence("errors"));
    }

    #[test]
    fn a_canary_failing_everything_is_rejected_from_one_small_batch() {
        let mut t = SequentialTest::default();
        t.update(1.5, &batch(10, 10, 90, 1));
        assert!(t.rejects(0.01), "{}", t.evidence("errors"));
    }

    #[test]
    fn the_state_round_trips_and_refuses_what_this_code_never_writes() {
        let mut s = JudgeState::new("v2", 2, 1_000);
        s.tests[0].update(1.5, &batch(100, 3, 900, 9));
        let bytes = s.encode();
        assert_eq!(JudgeState::decode(&bytes), Some(s.clone()));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x10;
            assert_eq!(JudgeState::decode(&b), None, "byte {i} flipped");
        }
        assert_eq!(JudgeState::decode(&bytes[..bytes.len() - 1]), None);
        let mut nan = s.clone();
        nan.tests[1].log_lr[0] = f64::NAN;
        assert_eq!(JudgeState::decode(&nan.encode()), None);
        let mut more = s;
        more.tests[0].seen.canary_events = 1_000;
        assert_eq!(
            JudgeState::decode(&more.encode()),
            None,
            "events > requests"
        );
    }
}
