//! What a service implements ([`Handler`]) and what it is given: records decoded from its topics
//! ([`Incoming`]), deadlines that fell due ([`Due`]) and records seen on a dead-letter topic
//! ([`DeadLetterSeen`]).
//!
//! The consume loop ([`crate::consumer`]) and the timers ([`crate::timers`]) both depend on this
//! module; it depends on neither.

use std::future::Future;

use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::Message as _;
use saga_contracts::{Message, TopicKind, Topics};
use saga_store::Conn;

use crate::dlt::headers;
use crate::outbox::record_in_inbox;
pub use crate::read_through::Cutoffs;

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
    /// The record's W3C trace context headers (`traceparent`, `tracestate`), if it had any.
    pub trace: Vec<(String, String)>,
}

impl Incoming {
    /// A message as if read from its topic's partition 0 at offset 0, without trace context.
    pub fn new(topics: &Topics, message: Message) -> Incoming {
        Incoming { topic: topics.name(message.topic_kind()), partition: 0, offset: 0, message, trace: Vec::new() }
    }
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
    /// This binary cannot apply the message, though a newer one can (a reply of a saga started
    /// on a definition version it does not know, during a rolling upgrade): the consume loop
    /// holds still with no offset moving and `/readyz` answers 503 with the reason, until the
    /// instance is replaced. Never dead-lettered.
    #[error("{0}")]
    Unsupported(String),
}

/// A service's business logic, applied to one message inside the batch's transaction: what
/// every service needs. What only some services do is a capability of its own, added when the
/// service is built: [`Deadlines`] ([`crate::Service::with_deadlines`]), [`WatchesDeadLetters`]
/// ([`crate::Service::with_dead_letter_watch`]) and [`Observed`] ([`crate::Service::observed`]).
pub trait Handler: Send + Sync + 'static {
    /// The service's name, for logs and client ids.
    const SERVICE: &'static str;

    /// What handling a message notes down to count once its transaction has commits (the
    /// orchestrator's saga metrics); `()` for a handler that counts nothing of its own. Notes of
    /// a transaction that rolls back are dropped with it.
    type Note: Send + 'static;

    /// The topics this service consumes.
    fn consumes(&self) -> &'static [TopicKind];

    /// Full names of the message types this service produces, registered at startup.
    fn produces(&self) -> &'static [&'static str];

    /// Applies one message; returns the messages to publish, and pushes to `notes` what to count
    /// once committed. Runs inside a transaction that also holds the inbox row and the outbox
    /// rows, so all of it commits or none does.
    fn handle<'c>(
        &'c self,
        conn: &'c mut Conn<'_>,
        incoming: &'c Incoming,
        notes: &'c mut Vec<Self::Note>,
    ) -> impl Future<Output = Result<Vec<Message>, HandleError>> + Send + 'c;

    /// A transaction committed: count what its messages (or its deadline, or its dead letter)
    /// noted down.
    fn committed(&self, _notes: Vec<Self::Note>) {}
}

/// Work that falls due without a message (the orchestrator's step deadlines and retry timers).
/// A service built with [`crate::Service::with_deadlines`] looks for it every
/// [`Deadlines::deadline_interval`] and fires each item in a transaction of its own, with what it
/// emits written to the outbox in that transaction.
pub trait Deadlines: Handler {
    /// How often to look for due work.
    fn deadline_interval(&self) -> std::time::Duration;

    /// Work due by `cutoffs` (per partition number this instance owns, the time its records were
    /// read through: see [`crate::read_through`]), at most `limit` items, each with the W3C
    /// `traceparent` to run it under.
    fn due<'a>(&'a self, db: &'a saga_store::Db, cutoffs: &'a Cutoffs, limit: i64) -> impl Future<Output = Result<Vec<Due>, sqlx::Error>> + Send + 'a;

    /// Runs one due item in the caller's transaction (it may have been handled meanwhile: then it
    /// does nothing); returns the messages to publish, which go to the outbox in that transaction.
    fn fire<'c>(
        &'c self,
        conn: &'c mut Conn<'_>,
        id: &'c str,
        now_ms: i64,
        notes: &'c mut Vec<Self::Note>,
    ) -> impl Future<Output = Result<Vec<Message>, HandleError>> + Send + 'c;
}

/// Follows the dead-letter topics of the whole system (the orchestrator parks the saga of a
/// dead-lettered message), in a consumer group of its own, when the service is built with
/// [`crate::Service::with_dead_letter_watch`].
pub trait WatchesDeadLetters: Handler {
    /// A record reached a dead-letter topic; runs in a transaction of its own.
    fn on_dead_letter<'c>(
        &'c self,
        conn: &'c mut Conn<'_>,
        letter: &'c DeadLetterSeen,
        notes: &'c mut Vec<Self::Note>,
    ) -> impl Future<Output = Result<(), HandleError>> + Send + 'c;
}

/// Metrics, gauges and HTTP routes of the handler's own, served beside the runtime's when the
/// service is built with [`crate::Service::observed`].
pub trait Observed: Handler {
    /// Registers the handler's own metrics next to the runtime's; called once, before consuming.
    fn register_metrics(&self, registry: &prometheus::Registry);

    /// Refreshes gauges that are read from the database; called every few seconds.
    fn refresh_gauges<'a>(&'a self, db: &'a saga_store::Db) -> impl Future<Output = ()> + Send + 'a;

    /// Extra HTTP routes served beside `/healthz`, `/readyz` and `/metrics` (the orchestrator's
    /// saga view).
    fn http_routes(&self, db: &saga_store::Db) -> Option<axum::Router>;

    /// How often [`Observed::refresh_gauges`] runs.
    fn gauge_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }

    /// What `/readyz` reports of the handler's own beside the dependencies (it does not decide
    /// readiness); read at every request, so it must be cheap.
    fn readiness_details(&self) -> Option<serde_json::Value> {
        None
    }
}

/// An item of work that fell due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    /// What is due (a saga id).
    pub id: String,
    /// The W3C `traceparent` its work joins (the saga's trace).
    pub trace_parent: Option<String>,
}

/// A record seen on a dead-letter topic, with the cause its headers give.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterSeen {
    /// The dead-letter topic.
    pub topic: String,
    /// Partition in it.
    pub partition: i32,
    /// Offset in it.
    pub offset: i64,
    /// The record key (the aggregate id: order id, saga id), when it is text.
    pub key: Option<String>,
    /// Where it was read from before it failed.
    pub original_topic: Option<String>,
    /// Error class (`handler-failed`, `malformed-avro`, …).
    pub class: Option<String>,
    /// What was wrong.
    pub message: Option<String>,
    /// Its `message_id` header, when it had one.
    pub message_id: Option<String>,
    /// The whole record: key, value and every header (what a redrive sends back).
    pub record: crate::dlt::record::DeadLetterRecord,
}

impl DeadLetterSeen {
    /// Reads a consumed dead-letter record.
    pub fn of(record: &OwnedMessage) -> DeadLetterSeen {
        DeadLetterSeen {
            topic: record.topic().to_string(),
            partition: record.partition(),
            offset: record.offset(),
            key: record.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string),
            original_topic: header(record, headers::ORIGINAL_TOPIC),
            class: header(record, headers::ERROR_CLASS),
            message: header(record, headers::ERROR_MESSAGE),
            message_id: header(record, "message_id"),
            record: crate::dlt::record::DeadLetterRecord::from_message(record, false),
        }
    }

    /// Where to find it: `topic/partition/offset`.
    pub fn reference(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// Records `incoming` in the inbox and lets `handler` apply it, in the caller's transaction.
/// `Ok(None)`: the inbox already held its message id, so nothing was applied.
pub async fn apply_once<H: Handler>(
    conn: &mut Conn<'_>,
    handler: &H,
    incoming: &Incoming,
    notes: &mut Vec<H::Note>,
) -> Result<Option<Vec<Message>>, HandleError> {
    if !record_in_inbox(conn, &incoming.message, &incoming.topic, incoming.partition, incoming.offset).await? {
        return Ok(None);
    }
    handler.handle(conn, incoming, notes).await.map(Some)
}

/// Header value of a consumed record, as text.
pub fn header(record: &OwnedMessage, name: &str) -> Option<String> {
    let headers = record.headers()?;
    headers.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| String::from_utf8_lossy(v).into_owned())
}
