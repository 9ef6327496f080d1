//! Proxy shared data: the key names, and the records both sides keep there (worker tally slots,
//! the analyser lease, the registry of canaries). Everything is namespaced by canary name,
//! because every plugin on a proxy may share one `vm_id` (Istio sets none).

pub mod lease;
pub mod live;
pub mod registry;
pub mod served;
pub mod slots;

/// Newline-separated names of the canaries whose filters run in this proxy (for the singleton).
pub const REGISTRY: &str = "canary-guard/canaries";

/// Most worker slots per canary (a slot per worker root context that ever recorded outcomes).
pub const MAX_SLOTS: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub state: String,
    pub lease: String,
    pub config: String,
    pub served: String,
    /// The operator's last command (`control`).
    pub command: String,
    /// The last decisions, for the control endpoint's status.
    pub decisions: String,
    /// The statistical judge's tests (`judge::JudgeState`).
    pub judge: String,
    slot_prefix: String,
}

impl Keys {
    pub fn new(canary: &str) -> Self {
        Keys {
            state: format!("canary-guard/{canary}/state"),
            lease: format!("canary-guard/{canary}/lease"),
            config: format!("canary-guard/{canary}/config"),
            served: format!("canary-guard/{canary}/served"),
            command: format!("canary-guard/{canary}/command"),
            decisions: format!("canary-guard/{canary}/decisions"),
            judge: format!("canary-guard/{canary}/judge"),
            slot_prefix: format!("canary-guard/{canary}/slot/"),
        }
    }

    pub fn slot(&self, index: u32) -> String {
        format!("{}{index}", self.slot_prefix)
    }
}
