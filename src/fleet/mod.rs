//! Fleet mode: one canary decision for every Envoy replica of a service, kept in etcd.
//!
//! - `etcd`: the etcd v3 gateway's requests and validated responses;
//! - `record`: what each replica publishes (its proxy's tallies) and how the judge sums them;
//! - `FleetKeys` and the replica identity (here).
//!
//! The protocol itself (lease, judge election, fenced state writes, followers) runs in the
//! analyser (`analyser::fleet`), which makes the calls through the host.

pub mod etcd;
pub mod record;

/// Where one revision of one canary keeps its fleet data:
/// `<prefix>/<canary>/state/<revision>` (the decision, durable),
/// `<prefix>/<canary>/judge/<revision>` (the judge's election key, on its lease),
/// `<prefix>/<canary>/replicas/<revision>/<replica>` (each replica's tallies, on its lease).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetKeys {
    pub state: Vec<u8>,
    pub judge: Vec<u8>,
    /// Every replica record of the revision starts with this (ends with '/').
    pub replicas: Vec<u8>,
    /// This replica's record.
    pub replica: Vec<u8>,
    /// Every revision's state key starts with this (for the clean-up of old revisions).
    pub states: Vec<u8>,
    /// An operator's last command for this revision, sent on by the replica that took it
    /// (`control`), for the judge to carry out.
    pub command: Vec<u8>,
    /// The judge's last decisions for this revision (the followers' control status).
    pub decisions: Vec<u8>,
    /// `<prefix>/<canary>/`: what the keys of another revision are made from.
    canary: String,
}

impl FleetKeys {
    pub fn new(prefix: &str, canary: &str, revision: &str, replica: &str) -> Self {
        let rev = escape(revision);
        let states = format!("{prefix}/{canary}/state/");
        let replicas = format!("{prefix}/{canary}/replicas/{rev}/");
        FleetKeys {
            state: format!("{states}{rev}").into_bytes(),
            judge: format!("{prefix}/{canary}/judge/{rev}").into_bytes(),
            replica: format!("{replicas}{}", escape(replica)).into_bytes(),
            replicas: replicas.into_bytes(),
            states: states.into_bytes(),
            command: format!("{prefix}/{canary}/command/{rev}").into_bytes(),
            decisions: format!("{prefix}/{canary}/decisions/{rev}").into_bytes(),
            canary: format!("{prefix}/{canary}/"),
        }
    }

    /// The keys that go with another revision's state key (its last command and decisions),
    /// deleted with it; nothing for a key that is not a state key of this canary.
    pub fn siblings(&self, state_key: &[u8]) -> Vec<Vec<u8>> {
        let Some(rev) = state_key.strip_prefix(self.states.as_slice()) else {
            return Vec::new();
        };
        ["command/", "decisions/"]
            .iter()
            .map(|kind| [self.canary.as_bytes(), kind.as_bytes(), rev].concat())
            .collect()
    }
}

/// How many revisions' state keys a canary keeps in etcd: the judge of a new revision
/// deletes the others, least recently written first. A proxy rolled back to one of the kept
/// revisions still finds its fate there (a `Failed` one stays failed).
pub const STATES_KEPT: usize = 8;

/// The state keys to delete so that `keep` remain (`own`, the revision being started, always
/// stays), least recently written (lowest mod revision) first, with the mod revision each was
/// read at (the delete is conditional on it).
pub fn stale_states(found: &[etcd::Kv], own: &[u8], keep: usize) -> Vec<(Vec<u8>, i64)> {
    let mut others: Vec<&etcd::Kv> = found.iter().filter(|kv| kv.key != own).collect();
    others.sort_by_key(|kv| std::cmp::Reverse(kv.mod_revision));
    others
        .into_iter()
        .skip(keep.saturating_sub(1))
        .map(|kv| (kv.key.clone(), kv.mod_revision))
        .collect()
}

/// A key segment: bytes outside `[A-Za-z0-9._-]` as `%XX`, so that a revision holding a '/'
/// cannot reach into another revision's keys.
pub fn escape(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"._-".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// This replica's identity in the fleet: the Envoy node id (made key-safe, at most 64
/// characters) and 8 hex digits of randomness, so two proxies with one node id stay apart.
pub fn replica_id(node_id: Option<&str>, random: u64) -> String {
    let node: String = node_id
        .unwrap_or("envoy")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let node = if node.is_empty() {
        "envoy".into()
    } else {
        node
    };
    format!("{node}-{:08x}", (random >> 32) as u32 ^ random as u32)
}

/// How often a follower reads the fleet state: half an interval, between 200 ms and 1 s.
pub fn poll_ms(interval_ms: u64) -> u64 {
    (interval_ms / 2).clamp(200, 1_000)
}

/// How often a replica publishes its tallies: half an interval, between 500 ms and 5 s. The
/// judge's windows end this long before its check, so that every replica has published them.
pub fn publish_ms(interval_ms: u64) -> u64 {
    (interval_ms / 2).clamp(500, 5_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_namespaced_and_a_revision_cannot_reach_into_another() {
        let k = FleetKeys::new("/cg", "web", "v2", "node-1-0000abcd");
        assert_eq!(k.state, b"/cg/web/state/v2");
        assert_eq!(k.judge, b"/cg/web/judge/v2");
        assert_eq!(k.replicas, b"/cg/web/replicas/v2/");
        assert_eq!(k.replica, b"/cg/web/replicas/v2/node-1-0000abcd");
        let nested = FleetKeys::new("/cg", "web", "v2/x", "r");
        assert_eq!(nested.replicas, b"/cg/web/replicas/v2%2Fx/");
        assert!(!nested.replica.starts_with(&k.replicas));
        assert_eq!(k.command, b"/cg/web/command/v2");
        assert_eq!(k.decisions, b"/cg/web/decisions/v2");
    }

    #[test]
    fn an_old_revisions_command_and_decisions_go_with_its_state() {
        let k = FleetKeys::new("/cg", "web", "v9", "r");
        assert_eq!(
            k.siblings(b"/cg/web/state/v2%2Fx"),
            vec![
                b"/cg/web/command/v2%2Fx".to_vec(),
                b"/cg/web/decisions/v2%2Fx".to_vec()
            ]
        );
        assert!(k.siblings(b"/cg/api/state/v2").is_empty());
    }

    #[test]
    fn replica_ids_are_key_safe_and_carry_randomness() {
        assert_eq!(
            replica_id(Some("sidecar~10.0.0.1~web-1.prod"), 0x1234_5678_0000_0000),
            "sidecar_10.0.0.1_web-1.prod-12345678"
        );
        assert_eq!(replica_id(None, 1), "envoy-00000001");
        assert_ne!(replica_id(Some("a"), 1), replica_id(Some("a"), 2));
    }

    fn kv(key: &str, mod_revision: i64) -> etcd::Kv {
        etcd::Kv {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create_revision: 1,
            mod_revision,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn old_states_go_least_recently_written_first_and_the_own_stays() {
        let found = [
            kv("s/v1", 10),
            kv("s/v2", 30),
            kv("s/v3", 20),
            kv("s/v4", 5),
        ];
        // Keep 3: the own (v4, however old its key) and the two most recently written others.
        let stale = stale_states(&found, b"s/v4", 3);
        assert_eq!(stale, vec![(b"s/v1".to_vec(), 10)]);
        assert!(stale_states(&found, b"s/v9", 8).is_empty());
        assert_eq!(stale_states(&found, b"s/v2", 1).len(), 3);
    }
}
