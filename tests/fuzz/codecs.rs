//! Shared-data codecs: the state record every request reads, the tally slots, the lease.
//!
//! Properties, on any bytes: decoding never panics; whatever decodes re-encodes to exactly the
//! same bytes (one encoding per value) and satisfies the invariants the analysis relies on. On
//! records built from a random value: decoding gives the value back exactly when the value is
//! valid (the decoder neither refuses a good record nor accepts a bad one). Mutated records are
//! also "resealed" (checksum recomputed) so that the field validation, not just the checksum,
//! is exercised.

use crate::mutate::havoc;
use crate::rng::Rng;
use crate::{corpus, root, Target};
use canary_guard::checksum::checksum;
use canary_guard::histogram::Histogram;
use canary_guard::outcome::Side;
use canary_guard::state::{CanaryState, Phase};
use canary_guard::store::lease::{HolderKind, Lease};
use canary_guard::tally::{Bucket, Series, SlotRecord, Tally, Totals, MAX_IN_FLIGHT_SHOWN};

const TRAILER: usize = 8;
/// What `config` accepts and the state decoder enforces.
const MAX_REVISION_LEN: usize = 128;
/// The slot decoder's bound on buckets.
const MAX_BUCKETS: usize = 1024;

pub fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// The record without its checksum trailer.
fn body(record: &[u8]) -> &[u8] {
    &record[..record.len().saturating_sub(TRAILER)]
}

/// Appends a valid checksum: the bytes get past the integrity check to the field validation.
fn seal(mut body: Vec<u8>) -> Vec<u8> {
    let sum = checksum(&body);
    body.extend_from_slice(&sum.to_le_bytes());
    body
}

/// Every phase the decoder knows (new variants are picked up without editing this file).
fn phases() -> Vec<Phase> {
    (0..=u8::MAX).filter_map(Phase::from_u8).collect()
}

// ---- the invariants, written independently of the decoders ----------------------------------

fn state_valid(s: &CanaryState) -> bool {
    let weight_fits = match s.phase {
        Phase::Failed | Phase::Waiting => s.weight == 0,
        Phase::Succeeded => s.weight == 100,
        _ => s.weight <= 100,
    };
    weight_fits
        && s.phase != Phase::Initializing
        && !s.revision.is_empty()
        && s.revision.len() <= MAX_REVISION_LEN
        && s.last_check_ms >= s.started_ms
}

fn tally_valid(t: &Tally) -> bool {
    let count = t.latency.count();
    let saturated = t.latency.entries().iter().any(|e| e.1 == u32::MAX);
    t.errors <= t.requests && (count == t.requests || (count < t.requests && saturated))
}

fn slot_valid(r: &SlotRecord) -> bool {
    let t = &r.totals;
    let totals = [
        t.stable_requests,
        t.stable_errors,
        t.canary_requests,
        t.canary_errors,
    ];
    let series_valid = |s: &Series| {
        let mut sums = [0u128; 4];
        for b in &s.buckets {
            sums[0] += u128::from(b.stable.requests);
            sums[1] += u128::from(b.stable.errors);
            sums[2] += u128::from(b.canary.requests);
            sums[3] += u128::from(b.canary.errors);
        }
        s.bucket_ms >= 1
            && s.buckets.len() <= MAX_BUCKETS
            && s.buckets.windows(2).all(|w| w[0].start_ms < w[1].start_ms)
            && s.buckets
                .iter()
                .all(|b| tally_valid(&b.stable) && tally_valid(&b.canary))
            && sums.iter().zip(totals).all(|(s, t)| *s <= u128::from(t))
    };
    t.stable_errors <= t.stable_requests
        && t.canary_errors <= t.canary_requests
        && r.series.len() <= 16
        && r.series.windows(2).all(|w| w[0].window_ms < w[1].window_ms)
        && r.series.iter().all(series_valid)
        && r.in_flight_oldest.len() <= MAX_IN_FLIGHT_SHOWN
        && r.in_flight_oldest.len() as u64 <= u64::from(r.in_flight)
        && r.in_flight_oldest.windows(2).all(|w| w[0] <= w[1])
}

// ---- value generators ---------------------------------------------------------------------------

fn random_string(rng: &mut Rng, max: usize) -> String {
    const PIECES: &[&str] = &[
        "v", "2", "-", "rc.1", "é", "€", "😀", " ", "\u{7f}", "\0", "_",
    ];
    let n = rng.len(max);
    let mut s = String::new();
    while s.len() < n {
        s.push_str(PIECES[rng.below(PIECES.len())]);
    }
    s
}

fn random_state(rng: &mut Rng) -> CanaryState {
    let phase = *rng.pick(&phases());
    let weight = match (rng.below(4), phase) {
        (0, _) => (rng.u64() & 0xff) as u8,
        (_, Phase::Failed) => 0,
        (_, Phase::Succeeded) => 100,
        _ => rng.below(101) as u8,
    };
    let started_ms = rng.interesting_u64();
    let last_check_ms = if rng.one_in(5) {
        rng.interesting_u64()
    } else {
        started_ms.saturating_add(rng.interesting_u64() >> 1)
    };
    let max_revision = if rng.one_in(8) { 400 } else { 20 };
    CanaryState {
        revision: random_string(rng, max_revision),
        phase,
        weight,
        failed_checks: rng.interesting_u64() as u32,
        iterations: rng.interesting_u64() as u32,
        started_ms,
        last_check_ms,
    }
}

/// What the encoder stores of a revision: at most 255 bytes, cut at a char boundary.
fn stored(mut s: CanaryState) -> CanaryState {
    let mut end = s.revision.len().min(255);
    while !s.revision.is_char_boundary(end) {
        end -= 1;
    }
    s.revision.truncate(end);
    s
}

const STATUSES: [u32; 9] = [200, 204, 301, 404, 429, 500, 503, 504, 0];

fn random_window(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => 1,
        1 => 6_400,
        2 => 10_000,
        3 => 16_000,
        4 => 3_600_000,
        _ => 1 + rng.below(100_000_000) as u64,
    }
}

fn random_slot(rng: &mut Rng, events: usize) -> SlotRecord {
    let windows: Vec<u64> = (0..1 + rng.below(3)).map(|_| random_window(rng)).collect();
    let mut r = SlotRecord::new(rng.u64() >> rng.below(64), &windows);
    r.reserved = rng.interesting_u64();
    let base = rng.u64() >> 20;
    r.origin_ms = if rng.one_in(3) {
        0
    } else {
        base.saturating_sub(rng.below(10_000) as u64)
    };
    let widest = r.series.iter().map(|s| s.bucket_ms).max().unwrap_or(1);
    let span = widest * (1 + rng.below(80) as u64);
    for _ in 0..events {
        let side = if rng.one_in(3) {
            Side::Canary
        } else {
            Side::Stable
        };
        let micros = if rng.one_in(4) {
            rng.interesting_u64()
        } else {
            rng.u64() >> (30 + rng.below(34))
        };
        r.record(
            base + rng.below(span as usize) as u64,
            side,
            *rng.pick(&STATUSES),
            micros,
        );
    }
    if rng.one_in(4) {
        r.prune(base + rng.below(span as usize) as u64);
    }
    let shown = rng.below(MAX_IN_FLIGHT_SHOWN + 1);
    r.in_flight = shown as u32 + rng.below(5) as u32;
    r.in_flight_oldest = (0..shown)
        .map(|i| base + i as u64 * rng.below(50) as u64)
        .collect();
    r.in_flight_oldest.sort_unstable();
    r
}

/// One plausible way a writer could get a record wrong (the value is then usually invalid).
fn tamper(rng: &mut Rng, r: &mut SlotRecord) {
    let v = rng.interesting_u64();
    let k = r.series.len();
    match rng.below(4) {
        0 => r.totals.stable_errors = v,
        1 => r.totals.canary_requests = v,
        2 => {
            // In-flight requests shown that the count does not cover, or out of order.
            r.in_flight_oldest.push(0);
            if rng.one_in(2) {
                r.in_flight = 0;
            }
        }
        _ if k > 1 && rng.one_in(3) => r.series.swap(0, k - 1),
        _ if k > 0 => {
            let i = rng.below(k);
            tamper_series(rng, &mut r.series[i], &mut r.totals, v);
        }
        _ => r.totals.stable_errors = v,
    }
}

fn tamper_series(rng: &mut Rng, s: &mut Series, totals: &mut Totals, v: u64) {
    let n = s.buckets.len();
    match rng.below(7) {
        0 => s.bucket_ms = 0,
        1 if n > 0 => s.buckets[rng.below(n)].canary.requests = v,
        2 if n > 0 => s.buckets[rng.below(n)].stable.errors = v,
        3 if n > 1 => s.buckets.swap(0, n - 1),
        4 if n > 0 => {
            let dup = s.buckets[rng.below(n)].clone();
            s.buckets.push(dup);
        }
        5 => {
            // A bucket whose counts the totals do not include.
            let start = s.buckets.last().map_or(0, |b| b.start_ms + 1);
            let mut canary = Tally::default();
            canary.record(500, 1_000);
            s.buckets.push(Bucket {
                start_ms: start,
                stable: Tally::default(),
                canary,
            });
        }
        _ => {
            // A histogram with fewer values than requests, saturated or not.
            let count = if rng.one_in(2) { u32::MAX } else { 1 };
            let latency = Histogram::from_entries(vec![(7, count)]).unwrap();
            let requests = u64::from(count) + rng.below(3) as u64;
            totals.canary_requests = totals.canary_requests.saturating_add(requests);
            s.buckets.push(Bucket {
                start_ms: s.buckets.last().map_or(0, |b| b.start_ms + 1),
                stable: Tally::default(),
                canary: Tally {
                    requests,
                    errors: 0,
                    latency,
                },
            });
        }
    }
}

// ---- fixed sample records (the committed corpus, the exhaustive integrity check) ----------------

fn sample_states() -> Vec<(&'static str, CanaryState)> {
    let base = CanaryState {
        revision: "v2".into(),
        phase: Phase::Progressing,
        weight: 10,
        failed_checks: 1,
        iterations: 3,
        started_ms: 1_700_000_000_000,
        last_check_ms: 1_700_000_030_000,
    };
    vec![
        ("progressing", base.clone()),
        (
            "promoting",
            CanaryState {
                phase: Phase::Promoting,
                weight: 80,
                ..base.clone()
            },
        ),
        (
            "failed",
            CanaryState {
                phase: Phase::Failed,
                weight: 0,
                failed_checks: 3,
                ..base.clone()
            },
        ),
        (
            "succeeded-long-revision",
            CanaryState {
                revision: "release-2026.11.22+build.é€😀".repeat(3),
                phase: Phase::Succeeded,
                weight: 100,
                ..base
            },
        ),
    ]
}

/// A slot with `buckets` buckets of `spread` latency buckets per side.
fn sample_slot(owner: u64, buckets: u64, spread: u64) -> SlotRecord {
    let bucket_ms = 157;
    let mut r = SlotRecord::new(owner, &[10_000]);
    r.reserved = 1_700_000_060_000;
    r.origin_ms = 1_700_000_000_000;
    for b in 0..buckets {
        let now = 1_700_000_000_000 + b * bucket_ms;
        for i in 0..spread {
            let micros = 800 + i * i * 150;
            r.record(now, Side::Stable, 200, micros);
            r.record(
                now,
                Side::Canary,
                if i % 7 == 0 { 503 } else { 200 },
                micros,
            );
        }
    }
    r
}

fn sample_slots() -> Vec<(&'static str, SlotRecord)> {
    let mut released = sample_slot(7, 3, 4);
    released.owner = 0;
    let mut mixed = SlotRecord::new(5, &[10_000, 3_600_000]);
    mixed.origin_ms = 1_700_000_000_000;
    for i in 0..6u64 {
        mixed.record(
            1_700_000_000_000 + i * 900,
            Side::Canary,
            if i == 3 { 503 } else { 200 },
            1_000 + i,
        );
    }
    mixed.in_flight = 3;
    mixed.in_flight_oldest = vec![1_700_000_000_100, 1_700_000_000_100, 1_700_000_004_000];
    vec![
        ("empty", SlotRecord::new(42, &[6_400])),
        ("mixed-windows-in-flight", mixed),
        ("small", sample_slot(42, 2, 3)),
        ("released", released),
        ("medium", sample_slot(0x0123_4567_89ab_cdef, 12, 8)),
    ]
}

fn sample_leases() -> Vec<(&'static str, Lease)> {
    vec![
        (
            "worker",
            Lease {
                token: 0x0bad_cafe,
                kind: HolderKind::Worker,
                expires_ms: 1_700_000_002_000,
            },
        ),
        (
            "singleton",
            Lease {
                token: u64::MAX,
                kind: HolderKind::Singleton,
                expires_ms: u64::MAX,
            },
        ),
    ]
}

/// The sample records of one codec as corpus files: `<name>/valid-<sample>.bin`.
fn sample_files<C: Codec>() -> impl Iterator<Item = (String, Vec<u8>)> {
    C::samples()
        .into_iter()
        .map(|(name, v)| (format!("{}/valid-{name}.bin", C::NAME), v.to_bytes()))
}

/// `CANARY_GUARD_FUZZ_WRITE_CORPUS=1`: the committed valid records, from the current encoders.
pub fn write_corpus() {
    let files = sample_files::<CanaryState>()
        .chain(sample_files::<SlotRecord>())
        .chain(sample_files::<Lease>());
    for (path, bytes) in files {
        let path = root().join("fuzz/corpus").join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, bytes).unwrap();
        println!("fuzz: wrote {}", path.display());
    }
}

// ---- exhaustive integrity check -----------------------------------------------------------------

type Decode = fn(&[u8]) -> bool;

fn decodes<C: Codec>(b: &[u8]) -> bool {
    C::from_bytes(b).is_some()
}

/// How hard to try one record: every other value of every byte, every bit flip, or one
/// change per byte (for a full window of ~18 kB).
#[derive(Clone, Copy)]
enum Depth {
    AllValues,
    AllBits,
    EveryByte,
}

/// Every single-byte change, every truncation, every one-byte extension, and the record as the
/// previous version (1, no trailer) would have stored it: all rejected. Returns the count.
fn corrupt_variants(
    name: &str,
    record: &[u8],
    decodes: Decode,
    depth: Depth,
) -> Result<u64, String> {
    if !decodes(record) {
        return Err(format!("{name}: the valid record does not decode"));
    }
    let mut tried = 0u64;
    let mut v = record.to_vec();
    for i in 0..record.len() {
        let original = record[i];
        let changes: Vec<u8> = match depth {
            Depth::AllValues => (0..=u8::MAX).filter(|x| *x != original).collect(),
            Depth::AllBits => (0..8).map(|bit| original ^ (1 << bit)).collect(),
            Depth::EveryByte => vec![original ^ 0xA5],
        };
        for c in changes {
            v[i] = c;
            if decodes(&v) {
                return Err(format!(
                    "{name}: byte {i} changed {original:#04x} -> {c:#04x} still decodes"
                ));
            }
            tried += 1;
        }
        v[i] = original;
    }
    for cut in 0..record.len() {
        if decodes(&record[..cut]) {
            return Err(format!("{name}: truncated to {cut} bytes still decodes"));
        }
        tried += 1;
    }
    for extra in 0..=u8::MAX {
        v.push(extra);
        if decodes(&v) {
            return Err(format!(
                "{name}: with a byte {extra:#04x} appended still decodes"
            ));
        }
        v.pop();
        tried += 1;
    }
    let mut v1 = body(record).to_vec();
    v1[4] = 1;
    if decodes(&v1) {
        return Err(format!("{name}: the version 1 form still decodes"));
    }
    Ok(tried + 1)
}

/// `long`: also a full window of tallies (65 buckets, ~18 kB), for `make fuzz`.
pub fn integrity(long: bool) -> Result<String, String> {
    let mut records: Vec<(String, Vec<u8>, Decode, Depth)> = Vec::new();
    if long {
        let full = sample_slot(9, 65, 20).encode();
        records.push((
            "slot full window".into(),
            full,
            decodes::<SlotRecord>,
            Depth::EveryByte,
        ));
    }
    for (name, s) in sample_states() {
        records.push((
            format!("state {name}"),
            s.encode(),
            decodes::<CanaryState>,
            Depth::AllValues,
        ));
    }
    for (name, r) in sample_slots() {
        let depth = if r.encode().len() > 512 {
            Depth::AllBits
        } else {
            Depth::AllValues
        };
        records.push((
            format!("slot {name}"),
            r.encode(),
            decodes::<SlotRecord>,
            depth,
        ));
    }
    for (name, l) in sample_leases() {
        records.push((
            format!("lease {name}"),
            l.encode(),
            decodes::<Lease>,
            Depth::AllValues,
        ));
    }
    // The committed seeds must still be valid records of the current version.
    for (dir, decodes) in [
        ("state", decodes::<CanaryState> as Decode),
        ("slot", decodes::<SlotRecord>),
        ("lease", decodes::<Lease>),
    ] {
        for (file, bytes) in corpus(dir)
            .into_iter()
            .filter(|(f, _)| f.starts_with("valid-"))
        {
            if !decodes(&bytes) {
                return Err(format!(
                    "fuzz/corpus/{dir}/{file} no longer decodes: regenerate the seeds with CANARY_GUARD_FUZZ_WRITE_CORPUS=1 cargo test --test fuzz"
                ));
            }
            records.push((format!("{dir} seed {file}"), bytes, decodes, Depth::AllBits));
        }
    }
    let mut total = 0;
    for (name, bytes, decodes, depth) in &records {
        total += corrupt_variants(name, bytes, *decodes, *depth)?;
    }
    Ok(format!(
        "{} valid records, {total} corrupted variants (single-byte changes at every position, every truncation, every appended byte, the v1 form): all rejected",
        records.len()
    ))
}

// ---- fuzz targets -----------------------------------------------------------------------------

#[derive(Default)]
struct Counts {
    from_values: u64,
    accepted: u64,
    rejected: u64,
}

impl Counts {
    fn summary(&self) -> String {
        format!(
            "{} decoded, {} rejected ({} built from random values)",
            self.accepted, self.rejected, self.from_values
        )
    }
}

/// Strategies shared by the three codecs, given valid records to start from.
fn mutated(rng: &mut Rng, seeds: &[Vec<u8>], magic: &[u8]) -> Vec<u8> {
    let seed = rng.pick(seeds).clone();
    let other = rng.pick(seeds);
    match rng.below(10) {
        // Corrupt bytes as they are: the checksum must catch them.
        0..=2 => {
            let mut v = seed;
            havoc(rng, &mut v, other);
            v
        }
        // Corrupt fields under a valid checksum: the validation must catch them.
        3..=8 => {
            let mut v = body(&seed).to_vec();
            havoc(rng, &mut v, body(other));
            seal(v)
        }
        // Anything with our magic and version.
        _ => {
            let mut v = magic.to_vec();
            v.push(seed.get(4).copied().unwrap_or(2));
            v.extend((0..rng.len(300)).map(|_| (rng.u64() & 0xff) as u8));
            seal(v)
        }
    }
}

/// What differs between the codec targets: the rest is [`CodecTarget`].
pub trait Codec: Sized + PartialEq + std::fmt::Debug {
    /// The target's name, also its corpus directory.
    const NAME: &'static str;
    /// What the invariant error calls a decoded value.
    const NOUN: &'static str;
    /// The record's magic, for the "anything with our magic and version" strategy.
    const MAGIC: &'static [u8];
    /// Whether valid random values join the seeds (up to 64 seeds, one in 16).
    const FEEDS_SEEDS: bool = false;

    fn samples() -> Vec<(&'static str, Self)>;
    fn random(rng: &mut Rng) -> Self;
    fn to_bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
    /// The invariants the analysis relies on.
    fn valid(&self) -> bool;
    /// What of a value its encoding keeps (decoding should give exactly this back).
    fn stored(self) -> Self {
        self
    }
    /// Properties beyond the shared ones, on every input (`decoded` is what it decoded to).
    fn check_extra(_input: &[u8], _decoded: Option<&Self>) -> Result<(), String> {
        Ok(())
    }
}

impl Codec for CanaryState {
    const NAME: &'static str = "state";
    const NOUN: &'static str = "state";
    const MAGIC: &'static [u8] = b"CGst";

    fn samples() -> Vec<(&'static str, Self)> {
        sample_states()
    }
    fn random(rng: &mut Rng) -> Self {
        random_state(rng)
    }
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        CanaryState::decode(bytes)
    }
    fn valid(&self) -> bool {
        state_valid(self)
    }
    fn stored(self) -> Self {
        stored(self)
    }
}

impl Codec for SlotRecord {
    const NAME: &'static str = "slot";
    const NOUN: &'static str = "record";
    const MAGIC: &'static [u8] = b"CGtl";
    const FEEDS_SEEDS: bool = true;

    fn samples() -> Vec<(&'static str, Self)> {
        sample_slots()
    }
    fn random(rng: &mut Rng) -> Self {
        let events = rng.len(300);
        let mut r = random_slot(rng, events);
        if rng.one_in(4) {
            let other = random_slot(rng, 20);
            r.absorb(&other);
        }
        if rng.one_in(3) {
            tamper(rng, &mut r);
        }
        r
    }
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        SlotRecord::decode(bytes)
    }
    fn valid(&self) -> bool {
        slot_valid(self)
    }
    /// `owner_of` (the cheap read of the owner) never panics and agrees with the decoder.
    fn check_extra(input: &[u8], decoded: Option<&Self>) -> Result<(), String> {
        let owner = SlotRecord::owner_of(input);
        match decoded {
            Some(r) if owner != Some(r.owner) => {
                Err(format!("owner_of says {owner:?}, the record {}", r.owner))
            }
            _ => Ok(()),
        }
    }
}

impl Codec for Lease {
    const NAME: &'static str = "lease";
    const NOUN: &'static str = "lease";
    const MAGIC: &'static [u8] = b"CGls";

    fn samples() -> Vec<(&'static str, Self)> {
        sample_leases()
    }
    fn random(rng: &mut Rng) -> Self {
        Lease {
            token: rng.interesting_u64(),
            kind: if rng.one_in(2) {
                HolderKind::Worker
            } else {
                HolderKind::Singleton
            },
            expires_ms: rng.interesting_u64(),
        }
    }
    fn to_bytes(&self) -> Vec<u8> {
        self.encode()
    }
    fn from_bytes(bytes: &[u8]) -> Option<Self> {
        Lease::decode(bytes)
    }
    /// Every lease is valid: a random one must decode back exactly.
    fn valid(&self) -> bool {
        true
    }
}

/// One fuzz target per codec.
pub struct CodecTarget<C: Codec> {
    seeds: Vec<Vec<u8>>,
    pending: Option<C>,
    counts: Counts,
}

pub type StateTarget = CodecTarget<CanaryState>;
pub type SlotTarget = CodecTarget<SlotRecord>;
pub type LeaseTarget = CodecTarget<Lease>;

impl<C: Codec> CodecTarget<C> {
    pub fn new() -> Self {
        let mut seeds: Vec<Vec<u8>> = corpus(C::NAME).into_iter().map(|(_, b)| b).collect();
        seeds.extend(C::samples().iter().map(|(_, v)| v.to_bytes()));
        CodecTarget {
            seeds,
            pending: None,
            counts: Counts::default(),
        }
    }
}

impl<C: Codec> Target for CodecTarget<C> {
    fn name(&self) -> &'static str {
        C::NAME
    }

    fn generate(&mut self, rng: &mut Rng) -> Vec<u8> {
        if rng.one_in(3) {
            let value = C::random(rng);
            let bytes = value.to_bytes();
            // Fresh valid records feed the mutation strategies too.
            if C::FEEDS_SEEDS && self.seeds.len() < 64 && value.valid() && rng.one_in(16) {
                self.seeds.push(bytes.clone());
            }
            self.pending = Some(value);
            bytes
        } else {
            mutated(rng, &self.seeds, C::MAGIC)
        }
    }

    fn check(&mut self, input: &[u8]) -> Result<(), String> {
        let decoded = C::from_bytes(input);
        if let Some(value) = self.pending.take() {
            self.counts.from_values += 1;
            let value = value.stored();
            let want = value.valid().then_some(value);
            if decoded != want {
                return Err(format!("encoded {want:?}, decoded {decoded:?}"));
            }
        }
        match &decoded {
            Some(v) => {
                self.counts.accepted += 1;
                if v.to_bytes() != input {
                    return Err(format!("{v:?} decoded from bytes it does not encode to"));
                }
                if !v.valid() {
                    return Err(format!(
                        "accepted a {} that breaks the invariants: {v:?}",
                        C::NOUN
                    ));
                }
            }
            None => self.counts.rejected += 1,
        }
        C::check_extra(input, decoded.as_ref())
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        self.seeds.clone()
    }

    fn summary(&self) -> String {
        self.counts.summary()
    }
}
