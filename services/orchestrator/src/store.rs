//! The saga log: the `sagas` table (current state) and `saga_log` (every transition).

use saga_contracts::OrderLine;
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

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

const SELECT_SAGA: &str = "SELECT saga_id, saga_type, definition_version, status, position, attempt, failure_reason, data, \
     correlation_id, created_at_ms, updated_at_ms, version, trace_parent, deadline_at_ms, blocked_reason FROM sagas";

fn to_record(r: sqlx::any::AnyRow) -> Result<SagaRecord, sqlx::Error> {
    let status: String = r.get(3);
    let position: String = r.get(4);
    let corrupt = |what: String| sqlx::Error::Decode(what.into());
    Ok(SagaRecord {
        saga_id: r.get(0),
        saga_type: r.get(1),
        definition_version: r.get(2),
        state: SagaState {
            status: Status::parse(&status).ok_or_else(|| corrupt(format!("unknown saga status {status}")))?,
            position: Position::decode(&position).ok_or_else(|| corrupt(format!("unknown saga position {position}")))?,
            attempt: r.get::<i64, _>(5) as u32,
            failure: r.get(6),
            blocked: r.get(14),
        },
        data: serde_json::from_str(&r.get::<String, _>(7)).map_err(|e| corrupt(format!("saga data: {e}")))?,
        correlation_id: r.get(8),
        created_at_ms: r.get(9),
        updated_at_ms: r.get(10),
        version: r.get(11),
        trace_parent: r.get(12),
        deadline_at_ms: r.get(13),
    })
}

/// Loads a saga inside the caller's transaction.
pub async fn load(conn: &mut AnyConnection, saga_id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    let sql = format!("{SELECT_SAGA} WHERE saga_id = $1");
    sqlx::query(sqlx::AssertSqlSafe(sql)).bind(saga_id).fetch_optional(&mut *conn).await?.map(to_record).transpose()
}

/// Inserts a new saga at version 1.
pub async fn insert(conn: &mut AnyConnection, saga: &SagaRecord) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sagas (saga_id, saga_type, definition_version, status, position, attempt, failure_reason, data, correlation_id, created_at_ms, updated_at_ms, version, trace_parent, deadline_at_ms, blocked_reason) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1, $11, $12, $13)",
    )
    .bind(&saga.saga_id)
    .bind(&saga.saga_type)
    .bind(saga.definition_version)
    .bind(saga.state.status.as_str())
    .bind(saga.state.position.encode())
    .bind(i64::from(saga.state.attempt))
    .bind(saga.state.failure.as_deref())
    .bind(serde_json::to_string(&saga.data).expect("saga data always serializes"))
    .bind(&saga.correlation_id)
    .bind(saga.created_at_ms)
    .bind(saga.trace_parent.as_deref())
    .bind(saga.deadline_at_ms)
    .bind(saga.state.blocked.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Moves a saga from `version` to `version + 1`, with the deadline of its new wait. Returns false
/// when another writer moved it first (the caller retries with a fresh read).
pub async fn update(conn: &mut AnyConnection, saga_id: &str, version: i64, state: &SagaState, deadline_at_ms: Option<i64>) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE sagas SET status = $1, position = $2, attempt = $3, failure_reason = $4, updated_at_ms = $5, version = version + 1, \
         deadline_at_ms = $6, blocked_reason = $7 WHERE saga_id = $8 AND version = $9",
    )
    .bind(state.status.as_str())
    .bind(state.position.encode())
    .bind(i64::from(state.attempt))
    .bind(state.failure.as_deref())
    .bind(saga_store::now_ms())
    .bind(deadline_at_ms)
    .bind(state.blocked.as_deref())
    .bind(saga_id)
    .bind(version)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Appends a log entry.
pub async fn append_log(conn: &mut AnyConnection, saga_id: &str, entry: &LogEntry) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO saga_log (saga_id, seq, at_ms, event, step, from_status, to_status, cause_message_id, cause_message_type, sent, detail, trace_parent) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(saga_id)
    .bind(entry.seq)
    .bind(entry.at_ms)
    .bind(&entry.event)
    .bind(entry.step.as_deref())
    .bind(entry.from_status.as_deref())
    .bind(&entry.to_status)
    .bind(entry.cause_message_id.as_deref())
    .bind(entry.cause_message_type.as_deref())
    .bind(serde_json::to_string(&entry.sent).expect("ids always serialize"))
    .bind(entry.detail.as_deref())
    .bind(entry.trace_parent.as_deref())
    .execute(&mut *conn)
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
pub async fn record_stray(conn: &mut AnyConnection, message_id: &str, saga_id: &str, message_type: &str, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO stray_messages (message_id, saga_id, message_type, at_ms, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(message_id)
    .bind(saga_id)
    .bind(message_type)
    .bind(saga_store::now_ms())
    .bind(reason)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Reads a saga (for operators and tests).
pub async fn get_saga(db: &saga_store::Db, saga_id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    load(&mut conn, saga_id).await
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
    let rows = match status {
        Some(s) => {
            let sql = format!("{SELECT_SAGA} WHERE status = $1 ORDER BY updated_at_ms DESC LIMIT $2");
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(s.as_str()).bind(limit).fetch_all(db.pool()).await?
        }
        None => {
            let sql = format!("{SELECT_SAGA} ORDER BY updated_at_ms DESC LIMIT $1");
            sqlx::query(sqlx::AssertSqlSafe(sql)).bind(limit).fetch_all(db.pool()).await?
        }
    };
    rows.into_iter().map(to_record).collect()
}

/// Number of sagas in each status.
pub async fn count_by_status(db: &saga_store::Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query("SELECT status, COUNT(*) FROM sagas GROUP BY status ORDER BY status").fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}
