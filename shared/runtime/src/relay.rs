//! The outbox relay: publishes committed outbox rows in id order, many per burst, and deletes
//! what the broker acknowledged.
//!
//! Guarantee: at least once, in order per key. After a crash the rows not yet deleted are
//! published again and consumers dedupe them by message id. A failed publish stops the burst at
//! the first failure, so a later row of the same key is never acknowledged before an earlier one.
//! On PostgreSQL a burst holds row locks (`FOR UPDATE`), so relays of several instances sharing
//! one database take turns instead of publishing the same rows out of order.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_store::{Backend, Db};
use sqlx::{Acquire, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::Metrics;

/// One outbox row, as read by the relay.
struct Row_ {
    id: i64,
    topic: String,
    key: String,
    payload: Vec<u8>,
    headers: String,
}

/// Publishes a service's outbox.
pub struct Relay {
    /// The service's database, where the outbox lives.
    pub db: Db,
    /// Where rows are published.
    pub producer: FutureProducer,
    /// Woken by the consumer after each commit that wrote outbox rows.
    pub wakeup: Arc<Notify>,
    /// Most rows per burst.
    pub batch_size: usize,
    /// Counts of published records, backlog and age.
    pub metrics: Metrics,
    /// How long to sleep when nothing wakes the relay.
    pub poll_interval: Duration,
    /// For log lines.
    pub service: &'static str,
}

impl Relay {
    /// Runs until `shutdown`; then publishes what is left (while the broker answers) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut gauges_at = tokio::time::Instant::now();
        loop {
            if gauges_at.elapsed() >= Duration::from_secs(1) {
                self.update_backlog_gauges().await;
                gauges_at = tokio::time::Instant::now();
            }
            match self.publish_burst().await {
                Ok(n) if n >= self.batch_size => continue,
                Ok(_) => backoff.reset(),
                Err(e) => {
                    self.metrics.retries.with_label_values(&["publish"]).inc();
                    let wait = backoff.next_delay();
                    tracing::warn!(service = self.service, error = %e, retry_in_ms = wait.as_millis() as u64, "outbox relay failed; will retry");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
            tokio::select! {
                _ = self.wakeup.notified() => {}
                _ = tokio::time::sleep(self.poll_interval) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Final drain: what was committed before shutdown goes out now rather than at next start.
        for _ in 0..100 {
            match tokio::time::timeout(Duration::from_secs(5), self.publish_burst()).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
    }

    /// Publishes up to one batch; returns how many rows were published and deleted.
    fn publish_span(&self, row: &Row_) -> tracing::Span {
        let pairs: Vec<(String, String)> = serde_json::from_str(&row.headers).unwrap_or_default();
        let message_id = pairs.iter().find(|(k, _)| k == "message_id").map_or("", |(_, v)| v.as_str());
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = %format!("{} publish", row.topic),
            otel.kind = "producer",
            otel.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
            messaging.system = "kafka",
            messaging.operation.type = "send",
            messaging.destination.name = %row.topic,
            messaging.destination.partition.id = tracing::field::Empty,
            messaging.kafka.offset = tracing::field::Empty,
            messaging.kafka.message.key = %row.key,
            messaging.message.id = message_id,
            service = self.service,
        );
        crate::telemetry::set_parent_from(&span, &pairs);
        span
    }

    async fn update_backlog_gauges(&self) {
        match crate::outbox::backlog(&self.db).await {
            Ok((rows, oldest_ms)) => {
                self.metrics.outbox_backlog.set(rows);
                self.metrics.outbox_oldest_age.set(oldest_ms as f64 / 1000.0);
            }
            Err(e) => tracing::debug!(service = self.service, error = %e, "could not read the outbox backlog"),
        }
    }

    pub async fn publish_burst(&self) -> Result<usize, RelayError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!("SELECT id, topic, msg_key, payload, headers FROM outbox ORDER BY id LIMIT $1{lock}");
        let rows: Vec<Row_> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.batch_size as i64)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| Row_ {
                id: r.get(0),
                topic: r.get(1),
                key: r.get(2),
                payload: r.get(3),
                headers: r.get(4),
            })
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        if self.db.backend() == Backend::Sqlite {
            // SQLite holds no row locks; end the read so consumers can keep writing while we publish.
            tx.commit().await?;
            tx = conn.begin().await?;
        }
        // Each record gets a `publish` span, child of the span that wrote the row (its stored
        // trace context) and parent of whatever consumes the record: the time a row waited in the
        // outbox shows in the trace.
        let spans: Vec<tracing::Span> = rows.iter().map(|row| self.publish_span(row)).collect();
        let deliveries = rows.iter().zip(&spans).map(|(row, span)| {
            let mut pairs: Vec<(String, String)> = serde_json::from_str(&row.headers).unwrap_or_default();
            let trace = crate::telemetry::headers_of(span);
            if !trace.is_empty() {
                pairs.retain(|(k, _)| !crate::telemetry::TRACE_HEADERS.contains(&k.as_str()));
                pairs.extend(trace);
            }
            let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
            for (k, v) in &pairs {
                headers = headers.insert(Header { key: k, value: Some(v.as_bytes()) });
            }
            let record = FutureRecord::to(&row.topic).key(row.key.as_bytes()).payload(&row.payload).headers(headers);
            self.producer.send(record, Duration::from_secs(30))
        });
        let results = join_all(deliveries).await;
        for ((result, span), row) in results.iter().zip(&spans).zip(&rows) {
            match result {
                Ok(delivery) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                }
                Err((e, _)) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", e.to_string());
                    tracing::debug!(parent: span, topic = %row.topic, error = %e, "publish failed");
                }
            }
        }
        drop(spans);
        let mut published = Vec::with_capacity(rows.len());
        let mut failure = None;
        for (row, result) in rows.iter().zip(results) {
            match result {
                Ok(_) => published.push(row.id),
                Err((e, _)) => {
                    failure = Some(RelayError::Publish { topic: row.topic.clone(), key: row.key.clone(), error: e });
                    break;
                }
            }
        }
        if !published.is_empty() {
            let ids = published.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM outbox WHERE id IN ({ids})"))).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        for row in rows.iter().take(published.len()) {
            self.metrics.produced.with_label_values(&[&row.topic]).inc();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(published.len()),
        }
    }
}

/// Why a burst failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The outbox could not be read or updated.
    #[error("outbox database error: {0}")]
    Store(#[from] sqlx::Error),
    /// The broker did not acknowledge a record.
    #[error("publishing to {topic} (key {key}) failed: {error}")]
    Publish {
        /// The record's topic.
        topic: String,
        /// The record's key.
        key: String,
        /// The producer's error.
        error: rdkafka::error::KafkaError,
    },
}
