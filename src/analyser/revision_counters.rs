//! Request and 5xx counters per revision: `canary_guard.<name>.revision.<rev>.<side>_<kind>`,
//! which the `revision` stats_tag turns into `canary_guard_revision_canary_requests{canary,
//! revision}` and the like.
//!
//! The workers' own counters (`canary_requests`, ...) are cumulative for the life of the
//! proxy, across revisions. The analyser sums every worker's slot on each report; what the sums
//! grew by since its previous report is counted for the revision it analyses. So a revision's
//! counters start at its first report and stop when it is replaced; a handover between
//! analysers (a reload, a new leader) loses at most one report's growth (`TOTALS_EVERY_MS`),
//! since the new analyser's first sum is only its baseline.

use crate::host::{revision_stat_name, Telemetry};
use crate::tally::Totals;

pub struct RevisionCounters {
    /// stable_requests, stable_5xx, canary_requests, canary_5xx.
    names: [String; 4],
    last: Option<Totals>,
}

impl RevisionCounters {
    pub fn new(canary: &str, revision: &str) -> Self {
        let name = |suffix: &str| revision_stat_name(canary, revision, suffix);
        RevisionCounters {
            names: [
                name("stable_requests"),
                name("stable_5xx"),
                name("canary_requests"),
                name("canary_5xx"),
            ],
            last: None,
        }
    }

    /// Counts what `totals` grew by since the previous call. A sum that went down (a slot
    /// became unreadable, or was reset) is a new baseline, never a negative count.
    pub fn report(&mut self, tel: &mut dyn Telemetry, totals: &Totals) {
        let now = fields(totals);
        match self.last.map(|last| fields(&last)) {
            Some(before) => {
                for ((name, now), before) in self.names.iter().zip(now).zip(before) {
                    if now > before {
                        tel.count_named(name, now - before);
                    }
                }
            }
            // Defined at once, so the revision's series exist from its first report.
            None => {
                for name in &self.names {
                    tel.count_named(name, 0);
                }
            }
        }
        self.last = Some(*totals);
    }
}

/// The sums in the order of `RevisionCounters::names`.
fn fields(t: &Totals) -> [u64; 4] {
    [
        t.stable_requests,
        t.stable_errors,
        t.canary_requests,
        t.canary_errors,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_host::FakeTelemetry;

    fn totals(sr: u64, se: u64, cr: u64, ce: u64) -> Totals {
        Totals {
            stable_requests: sr,
            stable_errors: se,
            canary_requests: cr,
            canary_errors: ce,
        }
    }

    #[test]
    fn counts_the_growth_since_the_first_report_for_its_revision() {
        let mut tel = FakeTelemetry::default();
        let mut v2 = RevisionCounters::new("web", "v2");
        v2.report(&mut tel, &totals(100, 1, 10, 0)); // baseline: traffic before v2 is not v2's
        v2.report(&mut tel, &totals(150, 2, 20, 3));
        let c = |t: &FakeTelemetry, n: &str| t.counters.get(n).copied();
        assert_eq!(
            c(&tel, "canary_guard.web.revision.v2.stable_requests"),
            Some(50)
        );
        assert_eq!(c(&tel, "canary_guard.web.revision.v2.stable_5xx"), Some(1));
        assert_eq!(
            c(&tel, "canary_guard.web.revision.v2.canary_requests"),
            Some(10)
        );
        assert_eq!(c(&tel, "canary_guard.web.revision.v2.canary_5xx"), Some(3));
        // The next revision counts only from its own start.
        let mut v3 = RevisionCounters::new("web", "v3");
        v3.report(&mut tel, &totals(150, 2, 20, 3));
        v3.report(&mut tel, &totals(151, 2, 25, 3));
        assert_eq!(
            c(&tel, "canary_guard.web.revision.v3.canary_requests"),
            Some(5)
        );
        assert_eq!(c(&tel, "canary_guard.web.revision.v3.canary_5xx"), Some(0));
        assert_eq!(
            c(&tel, "canary_guard.web.revision.v2.canary_requests"),
            Some(10)
        );
    }

    #[test]
    fn a_sum_that_drops_is_a_new_baseline_not_a_negative_count() {
        let mut tel = FakeTelemetry::default();
        let mut r = RevisionCounters::new("web", "v2");
        r.report(&mut tel, &totals(100, 0, 50, 0));
        r.report(&mut tel, &totals(60, 0, 30, 0)); // a slot went unreadable
        r.report(&mut tel, &totals(70, 0, 31, 0));
        let n = "canary_guard.web.revision.v2.stable_requests";
        assert_eq!(tel.counters.get(n).copied(), Some(10));
    }

    #[test]
    fn odd_revision_characters_are_kept_out_of_the_stat_name() {
        let r = RevisionCounters::new("web", "sha256:ab/cd");
        assert_eq!(
            r.names[2],
            "canary_guard.web.revision.sha256_ab_cd.canary_requests"
        );
    }
}
