//! A/B `match` rules: Istio `HTTPMatchRequest.headers` semantics (exact, prefix, suffix, regex;
//! regex is a full match). Headers within one rule are ANDed, rules are ORed.

use regex_lite::{Regex, RegexBuilder};

/// Compiled-program budget for one regex (regex-lite runs in time linear in the input and this
/// bounds the program size, so a rule cannot blow up memory or time).
const REGEX_SIZE_LIMIT: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Regex(Regex),
}

impl PartialEq for StringMatch {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b))
            | (Self::Prefix(a), Self::Prefix(b))
            | (Self::Suffix(a), Self::Suffix(b)) => a == b,
            (Self::Regex(a), Self::Regex(b)) => a.as_str() == b.as_str(),
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
        // Anchor: Istio/Envoy regex matches are full-string matches.
        RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .nest_limit(64)
            .build()
            .map(StringMatch::Regex)
            .map_err(|e| format!("{source:?} is not a valid regex: {e}"))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => value == v,
            Self::Prefix(v) => value.starts_with(v.as_str()),
            Self::Suffix(v) => value.ends_with(v.as_str()),
            Self::Regex(r) => r.is_match(value),
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
    pub fn matches(&self, header: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> bool {
        self.headers.iter().all(|(name, m)| {
            header(name)
                .and_then(|v| String::from_utf8(v).ok())
                .is_some_and(|v| m.matches(&v))
        })
    }
}

/// True when any rule matches.
pub fn any_matches(rules: &[MatchRule], header: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> bool {
    rules.iter().any(|r| r.matches(header))
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
        assert!(StringMatch::Exact("insider".into()).matches("insider"));
        assert!(!StringMatch::Exact("insider".into()).matches("insiders"));
        assert!(StringMatch::Prefix("ins".into()).matches("insider"));
        assert!(StringMatch::Suffix("der".into()).matches("insider"));
        let r = StringMatch::regex("ins.*", 100).unwrap();
        assert!(r.matches("insider"));
        assert!(!r.matches("an insider"), "regex is a full match");
    }

    #[test]
    fn flagger_cookie_regex_works() {
        let r = StringMatch::regex("^(.*?;)?(canary=always)(;.*)?$", 100).unwrap();
        assert!(r.matches("a=1;canary=always;b=2"));
        assert!(!r.matches("canary=never"));
    }

    #[test]
    fn rules_and_within_or_across() {
        let both = rule(&[
            ("x-a", StringMatch::Exact("1".into())),
            ("x-b", StringMatch::Exact("2".into())),
        ]);
        let only_c = rule(&[("x-c", StringMatch::Prefix("yes".into()))]);
        let rules = vec![both, only_c];
        assert!(any_matches(
            &rules,
            &mut lookup(&[("x-a", b"1"), ("x-b", b"2")])
        ));
        assert!(!any_matches(&rules, &mut lookup(&[("x-a", b"1")])));
        assert!(any_matches(&rules, &mut lookup(&[("x-c", b"yes-please")])));
        assert!(
            !any_matches(&rules, &mut lookup(&[("x-c", b"\xffyes")])),
            "non-UTF-8 never matches"
        );
        assert!(!any_matches(&[], &mut lookup(&[])));
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
    fn pathological_regex_runs_in_linear_time() {
        let r = StringMatch::regex("(a+)+b", 100).unwrap();
        let input = "a".repeat(50_000);
        let start = std::time::Instant::now();
        assert!(!r.matches(&input));
        // A backtracking engine would not finish; a linear one takes milliseconds.
        assert!(start.elapsed().as_secs() < 5);
    }
}
