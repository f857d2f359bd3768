//! Work that does not arrive as a message on the handler's own topics: deadlines that fall due
//! (the orchestrator's step timeouts and backoff timers) and records that reach a dead-letter
//! topic anywhere in the system (the orchestrator parks their saga).
//!
//! Both run like the consume loop: one database transaction per item, with what it emits written
//! to the outbox in that transaction; a dead letter's offset is stored only after its commit.
//! Deadlines live in the database, so they survive restarts; several instances may look at the
//! same due item, and the handler's optimistic locking lets exactly one of them act.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::Message as _;
use saga_contracts::Topics;
use saga_store::Conn;
use sqlx::Acquire;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::Codec;
pub use crate::handler::{Cutoffs, DeadLetterSeen, Due};
use crate::handler::{Deadlines, HandleError, WatchesDeadLetters};
use crate::kafka::LoggingContext;
use crate::outbox::{write_to_outbox, OutboxError, OutboxRow};
use crate::read_through::ReadThrough;
use crate::relay::HandOff;

/// Everything the timer loop needs.
pub struct Timers<H: Deadlines> {
    /// The business logic.
    pub handler: Arc<H>,
    /// The service's database.
    pub db: saga_store::Db,
    /// Encoder for the outbox.
    pub codec: Arc<Codec>,
    /// Topic names.
    pub topics: Topics,
    /// Where committed outbox rows go to the relay.
    pub outbox: Arc<HandOff>,
    /// How often to look.
    pub interval: Duration,
    /// How far the consume loop has read each partition: a deadline fires only once the records
    /// written before it were handled.
    pub read_through: Arc<ReadThrough>,
}

impl<H: Deadlines> Timers<H> {
    /// Fires due work every `interval` until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        loop {
            let now = saga_contracts::now_ms();
            // Nothing fires while this instance owns no partition or has not read one through.
            let due = match self.read_through.cutoffs(now) {
                Some(cutoffs) => self.handler.due(&self.db, &cutoffs, 200).await,
                None => Ok(Vec::new()),
            };
            match due {
                Ok(due) => {
                    for item in due {
                        if stop.is_cancelled() {
                            return;
                        }
                        self.fire(&item, now, &stop).await;
                    }
                }
                Err(e) => tracing::warn!(service = H::SERVICE, error = %e, "looking for due deadlines failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    async fn fire(&self, item: &Due, now: i64, stop: &CancellationToken) {
        let span = tracing::info_span!("deadline", otel.name = "saga deadline", saga.id = %item.id, order.id = %item.id, service = H::SERVICE);
        if let Some(tp) = &item.trace_parent {
            crate::telemetry::set_parent_from(&span, &[("traceparent".to_string(), tp.clone())]);
        }
        let result = async {
            let mut conn = self.db.pool().acquire().await.map_err(HandleError::Store)?;
            let mut tx = conn.begin().await.map_err(HandleError::Store)?;
            let mut db = Conn::Sqlx(&mut tx);
            let mut notes = Vec::new();
            let out = self.handler.fire(&mut db, &item.id, now, &mut notes).await?;
            let trace = crate::telemetry::headers_of(&tracing::Span::current());
            let mut rows = Vec::with_capacity(out.len());
            for message in &out {
                let row = write_to_outbox(&mut db, &self.codec, &self.topics, message, &trace, Some(self.outbox.owner())).await.map_err(|e| match e {
                    OutboxError::Store(e) => HandleError::Store(e),
                    OutboxError::Encode(e) => HandleError::Reject(e.to_string()),
                })?;
                rows.push(row);
            }
            tx.commit().await.map_err(HandleError::Store)?;
            self.handler.committed(notes);
            Ok::<Vec<OutboxRow>, HandleError>(rows)
        }
        .instrument(span)
        .await;
        match result {
            Ok(rows) => self.outbox.push(rows, stop).await,
            Err(e) => {
                // Still due: the next round tries again (after another instance, or the outage).
                tracing::warn!(service = H::SERVICE, id = %item.id, error = %e, "firing a deadline failed; will retry");
            }
        }
    }
}

/// Follows every dead-letter topic of the system in its own consumer group, handing each record
/// to the handler; its offset is stored once the handler's transaction committed.
pub async fn watch_dead_letters<H: WatchesDeadLetters>(
    handler: Arc<H>,
    consumer: StreamConsumer<LoggingContext>,
    mut group: crate::rejoin::GroupWatch,
    db: saga_store::Db,
    stop: CancellationToken,
) {
    let mut stream = consumer.stream();
    let every = crate::rejoin::CHECK_EVERY;
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let record = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            r = stream.next() => match r { Some(r) => r, None => break },
            _ = check.tick() => {
                group.look(&consumer, H::SERVICE);
                continue;
            }
        };
        let record = match record {
            Ok(m) => m.detach(),
            Err(e) => {
                tracing::warn!(service = H::SERVICE, error = %e, "dead-letter watch: kafka consume error");
                continue;
            }
        };
        let letter = DeadLetterSeen::of(&record);
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let result = async {
                let mut conn = db.pool().acquire().await.map_err(HandleError::Store)?;
                let mut tx = conn.begin().await.map_err(HandleError::Store)?;
                let mut notes = Vec::new();
                handler.on_dead_letter(&mut Conn::Sqlx(&mut tx), &letter, &mut notes).await?;
                tx.commit().await.map_err(HandleError::Store)?;
                handler.committed(notes);
                Ok(())
            }
            .await;
            match result {
                Ok(()) => break,
                Err(HandleError::Reject(why)) => {
                    tracing::warn!(service = H::SERVICE, dead_letter = %letter.reference(), error = %why, "dead letter not recorded against a saga");
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service = H::SERVICE, dead_letter = %letter.reference(), error = %e, retry_in_ms = delay.as_millis() as u64, "recording a dead letter failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            }
        }
        if let Err(e) = consumer.store_offset(record.topic(), record.partition(), record.offset()) {
            tracing::debug!(service = H::SERVICE, error = %e, "could not store a dead-letter offset");
        }
    }
    drop(stream);
    if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(service = H::SERVICE, error = %e, "final dead-letter offset commit had nothing to do or failed");
    }
}
