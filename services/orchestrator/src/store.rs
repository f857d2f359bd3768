//! The saga log: the `sagas` table (current state) and `saga_log` (every transition).

use saga_contracts::OrderLine;
use saga_store::{args, Conn, Row};
use serde::{Deserialize, Serialize};
use sqlx::Row as _;

use crate::saga::{Position, SagaState, Status};

/// What the saga's commands are built from: a snapshot of the order taken when it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaData {
    /// The order.
    pub order_id: String,
    /// Who pays.
    pub customer_id: String,
    /// ISO 4217 code of all amounts.
    pub currency: String,
    /// Order total in minor units.
    pub total_minor: i64,
    /// What is ordered.
    pub lines: Vec<OrderLine>,
}

/// A saga instance as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaRecord {
    /// The saga id (equal to the order id).
    pub saga_id: String,
    /// Saga type name.
    pub saga_type: String,
    /// Definition version the instance runs.
    pub definition_version: i64,
    /// Interpreter state.
    pub state: SagaState,
    /// Command data.
    pub data: SagaData,
    /// Correlation id of the whole transaction.
    pub correlation_id: String,
    /// Created, ms since epoch.
    pub created_at_ms: i64,
    /// Last changed, ms since epoch.
    pub updated_at_ms: i64,
    /// Optimistic-lock version; also the seq of the latest log entry.
    pub version: i64,
    /// W3C `traceparent` of the span that started the saga: the saga's trace.
    pub trace_parent: Option<String>,
    /// When the awaited reply times out, ms since epoch; `None` when nothing is awaited on a
    /// deadline.
    pub deadline_at_ms: Option<i64>,
}

impl SagaRecord {
    /// The saga's trace id (32 hex digits), from its `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        trace_id_of(self.trace_parent.as_deref()?)
    }
}

/// The trace id inside a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    traceparent.split('-').nth(1).filter(|t| t.len() == 32)
}

/// One saga log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogEntry {
    /// Position in the saga's log, from 1.
    pub seq: i64,
    /// When, ms since epoch.
    pub at_ms: i64,
    /// What happened (`started`, `step-succeeded`, `ignored`, …).
    pub event: String,
    /// Which step.
    pub step: Option<String>,
    /// Status before.
    pub from_status: Option<String>,
    /// Status after.
    pub to_status: String,
    /// Id of the message that caused it.
    pub cause_message_id: Option<String>,
    /// Type of that message.
    pub cause_message_type: Option<String>,
    /// Ids of the commands sent.
    pub sent: Vec<String>,
    /// Why (failure reason, or why a reply was ignored).
    pub detail: Option<String>,
    /// W3C `traceparent` of the span that made this transition.
    pub trace_parent: Option<String>,
}

macro_rules! select_saga {
    () => {
        "SELECT saga_id, saga_type, definition_version, status, position, attempt, failure_reason, data, \
         correlation_id, created_at_ms, updated_at_ms, version, trace_parent, deadline_at_ms, blocked_reason FROM sagas"
    };
}
const LOAD_SAGA: &str = concat!(select_saga!(), " WHERE saga_id = $1");

fn to_record(r: Row) -> Result<SagaRecord, sqlx::Error> {
    let status: String = r.get("status")?;
    let position: String = r.get("position")?;
    let corrupt = |what: String| sqlx::Error::Decode(what.into());
    Ok(SagaRecord {
        saga_id: r.get("saga_id")?,
        saga_type: r.get("saga_type")?,
        definition_version: r.get("definition_version")?,
        state: SagaState {
            status: Status::parse(&status).ok_or_else(|| corrupt(format!("unknown saga status {status}")))?,
            position: Position::decode(&position).ok_or_else(|| corrupt(format!("unknown saga position {position}")))?,
            attempt: u32::try_from(r.get::<i64>("attempt")?).map_err(|e| corrupt(format!("saga attempt: {e}")))?,
            failure: r.get("failure_reason")?,
            blocked: r.get("blocked_reason")?,
        },
        data: serde_json::from_str(&r.get::<String>("data")?).map_err(|e| corrupt(format!("saga data: {e}")))?,
        correlation_id: r.get("correlation_id")?,
        created_at_ms: r.get("created_at_ms")?,
        updated_at_ms: r.get("updated_at_ms")?,
        version: r.get("version")?,
        trace_parent: r.get("trace_parent")?,
        deadline_at_ms: r.get("deadline_at_ms")?,
    })
}

/// Loads a saga inside the caller's transaction.
pub async fn load(conn: &mut Conn<'_>, saga_id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    conn.fetch_optional(LOAD_SAGA, args![saga_id]).await?.map(to_record).transpose()
}

/// Inserts a new saga at version 1.
pub async fn insert(conn: &mut Conn<'_>, saga: &SagaRecord) -> Result<(), sqlx::Error> {
    let position = saga.state.position.encode();
    let data = serde_json::to_string(&saga.data).expect("saga data always serializes");
    conn.execute(
        "INSERT INTO sagas (saga_id, saga_type, definition_version, status, position, attempt, failure_reason, data, correlation_id, created_at_ms, updated_at_ms, version, trace_parent, deadline_at_ms, blocked_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1, $11, $12, $13)",
        args![
            &saga.saga_id,
            &saga.saga_type,
            saga.definition_version,
            saga.state.status.as_str(),
            &position,
            saga.state.attempt,
            saga.state.failure.as_deref(),
            &data,
            &saga.correlation_id,
            saga.created_at_ms,
            saga.trace_parent.as_deref(),
            saga.deadline_at_ms,
            saga.state.blocked.as_deref(),
        ],
    )
    .await?;
    Ok(())
}

/// Moves a saga from `version` to `version + 1`, with the deadline of its new wait. Returns false
/// when another writer moved it first (the caller retries with a fresh read).
pub async fn update(conn: &mut Conn<'_>, saga_id: &str, version: i64, state: &SagaState, deadline_at_ms: Option<i64>) -> Result<bool, sqlx::Error> {
    let position = state.position.encode();
    let done = conn
        .execute(
            "UPDATE sagas SET status = $1, position = $2, attempt = $3, failure_reason = $4, updated_at_ms = $5, version = version + 1, \
             deadline_at_ms = $6, blocked_reason = $7 WHERE saga_id = $8 AND version = $9",
            args![
                state.status.as_str(),
                &position,
                state.attempt,
                state.failure.as_deref(),
                saga_store::now_ms(),
                deadline_at_ms,
                state.blocked.as_deref(),
                saga_id,
                version
            ],
        )
        .await?;
    Ok(done == 1)
}

/// Appends a log entry.
pub async fn append_log(conn: &mut Conn<'_>, saga_id: &str, entry: &LogEntry) -> Result<(), sqlx::Error> {
    let sent = serde_json::to_string(&entry.sent).expect("ids always serialize");
    conn.execute(
        "INSERT INTO saga_log (saga_id, seq, at_ms, event, step, from_status, to_status, cause_message_id, cause_message_type, sent, detail, trace_parent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        args![
            saga_id,
            entry.seq,
            entry.at_ms,
            &entry.event,
            entry.step.as_deref(),
            entry.from_status.as_deref(),
            &entry.to_status,
            entry.cause_message_id.as_deref(),
            entry.cause_message_type.as_deref(),
            &sent,
            entry.detail.as_deref(),
            entry.trace_parent.as_deref(),
        ],
    )
    .await?;
    Ok(())
}

/// Sagas whose deadline passed at `now_ms`, earliest first, with their trace context.
pub async fn due(db: &saga_store::Db, now_ms: i64, limit: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    let rows = sqlx::query("SELECT saga_id, trace_parent FROM sagas WHERE deadline_at_ms <= $1 ORDER BY deadline_at_ms LIMIT $2")
        .bind(now_ms)
        .bind(limit)
        .fetch_all(db.pool())
        .await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Records a reply for a saga that does not exist.
pub async fn record_stray(conn: &mut Conn<'_>, message_id: &str, saga_id: &str, message_type: &str, reason: &str) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO stray_messages (message_id, saga_id, message_type, at_ms, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
        args![message_id, saga_id, message_type, saga_store::now_ms(), reason],
    )
    .await?;
    Ok(())
}

/// Reads a saga (for operators and tests).
pub async fn get_saga(db: &saga_store::Db, saga_id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    load(&mut Conn::Sqlx(&mut conn), saga_id).await
}

/// Reads a saga's whole log, oldest first.
pub async fn saga_log(db: &saga_store::Db, saga_id: &str) -> Result<Vec<LogEntry>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, at_ms, event, step, from_status, to_status, cause_message_id, cause_message_type, sent, detail, trace_parent \
         FROM saga_log WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(db.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| LogEntry {
            seq: r.get(0),
            at_ms: r.get(1),
            event: r.get(2),
            step: r.get(3),
            from_status: r.get(4),
            to_status: r.get(5),
            cause_message_id: r.get(6),
            cause_message_type: r.get(7),
            sent: serde_json::from_str(&r.get::<String, _>(8)).unwrap_or_default(),
            detail: r.get(9),
            trace_parent: r.get(10),
        })
        .collect())
}

/// Lists sagas, newest change first, optionally only those in `status`.
pub async fn list_sagas(db: &saga_store::Db, status: Option<Status>, limit: i64) -> Result<Vec<SagaRecord>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    let mut conn = Conn::Sqlx(&mut conn);
    let rows = match status {
        Some(s) => conn.fetch_all(concat!(select_saga!(), " WHERE status = $1 ORDER BY updated_at_ms DESC LIMIT $2"), args![s.as_str(), limit]).await?,
        None => conn.fetch_all(concat!(select_saga!(), " ORDER BY updated_at_ms DESC LIMIT $1"), args![limit]).await?,
    };
    rows.into_iter().map(to_record).collect()
}

/// Number of sagas in each status.
pub async fn count_by_status(db: &saga_store::Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM sagas GROUP BY status ORDER BY status").fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
