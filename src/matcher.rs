//! A/B `match` rules: Istio `HTTPMatchRequest.headers` semantics (exact, prefix, suffix, regex;
//! regex is a full match). Headers within one rule are ANDed, rules are ORed.
//!
//! Cost is bounded per request. regex-lite runs in time linear in the input, but the factor is
//! the compiled program's size: its cost is at most about 0.25 ns per (program byte × input
//! byte) on the host (measured, `make bench`). So each regex knows its program size, and one
//! request may spend at most `REGEX_WORK_BUDGET` of those units over all its rules: a regex
//! whose value would exceed what is left does not match (the request goes the non-matching
//! way: stable, or the weight), and the request is counted in `match_budget_exhausted`. The
//! common shapes never pay that: a literal, `.*lit.*`, `lit.*`, `.*lit` and Flagger's cookie
//! pattern `^(.*?;)?(name=value)(;.*)?$` run as plain string searches.

use regex_lite::{Regex, RegexBuilder};

/// Compiled-program budget for one regex (bounds its memory and its cost per input byte).
const REGEX_SIZE_LIMIT: usize = 64 * 1024;
/// Regex work one request may spend, in program bytes × input bytes: about 30 µs on the host
/// at the worst (`make bench`: "regex work at the per-request budget").
pub const REGEX_WORK_BUDGET: u64 = 150_000;

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// A regex that is a literal anywhere in the value (`.*lit.*`).
    Contains(String),
    /// Flagger's cookie pattern: the `;`-separated value holds this `name=value` pair.
    CookiePair(String),
    /// Any other regex, with its compiled program's size (its cost per input byte).
    Regex(Regex, u64),
}

/// What one request may still spend on regexes.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub left: u64,
    pub exhausted: bool,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            left: REGEX_WORK_BUDGET,
            exhausted: false,
        }
    }
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b))
            | (Self::Prefix(a), Self::Prefix(b))
            | (Self::Suffix(a), Self::Suffix(b))
            | (Self::Contains(a), Self::Contains(b))
            | (Self::CookiePair(a), Self::CookiePair(b)) => a == b,
            (Self::Regex(a, _), Self::Regex(b, _)) => a.as_str() == b.as_str(),
            _ => false,
        }
    }
}

impl StringMatch {
    pub fn regex(source: &str, max_len: usize) -> Result<Self, String> {
        if source.len() > max_len {
            return Err(format!(
                "regex is {} bytes, more than the {max_len} allowed",
                source.len()
            ));
        }
        if let Some(plain) = Self::plain_shape(source) {
            return Ok(plain);
        }
        // Anchor: Istio/Envoy regex matches are full-string matches.
        let build = |limit: usize| {
            RegexBuilder::new(&format!("^(?:{source})$"))
                .size_limit(limit)
                .nest_limit(64)
                .build()
        };
        let regex =
            build(REGEX_SIZE_LIMIT).map_err(|e| format!("{source:?} is not a valid regex: {e}"))?;
        // The program's size: the smallest size limit it compiles under (a binary search, once
        // per configuration).
        let (mut lo, mut hi) = (1usize, REGEX_SIZE_LIMIT);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if build(mid).is_ok() {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(StringMatch::Regex(regex, lo as u64))
    }

    /// The regex shapes that are string searches: a literal, `.*lit.*`, `lit.*`, `.*lit`, and
    /// Flagger's cookie pattern `^(.*?;)?(name=value)(;.*)?$` (docs: A/B testing).
    fn plain_shape(source: &str) -> Option<StringMatch> {
        let literal = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_=:/,@ ".contains(&b))
        };
        let s = source.strip_prefix('^').unwrap_or(source);
        let s = s.strip_suffix('$').unwrap_or(s);
        if let Some(pair) = s
            .strip_prefix("(.*?;)?(")
            .and_then(|r| r.strip_suffix(")(;.*)?"))
        {
            return (literal(pair)
                && pair.contains('=')
                && !pair.contains(';')
                && !pair.starts_with(' '))
            .then(|| StringMatch::CookiePair(pair.to_string()));
        }
        let (front, rest) = match s.strip_prefix(".*") {
            Some(r) => (true, r),
            None => (false, s),
        };
        let (back, lit) = match rest.strip_suffix(".*") {
            Some(r) => (true, r),
            None => (false, rest),
        };
        if !literal(lit) {
            return None;
        }
        let lit = lit.to_string();
        Some(match (front, back) {
            (true, true) => StringMatch::Contains(lit),
            (false, true) => StringMatch::Prefix(lit),
            (true, false) => StringMatch::Suffix(lit),
            (false, false) => StringMatch::Exact(lit),
        })
    }

    /// Whether `value` matches, spending regex work from `budget`.
    pub fn matches(&self, value: &str, budget: &mut Budget) -> bool {
        match self {
            Self::Exact(v) => value == v,
            Self::Prefix(v) => value.starts_with(v.as_str()),
            Self::Suffix(v) => value.ends_with(v.as_str()),
            Self::Contains(v) => value.contains(v.as_str()),
            // `^(.*?;)?(pair)(;.*)?$` with no `;` in the pair: one `;`-separated part equals it.
            Self::CookiePair(pair) => value.split(';').any(|c| c == pair),
            Self::Regex(r, program) => {
                let cost = program.saturating_mul(value.len().max(1) as u64);
                if cost > budget.left {
                    budget.exhausted = true;
                    return false;
                }
                budget.left -= cost;
                r.is_match(value)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MatchRule {
    /// Lower-case header name and how its value must match.
    pub headers: Vec<(String, StringMatch)>,
}

impl MatchRule {
    /// True when every header of the rule is present and matches. Header values that are not
    /// UTF-8 never match (they cannot equal a configured string).
    pub fn matches(
        &self,
        header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
        budget: &mut Budget,
    ) -> bool {
        self.headers.iter().all(|(name, m)| {
            header(name)
                .and_then(|v| String::from_utf8(v).ok())
                .is_some_and(|v| m.matches(&v, budget))
        })
    }
}

/// True when any rule matches, within one request's regex budget.
pub fn any_matches(
    rules: &[MatchRule],
    header: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
    budget: &mut Budget,
) -> bool {
    rules.iter().any(|r| r.matches(header, budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(h: &[(&str, StringMatch)]) -> MatchRule {
        MatchRule {
            headers: h.iter().map(|(n, m)| (n.to_string(), m.clone())).collect(),
        }
    }

    fn lookup<'a>(pairs: &'a [(&'a str, &'a [u8])]) -> impl FnMut(&str) -> Option<Vec<u8>> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_vec())
        }
    }

    #[test]
    fn string_matches() {
        let b = &mut Budget::default();
        assert!(StringMatch::Exact("insider".into()).matches("insider", b));
        assert!(!StringMatch::Exact("insider".into()).matches("insiders", b));
        assert!(StringMatch::Prefix("ins".into()).matches("insider", b));
        assert!(StringMatch::Suffix("der".into()).matches("insider", b));
        let r = StringMatch::regex("ins.*", 100).unwrap();
        assert!(r.matches("insider", b));
        assert!(!r.matches("an insider", b), "regex is a full match");
        let r = StringMatch::regex("i(n|m)s.*", 100).unwrap();
        assert!(r.matches("insider", b) && r.matches("imsider", b));
        assert!(!r.matches("an insider", b), "regex is a full match");
    }

    #[test]
    fn flagger_cookie_regex_works() {
        let r = StringMatch::regex("^(.*?;)?(canary=always)(;.*)?$", 100).unwrap();
        assert_eq!(
            r,
            StringMatch::CookiePair("canary=always".into()),
            "a string search"
        );
        let b = &mut Budget::default();
        for yes in [
            "a=1;canary=always;b=2",
            "canary=always",
            "a=1;canary=always",
        ] {
            assert!(r.matches(yes, b), "{yes}");
        }
        // As the regex: a space after the `;` (how browsers join cookies) does not match.
        for no in [
            "a=1; canary=always",
            "canary=never",
            "xcanary=always",
            "canary=alwaysx",
            "a=1;canary=always x",
        ] {
            assert!(!r.matches(no, b), "{no}");
        }
        // The same answers as the regex itself.
        let full = regex_lite::Regex::new("^(?:^(.*?;)?(canary=always)(;.*)?$)$").unwrap();
        for v in [
            "a=1;canary=always;b=2",
            "canary=always",
            "canary=never",
            "xcanary=always",
            "a;canary=always;",
        ] {
            assert_eq!(r.matches(v, b), full.is_match(v), "{v}");
        }
    }

    #[test]
    fn rules_and_within_or_across() {
        let both = rule(&[
            ("x-a", StringMatch::Exact("1".into())),
            ("x-b", StringMatch::Exact("2".into())),
        ]);
        let only_c = rule(&[("x-c", StringMatch::Prefix("yes".into()))]);
        let rules = vec![both, only_c];
        let b = &mut Budget::default();
        assert!(any_matches(
            &rules,
            &mut lookup(&[("x-a", b"1"), ("x-b", b"2")]),
            b
        ));
        assert!(!any_matches(&rules, &mut lookup(&[("x-a", b"1")]), b));
        assert!(any_matches(
            &rules,
            &mut lookup(&[("x-c", b"yes-please")]),
            b
        ));
        assert!(
            !any_matches(&rules, &mut lookup(&[("x-c", b"\xffyes")]), b),
            "non-UTF-8 never matches"
        );
        assert!(!any_matches(&[], &mut lookup(&[]), b));
    }

    #[test]
    fn huge_or_nested_regexes_are_refused() {
        assert!(StringMatch::regex(&"a".repeat(2000), 1024).is_err());
        assert!(StringMatch::regex(&"(".repeat(100).to_string(), 1024).is_err());
        assert!(
            StringMatch::regex("(a{1000}){1000}", 1024).is_err(),
            "program size is bounded"
        );
    }

    #[test]
    fn plain_shapes_are_string_searches() {
        for (src, want) in [
            (".*insider.*", StringMatch::Contains("insider".into())),
            ("insider", StringMatch::Exact("insider".into())),
            ("^ins.*$", StringMatch::Prefix("ins".into())),
            (".*der", StringMatch::Suffix("der".into())),
        ] {
            assert_eq!(StringMatch::regex(src, 100).unwrap(), want, "{src}");
        }
        assert!(matches!(
            StringMatch::regex("in.ider", 100).unwrap(),
            StringMatch::Regex(..)
        ));
        assert!(matches!(
            StringMatch::regex(".*a|b.*", 100).unwrap(),
            StringMatch::Regex(..)
        ));
    }

    #[test]
    fn one_request_spends_at_most_the_regex_budget() {
        let r = StringMatch::regex("(?:[a-y]*){800}z", 1024).unwrap();
        let StringMatch::Regex(_, program) = r else {
            panic!("{r:?}")
        };
        assert!(program > 60_000, "{program}");
        // A 60 KiB value would cost ~3.9e9 units: never run; the request is told.
        let mut b = Budget::default();
        assert!(!r.matches(&"a".repeat(60 * 1024), &mut b));
        assert!(b.exhausted && b.left == REGEX_WORK_BUDGET);
        // A short value within the budget runs, and is paid for.
        let small = StringMatch::regex("(a|b)+z", 100).unwrap();
        let StringMatch::Regex(_, p) = small else {
            panic!()
        };
        let mut b = Budget::default();
        assert!(small.matches("abz", &mut b));
        assert_eq!(b.left, REGEX_WORK_BUDGET - 3 * p);
        assert!(!b.exhausted);
    }
}
