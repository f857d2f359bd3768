//! `sagactl`: run the whole system in one process, create topics, seed data, benchmark.
//!
//! The stack these commands run (broker, registry, the services) and the seed it loads are
//! `saga-sandbox`'s, shared with the end-to-end tests.
//!
//! # Layout
//! - [`sample`]: the deterministic mix of sample orders.
//! - [`watch`]: a consumer of order outcomes.
//! - [`dev`], [`bench`], [`sagas`]: the commands of the same names.
//! - [`dlt`]: list, redrive and purge dead letters.
//! - [`threads`]: a benchmark's CPU by kind of thread.

pub mod bench;
pub mod definitions;
pub mod dev;
pub mod dlt;
pub mod hops;
pub mod orders;
pub mod sagas;
pub mod sample;
pub mod threads;
pub mod watch;
