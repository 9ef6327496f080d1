//! Log-linear latency histogram in microseconds with bounded relative error.
//!
//! Values below 128µs are exact; above, each power of two is split into 64 equal buckets, so a
//! bucket is at most 1/64 of its lower bound wide and its midpoint is within ±0.78% of any
//! value in it: a reported percentile is never more than 1% from the true one (a true p99 of
//! 505 ms is never reported below 500 ms). Stored sparse (index, count), sorted, because
//! latencies cluster in a few buckets.

/// Mantissa bits: 2^6 = 64 sub-buckets per power of two.
const BITS: u64 = 6;
/// Sub-buckets per power of two.
const SUB: u64 = 1 << BITS;
/// Largest recorded value: ~19 hours in µs; anything longer is clamped.
pub const MAX_MICROS: u64 = (1 << 36) - 1;
/// Number of distinct bucket indices.
pub const BUCKETS: u16 = bucket_of(MAX_MICROS) + 1;

/// Bucket index of a value in µs.
pub const fn bucket_of(micros: u64) -> u16 {
    let v = if micros > MAX_MICROS {
        MAX_MICROS
    } else {
        micros
    };
    if v < 2 * SUB {
        return v as u16;
    }
    let exp = 63 - v.leading_zeros() as u64; // >= BITS + 1
    let mantissa = (v >> (exp - BITS)) & (SUB - 1);
    ((exp - BITS + 1) * SUB + mantissa) as u16
}

/// Inclusive lower and exclusive upper bound of a bucket, in µs.
pub fn bounds_of(index: u16) -> (u64, u64) {
    let i = u64::from(index);
    if i < 2 * SUB {
        return (i, i + 1);
    }
    let exp = i / SUB + BITS - 1;
    let mantissa = i % SUB;
    let shift = exp - BITS;
    ((SUB + mantissa) << shift, (SUB + mantissa + 1) << shift)
}

/// Representative value of a bucket: its midpoint (exact below 32µs).
pub fn value_of(index: u16) -> f64 {
    let (lo, hi) = bounds_of(index);
    if hi - lo == 1 {
        lo as f64
    } else {
        (lo + hi) as f64 / 2.0
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    /// (bucket index, count), sorted by index, counts > 0.
    entries: Vec<(u16, u32)>,
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.add(bucket_of(micros), 1);
    }

    pub fn add(&mut self, index: u16, count: u32) {
        if count == 0 {
            return;
        }
        match self.entries.binary_search_by_key(&index, |e| e.0) {
            Ok(pos) => {
                if let Some(e) = self.entries.get_mut(pos) {
                    e.1 = e.1.saturating_add(count);
                }
            }
            Err(pos) => self.entries.insert(pos, (index, count)),
        }
    }

    /// Adds another histogram: one pass over both sorted lists (no search per entry).
    pub fn merge(&mut self, other: &Histogram) {
        let mut pos = 0;
        for &(index, count) in &other.entries {
            if count == 0 {
                continue;
            }
            while self.entries.get(pos).is_some_and(|e| e.0 < index) {
                pos += 1;
            }
            match self.entries.get_mut(pos) {
                Some(e) if e.0 == index => e.1 = e.1.saturating_add(count),
                _ => self.entries.insert(pos, (index, count)),
            }
            pos += 1;
        }
    }

    pub fn entries(&self) -> &[(u16, u32)] {
        &self.entries
    }

    pub fn count(&self) -> u64 {
        self.entries.iter().map(|e| u64::from(e.1)).sum()
    }

    /// The `p`-th percentile (0 < p <= 100) in µs, or `None` when empty. Nearest-rank: the
    /// smallest bucket whose cumulative count reaches ceil(p% of n).
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((p / 100.0) * n as f64).ceil().clamp(1.0, n as f64) as u64;
        let mut seen = 0u64;
        for (i, c) in &self.entries {
            seen += u64::from(*c);
            if seen >= rank {
                return Some(value_of(*i));
            }
        }
        self.entries.last().map(|e| value_of(e.0))
    }

    /// Builds a histogram from decoded entries, refusing unsorted, duplicate, empty or
    /// out-of-range ones (used by the shared-data codec, which must not trust its input).
    pub fn from_entries(entries: Vec<(u16, u32)>) -> Option<Self> {
        let sorted = entries.windows(2).all(|w| matches!(w, [a, b] if a.0 < b.0));
        let valid = entries.iter().all(|(i, c)| *i < BUCKETS && *c > 0);
        (sorted && valid).then_some(Histogram { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_contain_their_values() {
        let mut prev_hi = 0;
        for i in 0..BUCKETS {
            let (lo, hi) = bounds_of(i);
            assert_eq!(
                lo,
                prev_hi,
                "bucket {i} starts where {} ended",
                i.wrapping_sub(1)
            );
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(hi - 1), i);
            prev_hi = hi;
        }
        assert_eq!(prev_hi, MAX_MICROS + 1);
    }

    #[test]
    fn relative_error_is_bounded() {
        for v in [
            1u64, 31, 32, 33, 100, 127, 128, 129, 999, 1_000, 12_345, 500_000, 505_000, 2_000_000,
            60_000_000,
        ] {
            let est = value_of(bucket_of(v));
            let err = (est - v as f64).abs() / v as f64;
            assert!(err <= 1.0 / 128.0 + 1e-9, "{v}: {est} off by {err}");
        }
    }

    #[test]
    fn percentiles_follow_nearest_rank() {
        let mut h = Histogram::default();
        for v in 1..=100u64 {
            h.record(v * 1000);
        }
        let p99 = h.percentile(99.0).unwrap();
        assert!((p99 - 99_000.0).abs() / 99_000.0 < 0.01, "{p99}");
        let p50 = h.percentile(50.0).unwrap();
        assert!((p50 - 50_000.0).abs() / 50_000.0 < 0.01, "{p50}");
        assert_eq!(Histogram::default().percentile(99.0), None);
    }

    #[test]
    fn merge_adds_counts() {
        let mut a = Histogram::default();
        let mut b = Histogram::default();
        a.record(10);
        b.record(10);
        b.record(5000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.entries().len(), 2);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        // Interleaved, disjoint, overlapping and empty index sets, both ways round.
        let sets: [&[u64]; 5] = [
            &[],
            &[5, 40, 40, 900],
            &[1, 5, 6, 900, 70_000],
            &[3],
            &[41, 42],
        ];
        for x in sets {
            for y in sets {
                let (mut a, mut b, mut all) = (
                    Histogram::default(),
                    Histogram::default(),
                    Histogram::default(),
                );
                x.iter().for_each(|v| a.record(*v));
                y.iter().for_each(|v| b.record(*v));
                x.iter().chain(y).for_each(|v| all.record(*v));
                a.merge(&b);
                assert_eq!(a, all, "{x:?} + {y:?}");
            }
        }
    }

    #[test]
    fn decoded_entries_are_validated() {
        assert!(Histogram::from_entries(vec![(1, 1), (2, 1)]).is_some());
        assert!(Histogram::from_entries(vec![(2, 1), (1, 1)]).is_none());
        assert!(Histogram::from_entries(vec![(1, 1), (1, 1)]).is_none());
        assert!(Histogram::from_entries(vec![(1, 0)]).is_none());
        assert!(Histogram::from_entries(vec![(BUCKETS, 1)]).is_none());
    }
}
