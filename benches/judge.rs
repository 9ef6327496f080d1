//! `make bench-judge`: synthetic traffic replayed through the statistical judge of the pure core
//! (`canary_guard::judge`, the test `error-rate-vs-stable` runs on every tick) and, on the same
//! traffic, a fixed-threshold judge with Flagger's semantics (`request-success-rate` min 99 over
//! a 1m window, interval 1m, threshold 3, the rollback at the tick after the third failed
//! check, no data a failed check).
//!
//! Each cell: stable error rate, canary weight, canary error ratio, with or without a shared
//! outage (a minute, two minutes in, when a shared dependency fails 20% of every request on
//! both sides). Traffic: `JUDGE_RPS` requests/s (200) in 100 ms ticks, for at most
//! `JUDGE_MINUTES` (15) per run, `JUDGE_RUNS` (1000) runs per cell, seeded (`JUDGE_SEED`).
//! Printed: false rollbacks of healthy canaries (ratio 1), and for bad ones the share detected
//! and the median and p90 canary requests and seconds to the rollback.

use canary_guard::judge::{Batch, SequentialTest};
use canary_guard::testkit::traffic::Rng;
use std::time::Instant;

const TICK_MS: u64 = 100;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy)]
struct Cell {
    stable_err: f64,
    weight: f64,
    ratio: f64,
    burst: bool,
}

/// When a judge rolled back: canary requests seen and seconds.
#[derive(Clone, Copy, Default)]
struct Outcome {
    ours: Option<(u64, f64)>,
    flagger: Option<(u64, f64)>,
}

struct Flagger {
    failed: u32,
    window: Vec<(u64, u64)>, // per tick: canary requests, canary errors (last minute)
    next_check_ms: u64,
}

impl Flagger {
    fn new() -> Self {
        Flagger {
            failed: 0,
            window: Vec::new(),
            next_check_ms: 60_000,
        }
    }

    /// One tick of canary traffic; true when Flagger rolls back at this time.
    fn tick(&mut self, now_ms: u64, requests: u64, errors: u64) -> bool {
        self.window.push((requests, errors));
        let keep = (60_000 / TICK_MS) as usize;
        if self.window.len() > keep {
            self.window.remove(0);
        }
        if now_ms < self.next_check_ms {
            return false;
        }
        self.next_check_ms += 60_000;
        // advanceCanary: the threshold reached at an earlier tick rolls back now...
        if self.failed >= 3 {
            return true;
        }
        // ...else this tick's check: success rate over the last minute, min 99.
        let (n, e) = self
            .window
            .iter()
            .fold((0, 0), |(n, e), (r, x)| (n + r, e + x));
        let ok = n > 0 && 100.0 * (n - e) as f64 / n as f64 >= 99.0;
        if !ok {
            self.failed += 1;
        }
        false
    }
}

fn run(
    cell: Cell,
    rng: &mut Rng,
    rps: u64,
    horizon_ms: u64,
    max_ratio: f64,
    alpha: f64,
) -> Outcome {
    let per_tick = rps * TICK_MS / 1000;
    let mut test = SequentialTest::default();
    let mut flagger = Flagger::new();
    let mut out = Outcome::default();
    let mut canary_seen = 0u64;
    let mut now = 0u64;
    let canary_err = (cell.stable_err * cell.ratio).min(1.0);
    while now < horizon_ms && (out.ours.is_none() || out.flagger.is_none()) {
        now += TICK_MS;
        let outage = cell.burst && (120_000..180_000).contains(&now);
        let with_outage = |p: f64| if outage { 1.0 - (1.0 - p) * 0.8 } else { p };
        let canary = rng.binomial(per_tick, cell.weight);
        let stable = per_tick - canary;
        let c_err = rng.binomial(canary, with_outage(canary_err));
        let s_err = rng.binomial(stable, with_outage(cell.stable_err));
        canary_seen += canary;
        let secs = now as f64 / 1000.0;
        if out.ours.is_none() {
            test.update(
                max_ratio,
                &Batch {
                    canary_requests: canary,
                    canary_events: c_err,
                    stable_requests: stable,
                    stable_events: s_err,
                },
            );
            if test.rejects(alpha) {
                out.ours = Some((canary_seen, secs));
            }
        }
        if out.flagger.is_none() && flagger.tick(now, canary, c_err) {
            out.flagger = Some((canary_seen, secs));
        }
    }
    out
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted.get(i).copied()
}

/// `false rollbacks 0.4%` for a healthy canary, else `98% · median 1,930 req / 97 s · p90 ...`:
/// the median and p90 over every run, undetected runs counting as never (shown as `>`).
fn describe(healthy: bool, results: &[Option<(u64, f64)>], horizon_s: f64) -> String {
    let runs = results.len() as f64;
    let hits: Vec<(u64, f64)> = results.iter().flatten().copied().collect();
    let share = 100.0 * hits.len() as f64 / runs;
    if healthy {
        return format!("false rollbacks {share:.1}%");
    }
    let mut req: Vec<f64> = results
        .iter()
        .map(|r| r.map_or(f64::INFINITY, |(n, _)| n as f64))
        .collect();
    let mut secs: Vec<f64> = results
        .iter()
        .map(|r| r.map_or(f64::INFINITY, |(_, s)| s))
        .collect();
    req.sort_by(f64::total_cmp);
    secs.sort_by(f64::total_cmp);
    let show = |v: Option<f64>, unit: &str| match v {
        Some(x) if x.is_finite() => format!("{x:.0}{unit}"),
        _ => format!(">{horizon_s:.0}s"),
    };
    let show_req = |v: Option<f64>| match v {
        Some(x) if x.is_finite() => format!("{x:.0}"),
        _ => "never".to_string(),
    };
    format!(
        "{share:5.1}% · median {} req / {} · p90 {} req / {}",
        show_req(quantile(&req, 0.5)),
        show(quantile(&secs, 0.5), "s"),
        show_req(quantile(&req, 0.9)),
        show(quantile(&secs, 0.9), "s"),
    )
}

fn main() {
    let runs = env_u64("JUDGE_RUNS", 1000);
    let rps = env_u64("JUDGE_RPS", 200);
    let minutes = env_u64("JUDGE_MINUTES", 15);
    let seed = env_u64("JUDGE_SEED", 0x5eed);
    let max_ratio = std::env::var("JUDGE_MAX_RATIO")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1.0);
    let alpha = 0.01;
    let horizon_ms = minutes * 60_000;
    let started = Instant::now();
    println!(
        "bench-judge: {runs} runs per cell, {rps} req/s in {TICK_MS} ms ticks, up to {minutes} min per run, seed {seed:#x}"
    );
    println!(
        "ours: error-rate-vs-stable maxRatio {max_ratio} alpha {alpha}, on every tick | Flagger: request-success-rate min 99, interval 1m, threshold 3"
    );
    println!(
        "burst: a shared outage failing 20% of every request on both sides from 2:00 to 3:00\n"
    );
    let mut cells = Vec::new();
    for stable_err in [0.01, 0.001] {
        for weight in [0.05, 0.10, 0.50] {
            for ratio in [1.0, 1.5, 2.0, 5.0, 10.0] {
                for burst in [false, true] {
                    cells.push(Cell {
                        stable_err,
                        weight,
                        ratio,
                        burst,
                    });
                }
            }
        }
    }
    // Two threads (the machine's cores), each its own seeds.
    let results: Vec<(Cell, Vec<Outcome>)> = std::thread::scope(|scope| {
        let chunks: Vec<_> = cells
            .chunks(cells.len().div_ceil(2))
            .enumerate()
            .map(|(t, chunk)| {
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, cell)| {
                            let mut rng = Rng(seed ^ ((t as u64) << 32) ^ (i as u64 * 0x9E37));
                            let outs = (0..runs)
                                .map(|_| run(*cell, &mut rng, rps, horizon_ms, max_ratio, alpha))
                                .collect();
                            (*cell, outs)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        chunks
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    println!(
        "| stable err | weight | ratio | burst | ours (vs stable, every tick) | Flagger (fixed min 99) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let horizon_s = horizon_ms as f64 / 1000.0;
    for (cell, outs) in &results {
        let healthy = cell.ratio <= max_ratio;
        let ours: Vec<_> = outs.iter().map(|o| o.ours).collect();
        let flagger: Vec<_> = outs.iter().map(|o| o.flagger).collect();
        println!(
            "| {}% | {:.0}% | {} | {} | {} | {} |",
            cell.stable_err * 100.0,
            cell.weight * 100.0,
            cell.ratio,
            if cell.burst { "yes" } else { "no" },
            describe(healthy, &ours, horizon_s),
            describe(healthy, &flagger, horizon_s),
        );
    }
    // A canary failing every request: ticks from the first failing response to the rollback.
    println!("\na canary failing every request (stable 1%): ticks to the rollback, median / max over {runs} runs");
    for rps in [200u64, 1000] {
        for weight in [0.05, 0.10, 0.50] {
            let mut rng = Rng(seed ^ 0xdead ^ rps);
            let mut ticks: Vec<u64> = (0..runs)
                .map(|_| {
                    let cell = Cell {
                        stable_err: 0.01,
                        weight,
                        ratio: 100.0,
                        burst: false,
                    };
                    run(cell, &mut rng, rps, 60_000, max_ratio, alpha)
                        .ours
                        .map_or(u64::MAX, |(_, s)| (s * 1000.0) as u64 / TICK_MS)
                })
                .collect();
            ticks.sort_unstable();
            let median = ticks.get(ticks.len() / 2).copied().unwrap_or(0);
            let max = ticks.last().copied().unwrap_or(0);
            println!(
                "  {rps} req/s, weight {:.0}%: median {median}, max {max} tick(s)",
                weight * 100.0
            );
        }
    }
    println!(
        "\n(bench-judge took {:.1} s)",
        started.elapsed().as_secs_f64()
    );
}
