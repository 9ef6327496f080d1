//! The registry of canaries whose filters run in this proxy: the filters add their name, the
//! bootstrap singleton reads the list to know which canaries to analyse.

use crate::host::SharedStore;
use crate::store::REGISTRY;

/// Adds a canary name to the registry the singleton reads (CAS loop: concurrent registrants
/// retry on a stale cas instead of overwriting each other).
pub fn register(store: &dyn SharedStore, name: &str) -> bool {
    for _ in 0..8 {
        let (list, cas) = match store.get(REGISTRY) {
            Ok(Some((bytes, cas))) => (String::from_utf8(bytes).unwrap_or_default(), cas),
            Ok(None) => (String::new(), 0),
            Err(_) => return false,
        };
        if list.lines().any(|l| l == name) {
            return true;
        }
        let mut next = list;
        if !next.is_empty() {
            next.push('\n');
        }
        next.push_str(name);
        if store.set(REGISTRY, next.as_bytes(), cas).is_ok() && cas != 0 {
            return true;
        }
        // cas 0 (absent key) cannot be CAS-created: loop to read back and confirm.
    }
    false
}

/// Names in the registry (invalid entries are skipped).
pub fn registered(store: &dyn SharedStore) -> Vec<String> {
    match store.get(REGISTRY) {
        Ok(Some((bytes, _))) => String::from_utf8_lossy(&bytes)
            .lines()
            .filter(|l| !l.is_empty() && l.len() <= 63)
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fake_host::FakeStore;

    #[test]
    fn registry_keeps_every_name() {
        let s = FakeStore::default();
        assert!(register(&s, "web"));
        assert!(register(&s, "api"));
        assert!(register(&s, "web"));
        assert_eq!(registered(&s), vec!["web".to_string(), "api".to_string()]);
    }
}
