//! Which configurations of a canary served requests lately: a small shared record of
//! (configuration hash, last time a filter on it routed a request), kept by the workers.
//!
//! It settles which configuration the analyser runs when the newest-configured one is not the
//! one serving. Envoy reuses a draining listener's filter contexts, without configuring them
//! again, when a configuration is reverted while the old listener drains (v2 -> v3 -> v2): the
//! v2 contexts take the new connections, but the published configuration stays v3, whose
//! contexts only see their last requests. So a worker whose configuration is not the published
//! one republishes it when the published one has served nothing for `QUIET_MS` while its own
//! has (`Worker::publish_config`). Two configurations that both serve keep the published one:
//! a draining listener never takes over from the new one while the new one serves.

use crate::codec::{Reader, Writer};
use crate::host::SharedStore;

/// A configuration that routed no request for this long is not serving.
pub const QUIET_MS: u64 = 3_000;
/// A worker renews its entry at most this often (a shared write, off the request path).
pub const RENEW_MS: u64 = 500;
/// Entries older than this are dropped; at most `MAX_ENTRIES` are kept (newest first).
const FORGET_MS: u64 = 60_000;
const MAX_ENTRIES: usize = 8;

const MAGIC: &[u8; 4] = b"CGsv";
const VERSION: u8 = 1;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Served {
    /// (configuration hash, last request ms), newest first.
    pub entries: Vec<(u64, u64)>,
}

impl Served {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u8(self.entries.len() as u8);
        for (hash, at) in &self.entries {
            w.u64(*hash);
            w.u64(*at);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<Served> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let n = usize::from(r.u8()?);
        if n > MAX_ENTRIES {
            return None;
        }
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push((r.u64()?, r.u64()?));
        }
        r.is_done().then_some(Served { entries })
    }

    /// When a configuration last served, if it did within `FORGET_MS`.
    pub fn last(&self, hash: u64) -> Option<u64> {
        self.entries
            .iter()
            .find(|(h, _)| *h == hash)
            .map(|(_, at)| *at)
    }

    fn with(mut self, hash: u64, now_ms: u64) -> Served {
        self.entries
            .retain(|(h, at)| *h != hash && now_ms.saturating_sub(*at) < FORGET_MS);
        self.entries.insert(0, (hash, now_ms));
        self.entries.truncate(MAX_ENTRIES);
        self
    }
}

/// Reads the record (absent or unreadable: empty).
pub fn read(store: &dyn SharedStore, key: &str) -> (Served, u32) {
    match store.get(key) {
        Ok(Some((bytes, cas))) => (Served::decode(&bytes).unwrap_or_default(), cas),
        _ => (Served::default(), 0),
    }
}

/// Records that configuration `hash` served at `now_ms` (one CAS attempt: a lost race is
/// retried at the next renewal). Returns the record as written, or as read if the write lost.
pub fn renew(store: &dyn SharedStore, key: &str, hash: u64, now_ms: u64) -> Served {
    let (current, cas) = read(store, key);
    let next = current.clone().with(hash, now_ms);
    if store.set(key, &next.encode(), cas).is_ok() {
        next
    } else {
        current
    }
}

/// Whether `own` should replace the `published` configuration: the published one has served
/// nothing for `QUIET_MS` while `own` has.
pub fn should_take_over(served: &Served, own: u64, published: u64, now_ms: u64) -> bool {
    let recent = |h: u64| {
        served
            .last(h)
            .is_some_and(|at| now_ms.saturating_sub(at) < QUIET_MS)
    };
    own != published && recent(own) && !recent(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_host::FakeStore;

    #[test]
    fn a_quiet_published_configuration_is_taken_over_by_a_serving_one() {
        let store = FakeStore::default();
        let key = "canary-guard/web/served";
        renew(&store, key, 3, 1_000); // v3, the published one, served last at 1 s
        let s = renew(&store, key, 2, 2_000); // v2 serves
        assert!(
            !should_take_over(&s, 2, 3, 2_000),
            "both served recently: keep the published"
        );
        let s = renew(&store, key, 2, 4_500);
        assert!(
            should_take_over(&s, 2, 3, 4_500),
            "v3 quiet for 3.5 s, v2 serving"
        );
        assert!(
            !should_take_over(&s, 3, 2, 4_500),
            "a quiet one never takes over"
        );
        assert!(!should_take_over(&s, 2, 2, 4_500));
        assert_eq!(Served::decode(&s.encode()), Some(s.clone()));
        let mut bad = s.encode();
        bad[5] ^= 1;
        assert_eq!(Served::decode(&bad), None);
    }

    #[test]
    fn old_entries_are_forgotten_and_the_record_stays_small() {
        let store = FakeStore::default();
        let key = "k";
        for h in 0..20 {
            renew(&store, key, h, 1_000 + h);
        }
        let (s, _) = read(&store, key);
        assert_eq!(s.entries.len(), MAX_ENTRIES);
        assert_eq!(s.entries[0], (19, 1_019));
        let s = renew(&store, key, 99, 1_000 + FORGET_MS + 100);
        assert_eq!(s.entries, vec![(99, 1_000 + FORGET_MS + 100)]);
    }
}
