//! The test kit: an in-memory host (`fake_host`) and a deterministic simulation of one proxy
//! (`sim`) that drives the real root and HTTP contexts of `plugin`. Compiled for the unit tests
//! and, with the `testkit` feature, for `tests/` and `benches/`; never into the module.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod fake_etcd;
pub mod fake_host;
pub mod fake_loadtester;
pub mod sim;
pub mod traffic;

/// The README example configuration (header affinity, one `match` rule, two 10 s metrics, 1 s
/// interval, steps 1, 5, 10, 25, 50): the unit tests, the simulation and the core benchmark all
/// start from it.
pub const EXAMPLE: &str = include_str!("../../tests/data/example-config.json");
