//! The consume loop: batches of records → one database transaction → offsets stored.
//!
//! For each batch: decode every record; send the poison ones to their dead-letter topic; then,
//! in one transaction, record each message in the inbox (a duplicate is skipped), let the
//! handler apply it, and write what it emits to the outbox; commit; only then store the offsets
//! and wake the relay. A transient failure (database, registry) retries the same batch with
//! backoff; nothing is skipped. A batch that fails for any other reason is replayed one message
//! per transaction, so only the message that fails is dead-lettered.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message as _;
use saga_contracts::{Message, TopicKind, Topics};
use sqlx::{Acquire, AnyConnection};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::codec::{Codec, DecodeError};
use crate::dlt::{DeadLetter, DeadLetters};
use crate::kafka::LoggingContext;
use crate::outbox::{record_in_inbox, write_to_outbox, OutboxError};

/// A decoded record, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic it was read from.
    pub topic: String,
    /// Partition it was read from.
    pub partition: i32,
    /// Offset in that partition.
    pub offset: i64,
    /// The message.
    pub message: Message,
}

/// Why a handler could not apply a message.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The database failed; transient failures are retried, others replayed one by one.
    #[error("database error: {0}")]
    Store(#[from] sqlx::Error),
    /// Another instance changed the same rows first; the batch is retried.
    #[error("concurrent update: {0}")]
    Conflict(String),
    /// The message can never be applied (it contradicts the stored state in a way no retry can
    /// fix); it goes to the dead-letter topic with this reason.
    #[error("{0}")]
    Reject(String),
}

/// A service's business logic, applied to one message inside the batch's transaction.
pub trait Handler: Send + Sync + 'static {
    /// The service's name, for logs and client ids.
    const SERVICE: &'static str;

    /// The topics this service consumes.
    fn consumes(&self) -> &'static [TopicKind];

    /// Full names of the message types this service produces, registered at startup.
    fn produces(&self) -> &'static [&'static str];

    /// Applies one message; returns the messages to publish. Runs inside a transaction that also
    /// holds the inbox row and the outbox rows, so all of it commits or none does.
    fn handle<'c>(
        &'c self,
        conn: &'c mut AnyConnection,
        incoming: &'c Incoming,
    ) -> impl Future<Output = Result<Vec<Message>, HandleError>> + Send + 'c;
}

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
    /// Woken after each commit that wrote outbox rows.
    pub relay_wakeup: Arc<Notify>,
    /// Most records per transaction.
    pub batch_size: usize,
}

enum BatchError {
    Transient(String),
    Failed(String),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        if saga_store::is_transient(&e) {
            BatchError::Transient(e.to_string())
        } else {
            BatchError::Failed(e.to_string())
        }
    }
}

impl From<HandleError> for BatchError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Store(e) => e.into(),
            HandleError::Conflict(why) => BatchError::Transient(why),
            HandleError::Reject(reason) => BatchError::Failed(reason),
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
        let mut stream = self.consumer.stream().ready_chunks(self.batch_size);
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
            if !self.process(records, &shutdown).await {
                break;
            }
        }
        drop(stream);
        if let Err(e) = self.consumer.commit_consumer_state(CommitMode::Sync) {
            tracing::debug!(service = H::SERVICE, error = %e, "final offset commit had nothing to do or failed");
        }
    }

    /// Processes one batch to the end; false when shutdown interrupted a retry.
    async fn process(&self, records: Vec<OwnedMessage>, shutdown: &CancellationToken) -> bool {
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
                        good.push(Incoming { topic: record.topic().to_string(), partition: record.partition(), offset: record.offset(), message });
                        good_records.push(record);
                        break;
                    }
                    Err(DecodeError::Poison { class, message }) => {
                        poison.push(DeadLetter::new(record, class, message));
                        break;
                    }
                    Err(DecodeError::Retryable(e)) => {
                        if !self.wait(&mut backoff, &e, shutdown).await {
                            return false;
                        }
                    }
                }
            }
        }
        for letter in &poison {
            tracing::warn!(service = H::SERVICE, topic = %letter.topic, partition = letter.partition, offset = letter.offset, class = letter.class, error = %letter.message, "dead-lettering record");
            if !self.dead_letters.send_until_acked(letter, shutdown).await {
                return false;
            }
        }

        // 2. Apply the good ones in one transaction; on a non-transient failure, one by one.
        if !good.is_empty() {
            match self.apply_until_done(&good, shutdown).await {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(service = H::SERVICE, error = %e, size = good.len(), "batch failed; replaying it one message per transaction");
                    if !self.apply_one_by_one(&good, &good_records, shutdown).await {
                        return false;
                    }
                }
            }
        }

        // 3. Everything up to here is durable: store the offsets.
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for r in &records {
            let e = next.entry((r.topic(), r.partition())).or_insert(r.offset());
            *e = (*e).max(r.offset());
        }
        for ((topic, partition), offset) in next {
            if let Err(e) = self.consumer.store_offset(topic, partition, offset) {
                // The partition was revoked meanwhile; its new owner re-reads and dedupes.
                tracing::debug!(service = H::SERVICE, topic, partition, offset, error = %e, "could not store offset");
            }
        }
        true
    }

    async fn apply(&self, batch: &[Incoming]) -> Result<bool, BatchError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let mut wrote = false;
        for incoming in batch {
            wrote |= self.apply_in(&mut tx, incoming).await?;
        }
        tx.commit().await?;
        Ok(wrote)
    }

    async fn apply_in(&self, conn: &mut AnyConnection, incoming: &Incoming) -> Result<bool, BatchError> {
        let Some(out) = apply_once(conn, self.handler.as_ref(), incoming).await? else {
            tracing::debug!(service = H::SERVICE, message_id = %incoming.message.envelope().message_id, "duplicate message skipped");
            return Ok(false);
        };
        for message in &out {
            write_to_outbox(conn, &self.codec, &self.topics, message, &[]).await?;
        }
        Ok(!out.is_empty())
    }

    async fn apply_one_by_one(&self, batch: &[Incoming], records: &[&OwnedMessage], shutdown: &CancellationToken) -> bool {
        for (incoming, record) in batch.iter().zip(records) {
            match self.apply_until_done(std::slice::from_ref(incoming), shutdown).await {
                None => return false,
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    let letter = DeadLetter::new(record, "handler-failed", e);
                    tracing::warn!(service = H::SERVICE, topic = %incoming.topic, offset = incoming.offset, error = %letter.message, "dead-lettering message its handler cannot apply");
                    if !self.dead_letters.send_until_acked(&letter, shutdown).await {
                        return false;
                    }
                }
            }
        }
        true
    }

    /// Applies `batch` in one transaction, retrying transient failures with backoff. `None` when
    /// shutdown interrupted the retries; `Some(Err)` with the reason of a non-transient failure.
    async fn apply_until_done(&self, batch: &[Incoming], shutdown: &CancellationToken) -> Option<Result<(), String>> {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            match self.apply(batch).await {
                Ok(wrote) => {
                    if wrote {
                        self.relay_wakeup.notify_one();
                    }
                    return Some(Ok(()));
                }
                Err(BatchError::Transient(e)) => {
                    if !self.wait(&mut backoff, &e, shutdown).await {
                        return None;
                    }
                }
                Err(BatchError::Failed(e)) => return Some(Err(e)),
            }
        }
    }

    async fn wait(&self, backoff: &mut Backoff, error: &str, shutdown: &CancellationToken) -> bool {
        let delay = backoff.next_delay();
        tracing::warn!(service = H::SERVICE, error, attempt = backoff.attempts(), retry_in_ms = delay.as_millis() as u64, "transient failure; retrying the batch");
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = shutdown.cancelled() => false,
        }
    }
}

/// Records `incoming` in the inbox and lets `handler` apply it, in the caller's transaction.
/// `Ok(None)`: the inbox already held its message id, so nothing was applied.
pub async fn apply_once<H: Handler>(
    conn: &mut AnyConnection,
    handler: &H,
    incoming: &Incoming,
) -> Result<Option<Vec<Message>>, HandleError> {
    if !record_in_inbox(conn, &incoming.message, &incoming.topic, incoming.partition, incoming.offset).await? {
        return Ok(None);
    }
    handler.handle(conn, incoming).await.map(Some)
}

/// Header value of a consumed record, as text.
pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    let headers = record.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
