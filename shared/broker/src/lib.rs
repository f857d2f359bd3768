//! An in-memory, single-node broker that speaks the Kafka protocol.
//!
//! It is the embedded default of `sagactl dev` and `sagactl bench`: any Kafka client (librdkafka,
//! the Java client, kafkajs, confluent-kafka-python) reaches it over TCP. What makes it more than
//! librdkafka's mock cluster is the fetch path: a fetch that finds nothing new waits for the next
//! produce and answers the moment records arrive, instead of at its `max_wait_ms` deadline, so a
//! consumer sees a record as soon as it is written.
//!
//! What it serves: produce (acks 0/1/all; idempotent producers' retries are answered with their
//! first offset), fetch (sessionless), list offsets, metadata, topic creation (explicit, and on
//! first use when `auto_create_partitions` is set), classic consumer groups with committed
//! offsets, and producer ids. It keeps everything in memory, one replica, no transactions and no
//! authentication; records are kept per partition up to `retention_bytes`.

#![warn(missing_docs)]

mod error;
mod group;
mod log;
mod server;

pub use error::Code;
pub use server::{Broker, BrokerConfig};
