//! Evaluates the built-in metrics over a window of canary outcomes, Flagger style:
//! `thresholdRange` bounds are inclusive, and too few requests ("no values found") fails.

use crate::config::{MetricCheck, MetricKind};
use crate::tally::Tally;
use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    /// The value broke a bound: which one and its limit.
    OutOfRange {
        bound: Bound,
        limit: f64,
    },
    /// Fewer than `minRequests` canary requests in the window.
    NoData {
        requests: u64,
        min_requests: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricResult {
    pub name: String,
    pub kind: MetricKind,
    /// Measured value (percentage or milliseconds); `None` without data.
    pub value: Option<f64>,
    pub requests: u64,
    pub verdict: Verdict,
    /// The statistical judge's evidence (vs-stable metrics): counts, ratio, e-value.
    pub evidence: Option<String>,
}

impl MetricResult {
    pub fn passed(&self) -> bool {
        self.verdict == Verdict::Pass
    }
}

/// Measures one metric over `window` (canary outcomes only) and judges it.
pub fn evaluate(metric: &MetricCheck, min_requests: u64, window: &Tally) -> MetricResult {
    let mut result = MetricResult {
        name: metric.name.clone(),
        kind: metric.kind,
        value: None,
        requests: window.requests,
        verdict: Verdict::NoData {
            requests: window.requests,
            min_requests,
        },
        evidence: None,
    };
    if window.requests < min_requests || window.requests == 0 {
        return result;
    }
    let value = match metric.kind {
        MetricKind::SuccessRate => {
            100.0 * (window.requests - window.errors) as f64 / window.requests as f64
        }
        MetricKind::Duration { percentile } => match window.latency.percentile(percentile) {
            Some(micros) => micros / 1000.0,
            None => return result,
        },
        // Judged against stable by the sequential test (`judge::result`), not on a window.
        MetricKind::ErrorRateVsStable { .. } | MetricKind::LatencyVsStable { .. } => return result,
    };
    result.value = Some(value);
    result.verdict = match (metric.min, metric.max) {
        (Some(min), _) if value < min => Verdict::OutOfRange {
            bound: Bound::Min,
            limit: min,
        },
        (_, Some(max)) if value > max => Verdict::OutOfRange {
            bound: Bound::Max,
            limit: max,
        },
        _ => Verdict::Pass,
    };
    result
}

/// Formats a number without a pointless fraction: 99 -> "99", 78.333 -> "78.3".
pub fn num(v: f64) -> String {
    if (v - v.round()).abs() < 0.05 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.1}")
    }
}

impl fmt::Display for MetricResult {
    /// e.g. `request-success-rate 78.3% < 99%`, `request-duration p99 612ms > 500ms`,
    /// `no traffic: 3 requests < minRequests 20`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.kind {
            MetricKind::SuccessRate => "%",
            MetricKind::Duration { .. } => "ms",
            MetricKind::ErrorRateVsStable { .. } | MetricKind::LatencyVsStable { .. } => "",
        };
        let label = match self.kind {
            MetricKind::SuccessRate | MetricKind::ErrorRateVsStable { .. } => self.name.clone(),
            MetricKind::Duration { percentile } => format!("{} p{}", self.name, num(percentile)),
            MetricKind::LatencyVsStable { percentile, .. } => {
                format!("{} (slow: above stable's p{})", self.name, num(percentile))
            }
        };
        if let (
            MetricKind::ErrorRateVsStable { max_ratio, alpha }
            | MetricKind::LatencyVsStable {
                max_ratio, alpha, ..
            },
            Some(evidence),
        ) = (self.kind, &self.evidence)
        {
            return match &self.verdict {
                Verdict::OutOfRange { .. } => write!(
                    f,
                    "{label}: canary worse than {}x stable at alpha {alpha} ({evidence})",
                    num(max_ratio)
                ),
                Verdict::NoData {
                    requests,
                    min_requests,
                } => write!(
                    f,
                    "no traffic: {requests} requests < minRequests {min_requests} for {}, the canary is probably not receiving traffic",
                    self.name
                ),
                Verdict::Pass => write!(f, "{label} ({evidence})"),
            };
        }
        match (&self.verdict, self.value) {
            (Verdict::NoData { requests, min_requests }, _) => write!(
                f,
                "no traffic: {requests} requests < minRequests {min_requests} for {}, the canary is probably not receiving traffic",
                self.name
            ),
            (Verdict::OutOfRange { bound, limit }, Some(v)) => {
                let op = if *bound == Bound::Min { "<" } else { ">" };
                write!(f, "{label} {}{unit} {op} {}{unit}", num(v), num(*limit))
            }
            (_, Some(v)) => write!(f, "{label} {}{unit}", num(v)),
            (_, None) => write!(f, "{label} n/a"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(kind: MetricKind, min: Option<f64>, max: Option<f64>) -> MetricCheck {
        let name = match kind {
            MetricKind::SuccessRate => "request-success-rate",
            _ => "request-duration",
        };
        MetricCheck {
            name: name.into(),
            kind,
            min,
            max,
            window_ms: 1000,
        }
    }

    fn tally(ok: u64, err: u64, micros: u64) -> Tally {
        let mut t = Tally::default();
        (0..ok).for_each(|_| t.record(200, micros));
        (0..err).for_each(|_| t.record(500, micros));
        t
    }

    #[test]
    fn success_rate_bounds_are_inclusive() {
        let m = metric(MetricKind::SuccessRate, Some(99.0), None);
        assert!(
            evaluate(&m, 1, &tally(99, 1, 1000)).passed(),
            "exactly 99% passes"
        );
        let r = evaluate(&m, 1, &tally(98, 2, 1000));
        assert_eq!(
            r.verdict,
            Verdict::OutOfRange {
                bound: Bound::Min,
                limit: 99.0
            }
        );
        assert_eq!(r.to_string(), "request-success-rate 98% < 99%");
    }

    #[test]
    fn duration_uses_the_percentile_in_ms() {
        let m = metric(MetricKind::Duration { percentile: 99.0 }, None, Some(500.0));
        let fast = evaluate(&m, 1, &tally(100, 0, 100_000));
        assert!(fast.passed());
        let slow = evaluate(&m, 1, &tally(100, 0, 612_000));
        assert!(!slow.passed());
        assert_eq!(
            slow.to_string(),
            "request-duration p99 610.3ms > 500ms",
            "bucket midpoint, within 0.78%"
        );
    }

    #[test]
    fn too_few_requests_is_a_failure() {
        let m = metric(MetricKind::SuccessRate, Some(99.0), None);
        let r = evaluate(&m, 20, &tally(3, 0, 1000));
        assert_eq!(
            r.verdict,
            Verdict::NoData {
                requests: 3,
                min_requests: 20
            }
        );
        assert!(r
            .to_string()
            .starts_with("no traffic: 3 requests < minRequests 20"));
        assert!(!evaluate(&m, 1, &Tally::default()).passed());
    }
}
