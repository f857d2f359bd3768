//! The saga log: the `sagas` table (current state) and `saga_log` (every transition).

use saga_contracts::OrderLine;
use saga_runtime::timers::Cutoffs;
use saga_store::{args, Arg, Backend, Conn, Row};
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
    /// The partition number of the record that started the saga (its replies come on the same
    /// number); `None` for sagas started before it was kept.
    pub kafka_partition: Option<i32>,
}

impl SagaRecord {
    /// This saga's move, from the version and status it has, to `state`.
    pub fn move_to<'a>(&'a self, state: &'a SagaState, deadline_at_ms: Option<i64>, now_ms: i64) -> Move<'a> {
        Move { saga_id: &self.saga_id, version: self.version, from: self.state.status, state, deadline_at_ms, now_ms }
    }

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
    /// The definition version the saga runs (kept here so the entry explains itself after the
    /// version is retired).
    pub definition_version: i64,
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

/// The columns of a saga's row.
macro_rules! saga_columns {
    () => {
        "saga_id, saga_type, definition_version, status, position, attempt, failure_reason, data, correlation_id, created_at_ms, updated_at_ms, \
         version, trace_parent, deadline_at_ms, blocked_reason, kafka_partition"
    };
}

macro_rules! select_saga {
    () => {
        concat!("SELECT ", saga_columns!(), " FROM sagas")
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
        kafka_partition: r.get::<Option<i64>>("kafka_partition")?.map(i32::try_from).transpose().map_err(|e| corrupt(format!("saga partition: {e}")))?,
    })
}

/// Loads a saga inside the caller's transaction.
pub async fn load(conn: &mut Conn<'_>, saga_id: &str) -> Result<Option<SagaRecord>, sqlx::Error> {
    conn.fetch_optional(LOAD_SAGA, args![saga_id]).await?.map(to_record).transpose()
}

/// A new saga's values ([`new_saga_args`]): at version 1, last changed when created.
macro_rules! new_saga_values {
    () => {
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10, 1, $11, $12, $13, $14)"
    };
}

/// A step's changes ([`move_args`]) but its status, which is `$1`; and the version it moves from.
macro_rules! step_changes {
    () => {
        "position = $2, attempt = $3, failure_reason = $4, updated_at_ms = $5, version = version + 1, deadline_at_ms = $6, blocked_reason = $7 \
         WHERE saga_id = $8 AND version = $9"
    };
}

/// The columns of a log entry.
macro_rules! log_columns {
    () => {
        "saga_id, seq, at_ms, event, step, from_status, to_status, cause_message_id, cause_message_type, sent, detail, trace_parent, definition_version"
    };
}

const INSERT_SAGA: &str = concat!("INSERT INTO sagas (", saga_columns!(), ") ", new_saga_values!(), " ON CONFLICT (saga_id) DO NOTHING");
const UPDATE_SAGA: &str = concat!("UPDATE sagas SET status = $1, ", step_changes!());
/// A step that keeps the status leaves it out: SQLite then spares the entries of the indexes over
/// it that nothing else in the statement touches (`sagas_by_version`).
const UPDATE_SAGA_SAME_STATUS: &str = concat!("UPDATE sagas SET ", step_changes!(), " AND status = $1");
const APPEND_LOG: &str = concat!("INSERT INTO saga_log (", log_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)");

// On PostgreSQL a saga's write and its log entry go in one statement: one round trip instead of
// two. The entry is inserted only if the saga's row was written (a saga that existed already, or
// moved since it was read, writes neither), so the statement's count says which happened.
const INSERT_SAGA_LOGGED: &str = concat!(
    "WITH created AS (INSERT INTO sagas (",
    saga_columns!(),
    ") ",
    new_saga_values!(),
    " ON CONFLICT (saga_id) DO NOTHING RETURNING saga_id) INSERT INTO saga_log (",
    log_columns!(),
    ") SELECT saga_id, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26 FROM created"
);
const UPDATE_SAGA_LOGGED: &str = concat!(
    "WITH moved AS (UPDATE sagas SET status = $1, ",
    step_changes!(),
    " RETURNING saga_id) INSERT INTO saga_log (",
    log_columns!(),
    ") SELECT saga_id, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21 FROM moved"
);

/// A new saga's row but its `updated_at_ms` and version; its position and data encoded by the
/// caller.
fn new_saga_args<'a>(saga: &'a SagaRecord, position: &'a str, data: &'a str) -> [Arg<'a>; 14] {
    [
        Arg::from(&saga.saga_id),
        Arg::from(&saga.saga_type),
        Arg::from(saga.definition_version),
        Arg::from(saga.state.status.as_str()),
        Arg::from(position),
        Arg::from(saga.state.attempt),
        Arg::from(saga.state.failure.as_deref()),
        Arg::from(data),
        Arg::from(&saga.correlation_id),
        Arg::from(saga.created_at_ms),
        Arg::from(saga.trace_parent.as_deref()),
        Arg::from(saga.deadline_at_ms),
        Arg::from(saga.state.blocked.as_deref()),
        Arg::from(saga.kafka_partition.map(i64::from)),
    ]
}

/// A saga's move from `version` (at status `from`) to `version + 1` in `state`, with the deadline
/// of its new wait, at `now_ms`.
#[derive(Debug, Clone, Copy)]
pub struct Move<'a> {
    /// Which saga.
    pub saga_id: &'a str,
    /// The version it moves from (the write fails if another writer moved it since).
    pub version: i64,
    /// Its status at that version.
    pub from: Status,
    /// Its new state.
    pub state: &'a SagaState,
    /// When the new wait times out; `None`: nothing awaited on a deadline.
    pub deadline_at_ms: Option<i64>,
    /// When, ms since epoch.
    pub now_ms: i64,
}

/// A move's arguments (its position encoded by the caller).
fn move_args<'a>(step: &Move<'a>, position: &'a str) -> [Arg<'a>; 9] {
    let state = step.state;
    [
        Arg::from(state.status.as_str()),
        Arg::from(position),
        Arg::from(state.attempt),
        Arg::from(state.failure.as_deref()),
        Arg::from(step.now_ms),
        Arg::from(step.deadline_at_ms),
        Arg::from(state.blocked.as_deref()),
        Arg::from(step.saga_id),
        Arg::from(step.version),
    ]
}

/// A log entry but its saga id; the ids it sent encoded by the caller.
fn log_args<'a>(entry: &'a LogEntry, sent: &'a str) -> [Arg<'a>; 12] {
    [
        Arg::from(entry.seq),
        Arg::from(entry.at_ms),
        Arg::from(&entry.event),
        Arg::from(entry.step.as_deref()),
        Arg::from(entry.from_status.as_deref()),
        Arg::from(&entry.to_status),
        Arg::from(entry.cause_message_id.as_deref()),
        Arg::from(entry.cause_message_type.as_deref()),
        Arg::from(sent),
        Arg::from(entry.detail.as_deref()),
        Arg::from(entry.trace_parent.as_deref()),
        Arg::from(entry.definition_version),
    ]
}

fn encoded_sent(entry: &LogEntry) -> String {
    serde_json::to_string(&entry.sent).expect("ids always serialize")
}

fn encoded_data(saga: &SagaRecord) -> String {
    serde_json::to_string(&saga.data).expect("saga data always serializes")
}

/// Inserts a new saga at version 1; false (and nothing written) when a saga of that id exists.
async fn insert(conn: &mut Conn<'_>, saga: &SagaRecord) -> Result<bool, sqlx::Error> {
    let (position, data) = (saga.state.position.encode(), encoded_data(saga));
    Ok(conn.execute(INSERT_SAGA, &new_saga_args(saga, &position, &data)).await? == 1)
}

/// [`insert`] with the saga's first log entry; false (and nothing written) when a saga of that id
/// exists. One round trip on PostgreSQL.
pub async fn insert_logged(conn: &mut Conn<'_>, saga: &SagaRecord, entry: &LogEntry) -> Result<bool, sqlx::Error> {
    if conn.backend() != Backend::Postgres {
        // SQLite runs in this process: a second statement costs no round trip.
        if !insert(conn, saga).await? {
            return Ok(false);
        }
        append_log(conn, &saga.saga_id, entry).await?;
        return Ok(true);
    }
    let (position, data, sent) = (saga.state.position.encode(), encoded_data(saga), encoded_sent(entry));
    let args: Vec<Arg<'_>> = new_saga_args(saga, &position, &data).into_iter().chain(log_args(entry, &sent)).collect();
    Ok(conn.execute(INSERT_SAGA_LOGGED, &args).await? == 1)
}

/// Moves a saga one step. Returns false when another writer moved it first (the caller retries
/// with a fresh read). Private: every move is logged ([`update_logged`]), so the saga's version is
/// the seq of its last log entry.
async fn update(conn: &mut Conn<'_>, step: &Move<'_>) -> Result<bool, sqlx::Error> {
    let position = step.state.position.encode();
    let sql = if step.from == step.state.status { UPDATE_SAGA_SAME_STATUS } else { UPDATE_SAGA };
    Ok(conn.execute(sql, &move_args(step, &position)).await? == 1)
}

/// [`update`], and `entry` appended to the saga's log if the saga moved; false, and nothing
/// written, when another writer moved it first. One round trip on PostgreSQL.
pub async fn update_logged(conn: &mut Conn<'_>, step: &Move<'_>, entry: &LogEntry) -> Result<bool, sqlx::Error> {
    if conn.backend() != Backend::Postgres {
        if !update(conn, step).await? {
            return Ok(false);
        }
        append_log(conn, step.saga_id, entry).await?;
        return Ok(true);
    }
    let (position, sent) = (step.state.position.encode(), encoded_sent(entry));
    let args: Vec<Arg<'_>> = move_args(step, &position).into_iter().chain(log_args(entry, &sent)).collect();
    Ok(conn.execute(UPDATE_SAGA_LOGGED, &args).await? == 1)
}

/// Appends a log entry.
async fn append_log(conn: &mut Conn<'_>, saga_id: &str, entry: &LogEntry) -> Result<(), sqlx::Error> {
    let sent = encoded_sent(entry);
    let args: Vec<Arg<'_>> = std::iter::once(Arg::from(saga_id)).chain(log_args(entry, &sent)).collect();
    conn.execute(APPEND_LOG, &args).await?;
    Ok(())
}

/// Sagas whose deadline passed by `cutoffs` (each owned partition up to its own read-through
/// time, a saga of unknown partition up to the floor), earliest first, at most `limit`, with their
/// trace context.
pub async fn due(db: &saga_store::Db, cutoffs: &Cutoffs, limit: i64) -> Result<Vec<(String, Option<String>)>, sqlx::Error> {
    // A clause per partition; in chunks, so a topic of many partitions stays within SQLite's
    // expression depth.
    const CHUNK: usize = 100;
    let mut found: Vec<(i64, String, Option<String>)> = Vec::new();
    let mut chunks: Vec<&[(i32, i64)]> = cutoffs.by_partition.chunks(CHUNK).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    for (n, chunk) in chunks.iter().enumerate() {
        let latest = chunk.iter().map(|(_, t)| *t).max().unwrap_or(cutoffs.floor).max(cutoffs.floor);
        // The floor clause once, with the first chunk.
        let floor = if n == 0 { cutoffs.floor } else { i64::MIN };
        let mut sql = String::from(
            "SELECT saga_id, trace_parent, deadline_at_ms FROM sagas WHERE deadline_at_ms <= $1 AND ((kafka_partition IS NULL AND deadline_at_ms <= $2)",
        );
        for i in 0..chunk.len() {
            sql.push_str(&format!(" OR (kafka_partition = ${} AND deadline_at_ms <= ${})", 4 + 2 * i, 5 + 2 * i));
        }
        sql.push_str(") ORDER BY deadline_at_ms LIMIT $3");
        // Only placeholders are formatted in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(latest).bind(floor).bind(limit);
        for (partition, through) in chunk.iter() {
            query = query.bind(i64::from(*partition)).bind(*through);
        }
        for r in query.fetch_all(db.pool()).await? {
            found.push((r.try_get("deadline_at_ms")?, r.try_get("saga_id")?, r.try_get("trace_parent")?));
        }
    }
    found.sort_by_key(|(deadline, _, _)| *deadline);
    found.truncate(usize::try_from(limit).unwrap_or(0));
    Ok(found.into_iter().map(|(_, id, trace)| (id, trace)).collect())
}

/// Records a reply for a saga that does not exist.
pub async fn record_stray(conn: &mut Conn<'_>, message_id: &str, saga_id: &str, message_type: &str, reason: &str) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO stray_messages (message_id, saga_id, message_type, at_ms, reason) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (message_id) DO NOTHING",
        args![message_id, saga_id, message_type, saga_contracts::now_ms(), reason],
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
        "SELECT seq, at_ms, event, step, from_status, to_status, cause_message_id, cause_message_type, sent, detail, trace_parent, definition_version \
         FROM saga_log WHERE saga_id = $1 ORDER BY seq",
    )
    .bind(saga_id)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter()
        .map(|r| {
            let sent: String = r.try_get("sent")?;
            Ok(LogEntry {
                seq: r.try_get("seq")?,
                at_ms: r.try_get("at_ms")?,
                definition_version: r.try_get("definition_version")?,
                event: r.try_get("event")?,
                step: r.try_get("step")?,
                from_status: r.try_get("from_status")?,
                to_status: r.try_get("to_status")?,
                cause_message_id: r.try_get("cause_message_id")?,
                cause_message_type: r.try_get("cause_message_type")?,
                sent: serde_json::from_str(&sent).map_err(|e| sqlx::Error::Decode(format!("saga log of {saga_id}: sent ids {sent:?}: {e}").into()))?,
                detail: r.try_get("detail")?,
                trace_parent: r.try_get("trace_parent")?,
            })
        })
        .collect()
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
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM sagas GROUP BY status ORDER BY status").fetch_all(db.pool()).await?;
    rows.into_iter().map(|r| Ok((r.try_get("status")?, r.try_get("n")?))).collect()
}

/// Unfinished sagas (neither COMPLETED nor COMPENSATED) per definition version, oldest version
/// first. A version may be retired once it has none.
pub async fn in_flight_by_version(db: &saga_store::Db) -> Result<Vec<(i64, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT definition_version, COUNT(*) AS n FROM sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED') GROUP BY definition_version ORDER BY definition_version",
    )
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(|r| Ok((r.try_get("definition_version")?, r.try_get("n")?))).collect()
}

/// Ids of up to `limit` unfinished sagas of definition `version`, oldest first.
pub async fn in_flight_ids(db: &saga_store::Db, version: i64, limit: i64) -> Result<Vec<String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT saga_id FROM sagas WHERE definition_version = $1 AND status NOT IN ('COMPLETED', 'COMPENSATED') ORDER BY created_at_ms, saga_id LIMIT $2",
    )
    .bind(version)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(|r| r.try_get("saga_id")).collect()
}

/// What the saga view's search selects; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// The saga (order) id, or its beginning.
    pub id_prefix: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this definition version.
    pub version: Option<i64>,
    /// Only sagas waiting at (or compensating) one of these positions, e.g. `step:1` (the
    /// caller maps a step name to its position in each version).
    pub positions: Vec<(i64, String)>,
    /// Only sagas whose failure or blocked reason contains this text (any case).
    pub reason: Option<String>,
    /// Only sagas started at or after, ms since epoch.
    pub since_ms: Option<i64>,
    /// Only sagas started before, ms since epoch.
    pub until_ms: Option<i64>,
}

/// Where a page of [`search`] ends: the (start time, id) of its last saga. The next page holds
/// the sagas that sort after it (keyset paging: no OFFSET, stable while sagas move).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// `created_at_ms` of the last saga shown.
    pub created_at_ms: i64,
    /// Its id.
    pub saga_id: String,
}

impl Cursor {
    /// `created_at_ms.saga_id`, for URLs.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.saga_id)
    }

    /// Parses [`Cursor::encode`]'s form.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (ms, id) = s.split_once('.')?;
        Some(Cursor { created_at_ms: ms.parse().ok()?, saga_id: id.to_string() })
    }
}

/// Sagas matching `search`, newest start first (ties by id), at most `limit`, after `after`;
/// with the cursor of the next page when there may be one.
pub async fn search(db: &saga_store::Db, search: &Search, after: Option<&Cursor>, limit: i64) -> Result<(Vec<SagaRecord>, Option<Cursor>), sqlx::Error> {
    enum Bind {
        Text(String),
        Int(i64),
    }
    let mut clauses: Vec<String> = Vec::new();
    let mut binds: Vec<Bind> = Vec::new();
    let mut bind = |b: Bind, binds_len: &mut usize| {
        binds.push(b);
        *binds_len += 1;
        format!("${binds_len}")
    };
    let mut n = 0usize;
    if let Some(prefix) = search.id_prefix.as_deref().filter(|p| !p.is_empty()) {
        let len = prefix.chars().count() as i64;
        let (p, l) = (bind(Bind::Text(prefix.to_string()), &mut n), bind(Bind::Int(len), &mut n));
        clauses.push(format!("substr(saga_id, 1, CAST({l} AS INTEGER)) = {p}"));
    }
    if let Some(status) = search.status {
        clauses.push(format!("status = {}", bind(Bind::Text(status.as_str().to_string()), &mut n)));
    }
    if let Some(v) = search.version {
        clauses.push(format!("definition_version = {}", bind(Bind::Int(v), &mut n)));
    }
    if !search.positions.is_empty() {
        let mut any = Vec::new();
        for (version, position) in &search.positions {
            let (v, p) = (bind(Bind::Int(*version), &mut n), bind(Bind::Text(position.clone()), &mut n));
            any.push(format!("(definition_version = {v} AND position = {p})"));
        }
        clauses.push(format!("({})", any.join(" OR ")));
    }
    if let Some(reason) = search.reason.as_deref().filter(|r| !r.is_empty()) {
        let pattern = format!("%{}%", reason.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let p = bind(Bind::Text(pattern), &mut n);
        clauses.push(format!("LOWER(COALESCE(failure_reason, '') || ' ' || COALESCE(blocked_reason, '')) LIKE {p} ESCAPE '\\'"));
    }
    if let Some(since) = search.since_ms {
        clauses.push(format!("created_at_ms >= {}", bind(Bind::Int(since), &mut n)));
    }
    if let Some(until) = search.until_ms {
        clauses.push(format!("created_at_ms < {}", bind(Bind::Int(until), &mut n)));
    }
    if let Some(c) = after {
        let (ms, ms2, id) = (bind(Bind::Int(c.created_at_ms), &mut n), bind(Bind::Int(c.created_at_ms), &mut n), bind(Bind::Text(c.saga_id.clone()), &mut n));
        clauses.push(format!("(created_at_ms < {ms} OR (created_at_ms = {ms2} AND saga_id < {id}))"));
    }
    let limit_at = bind(Bind::Int(limit + 1), &mut n);
    let filter = if clauses.is_empty() { String::new() } else { format!(" WHERE {}", clauses.join(" AND ")) };
    let sql = format!(concat!(select_saga!(), "{} ORDER BY created_at_ms DESC, saga_id DESC LIMIT {}"), filter, limit_at);
    let args: Vec<saga_store::sql::Arg<'_>> = binds
        .iter()
        .map(|b| match b {
            Bind::Text(t) => saga_store::sql::Arg::from(t),
            Bind::Int(i) => saga_store::sql::Arg::from(*i),
        })
        .collect();
    let mut conn = db.pool().acquire().await?;
    let rows = Conn::Sqlx(&mut conn).fetch_all(sql, &args).await?;
    let mut sagas = rows.into_iter().map(to_record).collect::<Result<Vec<_>, _>>()?;
    let next = if sagas.len() as i64 > limit {
        sagas.truncate(limit as usize);
        sagas.last().map(|s| Cursor { created_at_ms: s.created_at_ms, saga_id: s.saga_id.clone() })
    } else {
        None
    };
    Ok((sagas, next))
}

/// Sagas that ended (or got STUCK or PARKED) per time bucket: `(bucket start ms, status, count)`,
/// over `[since_ms, now)`, oldest bucket first. Read from the `sagas` table by its
/// `(status, updated_at_ms)` index: a saga's last change is when it ended.
pub async fn finished_per_bucket(db: &saga_store::Db, since_ms: i64, bucket_ms: i64) -> Result<Vec<(i64, String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT (updated_at_ms / $1) * $1 AS bucket, status, COUNT(*) AS n FROM sagas \
         WHERE status IN ('COMPLETED', 'COMPENSATED', 'STUCK', 'PARKED') AND updated_at_ms >= $2 GROUP BY bucket, status ORDER BY bucket, status",
    )
    .bind(bucket_ms.max(1))
    .bind(since_ms)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(|r| Ok((r.try_get("bucket")?, r.try_get("status")?, r.try_get("n")?))).collect()
}

/// Failure reasons of the sagas that changed since `since_ms`, with how many sagas have each,
/// most frequent first (at most `limit` distinct texts).
pub async fn failure_reasons(db: &saga_store::Db, since_ms: i64, limit: i64) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT failure_reason, COUNT(*) AS n FROM sagas WHERE failure_reason IS NOT NULL AND updated_at_ms >= $1 \
         GROUP BY failure_reason ORDER BY n DESC, failure_reason LIMIT $2",
    )
    .bind(since_ms)
    .bind(limit)
    .fetch_all(db.pool())
    .await?;
    rows.into_iter().map(|r| Ok((r.try_get("failure_reason")?, r.try_get("n")?))).collect()
}

/// A dead letter that parked a saga, as kept with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptDeadLetter {
    /// The record, whole.
    pub record: saga_runtime::dlt::record::DeadLetterRecord,
    /// When the orchestrator saw it, ms since epoch.
    pub seen_at_ms: i64,
    /// When an operator redrove it, and who.
    pub redriven: Option<(i64, String)>,
}

/// Keeps `record`, a dead letter of saga `saga_id`, in the caller's transaction (once: seeing it
/// again changes nothing).
pub async fn keep_dead_letter(conn: &mut Conn<'_>, saga_id: &str, record: &saga_runtime::dlt::record::DeadLetterRecord) -> Result<(), sqlx::Error> {
    let json = serde_json::to_string(record).expect("a dead letter always serializes");
    conn.execute(
        "INSERT INTO saga_dead_letters (dlt_topic, dlt_partition, dlt_offset, saga_id, seen_at_ms, record) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (dlt_topic, dlt_partition, dlt_offset) DO NOTHING",
        args![&record.dlt_topic, i64::from(record.partition), record.offset, saga_id, saga_contracts::now_ms(), &json],
    )
    .await?;
    Ok(())
}

/// The dead letters kept for `saga_id`, oldest first.
pub async fn dead_letters(conn: &mut Conn<'_>, saga_id: &str) -> Result<Vec<KeptDeadLetter>, sqlx::Error> {
    let rows = conn
        .fetch_all(
            "SELECT record, seen_at_ms, redriven_at_ms, redriven_by FROM saga_dead_letters WHERE saga_id = $1 ORDER BY seen_at_ms, dlt_topic, dlt_partition, dlt_offset",
            args![saga_id],
        )
        .await?;
    rows.into_iter()
        .map(|r| {
            let record = serde_json::from_str(&r.get::<String>("record")?)
                .map_err(|e| sqlx::Error::Decode(format!("kept dead letter of saga {saga_id}: {e}").into()))?;
            let redriven = match (r.get::<Option<i64>>("redriven_at_ms")?, r.get::<Option<String>>("redriven_by")?) {
                (Some(at), Some(by)) => Some((at, by)),
                _ => None,
            };
            Ok(KeptDeadLetter { record, seen_at_ms: r.get("seen_at_ms")?, redriven })
        })
        .collect()
}

/// Marks the dead letter at `topic/partition/offset` redriven by `who`, unless it was already;
/// true when this call marked it.
pub async fn mark_redriven(conn: &mut Conn<'_>, topic: &str, partition: i32, offset: i64, who: &str) -> Result<bool, sqlx::Error> {
    let done = conn
        .execute(
            "UPDATE saga_dead_letters SET redriven_at_ms = $1, redriven_by = $2 \
             WHERE dlt_topic = $3 AND dlt_partition = $4 AND dlt_offset = $5 AND redriven_at_ms IS NULL",
            args![saga_contracts::now_ms(), who, topic, i64::from(partition), offset],
        )
        .await?;
    Ok(done == 1)
}
