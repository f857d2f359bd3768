//! `chaos`: the whole system on real infrastructure — tansu as a separate broker process with
//! SQLite storage, PostgreSQL, the registry and the four services as OS processes configured by
//! environment variables — driven by sample orders while faults planned from a seed hit it:
//! `kill -9` of every process (broker included) and restarts, PostgreSQL restarts, a service cut
//! off from its database by a network partition, network partitions and delayed, lossy networks
//! of a service, the broker or PostgreSQL, duplicates of consumed records and poison records. When the system has settled, the checker verifies that
//! nothing was lost or applied twice, and the last line prints the figures.
//!
//! # Layout
//! - [`schedule`]: the deterministic PRNG and the fault plan (pure).
//! - [`cluster`]: the child processes: start, `kill -9`, reap, restart, restart-on-crash.
//! - [`load`]: the sample orders and the client that places them.
//! - [`faults`]: carrying out the plan.
//! - [`proxy`]: the TCP relays, over links the harness cuts, delays and makes lossy.
//! - [`netns`]: a network namespace per service, so its whole network is the harness's relays.
//! - [`inspect`]: reading offsets and records from the broker.
//! - [`checker`]: the snapshot and the checks (pure), and reading the snapshot.
//! - [`run`](mod@run): setting it all up, the run, the settle wait and the report.

pub mod checker;
pub mod cluster;
pub mod faults;
pub mod inspect;
pub mod load;
pub mod netns;
pub mod proxy;
pub mod run;
pub mod schedule;

pub use run::{run, Options};
