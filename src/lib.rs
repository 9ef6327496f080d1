//! canary-guard: in-proxy canary routing with a Flagger-compatible analysis and rollback.
//!
//! Data flow: request -> [`routing`] decision -> [`outcome`] -> [`tally`] (per worker, published
//! to a [`store`] slot) -> [`analyser`] sums the slots over each metric window, [`metrics`]
//! judges them, the [`state_machine`] steps the weight -> [`state`] in shared data -> routing.
//!
//! Pure core (no host calls, unit-tested natively):
//! - [`config`]: plugin configuration (wire shape, validation, errors, durations, timestamps)
//! - [`routing`] and [`matcher`]: the per-request stable/canary decision
//! - [`outcome`]: the side a request went to and whether its status is an error
//! - [`tally`] and [`histogram`]: outcome tallies, time buckets, windows and their codec
//! - [`metrics`]: one metric measured over a window and judged against its range
//! - [`state_machine`]: the analysis state machine (start, hold, check, promote, roll back)
//! - [`state`], [`codec`], [`checksum`]: the records kept in shared data and their encoding
//! - [`hashing`]: FNV-1a, SplitMix64 finaliser, xorshift stream
//! - [`control`]: the control endpoint's status and actions (operator commands)
//!
//! Orchestration against the [`host`] traits (tested with the `testkit` fake host):
//! - [`plugin`]: the root and HTTP contexts: roles, configure/tick/done, outcome capture
//! - [`worker`]: the filter side of a worker (route, record, publish)
//! - [`analyser`]: the singleton or elected analyser of a canary, in named steps
//! - [`store`]: shared-data keys, worker slots, the analyser lease, the canary registry
//!
//! Host adapter (wasm32 only): `adapter`, the only code that calls proxy-wasm.

pub mod analyser;
pub mod checksum;
pub mod codec;
pub mod config;
pub mod control;
pub mod fleet;
pub mod hashing;
pub mod histogram;
pub mod host;
pub mod invalid_config;
pub mod judge;
pub mod matcher;
pub mod metrics;
pub mod outcome;
pub mod plugin;
pub mod routing;
pub mod state;
pub mod state_machine;
pub mod store;
pub mod tally;
pub mod worker;

#[cfg(target_arch = "wasm32")]
mod adapter;

#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
