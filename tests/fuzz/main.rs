//! Host-side fuzz harness on stable Rust (no cargo-fuzz, no nightly): `cargo test --test fuzz`.
//!
//! Each target mutates inputs from a small committed seed corpus (`fuzz/corpus/<target>/`) with
//! a deterministic PRNG and checks properties under `catch_unwind` for a time budget:
//! - `config`: the plugin configuration parser (bytes and structure-aware JSON mutations);
//! - `state`, `slot`, `lease`: the shared-data codecs (corrupt bytes are rejected, whatever
//!   decodes re-encodes to the same bytes and satisfies the invariants);
//! - `regex`: hostile `match` regexes are refused at configuration time or matched.
//!
//! Plus `integrity`, exhaustive rather than random: every single-byte change, every truncation
//! and the previous codec version of a few valid records are rejected (with a budget of 10 s or
//! more, also a byte change at every position of a full ~18 kB window of tallies).
//!
//! It runs in the test profile: debug assertions and overflow checks on, so an arithmetic
//! overflow on hostile input shows up as a panic, as it would under cargo-fuzz.
//!
//! Environment:
//! - `CANARY_GUARD_FUZZ_SECS`: budget per target in seconds (default 1; `make fuzz` sets 60);
//! - `CANARY_GUARD_FUZZ_SEED`: PRNG seed (decimal or 0x-hex) to replay a run; printed otherwise;
//! - `CANARY_GUARD_FUZZ_REPLAY=<file>`: run one saved input through the target(s) named in the
//!   arguments (`cargo test --test fuzz -- config`) and report;
//! - `CANARY_GUARD_FUZZ_WRITE_CORPUS=1`: rewrite the generated seeds (valid records) in the corpus.
//!
//! Arguments other than `--flags` select targets by name. A failing input is written under
//! `out/fuzz/crashes/` and its path printed; an input that makes no progress for 60 s (a hang) is
//! saved the same way by a watchdog.

// A test harness: failing loudly is its job.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod codecs;
mod config_target;
mod matcher_target;
mod mutate;
mod rng;

use rng::Rng;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub trait Target {
    fn name(&self) -> &'static str;
    /// The next input to try.
    fn generate(&mut self, rng: &mut Rng) -> Vec<u8>;
    /// Checks every property on one input; `Err` says which one broke.
    fn check(&mut self, input: &[u8]) -> Result<(), String>;
    /// Figures for the report line (what was accepted, rejected, ...).
    fn summary(&self) -> String;
    /// The committed corpus inputs, checked as they are before any mutation (regressions).
    fn seeds(&self) -> Vec<Vec<u8>>;
}

/// No progress for this long on one input is a hang (inputs take microseconds to milliseconds).
const HANG_SECS: u64 = 60;

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The committed seed files of a target, sorted by name.
pub fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn save_crash(target: &str, seed: u64, iteration: u64, input: &[u8]) -> PathBuf {
    let dir = root().join("out/fuzz/crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{seed:016x}-{iteration}.bin"));
    if let Err(e) = std::fs::write(&path, input) {
        eprintln!("fuzz: cannot write {}: {e}", path.display());
    }
    path
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into())
}

/// A failure message short enough to read (inputs can be megabytes).
fn clip(text: &str) -> String {
    const MAX: usize = 800;
    match text.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

fn run_check(target: &mut dyn Target, input: &[u8]) -> Result<(), String> {
    match catch_unwind(AssertUnwindSafe(|| target.check(input))) {
        Ok(result) => result,
        Err(p) => Err(format!("panicked: {}", panic_text(p))),
    }
}

/// What the watchdog sees: which input runs and whether iterations progress.
struct Progress {
    target: Mutex<&'static str>,
    input: Mutex<Vec<u8>>,
    iterations: AtomicU64,
    done: AtomicBool,
}

fn watchdog(progress: Arc<Progress>, seed: u64) {
    std::thread::spawn(move || {
        let mut last = u64::MAX;
        let mut still = 0;
        while !progress.done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(1));
            let now = progress.iterations.load(Ordering::Relaxed);
            still = if now == last { still + 1 } else { 0 };
            last = now;
            if still >= HANG_SECS {
                let target = *progress.target.lock().unwrap_or_else(|e| e.into_inner());
                let input = progress.input.lock().unwrap_or_else(|e| e.into_inner());
                let path = save_crash(target, seed, now, &input);
                eprintln!(
                    "fuzz {target}: FAILED: no progress for {HANG_SECS} s (a hang) on this input, or generating the next one: saved to {}",
                    path.display()
                );
                std::process::exit(1);
            }
        }
    });
}

fn fuzz(
    target: &mut dyn Target,
    seed: u64,
    budget: Duration,
    progress: &Progress,
) -> Result<(), String> {
    *progress.target.lock().unwrap() = target.name();
    // One stream per target: a run restricted to one target replays the same inputs.
    let mut rng = Rng::new(seed ^ codecs::name_hash(target.name()));
    for (i, seed_input) in target.seeds().into_iter().enumerate() {
        if let Err(why) = run_check(target, &seed_input) {
            let path = save_crash(target.name(), seed, i as u64, &seed_input);
            return Err(format!(
                "corpus input {i}: {}\n  saved to {}",
                clip(&why),
                path.display()
            ));
        }
    }
    let start = Instant::now();
    let mut iterations = 0u64;
    let mut outcome = Ok(());
    let mut slowest = (Duration::ZERO, Vec::new());
    while !iterations.is_multiple_of(16) || start.elapsed() < budget {
        let began = Instant::now();
        let input = target.generate(&mut rng);
        progress.input.lock().unwrap().clone_from(&input);
        let result = run_check(target, &input);
        if began.elapsed() > slowest.0 {
            slowest = (began.elapsed(), input.clone());
        }
        if let Err(why) = result {
            let why = clip(&why);
            let path = save_crash(target.name(), seed, iterations, &input);
            outcome = Err(format!(
                "{why}\n  input ({} bytes) saved to {}\n  replay: CANARY_GUARD_FUZZ_REPLAY={} cargo test --test fuzz -- {}",
                input.len(),
                path.display(),
                path.display(),
                target.name()
            ));
            break;
        }
        iterations += 1;
        progress.iterations.fetch_add(1, Ordering::Relaxed);
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "fuzz {}: {iterations} inputs in {secs:.1} s ({:.0}/s, slowest {} ms); {}",
        target.name(),
        iterations as f64 / secs.max(1e-9),
        slowest.0.as_millis(),
        target.summary()
    );
    // For triage of throughput, not a failure: where the time goes.
    if slowest.0 > Duration::from_millis(100) {
        let dir = root().join("out/fuzz/slowest");
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(dir.join(format!("{}.bin", target.name())), &slowest.1);
    }
    outcome
}

fn env_seed() -> u64 {
    match std::env::var("CANARY_GUARD_FUZZ_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("CANARY_GUARD_FUZZ_SEED={s:?} is not a number"))
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    }
}

fn env_budget() -> Duration {
    let text = std::env::var("CANARY_GUARD_FUZZ_SECS").unwrap_or_else(|_| "1".into());
    let secs: f64 = text
        .trim()
        .parse()
        .ok()
        .filter(|s: &f64| s.is_finite() && *s >= 0.0)
        .unwrap_or_else(|| panic!("CANARY_GUARD_FUZZ_SECS={text:?} is not a number of seconds"));
    Duration::from_secs_f64(secs)
}

fn replay(targets: &mut [Box<dyn Target>], path: &Path) -> bool {
    let input = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut ok = true;
    for t in targets.iter_mut() {
        match run_check(t.as_mut(), &input) {
            Ok(()) => println!("fuzz {}: {} passes", t.name(), path.display()),
            Err(why) => {
                println!("fuzz {}: {} FAILS: {why}", t.name(), path.display());
                ok = false;
            }
        }
    }
    ok
}

fn main() {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let selected = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f));
    if std::env::var_os("CANARY_GUARD_FUZZ_WRITE_CORPUS").is_some() {
        codecs::write_corpus();
    }

    let mut targets: Vec<Box<dyn Target>> = vec![
        Box::new(config_target::ConfigTarget::new()),
        Box::new(codecs::StateTarget::new()),
        Box::new(codecs::SlotTarget::new()),
        Box::new(codecs::LeaseTarget::new()),
        Box::new(matcher_target::RegexTarget::new()),
    ];
    targets.retain(|t| selected(t.name()));

    if let Some(path) = std::env::var_os("CANARY_GUARD_FUZZ_REPLAY") {
        std::process::exit(if replay(&mut targets, Path::new(&path)) {
            0
        } else {
            1
        });
    }

    let seed = env_seed();
    let budget = env_budget();
    println!(
        "fuzz: seed {seed:#018x} (replay with CANARY_GUARD_FUZZ_SEED), {:.1} s per target (CANARY_GUARD_FUZZ_SECS)",
        budget.as_secs_f64()
    );
    let progress = Arc::new(Progress {
        target: Mutex::new("integrity"),
        input: Mutex::new(Vec::new()),
        iterations: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    watchdog(progress.clone(), seed);

    let mut passed = 0;
    let mut failed = 0;
    if selected("integrity") {
        match catch_unwind(|| codecs::integrity(budget >= Duration::from_secs(10))) {
            Ok(Ok(report)) => {
                println!("fuzz integrity: {report}");
                passed += 1;
            }
            Ok(Err(why)) => {
                println!("fuzz integrity: FAILED: {why}");
                failed += 1;
            }
            Err(p) => {
                println!("fuzz integrity: FAILED: panicked: {}", panic_text(p));
                failed += 1;
            }
        }
    }
    for t in targets.iter_mut() {
        match fuzz(t.as_mut(), seed, budget, &progress) {
            Ok(()) => passed += 1,
            Err(why) => {
                println!("fuzz {}: FAILED: {why}", t.name());
                failed += 1;
            }
        }
    }
    progress.done.store(true, Ordering::Relaxed);
    println!("fuzz: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}
