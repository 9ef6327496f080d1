//! The per-request routing decision: stable or canary.
//!
//! Safe by default: without a readable state for this revision the answer is stable. The client
//! never chooses: the decision ignores the routing header and the filter overwrites it.

use crate::config::{Affinity, Config};
use crate::hashing::{fnv1a, mix64, FNV_OFFSET};
use crate::matcher::{any_matches, Budget};
use crate::outcome::Side;
use crate::state::{CanaryState, Phase};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub side: Side,
    /// `Set-Cookie` value to add to the response (cookie affinity, first visit).
    pub set_cookie: Option<String>,
    /// A match regex was skipped: it would have cost more than the request's regex budget.
    pub budget_exhausted: bool,
}

impl Decision {
    fn new(side: Side) -> Self {
        Decision {
            side,
            set_cookie: None,
            budget_exhausted: false,
        }
    }
}

/// Decides where one request goes.
///
/// `state` is the analysis state read from shared data (`None` when absent or unreadable);
/// `header` looks up a request header by lower-case name; `random` is a fresh random number.
pub fn decide(
    cfg: &Config,
    state: Option<&CanaryState>,
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
    random: u64,
) -> Decision {
    let Some(state) = state.filter(|s| s.revision == cfg.revision) else {
        return Decision::new(Side::Stable);
    };
    match state.phase {
        // Not started, rolled back, or held: nothing reaches the canary, not even match traffic.
        Phase::Initializing | Phase::Failed | Phase::Waiting => return Decision::new(Side::Stable),
        Phase::Succeeded => return Decision::new(Side::Canary),
        Phase::Progressing | Phase::Promoting | Phase::WaitingPromotion => {}
    }
    let mut budget = Budget::default();
    let matched = any_matches(&cfg.analysis.matches, header, &mut budget);
    if matched {
        return Decision::new(Side::Canary);
    }
    let weight = u64::from(state.weight.min(100));
    let mut d = match &cfg.affinity {
        Affinity::None => Decision::new(pick(random % 100, weight)),
        Affinity::Header(name) => match header(name) {
            Some(value) if !value.is_empty() => {
                Decision::new(pick(user_bucket(&cfg.name, &value), weight))
            }
            // No identity: this request is not sticky.
            _ => Decision::new(pick(random % 100, weight)),
        },
        Affinity::Cookie { name, max_age_s } => {
            let cookies = header("cookie").unwrap_or_default();
            match cookie_value(&cookies, name.as_bytes()) {
                Some(value) if !value.is_empty() => {
                    Decision::new(pick(user_bucket(&cfg.name, value), weight))
                }
                _ => {
                    // First visit: mint an identity, route by it, and hand it to the client.
                    let id = format!("{random:016x}");
                    let mut d = Decision::new(pick(user_bucket(&cfg.name, id.as_bytes()), weight));
                    d.set_cookie = Some(format!("{name}={id}; Max-Age={max_age_s}; Path=/"));
                    d
                }
            }
        }
    };
    d.budget_exhausted = budget.exhausted;
    d
}

fn pick(bucket: u64, weight: u64) -> Side {
    if bucket < weight {
        Side::Canary
    } else {
        Side::Stable
    }
}

/// Deterministic bucket 0..100 of a user identity. A user in bucket `b` is on the canary exactly
/// when `b < weight`, so once on the canary a user stays there while the weight rises.
/// Salted with the canary name so different canaries pick different users.
pub fn user_bucket(canary: &str, identity: &[u8]) -> u64 {
    let mut h = fnv1a(FNV_OFFSET, canary.as_bytes());
    h = fnv1a(h, &[0xff]);
    h = fnv1a(h, identity);
    mix64(h) % 100
}

/// Finds a cookie's value in a `Cookie` header, tolerating junk: pairs without `=`, stray
/// spaces, empty pairs and non-UTF-8 bytes are skipped rather than rejected.
pub fn cookie_value<'a>(header: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    header.split(|b| *b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|b| *b == b'=')?;
        let (k, v) = pair.split_at(eq);
        (trim(k) == name).then(|| trim(v.get(1..).unwrap_or_default()))
    })
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() {
            s = rest;
        } else {
            break;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{example, with};

    fn state(phase: Phase, weight: u8) -> CanaryState {
        CanaryState {
            phase,
            weight,
            ..CanaryState::new("v2", 0)
        }
    }

    fn no_headers(_: &str) -> Option<Vec<u8>> {
        None
    }

    fn share_on_canary(cfg: &Config, st: &CanaryState) -> usize {
        (0..10_000u64)
            .filter(|r| decide(cfg, Some(st), &mut no_headers, mix64(*r)).side == Side::Canary)
            .count()
    }

    #[test]
    fn unknown_state_routes_to_stable() {
        let cfg = example();
        assert_eq!(decide(&cfg, None, &mut no_headers, 0).side, Side::Stable);
        let other = CanaryState {
            weight: 100,
            phase: Phase::Progressing,
            ..CanaryState::new("v1", 0)
        };
        let d = decide(&cfg, Some(&other), &mut no_headers, 0);
        assert_eq!(d.side, Side::Stable, "state of another revision");
    }

    #[test]
    fn weight_is_the_canary_probability() {
        let cfg = with("/sessionAffinity", None).unwrap();
        assert_eq!(share_on_canary(&cfg, &state(Phase::Progressing, 0)), 0);
        assert_eq!(
            share_on_canary(&cfg, &state(Phase::Progressing, 100)),
            10_000
        );
        let at_20 = share_on_canary(&cfg, &state(Phase::Progressing, 20));
        assert!((1_800..2_200).contains(&at_20), "{at_20}");
    }

    #[test]
    fn failed_and_succeeded_phases_override_weight() {
        let cfg = example();
        let mut insider = |n: &str| (n == "x-canary").then(|| b"insider".to_vec());
        let d = decide(&cfg, Some(&state(Phase::Failed, 50)), &mut insider, 0);
        assert_eq!(d.side, Side::Stable, "match rules stop after a rollback");
        let d = decide(&cfg, Some(&state(Phase::Succeeded, 0)), &mut no_headers, 99);
        assert_eq!(d.side, Side::Canary);
    }

    #[test]
    fn waiting_canary_gets_nothing_not_even_match_traffic() {
        let cfg = example();
        let mut insider = |n: &str| {
            (n == "x-canary")
                .then(|| b"insider".to_vec())
                .or_else(|| (n == "x-user-id").then(|| b"user-1".to_vec()))
        };
        let waiting = state(Phase::Waiting, 0);
        for r in 0..1000 {
            let d = decide(&cfg, Some(&waiting), &mut insider, r);
            assert_eq!(d.side, Side::Stable);
        }
        // Even a Waiting state carrying a weight (rejected by the codec) routes to stable.
        let d = decide(&cfg, Some(&state(Phase::Waiting, 100)), &mut insider, 0);
        assert_eq!(d.side, Side::Stable);
    }

    #[test]
    fn match_rules_force_the_canary_while_running() {
        let cfg = example();
        let mut insider = |n: &str| (n == "x-canary").then(|| b"insider".to_vec());
        let d = decide(&cfg, Some(&state(Phase::Progressing, 0)), &mut insider, 99);
        assert_eq!(d.side, Side::Canary);
    }

    #[test]
    fn client_routing_header_is_ignored() {
        let cfg = with("/sessionAffinity", None).unwrap();
        let mut forged = |n: &str| (n == "x-canary-upstream").then(|| b"web-canary".to_vec());
        for r in 0..1000 {
            let d = decide(&cfg, Some(&state(Phase::Progressing, 0)), &mut forged, r);
            assert_eq!(d.side, Side::Stable);
        }
    }

    #[test]
    fn affinity_is_sticky_and_monotonic_in_weight() {
        let cfg = example();
        for user in 0..500 {
            let id = format!("user-{user}");
            let mut was_canary = false;
            for w in [1u8, 5, 10, 25, 50, 100] {
                let mut h = |n: &str| (n == "x-user-id").then(|| id.as_bytes().to_vec());
                let sides: Vec<Side> = (0..3)
                    .map(|r| decide(&cfg, Some(&state(Phase::Progressing, w)), &mut h, r).side)
                    .collect();
                assert!(
                    sides.iter().all(|s| *s == sides[0]),
                    "same user, same side, any random"
                );
                let on = sides[0] == Side::Canary;
                assert!(
                    on || !was_canary,
                    "user {id} left the canary when weight rose to {w}"
                );
                was_canary = on;
            }
            assert!(was_canary, "everyone is on the canary at 100");
        }
    }

    #[test]
    fn cookie_affinity_mints_and_honours_a_cookie() {
        let cfg = with(
            "/sessionAffinity",
            Some(serde_json::json!({"cookieName": "cg", "maxAge": 60})),
        )
        .unwrap();
        let st = state(Phase::Progressing, 50);
        let d = decide(&cfg, Some(&st), &mut no_headers, 0xabc);
        let cookie = d.set_cookie.clone().unwrap();
        assert_eq!(cookie, "cg=0000000000000abc; Max-Age=60; Path=/");
        let mut h = |n: &str| (n == "cookie").then(|| b"x=1; cg=0000000000000abc; y".to_vec());
        let again = decide(&cfg, Some(&st), &mut h, 12345);
        assert_eq!(again.side, d.side);
        assert_eq!(again.set_cookie, None);
    }

    #[test]
    fn cookie_parser_tolerates_junk() {
        assert_eq!(cookie_value(b"a=1; b=2", b"b"), Some(&b"2"[..]));
        assert_eq!(cookie_value(b";;; =; b ; b= 3 ", b"b"), Some(&b"3"[..]));
        assert_eq!(
            cookie_value(b"\xff\xfe=\x00; c=\xff", b"c"),
            Some(&b"\xff"[..])
        );
        assert_eq!(cookie_value(b"", b"b"), None);
        assert_eq!(cookie_value(b"bb=1", b"b"), None);
    }

    #[test]
    fn user_buckets_spread_evenly() {
        let mut counts = [0u32; 100];
        for i in 0..100_000 {
            counts[user_bucket("web", format!("u{i}").as_bytes()) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }
}
