//! canary-guard: in-proxy canary routing with a Flagger-compatible analysis and rollback.
//!
//! Pure core (no host calls, unit-tested natively):
//! - [`config`] and [`timestamp`]: plugin configuration parsing and validation
//! - [`routing`] and [`matcher`]: the per-request stable/canary decision
//! - [`tally`] and [`histogram`]: outcome tallies, time buckets, windows and their codec
//! - [`checks`] and [`analysis`]: metric judgement and the analysis state machine
//! - [`state`]: the analysis state every worker reads
//!
//! Orchestration against the [`host`] traits (tested with a fake host):
//! - [`worker`] and [`slots`]: the filter side of a worker (route, record, publish)
//! - [`analyser`] and [`lease`]: the singleton or elected analyser
//!
//! Host adapter (wasm32 only): `adapter`, the only code that calls proxy-wasm.

pub mod analyser;
pub mod analysis;
pub mod checks;
pub mod checksum;
pub mod codec;
pub mod config;
pub mod duration;
pub mod histogram;
pub mod host;
pub mod keys;
pub mod lease;
pub mod matcher;
pub mod routing;
pub mod slots;
pub mod state;
pub mod tally;
pub mod timestamp;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod adapter;

#[cfg(test)]
pub mod fake_host;
#[cfg(test)]
mod simulation;
