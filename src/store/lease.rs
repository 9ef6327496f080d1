//! Analyser leadership: a lease in shared data, taken and renewed with compare-and-swap.
//!
//! Where Envoy runs a bootstrap singleton, it takes the lease (pre-empting any worker) and keeps
//! it; workers only take a lease that is absent or expired. Where none can run (Istio), the
//! worker root contexts elect one this way. The lease is an optimisation, not the safety net:
//! every analysis step is a CAS on the state key that also records when the step ran, so even
//! two contexts that both believe they lead cannot run two checks in one interval.

use crate::codec::{Reader, Writer};
use crate::host::{SetError, SharedStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HolderKind {
    Worker = 1,
    Singleton = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub token: u64,
    pub kind: HolderKind,
    pub expires_ms: u64,
}

const MAGIC: &[u8; 4] = b"CGls";
/// 2: checksum trailer.
const VERSION: u8 = 2;

impl Lease {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.u64(self.token);
        w.u8(self.kind as u8);
        w.u64(self.expires_ms);
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let token = r.u64()?;
        let kind = match r.u8()? {
            1 => HolderKind::Worker,
            2 => HolderKind::Singleton,
            _ => return None,
        };
        let expires_ms = r.u64()?;
        r.is_done().then_some(Lease {
            token,
            kind,
            expires_ms,
        })
    }
}

/// Takes or renews the lease; true when this context holds it afterwards.
pub fn try_lead(
    store: &dyn SharedStore,
    key: &str,
    token: u64,
    kind: HolderKind,
    now_ms: u64,
    ttl_ms: u64,
) -> bool {
    let mine = Lease {
        token,
        kind,
        expires_ms: now_ms.saturating_add(ttl_ms),
    };
    match store.get(key) {
        Err(_) => false,
        Ok(None) => {
            // Absent keys cannot be CAS-created: write, then read back to see who won. Two
            // contexts may both see themselves for one tick; the next renewal settles it.
            store.set(key, &mine.encode(), 0).is_ok()
                && matches!(store.get(key), Ok(Some((v, _))) if Lease::decode(&v).is_some_and(|l| l.token == token))
        }
        Ok(Some((bytes, cas))) => {
            let take = match Lease::decode(&bytes) {
                // Corrupt or released (empty): free to take.
                None => true,
                Some(l) if l.token == token => true,
                Some(l) if l.expires_ms <= now_ms => true,
                Some(l) => kind == HolderKind::Singleton && l.kind == HolderKind::Worker,
            };
            take && matches!(store.set(key, &mine.encode(), cas), Ok(()))
        }
    }
}

/// Gives the lease up (on shutdown) so another context takes over at once.
pub fn release(store: &dyn SharedStore, key: &str, token: u64) {
    if let Ok(Some((bytes, cas))) = store.get(key) {
        if Lease::decode(&bytes).is_some_and(|l| l.token == token) {
            let _ignored: Result<(), SetError> = store.set(key, &[], cas);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_host::FakeStore;

    const KEY: &str = "lease";

    #[test]
    fn first_worker_leads_others_wait_until_expiry() {
        let s = FakeStore::default();
        assert!(try_lead(&s, KEY, 1, HolderKind::Worker, 0, 1000));
        assert!(!try_lead(&s, KEY, 2, HolderKind::Worker, 500, 1000));
        assert!(
            try_lead(&s, KEY, 1, HolderKind::Worker, 600, 1000),
            "renewal"
        );
        assert!(
            !try_lead(&s, KEY, 2, HolderKind::Worker, 1500, 1000),
            "renewed until 1600"
        );
        assert!(
            try_lead(&s, KEY, 2, HolderKind::Worker, 1600, 1000),
            "expired: taken over"
        );
        assert!(
            !try_lead(&s, KEY, 1, HolderKind::Worker, 1700, 1000),
            "old leader lost it"
        );
    }

    #[test]
    fn singleton_preempts_workers_and_is_never_preempted() {
        let s = FakeStore::default();
        assert!(try_lead(&s, KEY, 1, HolderKind::Worker, 0, 1000));
        assert!(try_lead(&s, KEY, 9, HolderKind::Singleton, 10, 1000));
        assert!(!try_lead(&s, KEY, 1, HolderKind::Worker, 20, 1000));
        assert!(
            !try_lead(&s, KEY, 8, HolderKind::Singleton, 30, 1000),
            "a second singleton waits"
        );
    }

    #[test]
    fn release_hands_over_at_once() {
        let s = FakeStore::default();
        assert!(try_lead(&s, KEY, 1, HolderKind::Worker, 0, 10_000));
        release(&s, KEY, 2);
        assert!(
            !try_lead(&s, KEY, 2, HolderKind::Worker, 1, 10_000),
            "release by a non-holder is ignored"
        );
        release(&s, KEY, 1);
        assert!(try_lead(&s, KEY, 2, HolderKind::Worker, 2, 10_000));
    }

    #[test]
    fn corrupt_lease_is_not_trusted() {
        let s = FakeStore::default();
        s.set(KEY, b"\x00garbage", 0).unwrap();
        assert!(try_lead(&s, KEY, 3, HolderKind::Worker, 0, 1000));
        assert_eq!(
            Lease::decode(&s.get(KEY).unwrap().unwrap().0)
                .unwrap()
                .token,
            3
        );
    }
}
