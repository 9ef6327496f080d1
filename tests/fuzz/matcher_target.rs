//! Hostile `match` regexes: nested quantifiers, huge and stacked repetitions, long
//! alternations, deep nesting, and byte-level mutations of known-bad patterns.
//!
//! regex-lite compiles a pattern into a Thompson NFA and searches with a PikeVM: the work of a
//! search is at most (NFA states) x (haystack length + 1), whatever the pattern. So "cannot blow
//! up" comes down to a bound on the states, which the module enforces at configuration time
//! (pattern length, compiled-size limit, nesting limit). Checked here without a clock:
//! - a pattern longer than `MAX_REGEX_LEN` is refused, saying so;
//! - a generated pattern whose NFA needs more than `MUST_REFUSE_STATES` states (a lower bound
//!   computed from the generator's own syntax tree) is refused, and so is one nested deeper than
//!   the nesting limit: an accepted pattern searches with at most that many states per byte;
//! - the configuration parser agrees with the matcher and names the rule's `regex` field;
//! - accepted patterns then run on long adversarial header values (up to 64 KiB, Envoy's header
//!   limit is 60 KiB): never a panic, and a search that does not return is caught by the
//!   harness's watchdog as a hang.

use crate::mutate::havoc;
use crate::rng::Rng;
use crate::{corpus, Target};
use canary_guard::config::{parse, ConfigError, MAX_REGEX_LEN};
use canary_guard::matcher::{Budget, StringMatch};

/// regex-lite's compiled-size limit in the module is 64 KiB and an NFA state takes at least
/// 16 bytes there: a program of more states than this cannot fit.
const MUST_REFUSE_STATES: u64 = 64 * 1024 / 16;
/// The module's nesting limit is 64 and its anchoring adds a group: 64 nested groups are
/// refused (checked against regex-lite), so anything deeper must be.
const MUST_REFUSE_DEPTH: u32 = 63;

#[derive(Clone)]
enum Re {
    Lit(char),
    Class(&'static str),
    Concat(Vec<Re>),
    Alt(Vec<Re>),
    Group(Box<Re>),
    /// `{min,max}`; `max` None is unbounded.
    Rep(Box<Re>, u32, Option<u32>),
    Star(Box<Re>),
    Plus(Box<Re>),
    Opt(Box<Re>),
}

const CLASSES: &[&str] = &[
    ".",
    r"\w",
    r"\d",
    r"\s",
    "[a-z]",
    "[^,;]",
    r"[\s\S]",
    "[a-zA-Z0-9_-]",
];
const LITERALS: &[char] = &['a', 'a', 'a', 'b', '=', ';', 'é', '😀'];

impl Re {
    fn render(&self, out: &mut String) {
        match self {
            Re::Lit(c) => out.push(*c),
            Re::Class(c) => out.push_str(c),
            Re::Concat(v) => v.iter().for_each(|r| r.render_atom(out)),
            Re::Alt(v) => {
                for (i, r) in v.iter().enumerate() {
                    if i > 0 {
                        out.push('|');
                    }
                    r.render(out);
                }
            }
            Re::Group(r) => {
                out.push_str("(?:");
                r.render(out);
                out.push(')');
            }
            Re::Rep(r, min, max) => {
                r.render_atom(out);
                match max {
                    Some(m) if m == min => out.push_str(&format!("{{{min}}}")),
                    Some(m) => out.push_str(&format!("{{{min},{m}}}")),
                    None => out.push_str(&format!("{{{min},}}")),
                }
            }
            Re::Star(r) | Re::Plus(r) | Re::Opt(r) => {
                r.render_atom(out);
                out.push(match self {
                    Re::Star(_) => '*',
                    Re::Plus(_) => '+',
                    _ => '?',
                });
            }
        }
    }

    /// Renders with a group around anything a quantifier or a concatenation would split.
    fn render_atom(&self, out: &mut String) {
        match self {
            Re::Lit(_) | Re::Class(_) | Re::Group(_) => self.render(out),
            _ => {
                out.push('(');
                self.render(out);
                out.push(')');
            }
        }
    }

    /// A lower bound on the Thompson NFA states (repetitions are expanded into copies).
    fn min_states(&self) -> u64 {
        match self {
            Re::Lit(_) | Re::Class(_) => 1,
            Re::Concat(v) | Re::Alt(v) => v.iter().map(Re::min_states).fold(0, u64::saturating_add),
            Re::Group(r) | Re::Star(r) | Re::Plus(r) | Re::Opt(r) => r.min_states(),
            Re::Rep(r, min, max) => {
                let copies = u64::from(max.unwrap_or(*min).max(*min));
                r.min_states().saturating_mul(copies)
            }
        }
    }

    /// A rough count of all states, control ones included (splits, captures): what a search
    /// steps through per byte at worst. Only sizes the haystacks.
    fn approx_states(&self) -> u64 {
        match self {
            Re::Lit(_) | Re::Class(_) => 1,
            Re::Concat(v) => v.iter().map(Re::approx_states).fold(0, u64::saturating_add),
            Re::Alt(v) => v
                .iter()
                .map(Re::approx_states)
                .fold(v.len() as u64, u64::saturating_add),
            Re::Group(r) | Re::Star(r) | Re::Plus(r) | Re::Opt(r) => r.approx_states() + 3,
            Re::Rep(r, min, max) => {
                let copies = u64::from(max.unwrap_or(*min).max(*min)).max(1);
                (r.approx_states() + 3).saturating_mul(copies)
            }
        }
    }

    /// Nesting of groups and repetitions (each counts at least one level for the parser).
    /// Parenthesis nesting of the rendered pattern: what regex-lite's nesting limit counts (a
    /// repetition of a group adds no level of its own: 63 nested `(?:...)+` compile, 64 do not).
    fn depth(&self) -> u32 {
        match self {
            Re::Lit(_) | Re::Class(_) => 0,
            Re::Alt(v) => v.iter().map(Re::depth).max().unwrap_or(0),
            Re::Concat(v) => v.iter().map(Re::atom_depth).max().unwrap_or(0),
            Re::Group(r) => 1 + r.depth(),
            Re::Rep(r, ..) | Re::Star(r) | Re::Plus(r) | Re::Opt(r) => r.atom_depth(),
        }
    }

    /// Depth of `render_atom`: non-atoms get wrapped in a group.
    fn atom_depth(&self) -> u32 {
        match self {
            Re::Lit(_) | Re::Class(_) | Re::Group(_) => self.depth(),
            _ => 1 + self.depth(),
        }
    }

    fn literals(&self, out: &mut Vec<char>) {
        match self {
            Re::Lit(c) => out.push(*c),
            Re::Class(_) => {}
            Re::Concat(v) | Re::Alt(v) => v.iter().for_each(|r| r.literals(out)),
            Re::Group(r) | Re::Rep(r, ..) | Re::Star(r) | Re::Plus(r) | Re::Opt(r) => {
                r.literals(out)
            }
        }
    }
}

fn count(rng: &mut Rng) -> u32 {
    *rng.pick(&[
        0, 1, 2, 3, 5, 10, 20, 64, 100, 255, 1000, 1001, 10_000, 65_535, 100_000,
    ])
}

/// A random syntax tree of at most about `budget` nodes (without the budget the tree is a
/// branching process that explodes).
fn random_re(rng: &mut Rng, depth: u32, budget: &mut u32) -> Re {
    *budget = budget.saturating_sub(1);
    let leaf = *budget == 0 || depth >= 90 || rng.one_in(3 + depth as usize / 4);
    if leaf {
        return if rng.one_in(2) {
            Re::Lit(*rng.pick(LITERALS))
        } else {
            Re::Class(CLASSES[rng.below(CLASSES.len())])
        };
    }
    match rng.below(8) {
        0 => {
            let n = 1 + rng.len(8);
            Re::Concat((0..n).map(|_| random_re(rng, depth + 1, budget)).collect())
        }
        1 => {
            // Long alternations of near-identical branches (a classic backtracking trap).
            let max = if rng.one_in(8) { 400 } else { 8 };
            let n = 1 + rng.len(max);
            Re::Alt((0..n).map(|_| random_re(rng, depth + 1, budget)).collect())
        }
        2 => Re::Group(Box::new(random_re(rng, depth + 1, budget))),
        3 => {
            let min = count(rng);
            let max = match rng.below(3) {
                0 => None,
                1 => Some(min),
                _ => Some(min.saturating_add(count(rng))),
            };
            Re::Rep(Box::new(random_re(rng, depth + 1, budget)), min, max)
        }
        4 => Re::Star(Box::new(random_re(rng, depth + 1, budget))),
        5 => Re::Plus(Box::new(random_re(rng, depth + 1, budget))),
        6 => Re::Opt(Box::new(random_re(rng, depth + 1, budget))),
        _ => {
            // A straight nesting chain: ((((a+)+)+)+) and friends.
            let mut r = random_re(rng, depth + 1, budget);
            for _ in 0..rng.len(100) {
                r = match rng.below(3) {
                    0 => Re::Plus(Box::new(r)),
                    1 => Re::Star(Box::new(r)),
                    _ => Re::Group(Box::new(r)),
                };
            }
            r
        }
    }
}

/// The error the configuration parser gives for a pattern in a match rule, if any.
fn via_config(pattern: &str) -> Result<(), ConfigError> {
    let cfg = serde_json::json!({
        "name": "web",
        "revision": "v2",
        "upstreams": {"header": "x-up", "stable": "s", "canary": "c"},
        "analysis": {
            "stepWeight": 10,
            "match": [{"headers": {"x-ab": {"regex": pattern}}}],
            "metrics": [{"name": "request-success-rate", "thresholdRange": {"min": 99}}]
        }
    });
    parse(cfg.to_string().as_bytes()).map(|_| ())
}

pub struct RegexTarget {
    seeds: Vec<Vec<u8>>,
    /// The syntax tree of the pattern being generated, when it came from the grammar.
    pending: Option<Re>,
    accepted: u64,
    refused: u64,
    haystack_bytes: u64,
    rng: Rng,
}

impl RegexTarget {
    pub fn new() -> Self {
        let seeds = corpus("regex")
            .into_iter()
            .flat_map(|(_, b)| {
                // One pattern per line.
                String::from_utf8_lossy(&b)
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| l.as_bytes().to_vec())
                    .collect::<Vec<_>>()
            })
            .collect();
        RegexTarget {
            seeds,
            pending: None,
            accepted: 0,
            refused: 0,
            haystack_bytes: 0,
            rng: Rng::new(1),
        }
    }

    /// Adversarial header values: runs of the pattern's own literals, almost-matches, noise.
    fn haystacks(&mut self, pattern: &str, ast: Option<&Re>) -> Vec<String> {
        let mut alphabet = vec!['a', 'b', '!', ';', '='];
        if let Some(ast) = ast {
            ast.literals(&mut alphabet);
        } else {
            alphabet.extend(pattern.chars().filter(|c| c.is_alphanumeric()).take(16));
        }
        let rng = &mut self.rng;
        let states = ast.map_or(1_000, Re::approx_states).max(1);
        // Without a syntax tree the size is unknown: short values only (this is a debug build).
        let long = if ast.is_some() && rng.one_in(8) {
            64 * 1024
        } else {
            512
        };
        // Keep one search within a few million state steps in this debug build.
        let len = long.min((2_000_000 / states) as usize).max(64);
        let mut out = vec![
            String::new(),
            "a".repeat(len),
            format!("{}!", "a".repeat(len)),
        ];
        let c = *rng.pick(&alphabet);
        out.push(std::iter::repeat_n(c, len).collect());
        out.push((0..len).map(|_| *rng.pick(&alphabet)).collect());
        out
    }
}

impl Target for RegexTarget {
    fn name(&self) -> &'static str {
        "regex"
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        self.rng = Rng::new(rng.u64());
        if rng.one_in(3) {
            let mut v = rng.pick(&self.seeds).clone();
            let other = rng.pick(&self.seeds).clone();
            havoc(rng, &mut v, &other);
            v.truncate(4 * MAX_REGEX_LEN);
            return v;
        }
        let mut budget = 1 + rng.len(600) as u32;
        let re = random_re(rng, 0, &mut budget);
        let mut s = String::new();
        re.render(&mut s);
        self.pending = Some(re);
        s.into_bytes()
    }

    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let ast = self.pending.take();
        let pattern = String::from_utf8_lossy(input).into_owned();
        let compiled = StringMatch::regex(&pattern, MAX_REGEX_LEN);
        let shown = || pattern.chars().take(120).collect::<String>();
        if pattern.len() > MAX_REGEX_LEN {
            match &compiled {
                Err(e) if e.contains("bytes") => {}
                other => {
                    return Err(format!(
                        "a {}-byte pattern was not refused for its length: {:?}",
                        pattern.len(),
                        other.as_ref().map(|_| ())
                    ))
                }
            }
        }
        if let (Some(ast), Ok(_)) = (&ast, &compiled) {
            if ast.min_states() > MUST_REFUSE_STATES {
                return Err(format!(
                    "accepted a pattern of at least {} NFA states: {}",
                    ast.min_states(),
                    shown()
                ));
            }
            if ast.depth() > MUST_REFUSE_DEPTH {
                return Err(format!(
                    "accepted a pattern nested {} deep: {}",
                    ast.depth(),
                    shown()
                ));
            }
        }
        match (&compiled, via_config(&pattern)) {
            (Ok(_), Ok(())) => {}
            (Err(_), Err(e)) if e.field == "analysis.match[0].headers.x-ab.regex" => {}
            (c, v) => {
                return Err(format!(
                    "matcher {:?} but configuration {v:?} for {}",
                    c.as_ref().map(|_| ()),
                    shown()
                ))
            }
        }
        match compiled {
            Ok(m) => {
                self.accepted += 1;
                // A plain shape (a string search) must answer as the regex would.
                let reference = regex_lite::RegexBuilder::new(&format!("^(?:{pattern})$"))
                    .size_limit(1 << 20)
                    .nest_limit(64)
                    .build()
                    .ok();
                for h in self.haystacks(&pattern, ast.as_ref()) {
                    self.haystack_bytes += h.len() as u64;
                    let mut unlimited = Budget {
                        left: u64::MAX,
                        exhausted: false,
                    };
                    let got = m.matches(&h, &mut unlimited);
                    if let Some(r) = &reference {
                        if got != r.is_match(&h) {
                            return Err(format!(
                                "{m:?} answers {got} for {h:?}, the regex {}",
                                !got
                            ));
                        }
                    }
                }
            }
            Err(e) => {
                self.refused += 1;
                if e.trim().is_empty() {
                    return Err("refused without a reason".into());
                }
            }
        }
        Ok(())
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        self.seeds.clone()
    }

    fn summary(&self) -> String {
        format!(
            "{} patterns accepted and searched ({} KiB of haystacks), {} refused",
            self.accepted,
            self.haystack_bytes / 1024,
            self.refused
        )
    }
}
