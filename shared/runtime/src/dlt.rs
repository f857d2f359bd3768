//! Dead-letter topics: where records that can never be processed go, with their cause.
//!
//! A dead-lettered record keeps its key, value and headers, and gains these headers:
//!
//! | header | value |
//! |---|---|
//! | `saga.dlt.original.topic` | topic it was read from |
//! | `saga.dlt.original.partition` | partition, decimal |
//! | `saga.dlt.original.offset` | offset, decimal |
//! | `saga.dlt.original.timestamp` | record timestamp, ms since epoch (absent when the record had none) |
//! | `saga.dlt.consumer.group` | the consumer group that gave up on it |
//! | `saga.dlt.error.class` | `not-wire-format`, `unknown-schema-id`, `unexpected-type`, `unusable-schema`, `malformed-avro`, `unknown-topic` or `handler-failed` |
//! | `saga.dlt.error.message` | what exactly was wrong (at most 2,000 bytes) |
//! | `saga.dlt.failed.at` | when it was dead-lettered, ms since epoch |

use std::time::Duration;

use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;
use saga_contracts::Topics;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;

pub mod record;

/// Header names added to a dead-lettered record.
pub mod headers {
    /// Topic the record was read from.
    pub const ORIGINAL_TOPIC: &str = "saga.dlt.original.topic";
    /// Partition it was read from.
    pub const ORIGINAL_PARTITION: &str = "saga.dlt.original.partition";
    /// Its offset.
    pub const ORIGINAL_OFFSET: &str = "saga.dlt.original.offset";
    /// Its timestamp.
    pub const ORIGINAL_TIMESTAMP: &str = "saga.dlt.original.timestamp";
    /// The consumer group that dead-lettered it.
    pub const CONSUMER_GROUP: &str = "saga.dlt.consumer.group";
    /// Class of the error.
    pub const ERROR_CLASS: &str = "saga.dlt.error.class";
    /// The error message.
    pub const ERROR_MESSAGE: &str = "saga.dlt.error.message";
    /// When it was dead-lettered.
    pub const FAILED_AT: &str = "saga.dlt.failed.at";
    /// Every header above starts with this; a redriven record carries none of them.
    pub const PREFIX: &str = "saga.dlt.";
    /// How many times `sagactl dlt redrive` has sent this record back to its topic. Set on the
    /// redriven record; a dead letter carries it among the original headers it copies.
    pub const REDRIVE_COUNT: &str = "saga.redrive.count";
}

/// Longest error message written into a dead letter's headers.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2000;

/// Every error class a dead letter can carry: the decoder's (the record cannot be read) and
/// `handler-failed` (it was read but can never be applied).
pub const CLASSES: [&str; 6] = ["not-wire-format", "unknown-schema-id", "unusable-schema", "unexpected-type", "malformed-avro", "handler-failed"];

/// A record on its way to a dead-letter topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Original topic.
    pub topic: String,
    /// Original partition.
    pub partition: i32,
    /// Original offset.
    pub offset: i64,
    /// Original timestamp.
    pub timestamp: Option<i64>,
    /// Original key.
    pub key: Option<Vec<u8>>,
    /// Original value.
    pub payload: Option<Vec<u8>>,
    /// Original headers.
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
    /// Error class.
    pub class: &'static str,
    /// Error message.
    pub message: String,
}

impl DeadLetter {
    /// A dead letter for a consumed record.
    pub fn new(record: &OwnedMessage, class: &'static str, message: String) -> DeadLetter {
        let original_headers = headers_of(record);
        DeadLetter {
            topic: record.topic().to_string(),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().to_millis(),
            key: record.key().map(<[u8]>::to_vec),
            payload: record.payload().map(<[u8]>::to_vec),
            original_headers,
            class,
            message,
        }
    }
}

/// A record's headers as owned `(key, value)` pairs, in order.
pub fn headers_of(record: &impl rdkafka::Message) -> Vec<(String, Option<Vec<u8>>)> {
    record.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect()).unwrap_or_default()
}

/// Sends dead letters for one consumer group.
#[derive(Clone)]
pub struct DeadLetters {
    /// The producer.
    pub producer: FutureProducer,
    /// The consumer group, written into every dead letter.
    pub group_id: String,
}

impl DeadLetters {
    /// Sends `letter` to its dead-letter topic, retrying until the broker acknowledges it.
    /// Returns false only when shutdown came first: then the record's offset must not be stored.
    pub async fn send_until_acked(&self, letter: &DeadLetter, shutdown: &CancellationToken) -> bool {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.send(letter).await {
                Ok(()) => return true,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(topic = %letter.topic, error = %e, retry_in_ms = delay.as_millis() as u64, "dead-letter publish failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }

    async fn send(&self, letter: &DeadLetter) -> Result<(), rdkafka::error::KafkaError> {
        let dlt = Topics::dlt(&letter.topic);
        let partition = letter.partition.to_string();
        let offset = letter.offset.to_string();
        let timestamp = letter.timestamp.map(|t| t.to_string());
        let failed_at = saga_contracts::now_ms().to_string();
        let mut h = OwnedHeaders::new_with_capacity(letter.original_headers.len() + 8);
        for (k, v) in &letter.original_headers {
            h = h.insert(Header { key: k, value: v.as_deref() });
        }
        let add = |h: OwnedHeaders, key: &str, value: &str| h.insert(Header { key, value: Some(value.as_bytes()) });
        h = add(h, headers::ORIGINAL_TOPIC, &letter.topic);
        h = add(h, headers::ORIGINAL_PARTITION, &partition);
        h = add(h, headers::ORIGINAL_OFFSET, &offset);
        if let Some(t) = &timestamp {
            h = add(h, headers::ORIGINAL_TIMESTAMP, t);
        }
        h = add(h, headers::CONSUMER_GROUP, &self.group_id);
        h = add(h, headers::ERROR_CLASS, letter.class);
        // Bounded, so the headers cannot push a record near the size limit over it.
        let mut end = letter.message.len().min(MAX_ERROR_MESSAGE_BYTES);
        while !letter.message.is_char_boundary(end) {
            end -= 1;
        }
        h = add(h, headers::ERROR_MESSAGE, &letter.message[..end]);
        h = add(h, headers::FAILED_AT, &failed_at);
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&dlt).headers(h);
        if let Some(k) = &letter.key {
            record = record.key(k.as_slice());
        }
        if let Some(p) = &letter.payload {
            record = record.payload(p.as_slice());
        }
        self.producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| e)
    }
}
