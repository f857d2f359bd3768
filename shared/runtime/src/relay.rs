//! The outbox relay: publishes committed outbox rows, in order per key, many at a time, and gets
//! the acknowledged ones deleted.
//!
//! Rows a service writes itself reach its relay in memory: the writer hands them over
//! ([`HandOff::push`]) as soon as its transaction has committed, and the relay publishes them at
//! once, with no query and no timer on the way. The ids the broker acknowledged are deleted by the
//! writer's next transaction ([`HandOff::delete_published`]), so deleting costs no commit of its
//! own; when no writer comes within [`DELETE_AFTER`], the relay deletes them itself.
//!
//! Every row carries its writer (`owner`). Rows of another writer are found in the table: at
//! start, every row not written by this process (a previous run's, another instance's), in id
//! order, before any row of this run, so an earlier row of a key is never published after a later
//! one; afterwards, every `poll_interval`, the rows written by other programs (`sagactl`, owner
//! NULL) and the rows of an instance that has not had them deleted within `orphan_after` (it died).
//!
//! Guarantee: at least once, in order per key. After a crash the rows not yet deleted (including
//! published ones whose delete had not committed) are published again, and consumers dedupe them by
//! message id. A failed publish stops at the first failure and retries from there, so a later row
//! of a key is never acknowledged before an earlier one. On PostgreSQL a scan holds row locks
//! (`FOR UPDATE SKIP LOCKED`), so the relays of several instances do not publish the same found
//! rows at once.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::join_all;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_store::Conn;
use saga_store::{Backend, Db};
use sqlx::{Acquire, Row};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::metrics::{Metrics, Stage};
use crate::outbox::{delete_from_outbox, OutboxRow};

/// How long published ids wait for a writer's transaction to delete them before the relay does.
pub const DELETE_AFTER: Duration = Duration::from_millis(50);

/// The in-memory path from a service's writers to its relay.
pub struct HandOff {
    owner: String,
    state: Mutex<State>,
    wakeup: Notify,
    /// Room in the queue, in rows: a writer waits when the relay is this far behind (the broker is
    /// down), so memory stays bounded; its rows are safe in the table meanwhile.
    room: Semaphore,
    capacity: usize,
}

#[derive(Default)]
struct State {
    /// Committed, not yet published, in commit order, with when each was handed over.
    queue: VecDeque<(Instant, OutboxRow)>,
    /// Published, not yet deleted.
    published: Vec<i64>,
    /// When `published` last went from empty to not empty.
    published_since: Option<Instant>,
}

impl HandOff {
    /// A hand-off for one process, holding at most `capacity` rows.
    pub fn new(capacity: usize) -> Arc<HandOff> {
        let capacity = capacity.max(1);
        Arc::new(HandOff {
            owner: uuid::Uuid::new_v4().to_string(),
            state: Mutex::new(State::default()),
            wakeup: Notify::new(),
            room: Semaphore::new(capacity),
            capacity,
        })
    }

    /// What this process writes into the outbox's `owner` column.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Hands over the rows of a transaction that has committed. Waits while the queue is full;
    /// gives up when `stop` is cancelled (the rows stay in the table, and the next start publishes
    /// them before anything new).
    pub async fn push(&self, rows: Vec<OutboxRow>, stop: &CancellationToken) {
        if rows.is_empty() {
            return;
        }
        let wanted = rows.len().min(self.capacity) as u32;
        let permits = tokio::select! {
            p = self.room.acquire_many(wanted) => p,
            _ = stop.cancelled() => return,
        };
        let Ok(permits) = permits else { return };
        permits.forget();
        let now = Instant::now();
        self.lock().queue.extend(rows.into_iter().map(|row| (now, row)));
        self.wakeup.notify_one();
    }

    /// Deletes, in the caller's transaction, the rows published since the last call. Call
    /// [`Deleting::committed`] once that transaction has committed; dropped otherwise, the ids go
    /// back to be deleted later.
    pub async fn delete_published<'a>(&'a self, conn: &mut Conn<'_>) -> Result<Deleting<'a>, sqlx::Error> {
        let ids = {
            let mut state = self.lock();
            state.published_since = None;
            std::mem::take(&mut state.published)
        };
        let deleting = Deleting { handoff: self, ids };
        delete_from_outbox(conn, &deleting.ids).await?;
        Ok(deleting)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn take_batch(&self, max: usize) -> Vec<(Instant, OutboxRow)> {
        let mut state = self.lock();
        let n = state.queue.len().min(max);
        state.queue.drain(..n).collect()
    }

    /// The first `published` rows of `batch` were acknowledged; the rest go back to the front.
    fn settle(&self, mut batch: Vec<OutboxRow>, published: usize) {
        let rest = batch.split_off(published);
        let mut state = self.lock();
        if !batch.is_empty() && state.published.is_empty() {
            state.published_since = Some(Instant::now());
        }
        state.published.extend(batch.iter().map(|r| r.id));
        let now = Instant::now();
        for row in rest.into_iter().rev() {
            state.queue.push_front((now, row));
        }
        drop(state);
        self.room.add_permits(published);
    }

    fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Published ids that no writer has deleted within [`DELETE_AFTER`].
    fn stale_published(&self, force: bool) -> Vec<i64> {
        let mut state = self.lock();
        match state.published_since {
            Some(since) if force || since.elapsed() >= DELETE_AFTER => {
                state.published_since = None;
                std::mem::take(&mut state.published)
            }
            _ => Vec::new(),
        }
    }

    /// When the published ids fall due for the relay to delete, if there are any.
    fn delete_due(&self) -> Option<Instant> {
        self.lock().published_since.map(|since| since + DELETE_AFTER)
    }

    fn restore(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        let mut state = self.lock();
        if state.published.is_empty() {
            state.published_since = Some(Instant::now());
        }
        state.published.extend(ids);
    }
}

/// Ids being deleted in a writer's transaction; see [`HandOff::delete_published`].
pub struct Deleting<'a> {
    handoff: &'a HandOff,
    ids: Vec<i64>,
}

impl Deleting<'_> {
    /// How many ids the transaction deletes.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the transaction deletes none.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The transaction that deleted the ids committed.
    pub fn committed(mut self) {
        self.ids.clear();
    }
}

impl Drop for Deleting<'_> {
    fn drop(&mut self) {
        self.handoff.restore(std::mem::take(&mut self.ids));
    }
}

/// Publishes a service's outbox.
pub struct Relay {
    /// The service's database, where the outbox lives.
    pub db: Db,
    /// Where rows are published.
    pub producer: FutureProducer,
    /// The rows this process writes, handed over as they commit.
    pub handoff: Arc<HandOff>,
    /// Most rows per burst.
    pub batch_size: usize,
    /// Counts of published records, backlog and age.
    pub metrics: Metrics,
    /// How often to look in the table for rows other programs wrote.
    pub poll_interval: Duration,
    /// How old a row of another instance must be before this relay publishes it (its writer has
    /// not had it deleted, so it is taken to have died).
    pub orphan_after: Duration,
    /// For log lines.
    pub service: &'static str,
}

/// Which rows a scan of the table takes.
#[derive(Clone, Copy)]
enum Scan {
    /// Every row not written by this process: at start, before any of its own.
    NotMine,
    /// Rows of other programs, and rows of other instances older than `orphan_after`.
    Others,
}

impl Relay {
    /// Runs until `shutdown`; then publishes what is left (while the broker answers) and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        // 1. Catch up: what earlier runs left goes out before anything this run writes.
        loop {
            match self.scan(Scan::NotMine).await {
                Ok(0) => break,
                Ok(_) => backoff.reset(),
                Err(e) => {
                    if !self.retry_later(&mut backoff, &e, &shutdown).await {
                        return;
                    }
                }
            }
        }
        let mut gauges_at = Instant::now();
        let mut scan_at = Instant::now() + self.poll_interval;
        loop {
            if gauges_at.elapsed() >= Duration::from_secs(1) {
                self.update_backlog_gauges().await;
                gauges_at = Instant::now();
            }
            // 2. What this process's writers handed over.
            match self.publish_handed_over().await {
                Ok(n) if n >= self.batch_size => continue,
                Ok(_) => backoff.reset(),
                Err(e) => {
                    if !self.retry_later(&mut backoff, &e, &shutdown).await {
                        break;
                    }
                    continue;
                }
            }
            // 3. Published ids no writer has deleted yet.
            if let Err(e) = self.delete_stale(false).await {
                tracing::debug!(service = self.service, error = %e, "deleting published outbox rows failed; will retry");
            }
            // 4. What other programs wrote.
            if Instant::now() >= scan_at {
                match self.scan(Scan::Others).await {
                    Ok(n) if n >= self.batch_size => continue,
                    Ok(_) => scan_at = Instant::now() + self.poll_interval,
                    Err(e) => {
                        if !self.retry_later(&mut backoff, &e, &shutdown).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            if self.handoff.queued() > 0 {
                continue;
            }
            let wake_at = self.handoff.delete_due().map_or(scan_at, |due| due.min(scan_at));
            tokio::select! {
                _ = self.handoff.wakeup.notified() => {}
                _ = tokio::time::sleep_until(wake_at) => {}
                _ = shutdown.cancelled() => break,
            }
        }
        // Final drain: what was committed before shutdown goes out now rather than at next start.
        for _ in 0..1000 {
            match tokio::time::timeout(Duration::from_secs(5), self.publish_handed_over()).await {
                Ok(Ok(n)) if n > 0 => continue,
                _ => break,
            }
        }
        if let Err(e) = self.delete_stale(true).await {
            tracing::debug!(service = self.service, error = %e, "could not delete the last published outbox rows; the next start publishes them again");
        }
    }

    async fn retry_later(&self, backoff: &mut Backoff, error: &RelayError, shutdown: &CancellationToken) -> bool {
        self.metrics.retries.with_label_values(&["publish"]).inc();
        let wait = backoff.next_delay();
        tracing::warn!(service = self.service, error = %error, retry_in_ms = wait.as_millis() as u64, "outbox relay failed; will retry");
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = shutdown.cancelled() => false,
        }
    }

    /// Publishes up to one batch of handed-over rows; returns how many were acknowledged.
    pub async fn publish_handed_over(&self) -> Result<usize, RelayError> {
        let batch = self.handoff.take_batch(self.batch_size);
        if batch.is_empty() {
            return Ok(0);
        }
        let batch: Vec<OutboxRow> = batch
            .into_iter()
            .map(|(at, row)| {
                self.metrics.observe(Stage::Handoff, at.elapsed());
                row
            })
            .collect();
        let (published, failure) = self.publish(&batch).await;
        self.handoff.settle(batch, published);
        match failure {
            Some(e) => Err(e),
            None => Ok(published),
        }
    }

    async fn delete_stale(&self, force: bool) -> Result<(), sqlx::Error> {
        let ids = self.handoff.stale_published(force);
        if ids.is_empty() {
            return Ok(());
        }
        let result = async {
            let mut conn = self.db.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            delete_from_outbox(&mut Conn::Sqlx(&mut tx), &ids).await?;
            tx.commit().await
        }
        .await;
        if result.is_err() {
            self.handoff.restore(ids);
        }
        result
    }

    /// Publishes `rows` at once; returns how many, from the front, the broker acknowledged, and
    /// the first failure.
    async fn publish(&self, rows: &[OutboxRow]) -> (usize, Option<RelayError>) {
        // Each record gets a `publish` span, child of the span that wrote the row (its stored
        // trace context) and parent of whatever consumes the record: the time a row waited in the
        // outbox shows in the trace.
        // The stored headers are parsed once per row: for the span's parent and for the record.
        let parsed: Vec<Vec<(String, String)>> = rows.iter().map(|row| serde_json::from_str(&row.headers).unwrap_or_default()).collect();
        let spans: Vec<tracing::Span> = rows.iter().zip(&parsed).map(|(row, pairs)| self.publish_span(row, pairs)).collect();
        let deliveries = rows.iter().zip(&spans).zip(parsed).map(|((row, span), mut pairs)| {
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
        let sending = Instant::now();
        let results = join_all(deliveries).await;
        self.metrics.observe(Stage::Publish, sending.elapsed());
        let mut published = 0;
        let mut failure = None;
        for ((result, span), row) in results.into_iter().zip(&spans).zip(rows) {
            match result {
                Ok(delivery) => {
                    span.record("messaging.destination.partition.id", delivery.partition);
                    span.record("messaging.kafka.offset", delivery.offset);
                    if failure.is_none() {
                        published += 1;
                        self.metrics.produced.with_label_values(&[&row.topic]).inc();
                    }
                }
                Err((e, _)) => {
                    span.record("otel.status_code", "ERROR");
                    span.record("error.type", e.to_string());
                    tracing::debug!(parent: span, topic = %row.topic, error = %e, "publish failed");
                    if failure.is_none() {
                        failure = Some(RelayError::Publish { topic: row.topic.clone(), key: row.key.clone(), error: e });
                    }
                }
            }
        }
        (published, failure)
    }

    fn publish_span(&self, row: &OutboxRow, pairs: &[(String, String)]) -> tracing::Span {
        let message_id = pairs.iter().find(|(k, _)| k == "message_id").map_or("", |(_, v)| v.as_str());
        let span = tracing::info_span!(
            parent: None,
            "publish",
            otel.name = tracing::field::Empty,
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
        crate::telemetry::name_for_export(&span, || format!("{} publish", row.topic));
        crate::telemetry::set_parent_from(&span, pairs);
        span
    }

    async fn update_backlog_gauges(&self) {
        match crate::outbox::backlog(&self.db).await {
            Ok((rows, oldest_ms)) => {
                // Rows already published and waiting to be deleted are not backlog.
                let published = self.handoff.lock().published.len() as i64;
                self.metrics.outbox_backlog.set((rows - published).max(0));
                self.metrics.outbox_oldest_age.set(oldest_ms as f64 / 1000.0);
            }
            Err(e) => tracing::debug!(service = self.service, error = %e, "could not read the outbox backlog"),
        }
    }

    /// Publishes up to one batch of the rows in the table that other programs wrote (and, from
    /// instances that did not get them deleted, rows older than `orphan_after`), in id order, and
    /// deletes what the broker acknowledged; returns how many.
    pub async fn publish_burst(&self) -> Result<usize, RelayError> {
        self.scan(Scan::Others).await
    }

    async fn scan(&self, scan: Scan) -> Result<usize, RelayError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let cutoff = match scan {
            Scan::NotMine => i64::MAX,
            Scan::Others => saga_contracts::now_ms() - self.orphan_after.as_millis() as i64,
        };
        let sql = format!(
            "SELECT id, topic, msg_key, payload, headers FROM outbox \
             WHERE owner IS NULL OR (owner <> $1 AND created_at_ms < $2) ORDER BY id LIMIT $3{lock}"
        );
        let rows: Vec<OutboxRow> = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(self.handoff.owner())
            .bind(cutoff)
            .bind(self.batch_size as i64)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .map(|r| OutboxRow { id: r.get("id"), topic: r.get("topic"), key: r.get("msg_key"), payload: r.get("payload"), headers: r.get("headers") })
            .collect();
        if rows.is_empty() {
            return Ok(0);
        }
        if self.db.backend() == Backend::Sqlite {
            // SQLite holds no row locks; end the read so writers can go on while we publish.
            tx.commit().await?;
            tx = conn.begin().await?;
        }
        let (published, failure) = self.publish(&rows).await;
        let ids: Vec<i64> = rows.iter().take(published).map(|r| r.id).collect();
        delete_from_outbox(&mut Conn::Sqlx(&mut tx), &ids).await?;
        tx.commit().await?;
        match failure {
            Some(e) => Err(e),
            None => Ok(published),
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
