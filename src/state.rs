//! The analysis state every worker reads on each request, and its shared-data encoding.

use crate::codec::{Reader, Writer};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Phase {
    /// No analysis state yet (never stored; what a reader reports before the analyser writes).
    Initializing = 0,
    Progressing = 1,
    Promoting = 2,
    Succeeded = 3,
    Failed = 4,
    /// Flagger's "waiting for approval": no analysis state was found (first load or a restarted
    /// proxy) and `restartPolicy` is `hold`; weight 0 until the revision changes or an approval
    /// (`approvedUntil`) is in effect.
    Waiting = 5,
    /// Flagger's WaitingPromotion: the last step passed its checks but a `confirm-promotion`
    /// webhook has not approved; the weight stays at the last step and checks keep running.
    WaitingPromotion = 6,
}

impl Phase {
    /// Every phase, in code order.
    pub const ALL: [Phase; 7] = [
        Phase::Initializing,
        Phase::Progressing,
        Phase::Promoting,
        Phase::Succeeded,
        Phase::Failed,
        Phase::Waiting,
        Phase::WaitingPromotion,
    ];

    pub fn from_u8(v: u8) -> Option<Phase> {
        Some(match v {
            0 => Phase::Initializing,
            1 => Phase::Progressing,
            2 => Phase::Promoting,
            3 => Phase::Succeeded,
            4 => Phase::Failed,
            5 => Phase::Waiting,
            6 => Phase::WaitingPromotion,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Initializing => "Initializing",
            Phase::Progressing => "Progressing",
            Phase::Promoting => "Promoting",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Waiting => "Waiting",
            Phase::WaitingPromotion => "WaitingPromotion",
        }
    }

    /// Phases in which checks run and `match` rules apply.
    pub fn is_running(self) -> bool {
        matches!(
            self,
            Phase::Progressing | Phase::Promoting | Phase::WaitingPromotion
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryState {
    pub revision: String,
    pub phase: Phase,
    /// Percentage of traffic for the canary, 0..=100.
    pub weight: u8,
    /// Flagger's `status.failedChecks`.
    pub failed_checks: u32,
    /// Passing checks so far (A/B `iterations`).
    pub iterations: u32,
    /// When this revision's analysis started (tallies before it are not this revision's).
    pub started_ms: u64,
    /// When the last check ran (or the start): the next is due one interval later. Kept in
    /// shared data so that two analysers can never run two checks in one interval.
    pub last_check_ms: u64,
}

const MAGIC: &[u8; 4] = b"CGst";
/// 2: checksum trailer. Keep the prefix (magic, version, revision, phase, weight): the
/// benchmark's minimal router (bench/min-router) reads the weight from it.
const VERSION: u8 = 2;
/// What `config` accepts for a revision.
const MAX_REVISION_LEN: usize = 128;

impl CanaryState {
    pub fn new(revision: &str, now_ms: u64) -> Self {
        CanaryState {
            revision: revision.to_string(),
            phase: Phase::Progressing,
            weight: 0,
            failed_checks: 0,
            iterations: 0,
            started_ms: now_ms,
            last_check_ms: now_ms,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_header(MAGIC, VERSION);
        w.short_str(&self.revision);
        w.u8(self.phase as u8);
        w.u8(self.weight);
        w.u32(self.failed_checks);
        w.u32(self.iterations);
        w.u64(self.started_ms);
        w.u64(self.last_check_ms);
        w.finish()
    }

    /// Decodes and validates; any corruption (bad magic/version/checksum, truncation, trailing
    /// bytes, weight over 100, unknown phase, a stored Initializing, a Failed state with traffic,
    /// a Succeeded one without all of it, a weight on a Waiting canary, times going backwards)
    /// gives `None`.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader::with_header(bytes, MAGIC, VERSION)?;
        let s = CanaryState {
            revision: r.short_str()?,
            phase: Phase::from_u8(r.u8()?)?,
            weight: r.u8()?,
            failed_checks: r.u32()?,
            iterations: r.u32()?,
            started_ms: r.u64()?,
            last_check_ms: r.u64()?,
        };
        let weight_fits = match s.phase {
            Phase::Failed | Phase::Waiting => s.weight == 0,
            Phase::Succeeded => s.weight == 100,
            _ => s.weight <= 100,
        };
        let valid = r.is_done()
            && weight_fits
            && s.phase != Phase::Initializing
            && !s.revision.is_empty()
            && s.revision.len() <= MAX_REVISION_LEN
            && s.last_check_ms >= s.started_ms;
        valid.then_some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CanaryState {
        CanaryState {
            revision: "v2".into(),
            phase: Phase::Promoting,
            weight: 60,
            failed_checks: 2,
            iterations: 7,
            started_ms: 1_000,
            last_check_ms: 9_000,
        }
    }

    #[test]
    fn round_trips() {
        let s = sample();
        assert_eq!(CanaryState::decode(&s.encode()), Some(s));
    }

    #[test]
    fn rejects_corruption() {
        let good = sample().encode();
        for cut in 0..good.len() {
            assert_eq!(
                CanaryState::decode(&good[..cut]),
                None,
                "truncated at {cut}"
            );
        }
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(CanaryState::decode(&trailing), None);
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        assert_eq!(CanaryState::decode(&bad_version), None);
        for i in 0..good.len() {
            let mut flipped = good.clone();
            flipped[i] ^= 0x01;
            assert_eq!(CanaryState::decode(&flipped), None, "bit flip at {i}");
        }
    }

    /// Re-encoded with a valid checksum, so only the range checks can refuse them.
    #[test]
    fn rejects_well_sealed_nonsense() {
        let bad = [
            CanaryState {
                weight: 101,
                ..sample()
            },
            CanaryState {
                phase: Phase::Failed,
                weight: 5,
                ..sample()
            },
            CanaryState {
                phase: Phase::Succeeded,
                weight: 50,
                ..sample()
            },
            CanaryState {
                phase: Phase::Initializing,
                ..sample()
            },
            CanaryState {
                revision: String::new(),
                ..sample()
            },
            CanaryState {
                revision: "r".repeat(129),
                ..sample()
            },
            CanaryState {
                last_check_ms: 999,
                ..sample()
            },
        ];
        for s in bad {
            assert_eq!(CanaryState::decode(&s.encode()), None, "{s:?}");
        }
        // An unknown phase value, sealed again.
        let mut body = sample().encode();
        body.truncate(body.len() - 8);
        body[4 + 1 + 1 + 2] = 9;
        let sum = crate::checksum::checksum(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        assert_eq!(CanaryState::decode(&body), None);
    }

    #[test]
    fn waiting_round_trips_only_at_weight_zero() {
        let waiting = CanaryState {
            phase: Phase::Waiting,
            weight: 0,
            ..sample()
        };
        assert_eq!(Phase::from_u8(5), Some(Phase::Waiting));
        assert_eq!(Phase::Waiting.name(), "Waiting");
        assert!(!Phase::Waiting.is_running());
        assert_eq!(
            CanaryState::decode(&waiting.encode()),
            Some(waiting.clone())
        );
        let weighted = CanaryState {
            weight: 10,
            ..waiting
        };
        assert_eq!(CanaryState::decode(&weighted.encode()), None);
    }
}
