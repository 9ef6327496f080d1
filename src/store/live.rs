//! "A valid configuration of this Wasm plugin is serving in this proxy": a heartbeat record
//! per plugin name, written by every filter root context that runs a valid configuration.
//!
//! An invalid configuration reads it to tell an update of a serving plugin (refuse it: Envoy
//! then keeps the valid one) from a first delivery (nothing to keep: run it inert rather than
//! let Envoy answer every request with 500). Keyed by the plugin's name, not the canary's: an
//! invalid configuration may have no usable canary name, and the plugin name is what Envoy
//! replaces (Istio: `<namespace>.<name>` of the WasmPlugin).

use crate::codec::{Reader, Writer};
use crate::host::SharedStore;

/// How often a serving root context renews the record.
pub const BEAT_EVERY_MS: u64 = 1_000;
/// How long a record counts as live after its last renewal: a few missed beats (a busy main
/// thread, a slow tick) must not make a serving plugin look gone.
pub const LIVE_FOR_MS: u64 = 3_000;

const MAGIC: &[u8; 4] = b"CGlv";
const VERSION: u8 = 1;

pub fn key(plugin: &str) -> String {
    format!("canary-guard/plugin/{plugin}/live")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub at_ms: u64,
    pub canary: String,
    pub revision: String,
}

impl Live {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u64(self.at_ms);
        w.short_str(&self.canary);
        w.short_str(&self.revision);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<Live> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let live = Live {
            at_ms: r.u64()?,
            canary: r.short_str()?,
            revision: r.short_str()?,
        };
        r.is_done().then_some(live)
    }
}

/// Renews the record (an unconditional write: every serving root context says the same).
pub fn beat(store: &dyn SharedStore, key: &str, live: &Live) {
    // A failed write is counted by the caller's store wrapper; the next beat retries.
    let _ = store.set(key, &live.encode(), 0);
}

/// The record, if one was renewed within `LIVE_FOR_MS` of `now_ms`. Unreadable, absent or
/// stale: `None` (nothing is known to be serving).
pub fn serving(store: &dyn SharedStore, key: &str, now_ms: u64) -> Option<Live> {
    let (bytes, _) = store.get(key).ok()??;
    let live = Live::decode(&bytes)?;
    (now_ms.saturating_sub(live.at_ms) < LIVE_FOR_MS).then_some(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_host::FakeStore;

    fn live(at_ms: u64) -> Live {
        Live {
            at_ms,
            canary: "web".into(),
            revision: "v2".into(),
        }
    }

    #[test]
    fn round_trips_and_rejects_a_flipped_bit() {
        let bytes = live(7).encode();
        assert_eq!(Live::decode(&bytes), Some(live(7)));
        let mut bad = bytes.clone();
        bad[6] ^= 1;
        assert_eq!(Live::decode(&bad), None);
        assert_eq!(Live::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn a_record_is_serving_until_it_is_older_than_live_for() {
        let store = FakeStore::default();
        let k = key("istio-system.canary-guard");
        assert_eq!(serving(&store, &k, 1_000), None);
        beat(&store, &k, &live(1_000));
        assert_eq!(
            serving(&store, &k, 1_000 + LIVE_FOR_MS - 1),
            Some(live(1_000))
        );
        assert_eq!(serving(&store, &k, 1_000 + LIVE_FOR_MS), None);
        store.put(&k, b"garbage");
        assert_eq!(serving(&store, &k, 1_000), None);
    }
}
