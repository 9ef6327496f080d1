//! Outcome tallies: per-side counts and latency per time bucket, the record a worker publishes
//! in its own shared-data slot, and window sums over those records.
//!
//! Window arithmetic: each metric window has a series of its own, cut into 64 buckets of
//! `bucket_ms = window / 64` (at least 100 ms) counted from the analysis start. A window
//! `[from, now]`, with `from` never before the analysis start, sums every bucket that *starts*
//! at or after `from`, including the current partial one: it covers between `window -
//! bucket_ms` and `window` of history (all of it when the analysis is younger than the window,
//! because the first bucket starts at the analysis start), and always sees the newest
//! outcomes. A series per window keeps a 10 s window exact next to a 1 h one.

use crate::codec::{Reader, Writer};
use crate::histogram::Histogram;
use crate::outcome::{is_error, Side};

/// Most buckets a window is cut into (bounds the size of a slot record).
pub const BUCKETS_PER_WINDOW: u64 = 64;
pub const MIN_BUCKET_MS: u64 = 100;
/// Decoder bounds: a record claiming more is corrupt.
const MAX_BUCKETS: usize = 1024;

/// Bucket width for a metric window: a 64th of it, at least `MIN_BUCKET_MS`.
pub fn bucket_ms_for(window_ms: u64) -> u64 {
    window_ms.div_ceil(BUCKETS_PER_WINDOW).max(MIN_BUCKET_MS)
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub errors: u64,
    pub latency: Histogram,
}

impl Tally {
    pub fn record(&mut self, status: u32, micros: u64) {
        self.record_outcome(is_error(status), micros);
    }

    pub fn record_outcome(&mut self, error: bool, micros: u64) {
        self.requests += 1;
        if error {
            self.errors += 1;
        }
        self.latency.record(micros);
    }

    pub fn merge(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
    }

    fn encode(&self, w: &mut Writer) {
        w.u64(self.requests);
        w.u64(self.errors);
        let entries = self.latency.entries();
        w.u16(entries.len() as u16);
        // Entries (u16 index, u32 count) written in place: a field write per value is a call
        // and a memcpy each under opt-level "s", which dominated the encoding of a window.
        let start = w.buf.len();
        w.buf.resize(start + entries.len() * 6, 0);
        let out = w.buf.get_mut(start..).unwrap_or_default();
        for (chunk, (i, c)) in out.chunks_exact_mut(6).zip(entries) {
            let (index, count) = chunk.split_at_mut(2);
            index.copy_from_slice(&i.to_le_bytes());
            count.copy_from_slice(&c.to_le_bytes());
        }
    }

    fn decode(r: &mut Reader) -> Option<Tally> {
        let requests = r.u64()?;
        let errors = r.u64()?;
        let n = usize::from(r.u16()?);
        if n * 6 > r.remaining() {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push((r.u16()?, r.u32()?));
        }
        let latency = Histogram::from_entries(entries)?;
        // Every request records one latency; fewer only where a bucket count saturated.
        let count = latency.count();
        let consistent = count == requests
            || (count < requests && latency.entries().iter().any(|e| e.1 == u32::MAX));
        (errors <= requests && consistent).then_some(Tally {
            requests,
            errors,
            latency,
        })
    }
}

/// Cumulative request and error counts per side (never windowed: for exact accounting).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub stable_requests: u64,
    pub stable_errors: u64,
    pub canary_requests: u64,
    pub canary_errors: u64,
}

impl Totals {
    pub fn add(&mut self, o: &Totals) {
        self.stable_requests += o.stable_requests;
        self.stable_errors += o.stable_errors;
        self.canary_requests += o.canary_requests;
        self.canary_errors += o.canary_errors;
    }

    pub fn record(&mut self, side: Side, status: u32) {
        self.record_outcome(side, is_error(status));
    }

    pub fn record_outcome(&mut self, side: Side, error: bool) {
        let err = u64::from(error);
        match side {
            Side::Stable => {
                self.stable_requests += 1;
                self.stable_errors += err;
            }
            Side::Canary => {
                self.canary_requests += 1;
                self.canary_errors += err;
            }
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bucket {
    pub start_ms: u64,
    pub stable: Tally,
    pub canary: Tally,
}

/// One bucket series: the outcomes cut into buckets sized for one metric window.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Series {
    /// The metric window this series serves, and its bucket width (`bucket_ms_for`).
    pub window_ms: u64,
    pub bucket_ms: u64,
    /// Sorted by `start_ms`, strictly increasing.
    pub buckets: Vec<Bucket>,
}

impl Series {
    pub fn new(window_ms: u64) -> Self {
        Series {
            window_ms,
            bucket_ms: bucket_ms_for(window_ms),
            buckets: Vec::new(),
        }
    }

    fn record(&mut self, origin_ms: u64, now_ms: u64, side: Side, error: bool, micros: u64) {
        let width = self.bucket_ms.max(1);
        // Buckets are cut from the analysis start: the first one starts exactly there, so a
        // window reaching back to the start counts all of it.
        let start = if now_ms >= origin_ms {
            now_ms - (now_ms - origin_ms) % width
        } else {
            now_ms - now_ms % width
        };
        if self.buckets.last().is_none_or(|b| b.start_ms < start) {
            self.buckets.push(Bucket {
                start_ms: start,
                ..Default::default()
            });
        }
        // Late outcome for an older bucket (clock went back): find it, or fold into the newest.
        let idx = self
            .buckets
            .iter()
            .rposition(|b| b.start_ms <= start)
            .unwrap_or(0);
        if let Some(bucket) = self.buckets.get_mut(idx) {
            match side {
                Side::Stable => bucket.stable.record_outcome(error, micros),
                Side::Canary => bucket.canary.record_outcome(error, micros),
            }
        }
    }

    fn merge(&mut self, other: &Series) {
        for b in &other.buckets {
            match self
                .buckets
                .binary_search_by_key(&b.start_ms, |x| x.start_ms)
            {
                Ok(i) => {
                    if let Some(mine) = self.buckets.get_mut(i) {
                        mine.stable.merge(&b.stable);
                        mine.canary.merge(&b.canary);
                    }
                }
                Err(i) => self.buckets.insert(i, b.clone()),
            }
        }
    }
}

/// Most canary requests in flight whose start a worker publishes (the oldest ones).
pub const MAX_IN_FLIGHT_SHOWN: usize = 32;
/// Decoder bound on series.
const MAX_SERIES: usize = 16;

/// What one worker publishes under its slot key. Only its owner writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotRecord {
    /// Random token of the owning root context; 0 when released (free to claim).
    pub owner: u64,
    /// The v2 layout's second word (a heartbeat nobody read, once): new records write 0, a
    /// decoded record keeps what it held, so that a record re-encodes to the same bytes.
    pub reserved: u64,
    pub totals: Totals,
    /// The analysis start the buckets are cut from (0 when none is known).
    pub origin_ms: u64,
    /// One series per distinct metric window, sorted by window, windows distinct.
    pub series: Vec<Series>,
    /// Canary requests of this worker complete and unanswered, and since when (ms) the oldest
    /// of them wait (at most `MAX_IN_FLIGHT_SHOWN`, oldest first): a canary that hangs is
    /// judged on them before they end.
    pub in_flight: u32,
    pub in_flight_oldest: Vec<u64>,
}

const MAGIC: &[u8; 4] = b"CGtl";
/// 2: checksum trailer. 3: a series per metric window cut from the analysis start, requests
/// in flight.
// 4: latency buckets of 1/64 of a power of two (were 1/16).
const VERSION: u8 = 4;

impl SlotRecord {
    /// A record with one series per window in `windows_ms` (deduplicated, sorted).
    pub fn new(owner: u64, windows_ms: &[u64]) -> Self {
        let mut windows: Vec<u64> = windows_ms.iter().map(|w| (*w).max(1)).collect();
        windows.sort_unstable();
        windows.dedup();
        windows.truncate(MAX_SERIES);
        SlotRecord {
            owner,
            series: windows.into_iter().map(Series::new).collect(),
            ..Default::default()
        }
    }

    /// Records one finished request at `now_ms`.
    pub fn record(&mut self, now_ms: u64, side: Side, status: u32, micros: u64) {
        self.record_outcome(now_ms, side, is_error(status), micros);
    }

    /// Records one finished request at `now_ms`, already judged an error or not.
    pub fn record_outcome(&mut self, now_ms: u64, side: Side, error: bool, micros: u64) {
        self.totals.record_outcome(side, error);
        let origin = self.origin_ms;
        for series in &mut self.series {
            series.record(origin, now_ms, side, error, micros);
        }
    }

    /// Drops, in each series, the buckets that ended before its window (and two buckets of
    /// slack) reaches back from `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        for s in &mut self.series {
            let keep_from = now_ms.saturating_sub(s.window_ms + 2 * s.bucket_ms);
            let width = s.bucket_ms;
            s.buckets.retain(|b| b.start_ms + width > keep_from);
        }
    }

    /// Adopts another record's history (claiming a released slot): totals add up, buckets of
    /// the same window merge (a series this record has no window for is left out).
    pub fn absorb(&mut self, other: &SlotRecord) {
        self.totals.add(&other.totals);
        for o in &other.series {
            if let Some(mine) = self.series.iter_mut().find(|s| s.window_ms == o.window_ms) {
                mine.merge(o);
            }
        }
    }

    /// Every bucket of every series (for sizes and audits).
    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.series.iter().flat_map(|s| s.buckets.iter())
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        // Exact size up front: a full window is tens of kB and would otherwise reallocate often.
        let entries: usize = self
            .buckets()
            .map(|b| b.stable.latency.entries().len() + b.canary.latency.entries().len())
            .sum();
        let buckets = self.buckets().count();
        w.buf.reserve_exact(
            57 + self.series.len() * 18
                + buckets * 44
                + entries * 6
                + 4
                + 1
                + self.in_flight_oldest.len() * 8
                + 8,
        );
        w.u64(self.owner);
        w.u64(self.reserved);
        w.u64(self.totals.stable_requests);
        w.u64(self.totals.stable_errors);
        w.u64(self.totals.canary_requests);
        w.u64(self.totals.canary_errors);
        w.u64(self.origin_ms);
        w.u8(self.series.len() as u8);
        for s in &self.series {
            w.u64(s.window_ms);
            w.u64(s.bucket_ms);
            w.u16(s.buckets.len() as u16);
            for b in &s.buckets {
                w.u64(b.start_ms);
                b.stable.encode(&mut w);
                b.canary.encode(&mut w);
            }
        }
        w.u32(self.in_flight);
        w.u8(self.in_flight_oldest.len() as u8);
        for t in &self.in_flight_oldest {
            w.u64(*t);
        }
        w.finish()
    }

    /// The owner token of an encoded record, without decoding the rest (the publisher's
    /// ownership check before each write, which need not decode a whole window).
    pub fn owner_of(bytes: &[u8]) -> Option<u64> {
        Reader::with_header(bytes, MAGIC, VERSION)?.u64()
    }

    /// Decodes and validates; corrupt or foreign bytes give `None` and are never trusted.
    pub fn decode(bytes: &[u8]) -> Option<SlotRecord> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let owner = r.u64()?;
        let reserved = r.u64()?;
        let totals = Totals {
            stable_requests: r.u64()?,
            stable_errors: r.u64()?,
            canary_requests: r.u64()?,
            canary_errors: r.u64()?,
        };
        if totals.stable_errors > totals.stable_requests
            || totals.canary_errors > totals.canary_requests
        {
            return None;
        }
        let origin_ms = r.u64()?;
        let n_series = usize::from(r.u8()?);
        if n_series > MAX_SERIES {
            return None;
        }
        let mut series: Vec<Series> = Vec::with_capacity(n_series);
        for _ in 0..n_series {
            let window_ms = r.u64()?;
            let bucket_ms = r.u64()?;
            let n = usize::from(r.u16()?);
            if bucket_ms == 0
                || n > MAX_BUCKETS
                || series.last().is_some_and(|p| p.window_ms >= window_ms)
            {
                return None;
            }
            let mut buckets: Vec<Bucket> = Vec::with_capacity(n.min(r.remaining() / 8));
            // Buckets are pruned, totals never: a series can only hold a part of the totals.
            let mut in_buckets = Totals::default();
            for _ in 0..n {
                let start_ms = r.u64()?;
                if buckets.last().is_some_and(|p| p.start_ms >= start_ms) {
                    return None;
                }
                let stable = Tally::decode(&mut r)?;
                let canary = Tally::decode(&mut r)?;
                in_buckets = Totals {
                    stable_requests: in_buckets.stable_requests.checked_add(stable.requests)?,
                    stable_errors: in_buckets.stable_errors.checked_add(stable.errors)?,
                    canary_requests: in_buckets.canary_requests.checked_add(canary.requests)?,
                    canary_errors: in_buckets.canary_errors.checked_add(canary.errors)?,
                };
                buckets.push(Bucket {
                    start_ms,
                    stable,
                    canary,
                });
            }
            let within_totals = in_buckets.stable_requests <= totals.stable_requests
                && in_buckets.stable_errors <= totals.stable_errors
                && in_buckets.canary_requests <= totals.canary_requests
                && in_buckets.canary_errors <= totals.canary_errors;
            if !within_totals {
                return None;
            }
            series.push(Series {
                window_ms,
                bucket_ms,
                buckets,
            });
        }
        let in_flight = r.u32()?;
        let shown = usize::from(r.u8()?);
        if shown > MAX_IN_FLIGHT_SHOWN || shown as u64 > u64::from(in_flight) {
            return None;
        }
        let mut in_flight_oldest = Vec::with_capacity(shown);
        for _ in 0..shown {
            let t = r.u64()?;
            if in_flight_oldest.last().is_some_and(|p| *p > t) {
                return None;
            }
            in_flight_oldest.push(t);
        }
        r.is_done().then_some(SlotRecord {
            owner,
            reserved,
            totals,
            origin_ms,
            series,
            in_flight,
            in_flight_oldest,
        })
    }

    /// Sums one side over the buckets, of the series for `window_ms`, that start within
    /// `[from_ms, to_ms]`. A record without that window (a worker on another configuration)
    /// answers from its finest series that is at least as long, else its longest one.
    pub fn window(&self, side: Side, window_ms: u64, from_ms: u64, to_ms: u64, into: &mut Tally) {
        let series = self
            .series
            .iter()
            .find(|s| s.window_ms >= window_ms)
            .or(self.series.last());
        let Some(series) = series else {
            return;
        };
        for b in series
            .buckets
            .iter()
            .filter(|b| b.start_ms >= from_ms && b.start_ms <= to_ms)
        {
            into.merge(match side {
                Side::Stable => &b.stable,
                Side::Canary => &b.canary,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SlotRecord {
        let mut s = SlotRecord::new(42, &[16_000]);
        s.record(1_000, Side::Canary, 200, 1_500);
        s.record(1_100, Side::Canary, 503, 900);
        s.record(1_300, Side::Stable, 200, 2_000);
        s.record(9_999, Side::Canary, 0, 50);
        s
    }

    #[test]
    fn records_into_aligned_buckets() {
        let s = sample();
        let starts: Vec<u64> = s.series[0].buckets.iter().map(|b| b.start_ms).collect();
        assert_eq!(starts, vec![1_000, 1_250, 9_750]);
        assert_eq!(
            s.totals,
            Totals {
                stable_requests: 1,
                stable_errors: 0,
                canary_requests: 3,
                canary_errors: 2
            }
        );
    }

    #[test]
    fn windows_include_buckets_starting_in_range() {
        let s = sample();
        let mut t = Tally::default();
        s.window(Side::Canary, 16_000, 0, 20_000, &mut t);
        assert_eq!((t.requests, t.errors), (3, 2));
        let mut recent = Tally::default();
        s.window(Side::Canary, 16_000, 1_001, 20_000, &mut recent);
        assert_eq!(
            (recent.requests, recent.errors),
            (1, 1),
            "only the bucket at 9750"
        );
    }

    #[test]
    fn prune_keeps_buckets_overlapping_the_retention() {
        let mut s = sample();
        s.prune(1_100 + 16_500);
        let starts: Vec<u64> = s.series[0].buckets.iter().map(|b| b.start_ms).collect();
        assert_eq!(starts, vec![1_000, 1_250, 9_750]);
        s.prune(1_250 + 16_500);
        assert_eq!(s.series[0].buckets.len(), 2);
        assert_eq!(s.totals.canary_requests, 3, "totals are never pruned");
    }

    #[test]
    fn absorb_merges_history() {
        let mut a = sample();
        let b = sample();
        a.absorb(&b);
        assert_eq!(a.totals.canary_requests, 6);
        assert_eq!(a.series[0].buckets.len(), 3);
        assert_eq!(a.series[0].buckets[0].canary.requests, 4);
    }

    #[test]
    fn codec_round_trips() {
        let s = sample();
        let bytes = s.encode();
        assert_eq!(bytes.capacity(), bytes.len(), "sized exactly");
        assert_eq!(SlotRecord::owner_of(&bytes), Some(42));
        assert_eq!(SlotRecord::decode(&bytes), Some(s));
        assert_eq!(
            SlotRecord::owner_of(b"CGtl\x01junkjunk"),
            None,
            "other version"
        );
    }

    #[test]
    fn codec_rejects_corruption() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert_eq!(SlotRecord::decode(&good[..cut]), None, "truncated at {cut}");
        }
        let mut extra = good.clone();
        extra.push(1);
        assert_eq!(SlotRecord::decode(&extra), None);
        // errors > requests in the totals
        let mut lying = sample();
        lying.totals.canary_errors = 99;
        assert_eq!(SlotRecord::decode(&lying.encode()), None);
        // buckets out of order
        let mut unordered = sample();
        unordered.series[0].buckets.swap(0, 1);
        assert_eq!(SlotRecord::decode(&unordered.encode()), None);
        assert_eq!(SlotRecord::decode(b"garbage"), None);
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x40;
            assert_eq!(SlotRecord::decode(&flipped), None, "bit flip at {i}");
        }
    }

    #[test]
    fn codec_rejects_counts_that_do_not_add_up() {
        // More in the buckets than in the never-pruned totals.
        let mut inflated = sample();
        inflated.series[0].buckets[0].canary.requests += 1;
        inflated.series[0].buckets[0].canary.latency.record(10);
        assert_eq!(SlotRecord::decode(&inflated.encode()), None);
        // A latency histogram that does not hold one value per request.
        let mut missing = sample();
        missing.totals.canary_requests += 1;
        missing.series[0].buckets[0].canary.requests += 1;
        assert_eq!(SlotRecord::decode(&missing.encode()), None);
        // ... unless a histogram count saturated (u32::MAX in one bucket).
        let mut saturated = SlotRecord::new(1, &[16_000]);
        let huge = u64::from(u32::MAX) + 10;
        saturated.totals.canary_requests = huge;
        saturated.series[0].buckets.push(Bucket {
            start_ms: 0,
            stable: Tally::default(),
            canary: Tally {
                requests: huge,
                errors: 0,
                latency: Histogram::from_entries(vec![(3, u32::MAX)]).unwrap(),
            },
        });
        assert_eq!(
            SlotRecord::decode(&saturated.encode()),
            Some(saturated.clone())
        );
    }

    #[test]
    fn bucket_width_follows_the_window() {
        assert_eq!(bucket_ms_for(1_000), 100);
        assert_eq!(bucket_ms_for(10_000), 157);
        assert_eq!(bucket_ms_for(3_600_000), 56_250);
    }
}
