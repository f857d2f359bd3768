//! `sagactl`: run the whole system in one process, create topics, seed data, benchmark.
//!
//! # Layout
//! - [`stack`]: broker + registry + four services in one process (`dev`, `bench`, tests).
//! - [`seed`]: stock and accounts from a TOML file.
//! - [`sample`]: the deterministic mix of sample orders.
//! - [`watch`]: a consumer of order outcomes.
//! - [`dev`], [`bench`], [`sagas`]: the commands of the same names.
//! - [`dlt`]: list, redrive and purge dead letters.

pub mod bench;
pub mod definitions;
pub mod dev;
pub mod dlt;
pub mod hops;
pub mod orders;
pub mod sagas;
pub mod sample;
pub mod seed;
pub mod stack;
pub mod watch;
