//! What a replica publishes to etcd: its proxy's tallies for the running revision, all worker
//! slots merged into one record with coarser buckets (`FLEET_BUCKETS_PER_WINDOW` per window),
//! so that a record stays around a kilobyte however many workers and requests the proxy has.
//! The judge sums the records of the live replicas with the same window arithmetic as the
//! single-proxy analyser (`tally`).

use crate::codec::{Reader, Writer};
use crate::tally::{Bucket, Series, SlotRecord, MAX_IN_FLIGHT_SHOWN};

/// Buckets per metric window in a replica record: a window then covers between 15/16 and all
/// of its length.
pub const FLEET_BUCKETS_PER_WINDOW: u64 = 16;
/// Largest record a judge accepts (a record is ~1 kB; this bounds a forged one).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

const MAGIC: &[u8; 4] = b"CGfr";
// 2: latency buckets of 1/64 of a power of two (were 1/16).
const VERSION: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRecord {
    pub replica: String,
    pub revision: String,
    /// When it was published (the replica's clock, ms).
    pub at_ms: u64,
    pub tally: SlotRecord,
}

impl ReplicaRecord {
    pub fn encode(&self) -> Vec<u8> {
        let tally = self.tally.encode();
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.short_str(&self.replica);
        w.short_str(&self.revision);
        w.u64(self.at_ms);
        w.u32(tally.len() as u32);
        w.buf.extend_from_slice(&tally);
        w.finish()
    }

    /// Decodes and validates (both checksums, every tally bound); `None` is never trusted.
    pub fn decode(bytes: &[u8]) -> Option<ReplicaRecord> {
        if bytes.len() > MAX_RECORD_BYTES {
            return None;
        }
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let replica = r.short_str()?;
        let revision = r.short_str()?;
        let at_ms = r.u64()?;
        let n = r.u32()? as usize;
        let tally = SlotRecord::decode(r.bytes(n)?)?;
        (r.is_done() && !replica.is_empty() && !revision.is_empty()).then_some(ReplicaRecord {
            replica,
            revision,
            at_ms,
            tally,
        })
    }
}

/// Bucket width of a window in a replica record (a multiple of the workers' width, so their
/// buckets nest in it).
pub fn fleet_bucket_ms(window_ms: u64) -> u64 {
    let fine = crate::tally::bucket_ms_for(window_ms);
    let coarse = window_ms.div_ceil(FLEET_BUCKETS_PER_WINDOW).max(fine);
    coarse.div_ceil(fine) * fine
}

/// The proxy's record: every worker slot merged, buckets cut from `origin_ms` (the analysis
/// start, as the workers cut theirs) at the fleet width, pruned to the windows at `now_ms`.
pub fn merge_slots(
    owner: u64,
    windows_ms: &[u64],
    origin_ms: u64,
    slots: &[SlotRecord],
    now_ms: u64,
) -> SlotRecord {
    let mut out = SlotRecord::new(owner, windows_ms);
    out.origin_ms = origin_ms;
    for s in &mut out.series {
        s.bucket_ms = fleet_bucket_ms(s.window_ms);
    }
    let mut oldest: Vec<u64> = Vec::new();
    for slot in slots {
        out.totals.add(&slot.totals);
        out.in_flight = out.in_flight.saturating_add(slot.in_flight);
        oldest.extend(slot.in_flight_oldest.iter().copied());
        for series in &mut out.series {
            // A slot without this window answers from its nearest one, as `SlotRecord::window`.
            let from = slot
                .series
                .iter()
                .find(|s| s.window_ms >= series.window_ms)
                .or(slot.series.last());
            if let Some(from) = from {
                add_coarse(series, from, origin_ms);
            }
        }
    }
    oldest.sort_unstable();
    oldest.truncate(MAX_IN_FLIGHT_SHOWN);
    out.in_flight_oldest = oldest;
    out.prune(now_ms);
    out
}

fn add_coarse(into: &mut Series, from: &Series, origin_ms: u64) {
    let width = into.bucket_ms.max(1);
    for b in &from.buckets {
        let start = if b.start_ms >= origin_ms {
            b.start_ms - (b.start_ms - origin_ms) % width
        } else {
            b.start_ms - b.start_ms % width
        };
        let i = match into.buckets.binary_search_by_key(&start, |x| x.start_ms) {
            Ok(i) => i,
            Err(i) => {
                into.buckets.insert(
                    i,
                    Bucket {
                        start_ms: start,
                        ..Default::default()
                    },
                );
                i
            }
        };
        if let Some(mine) = into.buckets.get_mut(i) {
            mine.stable.merge(&b.stable);
            mine.canary.merge(&b.canary);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Side;
    use crate::tally::Tally;

    fn slot(owner: u64, origin: u64, outcomes: &[(u64, Side, u32)]) -> SlotRecord {
        let mut s = SlotRecord::new(owner, &[10_000, 60_000]);
        s.origin_ms = origin;
        for (at, side, status) in outcomes {
            s.record(*at, *side, *status, 2_000);
        }
        s
    }

    #[test]
    fn merged_record_keeps_every_outcome_in_coarser_buckets() {
        let origin = 1_000;
        let a = slot(
            1,
            origin,
            &[
                (1_100, Side::Canary, 200),
                (5_000, Side::Canary, 503),
                (9_000, Side::Stable, 200),
            ],
        );
        let b = slot(
            2,
            origin,
            &[(1_200, Side::Canary, 200), (10_900, Side::Canary, 200)],
        );
        let m = merge_slots(
            9,
            &[10_000, 60_000],
            origin,
            &[a.clone(), b.clone()],
            11_000,
        );
        assert_eq!(m.totals.canary_requests, 4);
        assert_eq!(m.totals.canary_errors, 1);
        assert_eq!(m.totals.stable_requests, 1);
        // 10 s window: at most 16 buckets, each a whole number of the workers' buckets.
        assert_eq!(m.series[0].bucket_ms % a.series[0].bucket_ms, 0);
        assert!(m.series[0].buckets.len() <= 16);
        for w in [10_000, 60_000] {
            let mut merged = Tally::default();
            m.window(Side::Canary, w, origin, 11_000, &mut merged);
            let mut each = Tally::default();
            a.window(Side::Canary, w, origin, 11_000, &mut each);
            b.window(Side::Canary, w, origin, 11_000, &mut each);
            assert_eq!(
                (merged.requests, merged.errors),
                (each.requests, each.errors)
            );
        }
        // Buckets stay cut from the analysis start.
        assert!(m.series.iter().all(|s| s
            .buckets
            .iter()
            .all(|b| (b.start_ms - origin) % s.bucket_ms == 0)));
    }

    #[test]
    fn record_round_trips_and_refuses_corruption() {
        let t = slot(1, 0, &[(100, Side::Canary, 200)]);
        let r = ReplicaRecord {
            replica: "node-1-00000001".into(),
            revision: "v2".into(),
            at_ms: 123,
            tally: merge_slots(1, &[10_000], 0, &[t], 200),
        };
        let bytes = r.encode();
        assert_eq!(ReplicaRecord::decode(&bytes), Some(r));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert_eq!(ReplicaRecord::decode(&bad), None, "byte {i} flipped");
        }
        assert_eq!(ReplicaRecord::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(ReplicaRecord::decode(b"CGfr"), None);
    }
}
