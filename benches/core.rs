//! Micro-benchmarks of the pure core, natively (`cargo bench --bench core [-- FILTER]`).
//!
//! No framework: each operation is calibrated to a batch of at least 20 ms (which doubles as
//! the warm-up), then timed over several batches; the table shows the median ns per operation.
//! The numbers are native (x86-64 or the host's arch) with the release profile's `opt-level =
//! "s"`; in Envoy's Wasm runtime expect a small constant factor more, plus the host calls.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use canary_guard::analyser::Analyser;
use canary_guard::config::{parse, Config};
use canary_guard::host::SharedStore;
use canary_guard::outcome::Side;
use canary_guard::routing::decide;
use canary_guard::state::{CanaryState, Phase};
use canary_guard::store::lease::HolderKind;
use canary_guard::store::slots::SlotPublisher;
use canary_guard::store::Keys;
use canary_guard::tally::{bucket_ms_for, SlotRecord};
use canary_guard::testkit::fake_host::{FakeStore as Store, NullTelemetry};
use canary_guard::testkit::EXAMPLE;
use canary_guard::worker::Worker;
use std::hint::black_box;
use std::time::{Duration, Instant};

const REPS: usize = 9;
const MIN_BATCH: Duration = Duration::from_millis(20);

/// 20 latencies (µs) that fall in 20 distinct histogram buckets.
const LATENCIES: [u64; 20] = [
    800, 900, 1_000, 1_100, 1_200, 1_300, 1_500, 1_700, 2_000, 2_300, 2_600, 3_000, 3_500, 4_000,
    5_000, 6_000, 8_000, 10_000, 15_000, 25_000,
];

fn config(edit: impl FnOnce(&mut serde_json::Value)) -> Config {
    let mut v: serde_json::Value = serde_json::from_str(EXAMPLE).unwrap();
    edit(&mut v);
    parse(v.to_string().as_bytes()).unwrap()
}

fn running(weight: u8) -> CanaryState {
    CanaryState {
        phase: Phase::Progressing,
        weight,
        ..CanaryState::new("v2", 0)
    }
}

/// A worker record holding a full retention window before `now_ms`: every bucket has
/// `per_bucket` outcomes per side spread over the 20 latencies (1% canary errors).
fn full_record(
    owner: u64,
    bucket_ms: u64,
    window_ms: u64,
    now_ms: u64,
    per_bucket: u64,
) -> SlotRecord {
    let mut r = SlotRecord::new(owner, &[window_ms]);
    let retention = window_ms + 2 * bucket_ms;
    let mut t = now_ms - retention + bucket_ms;
    while t <= now_ms {
        for i in 0..per_bucket {
            let micros = LATENCIES[(i % 20) as usize];
            r.record(t, Side::Stable, 200, micros);
            r.record(
                t,
                Side::Canary,
                if i % 100 == 0 { 503 } else { 200 },
                micros,
            );
        }
        t += bucket_ms;
    }
    r
}

/// Median ns per call of `f` over `REPS` batches of at least `MIN_BATCH` each. With
/// `BENCH_ITERS=n` in the environment: one batch of n calls, no calibration (for callgrind).
fn measure(mut f: impl FnMut()) -> f64 {
    if let Some(n) = std::env::var("BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        let t = Instant::now();
        for _ in 0..n {
            f();
        }
        return t.elapsed().as_nanos() as f64 / n.max(1) as f64;
    }
    let mut iters: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..iters {
            f();
        }
        if t.elapsed() >= MIN_BATCH {
            break;
        }
        iters *= 2;
    }
    let mut samples: Vec<f64> = (0..REPS)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[REPS / 2]
}

struct Table {
    filter: Vec<String>,
    rows: Vec<(String, f64)>,
}

impl Table {
    fn run(&mut self, name: &str, f: impl FnMut()) {
        if !self.filter.is_empty() && !self.filter.iter().any(|p| name.contains(p.as_str())) {
            return;
        }
        let ns = measure(f);
        eprintln!("  {name}: {ns:.0} ns/op");
        self.rows.push((name.to_string(), ns));
    }

    fn print(&self) {
        let width = self
            .rows
            .iter()
            .map(|r| r.0.len())
            .max()
            .unwrap_or(9)
            .max(9);
        println!("| {:width$} | {:>12} |", "operation", "ns/op");
        println!("| {:-<width$} | {:->12} |", "", ":");
        for (name, ns) in &self.rows {
            let shown = if *ns < 100.0 {
                format!("{ns:.1}")
            } else {
                format!("{ns:.0}")
            };
            println!("| {name:width$} | {shown:>12} |");
        }
    }
}

fn main() {
    // cargo passes `--bench`; any other argument filters the operations by name.
    let filter = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let mut table = Table {
        filter,
        rows: Vec::new(),
    };

    // (a) the routing decision.
    let affinity = config(|_| {});
    let random = config(|v| {
        let obj = v.as_object_mut().unwrap();
        obj.remove("sessionAffinity");
        obj["analysis"].as_object_mut().unwrap().remove("match");
    });
    let cookie = config(|v| {
        v["sessionAffinity"] = serde_json::json!({"cookieName": "cg", "maxAge": 60});
    });
    let state = running(25);
    let mut user = |name: &str| (name == "x-user-id").then(|| b"user-4711".to_vec());
    let mut nothing = |_: &str| None;
    let mut cookies =
        |name: &str| (name == "cookie").then(|| b"a=1; cg=00000000deadbeef; b=2".to_vec());
    let mut r: u64 = 0;
    table.run("decide: header affinity, match miss", || {
        r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
        black_box(decide(&affinity, Some(black_box(&state)), &mut user, r));
    });
    table.run("decide: random weight, no match rules", || {
        r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
        black_box(decide(&random, Some(black_box(&state)), &mut nothing, r));
    });
    table.run("decide: cookie affinity, cookie present", || {
        r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
        black_box(decide(&cookie, Some(black_box(&state)), &mut cookies, r));
    });
    table.run("decide: cookie affinity, first visit (Set-Cookie)", || {
        r = r.wrapping_add(0x9e37_79b9_7f4a_7c15);
        black_box(decide(&cookie, Some(black_box(&state)), &mut nothing, r));
    });

    // (a') match rules at their worst, on a 60 KiB header value: the slowest accepted regex
    // is skipped (over the per-request budget), and the worst case that runs spends the whole
    // budget (matcher::REGEX_WORK_BUDGET); the plain shapes are string searches.
    let huge = "a".repeat(60 * 1024);
    let rule = |regex: &str| {
        config(|v| {
            v["analysis"]["match"] = serde_json::json!([{"headers": {"x-ab": {"regex": regex}}}]);
        })
    };
    let slowest = rule("(?:[a-y]*){800}z");
    let mut long = |name: &str| (name == "x-ab").then(|| huge.as_bytes().to_vec());
    table.run(
        "decide: slowest accepted regex, 60 KiB value (skipped)",
        || {
            black_box(decide(&slowest, Some(black_box(&state)), &mut long, 1));
        },
    );
    let contains = rule(".*insider.*");
    table.run(
        "decide: .*insider.* (a string search), 60 KiB value",
        || {
            black_box(decide(&contains, Some(black_box(&state)), &mut long, 1));
        },
    );
    // The worst that runs: a program of p bytes on REGEX_WORK_BUDGET / p bytes of value.
    let costly = rule("(?:[a-y]*){8}z");
    let p = match &costly.analysis.matches[0].headers[0].1 {
        canary_guard::matcher::StringMatch::Regex(_, p) => *p,
        other => panic!("{other:?}"),
    };
    let fits = "a".repeat((canary_guard::matcher::REGEX_WORK_BUDGET / p) as usize);
    let mut just_fits = |name: &str| (name == "x-ab").then(|| fits.as_bytes().to_vec());
    table.run(
        "decide: regex work at the per-request budget (worst case that runs)",
        || {
            black_box(decide(&costly, Some(black_box(&state)), &mut just_fits, 1));
        },
    );

    // (b) Worker::route: with the state copy fresh (most requests), and re-reading it (once per
    // STATE_MAX_AGE_US per worker: state get + decode + decide).
    let store = Store::default();
    let keys = Keys::new("web");
    store.set(&keys.state, &state.encode(), 0).unwrap();
    let mut worker = Worker::new(affinity.clone(), EXAMPLE.as_bytes().to_vec(), 7, 0);
    table.run("Worker::route (state copy fresh: decide)", || {
        black_box(worker.route(&store, &mut user, Some(1)));
    });
    table.run(
        "Worker::route (state re-read: get + decode + decide)",
        || {
            black_box(worker.route(&store, &mut user, None));
        },
    );
    let state_bytes = state.encode();
    table.run("CanaryState::decode", || {
        black_box(CanaryState::decode(black_box(&state_bytes)));
    });

    // (c) recording one outcome (current bucket, 20 histogram entries per side).
    let mut i = 0usize;
    table.run("Worker::record", || {
        i = i.wrapping_add(1);
        let side = if i.is_multiple_of(8) {
            Side::Canary
        } else {
            Side::Stable
        };
        worker.record(side, 200, LATENCIES[i % 20]);
    });
    let window_ms = affinity.analysis.windows_ms().last().copied().unwrap();
    let bucket_ms = bucket_ms_for(window_ms);
    let mut rec = SlotRecord::new(1, &affinity.analysis.windows_ms());
    table.run("SlotRecord::record", || {
        i = i.wrapping_add(1);
        rec.record(1_000, Side::Canary, 200, LATENCIES[i % 20]);
    });

    // (d) one publish of a full window (~66 buckets x 2 sides x 20 entries).
    let now = 60_000;
    let full = full_record(11, bucket_ms, window_ms, now, 200);
    let encoded = full.encode();
    let mut publisher = SlotPublisher::new(11, &[window_ms]);
    publisher.record = full.clone();
    let pub_store = Store::default();
    publisher.publish(&pub_store, &keys);
    table.run(
        &format!(
            "SlotRecord::encode ({} buckets, {} B)",
            full.buckets().count(),
            encoded.len()
        ),
        || {
            black_box(black_box(&full).encode());
        },
    );
    table.run("SlotRecord::decode (same record)", || {
        black_box(SlotRecord::decode(black_box(&encoded)));
    });
    table.run(
        "SlotPublisher::publish (get + owner check + encode + set)",
        || {
            black_box(publisher.publish(&pub_store, &keys));
        },
    );

    // (e) one analysis step over 4 slots of full windows.
    let an_store = Store::default();
    for (slot, owner) in (0..4).zip(100u64..) {
        let r = full_record(owner, bucket_ms, window_ms, now, 200);
        an_store.set(&keys.slot(slot), &r.encode(), 0).unwrap();
    }
    an_store.set(&keys.config, EXAMPLE.as_bytes(), 0).unwrap();
    let mut analyser = Analyser::new(affinity.clone(), 99, HolderKind::Singleton);
    let mut tel = NullTelemetry;
    // Due: the last check was an interval ago; reset before every step so each one checks.
    let due_state = CanaryState {
        last_check_ms: now - 1_000,
        ..running(25)
    }
    .encode();
    table.run("Analyser::tick, check due (4 full slots)", || {
        an_store.set(&keys.state, &due_state, 0).unwrap();
        analyser.tick(&an_store, &mut tel, now);
    });
    // Not due: only the 250 ms totals refresh (reads and decodes every slot).
    let mut t = now;
    table.run("Analyser::tick, totals refresh only (4 full slots)", || {
        t += 250;
        let fresh = CanaryState {
            last_check_ms: t,
            ..running(25)
        };
        an_store.set(&keys.state, &fresh.encode(), 0).unwrap();
        analyser.tick(&an_store, &mut tel, t);
    });
    let slots: Vec<SlotRecord> = (0..4)
        .map(|s| SlotRecord::decode(&an_store.raw(&keys.slot(s)).unwrap()).unwrap())
        .collect();
    table.run("window sum: 4 slots x 1 metric (merge)", || {
        let mut w = canary_guard::tally::Tally::default();
        for s in &slots {
            s.window(Side::Canary, window_ms, now - window_ms, now, &mut w);
        }
        black_box(w);
    });

    table.print();
}
