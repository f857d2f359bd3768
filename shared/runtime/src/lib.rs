//! The messaging runtime every service is built on: consume, dedupe, apply, outbox, relay.
//!
//! # Layout
//! - [`config`]: layered settings (file, then `SAGA_*` environment variables).
//! - [`kafka`]: client configuration, topic creation, the logging consumer context.
//! - [`codec`]: the Confluent wire format through a schema registry; poison vs retryable.
//! - [`handler`]: the [`Handler`] trait a service implements, the capabilities some add
//!   ([`Deadlines`], [`WatchesDeadLetters`], [`Observed`]), and the inputs they are given.
//! - [`consumer`]: the batch consume loop.
//! - [`outbox`]: the inbox and outbox tables.
//! - [`relay`]: publishes the outbox.
//! - [`dlt`]: dead-letter topics and their headers.
//! - [`health`]: `/healthz` and `/readyz`, reflecting the real state of database, registry, broker;
//!   `/metrics` on the same listener.
//! - [`metrics`]: the Prometheus metrics of one service instance.
//! - [`service`]: assembles a runnable [`Service`] from a handler.
//! - [`read_through`]: how far each owned partition has been read, in time; deadlines wait for it.
//! - [`timers`]: deadlines that fall due, and the dead-letter topics a handler may follow.
//!
//! # Delivery guarantee
//! At least once on the wire, exactly once in effect: a message's inbox row, its state change and
//! the messages it causes commit in one transaction, and its offset is stored only after that
//! commit. Redelivered messages are recognised by their message id and have no effect. Outgoing
//! messages are published by the relay after commit, at least once and in order per key.

pub mod backoff;
pub mod codec;
pub mod config;
pub mod consumer;
pub mod dlt;
pub mod handler;
pub mod health;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod read_through;
pub mod rejoin;
pub mod relay;
pub mod service;
pub mod telemetry;
pub mod timers;

pub use config::{Section, ServiceSettings};
pub use handler::{Deadlines, HandleError, Handler, Incoming, Observed, WatchesDeadLetters};
pub use metrics::Metrics;
/// The Prometheus client the runtime registers into, for handlers' own metrics.
pub use prometheus;
pub use service::{Service, ServiceError};
pub use tokio_util::sync::CancellationToken;
