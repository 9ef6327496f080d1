//! Worker slots: each worker root context publishes its tallies under a shared-data key of its
//! own, so the request path never contends on a shared key and the analyser sums all slots.
//!
//! No outcome is lost or counted twice:
//! - an outcome lives in exactly one worker's local record, which is the authoritative copy; a
//!   publish writes the whole record, so a failed or lost write is simply retried later;
//! - ownership is a random token in the record, checked before each write (CAS on the value
//!   read); a worker that finds another token in its slot claims a new one and republishes
//!   everything it has, and the overwriting owner never had that worker's data;
//! - a slot is only reused after its owner released it on shutdown; the new owner adopts the
//!   released history (commits it locally only once its CAS write won), so it is neither
//!   dropped nor counted twice. Slots of contexts that died without releasing keep counting.

use crate::host::{SetError, SharedStore};
use crate::store::{Keys, MAX_SLOTS};
use crate::tally::SlotRecord;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    Written,
    /// Could not write this time (contention, host error, no free slot): retried next tick.
    Deferred,
}

pub struct SlotPublisher {
    pub record: SlotRecord,
    index: Option<u32>,
}

impl SlotPublisher {
    pub fn new(token: u64, windows_ms: &[u64]) -> Self {
        SlotPublisher {
            record: SlotRecord::new(token, windows_ms),
            index: None,
        }
    }

    pub fn index(&self) -> Option<u32> {
        self.index
    }

    /// Writes the local record into this context's slot, claiming one first if needed.
    pub fn publish(&mut self, store: &dyn SharedStore, keys: &Keys) -> Publish {
        if let Some(i) = self.index {
            match self.write_owned(store, &keys.slot(i)) {
                Some(true) => return Publish::Written,
                Some(false) => return Publish::Deferred,
                None => self.index = None, // someone else's now: claim another
            }
        }
        self.claim(store, keys)
    }

    /// Some(true) written, Some(false) transient failure, None not ours any more.
    fn write_owned(&self, store: &dyn SharedStore, key: &str) -> Option<bool> {
        match store.get(key) {
            Ok(Some((bytes, cas))) => {
                let ours = SlotRecord::owner_of(&bytes) == Some(self.record.owner);
                if !ours {
                    return None;
                }
                Some(store.set(key, &self.record.encode(), cas).is_ok())
            }
            Ok(None) => None,
            Err(_) => Some(false),
        }
    }

    fn claim(&mut self, store: &dyn SharedStore, keys: &Keys) -> Publish {
        for i in 0..MAX_SLOTS {
            let key = keys.slot(i);
            match store.get(&key) {
                Err(_) => return Publish::Deferred,
                Ok(None) => {
                    // Absent: write, then read back; a racing claimer is detected by the owner
                    // check on our next publish.
                    if store.set(&key, &self.record.encode(), 0).is_ok()
                        && self.write_owned(store, &key) == Some(true)
                    {
                        self.index = Some(i);
                        return Publish::Written;
                    }
                }
                Ok(Some((bytes, cas))) => {
                    let adopt = match SlotRecord::decode(&bytes) {
                        Some(r) if r.owner == 0 => Some(r),
                        Some(r) if r.owner == self.record.owner => {
                            // Our own slot (lost track after a failed write): keep using it.
                            if store.set(&key, &self.record.encode(), cas).is_ok() {
                                self.index = Some(i);
                                return Publish::Written;
                            }
                            continue;
                        }
                        Some(_) => continue,
                        // Empty or corrupt: nothing trustworthy to adopt.
                        None => Some(SlotRecord::default()),
                    };
                    if let Some(old) = adopt {
                        let mut merged = self.record.clone();
                        merged.absorb(&old);
                        match store.set(&key, &merged.encode(), cas) {
                            Ok(()) => {
                                self.record = merged;
                                self.index = Some(i);
                                return Publish::Written;
                            }
                            Err(SetError::CasMismatch) => continue,
                            Err(SetError::Host(_)) => return Publish::Deferred,
                        }
                    }
                }
            }
        }
        Publish::Deferred
    }

    /// Marks the slot free, keeping its history for the next owner to adopt. Nothing is in
    /// flight in a released slot: its owner's streams are over (a request left listed would
    /// count against the canary at every check).
    pub fn release(&mut self, store: &dyn SharedStore, keys: &Keys) {
        if let Some(i) = self.index.take() {
            let key = keys.slot(i);
            if let Ok(Some((bytes, cas))) = store.get(&key) {
                if SlotRecord::owner_of(&bytes) == Some(self.record.owner) {
                    let mut released = self.record.clone();
                    released.owner = 0;
                    released.in_flight = 0;
                    released.in_flight_oldest.clear();
                    let _ignored = store.set(&key, &released.encode(), cas);
                }
            }
        }
    }
}

/// All readable slot records of a canary (slots are claimed lowest-first, so the first absent
/// key ends the scan). Returns the records, how many slots were unreadable, and the bytes read.
pub fn read_all(store: &dyn SharedStore, keys: &Keys) -> (Vec<SlotRecord>, u32, u64) {
    let mut out = Vec::new();
    let mut corrupt = 0;
    let mut bytes_read = 0;
    for i in 0..MAX_SLOTS {
        let value = store.get(&keys.slot(i));
        if let Ok(Some((bytes, _))) = &value {
            bytes_read += bytes.len() as u64;
        }
        match value {
            Ok(None) => break,
            Ok(Some((bytes, _))) if bytes.is_empty() => {}
            Ok(Some((bytes, _))) => match SlotRecord::decode(&bytes) {
                Some(r) => out.push(r),
                None => corrupt += 1,
            },
            Err(_) => corrupt += 1,
        }
    }
    (out, corrupt, bytes_read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::Side;
    use crate::tally::Totals;
    use crate::testkit::fake_host::FakeStore;

    fn total(store: &FakeStore, keys: &Keys) -> Totals {
        let mut t = Totals::default();
        read_all(store, keys)
            .0
            .iter()
            .for_each(|r| t.add(&r.totals));
        t
    }

    #[test]
    fn each_worker_gets_its_own_slot() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        let mut b = SlotPublisher::new(2, &[6_400]);
        a.record.record(0, Side::Canary, 200, 10);
        b.record.record(0, Side::Stable, 500, 10);
        assert_eq!(a.publish(&s, &k), Publish::Written);
        assert_eq!(b.publish(&s, &k), Publish::Written);
        assert_eq!((a.index(), b.index()), (Some(0), Some(1)));
        assert_eq!(
            total(&s, &k),
            Totals {
                stable_requests: 1,
                stable_errors: 1,
                canary_requests: 1,
                canary_errors: 0
            }
        );
    }

    #[test]
    fn a_worker_that_lost_its_slot_republishes_elsewhere_without_loss() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        a.record.record(0, Side::Canary, 200, 10);
        a.publish(&s, &k);
        // A racing claimer overwrote slot 0 (the absent-key race).
        let mut b = SlotPublisher::new(2, &[6_400]);
        b.record.record(0, Side::Canary, 200, 10);
        s.put(&k.slot(0), &b.record.encode());
        a.record.record(1, Side::Canary, 200, 10);
        assert_eq!(a.publish(&s, &k), Publish::Written);
        assert_eq!(a.index(), Some(1));
        assert_eq!(
            total(&s, &k).canary_requests,
            3,
            "b's 1 + a's 2, nothing lost or doubled"
        );
    }

    #[test]
    fn released_slots_are_adopted_with_their_history() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        (0..5).for_each(|_| a.record.record(0, Side::Canary, 200, 10));
        a.publish(&s, &k);
        a.release(&s, &k);
        let mut b = SlotPublisher::new(2, &[6_400]);
        b.record.record(0, Side::Canary, 503, 10);
        b.publish(&s, &k);
        assert_eq!(b.index(), Some(0), "reused");
        assert_eq!(total(&s, &k).canary_requests, 6);
        assert_eq!(total(&s, &k).canary_errors, 1);
        assert_eq!(b.record.totals.canary_requests, 6);
    }

    #[test]
    fn live_slots_are_never_taken() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        a.publish(&s, &k);
        let mut b = SlotPublisher::new(2, &[6_400]);
        b.publish(&s, &k);
        assert_eq!(b.index(), Some(1));
    }

    #[test]
    fn corrupt_slots_are_skipped_and_reported() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        a.record.record(0, Side::Canary, 200, 10);
        a.publish(&s, &k);
        s.put(&k.slot(1), b"junk");
        let (records, corrupt, bytes) = read_all(&s, &k);
        assert_eq!((records.len(), corrupt), (1, 1));
        assert_eq!(bytes, (s.raw(&k.slot(0)).unwrap().len() + 4) as u64);
    }

    #[test]
    fn host_errors_defer_without_losing_data() {
        let s = FakeStore::default();
        let k = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        a.record.record(0, Side::Canary, 200, 10);
        s.broken.set(Some(10));
        assert_eq!(a.publish(&s, &k), Publish::Deferred);
        s.broken.set(None);
        assert_eq!(a.publish(&s, &k), Publish::Written);
        assert_eq!(total(&s, &k).canary_requests, 1);
    }

    #[test]
    fn a_released_slot_lists_nothing_in_flight() {
        let store = FakeStore::default();
        let keys = Keys::new("web");
        let mut a = SlotPublisher::new(1, &[6_400]);
        a.record.in_flight = 2;
        a.record.in_flight_oldest = vec![5, 6];
        assert_eq!(a.publish(&store, &keys), Publish::Written);
        a.release(&store, &keys);
        let (slots, _, _) = read_all(&store, &keys);
        assert_eq!((slots[0].owner, slots[0].in_flight), (0, 0));
        assert!(slots[0].in_flight_oldest.is_empty());
    }
}
