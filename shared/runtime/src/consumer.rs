//! The consume loop: batches of records → one database transaction → offsets stored.
//!
//! For each batch: decode every record; send the poison ones to their dead-letter topic; then,
//! in one transaction, record each message in the inbox (a duplicate is skipped), let the
//! handler apply it, and write what it emits to the outbox; commit; only then store the offsets
//! and wake the relay. A transient failure (database, registry) retries the same batch with
//! backoff; nothing is skipped. A fatal one (the database itself is unusable: a table missing, a
//! grant revoked, a read-only file) holds the loop on the same batch, reports it at `/readyz`
//! and in `saga_consume_halted`, and tries again every few seconds: it resumes by itself once an
//! operator mends the cause, and never dead-letters for it. A batch that fails for any other
//! reason is replayed one message per transaction, so only the message that fails is
//! dead-lettered.
//!
//! On a SQLite file, each batch's transaction runs on the service's writer thread
//! ([`saga_store::Writer`]): the loop hands the batch over once and waits for one answer. On
//! PostgreSQL it runs through the pool on a connection the loop keeps.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::Message as _;
use saga_contracts::Topics;
use saga_store::{Conn, Writer};
use sqlx::Acquire;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backoff::Backoff;
use crate::codec::{Codec, DecodeError};
use crate::dlt::{DeadLetter, DeadLetters};
pub use crate::handler::{apply_once, header, HandleError, Handler, Incoming};
use crate::health::Halt;
use crate::kafka::LoggingContext;
use crate::metrics::{Metrics, Stage};
use crate::outbox::{self, record_all_in_inbox, write_all_to_outbox, InboxEntry, OutboxError, OutboxRow, Outgoing};
use crate::read_through::ReadThrough;
use crate::rejoin::{GroupWatch, CHECK_EVERY};
use crate::relay::{Deleting, HandOff};

/// Everything the consume loop needs besides the handler.
pub struct ConsumeLoop<H: Handler> {
    /// The business logic.
    pub handler: Arc<H>,
    /// Subscribed consumer.
    pub consumer: StreamConsumer<LoggingContext>,
    /// The service's database.
    pub db: saga_store::Db,
    /// Registry-backed encoder and decoder.
    pub codec: Arc<Codec>,
    /// Topic names.
    pub topics: Topics,
    /// Where poison records go.
    pub dead_letters: DeadLetters,
    /// Where committed outbox rows go to the relay, and published ones come back to be deleted.
    pub outbox: Arc<HandOff>,
    /// Most records per transaction.
    pub batch_size: usize,
    /// Counts of what was consumed, skipped and dead-lettered.
    pub metrics: Metrics,
    /// The consumer group, for spans.
    pub group_id: String,
    /// How long a partition of another member may hold waiting records with no committed offset
    /// moving before this instance rejoins the group (see [`crate::rejoin`]).
    pub rejoin_after: Duration,
    /// On SQLite, the connection on a thread of its own that runs each batch's transaction in
    /// one hand-over ([`saga_store::Writer`]); `None`: batches run through the pool.
    pub writer: Option<Writer>,
    /// Set while a fatal database error holds the loop still (`/readyz` reports it).
    pub halt: Arc<Halt>,
    /// Told what each batch handled, so deadlines wait until the replies before them are read.
    pub read_through: Arc<ReadThrough>,
}

/// What a batch transaction wrote to the outbox, and which of its messages were duplicates.
type Applied = (Vec<OutboxRow>, Vec<usize>);

/// The consume loop's own database connection, taken from the pool once and kept.
type Held = Option<sqlx::pool::PoolConnection<sqlx::Any>>;

/// Why a batch's transaction failed, which decides what happens next (see
/// [`saga_store::Failure`]).
enum BatchError {
    /// Retry the batch with backoff.
    Transient(String),
    /// A message of the batch cannot be applied: replay one by one, dead-letter the one that fails.
    Failed(String),
    /// The database cannot take any batch: hold still and report it until it is mended.
    Fatal(String),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        match saga_store::classify(&e) {
            saga_store::Failure::Transient => BatchError::Transient(e.to_string()),
            saga_store::Failure::Poison => BatchError::Failed(e.to_string()),
            saga_store::Failure::Fatal => BatchError::Fatal(e.to_string()),
        }
    }
}

impl From<HandleError> for BatchError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Store(e) => e.into(),
            HandleError::Conflict(why) => BatchError::Transient(why),
            HandleError::Reject(reason) => BatchError::Failed(reason),
            HandleError::Unsupported(why) => BatchError::Fatal(why),
        }
    }
}

impl From<OutboxError> for BatchError {
    fn from(e: OutboxError) -> Self {
        match e {
            OutboxError::Store(e) => e.into(),
            OutboxError::Encode(e) if e.is_retryable() => BatchError::Transient(e.to_string()),
            OutboxError::Encode(e) => BatchError::Failed(e.to_string()),
        }
    }
}

impl<H: Handler> ConsumeLoop<H> {
    /// Consumes until `shutdown`: finishes the batch in hand, commits offsets, returns.
    pub async fn run(self, shutdown: CancellationToken) {
        Arc::new(self).consume(shutdown).await;
    }

    async fn consume(self: Arc<Self>, shutdown: CancellationToken) {
        // Every dead-letter series exists from the start, at 0: an alert on its increase then sees
        // the first dead letter too (a series born at 1 shows no increase).
        for kind in self.handler.consumes() {
            for class in crate::dlt::CLASSES {
                self.metrics.dead_lettered.with_label_values(&[self.topics.name(*kind).as_str(), class]);
            }
        }
        let mut stream = self.consumer.stream().ready_chunks(self.batch_size);
        // Every batch runs on the same connection while it works: SQLite drops a connection's
        // page cache whenever another connection wrote since its last transaction, so a pooled
        // connection per batch read every page again.
        let mut held: Held = None;
        // The group watch makes blocking broker requests (many round trips the first time, to
        // count the partitions): on a thread of its own, never in this loop, whose batches would
        // wait behind them.
        let watch_stop = shutdown.child_token();
        let watching = tokio::spawn(self.clone().watch_group(watch_stop.clone()));
        loop {
            let batch = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                b = stream.next() => match b { Some(b) => b, None => break },
            };
            let mut records = Vec::with_capacity(batch.len());
            for r in batch {
                match r {
                    Ok(m) => records.push(m.detach()),
                    Err(e) => tracing::warn!(service = H::SERVICE, error = %e, "kafka consume error"),
                }
            }
            if records.is_empty() {
                continue;
            }
            if !self.process(records, &mut held, &shutdown).await {
                break;
            }
        }
        watch_stop.cancel();
        let _ = watching.await;
        drop(stream);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(service = H::SERVICE, error = %e, "final offset commit had nothing to do or failed");
        }
    }

    /// Every [`CHECK_EVERY`], looks for partitions of the group that no live member consumes and
    /// rejoins when some have waited too long (see [`crate::rejoin`]); until `stop`.
    async fn watch_group(self: Arc<Self>, stop: CancellationToken) {
        let names: Vec<String> = self.handler.consumes().iter().map(|k| self.topics.name(*k)).collect();
        let mut watch = Some(GroupWatch::new(names, self.rejoin_after));
        let mut check = tokio::time::interval_at(tokio::time::Instant::now() + CHECK_EVERY, CHECK_EVERY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while let Some(mut w) = watch.take() {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = check.tick() => {}
            }
            let this = self.clone();
            match tokio::task::spawn_blocking(move || {
                let rejoined = w.look_blocking(&this.consumer, H::SERVICE);
                (w, rejoined)
            })
            .await
            {
                Ok((w, rejoined)) => {
                    if rejoined {
                        self.metrics.rejoins.inc();
                    }
                    watch = Some(w);
                }
                Err(e) => tracing::error!(service = H::SERVICE, error = %e, "the group watch failed; partitions left by dead members are no longer looked for"),
            }
        }
    }

    /// Processes one batch to the end; false when shutdown interrupted a retry.
    async fn process(self: &Arc<Self>, records: Vec<OwnedMessage>, held: &mut Held, shutdown: &CancellationToken) -> bool {
        let now_ms = saga_contracts::now_ms();
        let deliver = self.metrics.stage.with_label_values(&[Stage::Deliver.label()]);
        for record in &records {
            if let Some(at) = record.timestamp().to_millis() {
                deliver.observe(now_ms.saturating_sub(at).max(0) as f64 / 1000.0);
            }
        }
        let decoding = std::time::Instant::now();
        // 1. Decode; poison goes to the dead-letter topic before anything after it is committed.
        let mut good = Vec::with_capacity(records.len());
        let mut good_records = Vec::with_capacity(records.len());
        let mut poison = Vec::new();
        for record in &records {
            let kind = self.topics.kind_of(record.topic());
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
            loop {
                let decoded = match kind {
                    Some(kind) => self.codec.decode(kind, record.payload()).await,
                    None => Err(DecodeError::Poison { class: "unknown-topic", message: format!("{} is not a topic of this system", record.topic()) }),
                };
                match decoded {
                    Ok(message) => {
                        let trace = crate::telemetry::TRACE_HEADERS.iter().filter_map(|h| header(record, h).map(|v| (h.to_string(), v))).collect();
                        good.push(Incoming { topic: record.topic().to_string(), partition: record.partition(), offset: record.offset(), message, trace });
                        good_records.push(record);
                        break;
                    }
                    Err(DecodeError::Poison { class, message }) => {
                        poison.push(DeadLetter::new(record, class, message));
                        break;
                    }
                    Err(DecodeError::Retryable(e)) => {
                        self.metrics.retries.with_label_values(&["registry"]).inc();
                        if !self.wait(&mut backoff, &e, shutdown).await {
                            return false;
                        }
                    }
                }
            }
        }
        self.metrics.observe(Stage::Decode, decoding.elapsed());
        for letter in &poison {
            tracing::warn!(service = H::SERVICE, topic = %letter.topic, partition = letter.partition, offset = letter.offset, class = letter.class, error = %letter.message, "dead-lettering record");
            if !self.dead_letters.send_until_acked(letter, shutdown).await {
                return false;
            }
            self.metrics.dead_lettered.with_label_values(&[&letter.topic, letter.class]).inc();
        }

        // 2. Apply the good ones in one transaction; on a non-transient failure, one by one.
        // Shared, not copied, with the writer's thread.
        let good: Arc<[Incoming]> = good.into();
        if !good.is_empty() {
            let applying = std::time::Instant::now();
            let applied = self.apply_until_done(&good, held, shutdown).await;
            self.metrics.observe(Stage::Apply, applying.elapsed());
            match applied {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(service = H::SERVICE, error = %e, size = good.len(), "batch failed; replaying it one message per transaction");
                    if !self.apply_one_by_one(&good, &good_records, held, shutdown).await {
                        return false;
                    }
                }
            }
        }

        // 3. Everything up to here is durable: store the offsets.
        let mut last: HashMap<(&str, i32), i64> = HashMap::new();
        for r in &records {
            let e = last.entry((r.topic(), r.partition())).or_insert(r.offset());
            *e = (*e).max(r.offset());
        }
        for ((topic, partition), offset) in last {
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner re-reads and dedupes.
                tracing::debug!(service = H::SERVICE, topic, partition, offset, error = %e, "could not store offset");
            }
            self.read_through.handled(topic, partition, offset);
        }
        true
    }

    /// Applies `batch` in one transaction; counts it once committed. Returns the outbox rows it
    /// wrote.
    async fn apply(self: &Arc<Self>, batch: &Arc<[Incoming]>, held: &mut Held) -> Result<Vec<OutboxRow>, BatchError> {
        let result = match &self.writer {
            Some(writer) => self.apply_on_writer(writer, batch).await,
            None => {
                let result = self.apply_in_transaction(batch, held).await;
                if result.is_err() {
                    // The connection may be what failed (a restarted server): the retry takes a new one.
                    *held = None;
                }
                result
            }
        };
        let (rows, duplicates) = result?;
        for incoming in batch.iter() {
            self.metrics.consumed.with_label_values(&[&incoming.topic]).inc();
        }
        for i in duplicates {
            self.metrics.inbox_duplicates.with_label_values(&[&batch[i].topic]).inc();
        }
        Ok(rows)
    }

    /// The batch's transaction through the pool (PostgreSQL, or SQLite without a writer).
    async fn apply_in_transaction(&self, batch: &[Incoming], held: &mut Held) -> Result<Applied, BatchError> {
        let conn = match held {
            Some(conn) => conn,
            None => held.insert(self.db.pool().acquire().await?),
        };
        let mut tx = conn.begin().await?;
        let (mut duplicates, mut notes) = (Vec::new(), Vec::new());
        let (rows, deleting) = self.in_transaction(&mut Conn::Sqlx(&mut tx), batch, &mut duplicates, &mut notes).await?;
        let committing = std::time::Instant::now();
        tx.commit().await?;
        self.metrics.observe(Stage::Commit, committing.elapsed());
        deleting.committed();
        self.handler.committed(notes);
        Ok((rows, duplicates))
    }

    /// The batch's transaction on the SQLite writer's thread: every statement runs there, and
    /// this task waits for one answer.
    async fn apply_on_writer(self: &Arc<Self>, writer: &Writer, batch: &Arc<[Incoming]>) -> Result<Applied, BatchError> {
        let (this, batch, runtime) = (self.clone(), batch.clone(), tokio::runtime::Handle::current());
        // Nothing in the transaction waits on I/O but a registry lookup on a schema cache miss,
        // which the runtime's drivers serve while this thread blocks.
        writer.run(move |conn| runtime.block_on(this.transaction_on(conn, &batch))).await?
    }

    async fn transaction_on(&self, conn: &mut saga_store::rusqlite::Connection, batch: &[Incoming]) -> Result<Applied, BatchError> {
        // IMMEDIATE takes the write lock now (waiting out other writers under the busy timeout),
        // so the batch never fails to upgrade a read lock half-way.
        conn.execute_batch("BEGIN IMMEDIATE").map_err(saga_store::sql::from_sqlite)?;
        let (mut duplicates, mut notes) = (Vec::new(), Vec::new());
        let written = self.in_transaction(&mut Conn::Sqlite(conn), batch, &mut duplicates, &mut notes).await;
        let committing = std::time::Instant::now();
        let done = match written {
            Ok((rows, deleting)) => match conn.execute_batch("COMMIT") {
                Ok(()) => {
                    deleting.committed();
                    self.metrics.observe(Stage::Commit, committing.elapsed());
                    self.handler.committed(notes);
                    Ok((rows, duplicates))
                }
                Err(e) => Err(BatchError::from(saga_store::sql::from_sqlite(e))),
            },
            Err(e) => Err(e),
        };
        if done.is_err() && !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        done
    }

    /// Everything between BEGIN and COMMIT: published outbox rows deleted, each message recorded
    /// in the inbox and applied, what it emits written to the outbox.
    async fn in_transaction(
        &self,
        db: &mut Conn<'_>,
        batch: &[Incoming],
        duplicates: &mut Vec<usize>,
        notes: &mut Vec<H::Note>,
    ) -> Result<(Vec<OutboxRow>, Deleting<'_>), BatchError> {
        // What the relay published since the last transaction is deleted in this one.
        let deleting = self.outbox.delete_published(db).await?;
        let entries: Vec<InboxEntry<'_>> = batch
            .iter()
            .map(|i| InboxEntry {
                message_id: &i.message.envelope().message_id,
                message_type: i.message.full_name(),
                topic: &i.topic,
                kafka_partition: i.partition,
                kafka_offset: i.offset,
            })
            .collect();
        let fresh = record_all_in_inbox(db, &entries).await?;
        let mut outgoing = Vec::new();
        for (i, incoming) in batch.iter().enumerate() {
            if fresh[i] {
                self.apply_in(db, incoming, notes, &mut outgoing).await?;
            } else {
                tracing::debug!(service = H::SERVICE, message_id = %incoming.message.envelope().message_id, "duplicate message skipped");
                duplicates.push(i);
            }
        }
        let rows = write_all_to_outbox(db, outgoing, Some(self.outbox.owner())).await?;
        Ok((rows, deleting))
    }

    /// Applies a message the inbox had not seen; what it emits, encoded, goes to `outgoing`. Runs
    /// in the message's span, a child of the trace context the record carried; what it sends
    /// carries this span's.
    async fn apply_in(&self, conn: &mut Conn<'_>, incoming: &Incoming, notes: &mut Vec<H::Note>, outgoing: &mut Vec<Outgoing>) -> Result<(), BatchError> {
        let span = process_span(H::SERVICE, &self.group_id, incoming);
        async {
            let out = self.handler.handle(conn, incoming, notes).await?;
            let headers = crate::telemetry::headers_of(&tracing::Span::current());
            for message in &out {
                outgoing.push(outbox::outgoing(&self.codec, &self.topics, message, &headers).await?);
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    async fn apply_one_by_one(self: &Arc<Self>, batch: &[Incoming], records: &[&OwnedMessage], held: &mut Held, shutdown: &CancellationToken) -> bool {
        for (incoming, record) in batch.iter().zip(records) {
            // The failure path: one copy per message replayed is fine here.
            let one: Arc<[Incoming]> = Arc::from([incoming.clone()]);
            match self.apply_until_done(&one, held, shutdown).await {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let letter = DeadLetter::new(record, "handler-failed", e);
                    tracing::warn!(service = H::SERVICE, topic = %incoming.topic, offset = incoming.offset, error = %letter.message, "dead-lettering message its handler cannot apply");
                    if !self.dead_letters.send_until_acked(&letter, shutdown).await {
                        return false;
                    }
                    self.metrics.dead_lettered.with_label_values(&[&letter.topic, letter.class]).inc();
                }
            }
        }
        true
    }

    /// Applies `batch` in one transaction, retrying transient failures with backoff. `None` when
    /// shutdown interrupted the retries; `Some(Err)` with the reason of a non-transient failure.
    async fn apply_until_done(self: &Arc<Self>, batch: &Arc<[Incoming]>, held: &mut Held, shutdown: &CancellationToken) -> Option<Result<(), String>> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let mut probe = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
        loop {
            match self.apply(batch, held).await {
                Ok(rows) => {
                    if let Some(reason) = self.halt.clear() {
                        self.metrics.halted.set(0);
                        tracing::info!(service = H::SERVICE, was = %reason, "the database takes batches again; consuming resumes");
                    }
                    self.outbox.push(rows, shutdown).await;
                    return Some(Ok(()));
                }
                Err(BatchError::Transient(e)) => {
                    self.metrics.retries.with_label_values(&["database"]).inc();
                    if !self.wait(&mut backoff, &e, shutdown).await {
                        return None;
                    }
                }
                Err(BatchError::Fatal(e)) => {
                    if self.halt.set(&e) {
                        self.metrics.halted.set(1);
                        tracing::error!(
                            service = H::SERVICE,
                            error = %e,
                            "the batch cannot be applied for a reason no message caused (the database refuses the work, or this binary is older than a \
                             saga it must move); consuming holds here (nothing is dead-lettered, no offset moves, /readyz answers 503) and tries \
                             again every few seconds until it is mended"
                        );
                    } else {
                        tracing::debug!(service = H::SERVICE, error = %e, "still halted");
                    }
                    let delay = probe.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return None,
                    }
                }
                Err(BatchError::Failed(e)) => return Some(Err(e)),
            }
        }
    }

    async fn wait(&self, backoff: &mut Backoff, error: &str, shutdown: &CancellationToken) -> bool {
        let delay = backoff.next_delay();
        tracing::warn!(
            service = H::SERVICE,
            error,
            attempt = backoff.attempts(),
            retry_in_ms = delay.as_millis() as u64,
            "transient failure; retrying the batch"
        );
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// The span of one message's processing, with OpenTelemetry's messaging attributes, the saga and
/// order ids, and the trace id (so every log line about the message carries it).
pub fn process_span(service: &'static str, group: &str, incoming: &Incoming) -> tracing::Span {
    let envelope = incoming.message.envelope();
    let span = tracing::info_span!(
        "process",
        otel.name = tracing::field::Empty,
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = %incoming.topic,
        messaging.destination.partition.id = incoming.partition,
        messaging.kafka.offset = incoming.offset,
        messaging.consumer.group.name = %group,
        messaging.message.id = %envelope.message_id,
        messaging.message.type = incoming.message.short_name(),
        saga.id = envelope.saga_id.as_deref().unwrap_or(""),
        order.id = incoming.message.order_id(),
        service,
        trace_id = tracing::field::Empty,
    );
    crate::telemetry::name_for_export(&span, || format!("{} process", incoming.topic));
    crate::telemetry::set_parent_from(&span, &incoming.trace);
    if let Some(id) = crate::telemetry::trace_id_of(&span) {
        span.record("trace_id", id);
    }
    span
}
