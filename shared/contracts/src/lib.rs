//! What crosses the wire: the commands and events of the order saga, their envelope and topics.
//!
//! # Layout
//! - [`envelope`]: [`Envelope`], the metadata on every message (ids for dedupe, tracing of cause).
//! - [`messages`]: one Rust type per Avro schema under `schemas/`, and [`Message`], their sum.
//! - [`schemas`]: the schema files themselves, embedded; `schemas/` is the source of truth and a
//!   test checks every Rust type against its file, and every file against its released versions.
//! - [`topics`]: topic names, which messages travel on which topic, dead-letter topic names.
//! - [`wire`]: the Confluent wire format and Avro decoding, classified, without I/O (fuzzed).
//!
//! This crate does no I/O. Encoding to the Confluent wire format lives in `saga-runtime`.
//!
//! # Subject naming
//! Several message types share a topic (the order command topic carries `PlaceOrder`,
//! `ApproveOrder` and `RejectOrder`), so schemas are registered with the **RecordNameStrategy**:
//! the subject is the record's full name, e.g. `saga.order.PlaceOrder`. A consumer learns the type
//! of a record from the schema id in its first five bytes.

pub mod envelope;
pub mod messages;
pub mod schemas;
pub mod topics;
pub mod wire;

pub use envelope::{now_ms, Envelope};
pub use messages::*;
pub use topics::{TopicKind, Topics};
