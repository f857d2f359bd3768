//! The read model's tables: applying a message in the consumer's transaction, and the queries.

use saga_store::{args, Conn, Db};

use crate::model::{Applied, Fact, OrderView, Position, Status};
use crate::Incoming;

/// The projection code's version. Raise it when a change makes stored views wrong for the new
/// code: the service then refuses to serve until the model is rebuilt (`saga-query --rebuild`).
pub const PROJECTION_VERSION: i64 = 1;

/// Applies one consumed record in the caller's transaction: its partition's position always, and
/// its fact, when it carries one, to the order's history and view. A message whose id the history
/// already holds changes nothing.
pub async fn apply(conn: &mut Conn<'_>, incoming: &Incoming) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO projection_position (topic, kafka_partition, next_offset) VALUES ($1, $2, $3) \
         ON CONFLICT (topic, kafka_partition) DO UPDATE SET next_offset = \
         CASE WHEN excluded.next_offset > projection_position.next_offset THEN excluded.next_offset ELSE projection_position.next_offset END",
        args![&incoming.topic, incoming.partition, incoming.offset + 1],
    )
    .await?;
    let Some(fact) = Fact::of(&incoming.message) else { return Ok(()) };
    let envelope = incoming.message.envelope();
    let order_id = incoming.message.order_id();
    let fact_json = serde_json::to_string(&fact).expect("facts always serialize");
    let inserted = conn
        .execute(
            "INSERT INTO order_history (message_id, order_id, message_type, topic, kafka_partition, kafka_offset, occurred_at_ms, applied_at_ms, saga_id, causation_id, fact) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (message_id) DO NOTHING",
            args![
                &envelope.message_id,
                order_id,
                incoming.message.full_name(),
                &incoming.topic,
                incoming.partition,
                incoming.offset,
                envelope.occurred_at_ms,
                saga_contracts::now_ms(),
                envelope.saga_id.as_deref(),
                envelope.causation_id.as_deref(),
                &fact_json
            ],
        )
        .await?;
    if inserted == 0 {
        return Ok(());
    }
    let applied = Applied {
        fact,
        occurred_at_ms: envelope.occurred_at_ms,
        saga_id: envelope.saga_id.clone(),
        position: Position { topic: incoming.topic.clone(), partition: incoming.partition, offset: incoming.offset },
    };
    // Instances of the projection own different topics' partitions, so two may apply facts of
    // one order at once. On PostgreSQL (READ COMMITTED) a plain read would see the view as it was
    // before the other committed, and the write would drop the other's fact. So the view is read
    // FOR UPDATE (which waits for the other and returns its committed row), and a new view is
    // inserted only if no other transaction inserted it meanwhile; if one did, it is read again,
    // locked. (SQLite has one writer: nothing runs beside the transaction.)
    let read = match conn.backend() {
        saga_store::Backend::Postgres => "SELECT view FROM order_view WHERE order_id = $1 FOR UPDATE",
        saga_store::Backend::Sqlite => "SELECT view FROM order_view WHERE order_id = $1",
    };
    for _ in 0..2 {
        if let Some(row) = conn.fetch_optional(read, args![order_id]).await? {
            let mut view = parse_view(order_id, &row.get::<String>("view")?)?;
            view.apply(&applied);
            return write_view(conn, &view, false).await.map(drop);
        }
        let mut view = OrderView::new(order_id);
        view.apply(&applied);
        if write_view(conn, &view, true).await? {
            return Ok(());
        }
    }
    Err(sqlx::Error::Protocol(format!("the view of order {order_id} was inserted by another transaction and then could not be read")))
}

/// Writes a view: a new row (`insert`: false when another transaction inserted the order's row
/// first) or over the existing one.
async fn write_view(conn: &mut Conn<'_>, view: &OrderView, insert: bool) -> Result<bool, sqlx::Error> {
    let json = serde_json::to_string(view).expect("views always serialize");
    let sql = if insert {
        "INSERT INTO order_view (order_id, customer_id, status, created_at_ms, updated_at_ms, view) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (order_id) DO NOTHING"
    } else {
        "UPDATE order_view SET customer_id = $2, status = $3, created_at_ms = $4, updated_at_ms = $5, view = $6 WHERE order_id = $1"
    };
    let n = conn.execute(sql, args![&view.order_id, &view.customer_id, view.status.as_str(), view.created_at_ms, view.updated_at_ms, &json]).await?;
    Ok(n == 1)
}

/// A stored view that cannot be read is an error, never a default.
fn parse_view(order_id: &str, json: &str) -> Result<OrderView, sqlx::Error> {
    serde_json::from_str(json).map_err(|e| sqlx::Error::Decode(format!("the stored view of order {order_id} cannot be read: {e}").into()))
}

/// One order's view.
pub async fn get(db: &Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let mut c = db.pool().acquire().await?;
    let row = Conn::Sqlx(&mut c).fetch_optional("SELECT view FROM order_view WHERE order_id = $1", args![order_id]).await?;
    row.map(|r| parse_view(order_id, &r.get::<String>("view")?)).transpose()
}

/// What `GET /orders` filters on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Only this customer's orders.
    pub customer: Option<String>,
    /// Only orders in this status.
    pub status: Option<Status>,
    /// Only orders created at or after this time (epoch ms).
    pub since_ms: Option<i64>,
    /// Resume after this place in the newest-first order.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: i64,
}

/// A place in the newest-first order of orders: after (older than) this order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Its creation time.
    pub created_at_ms: i64,
    /// Its id.
    pub order_id: String,
}

impl Cursor {
    /// The opaque text form handed to clients.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.created_at_ms, self.order_id).bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads the text form; `None` when it is not one.
    pub fn decode(text: &str) -> Option<Cursor> {
        if text.len() % 2 != 0 || !text.is_ascii() {
            return None;
        }
        let bytes: Option<Vec<u8>> = (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect();
        let text = String::from_utf8(bytes?).ok()?;
        let (ms, id) = text.split_once('.')?;
        Some(Cursor { created_at_ms: ms.parse().ok()?, order_id: id.to_string() })
    }
}

/// Orders matching `filter`, newest first, and the cursor of the next page when there may be one.
pub async fn list(db: &Db, filter: &ListFilter) -> Result<(Vec<OrderView>, Option<Cursor>), sqlx::Error> {
    use saga_store::sql::Arg;
    let mut sql = String::from("SELECT order_id, view FROM order_view WHERE 1 = 1");
    let mut params: Vec<Arg<'_>> = Vec::new();
    if let Some(c) = &filter.customer {
        params.push(Arg::Text(c));
        sql.push_str(&format!(" AND customer_id = ${}", params.len()));
    }
    if let Some(s) = filter.status {
        params.push(Arg::Text(s.as_str()));
        sql.push_str(&format!(" AND status = ${}", params.len()));
    }
    if let Some(since) = filter.since_ms {
        params.push(Arg::Int(since));
        sql.push_str(&format!(" AND created_at_ms >= ${}", params.len()));
    }
    if let Some(after) = &filter.after {
        params.push(Arg::Int(after.created_at_ms));
        params.push(Arg::Text(&after.order_id));
        let (a, b) = (params.len() - 1, params.len());
        sql.push_str(&format!(" AND (created_at_ms < ${a} OR (created_at_ms = ${a} AND order_id < ${b}))"));
    }
    let limit = filter.limit.max(1);
    sql.push_str(&format!(" ORDER BY created_at_ms DESC, order_id DESC LIMIT {}", limit + 1));
    let mut c = db.pool().acquire().await?;
    let rows = Conn::Sqlx(&mut c).fetch_all(sql, &params).await?;
    let mut views = Vec::with_capacity(rows.len());
    for r in &rows {
        let id: String = r.get("order_id")?;
        views.push(parse_view(&id, &r.get::<String>("view")?)?);
    }
    let more = views.len() as i64 > limit;
    views.truncate(limit as usize);
    let next = if more { views.last().map(|v| Cursor { created_at_ms: v.created_at_ms, order_id: v.order_id.clone() }) } else { None };
    Ok((views, next))
}

/// One message that touched an order, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// Its message id.
    pub message_id: String,
    /// Full Avro name of its type.
    pub message_type: String,
    /// What it told.
    pub fact: Fact,
    /// When it was created.
    pub occurred_at_ms: i64,
    /// When the projection applied it.
    pub applied_at_ms: i64,
    /// The message that caused it.
    pub causation_id: Option<String>,
    /// Its saga.
    pub saga_id: Option<String>,
    /// Where it was read.
    pub position: Position,
}

impl HistoryEntry {
    /// As the fold takes it.
    pub fn applied(&self) -> Applied {
        Applied { fact: self.fact.clone(), occurred_at_ms: self.occurred_at_ms, saga_id: self.saga_id.clone(), position: self.position.clone() }
    }
}

/// Every message applied to an order, oldest first (by time, then by where it was read).
pub async fn history(db: &Db, order_id: &str) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    let mut c = db.pool().acquire().await?;
    history_on(&mut Conn::Sqlx(&mut c), order_id).await
}

async fn history_on(conn: &mut Conn<'_>, order_id: &str) -> Result<Vec<HistoryEntry>, sqlx::Error> {
    let rows = conn
        .fetch_all(
            "SELECT message_id, message_type, topic, kafka_partition, kafka_offset, occurred_at_ms, applied_at_ms, saga_id, causation_id, fact \
             FROM order_history WHERE order_id = $1 ORDER BY occurred_at_ms, topic, kafka_offset",
            args![order_id],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let message_id: String = r.get("message_id")?;
            let fact = serde_json::from_str(&r.get::<String>("fact")?)
                .map_err(|e| sqlx::Error::Decode(format!("history entry {message_id} of order {order_id} cannot be read: {e}").into()))?;
            Ok(HistoryEntry {
                message_type: r.get("message_type")?,
                fact,
                occurred_at_ms: r.get("occurred_at_ms")?,
                applied_at_ms: r.get("applied_at_ms")?,
                causation_id: r.get("causation_id")?,
                saga_id: r.get("saga_id")?,
                position: Position { topic: r.get("topic")?, partition: r.get("kafka_partition")?, offset: r.get("kafka_offset")? },
                message_id,
            })
        })
        .collect()
}

/// The order as it was at `at_ms`: the fold of its history up to that time; `None` when nothing
/// was known of it then.
pub async fn as_of(db: &Db, order_id: &str, at_ms: i64) -> Result<Option<OrderView>, sqlx::Error> {
    let entries = history(db, order_id).await?;
    let applied: Vec<Applied> = entries.iter().filter(|e| e.occurred_at_ms <= at_ms).map(HistoryEntry::applied).collect();
    Ok((!applied.is_empty()).then(|| OrderView::fold(order_id, &applied)))
}

/// The next offset to apply of one partition (0 when nothing of it was applied).
pub async fn next_offset(db: &Db, topic: &str, partition: i32) -> Result<i64, sqlx::Error> {
    let mut c = db.pool().acquire().await?;
    let row = Conn::Sqlx(&mut c)
        .fetch_optional("SELECT next_offset FROM projection_position WHERE topic = $1 AND kafka_partition = $2", args![topic, partition])
        .await?;
    row.map_or(Ok(0), |r| r.get("next_offset"))
}

/// Every partition's next offset to apply.
pub async fn positions(db: &Db) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    let mut c = db.pool().acquire().await?;
    let rows = Conn::Sqlx(&mut c).fetch_all("SELECT topic, kafka_partition, next_offset FROM projection_position ORDER BY topic, kafka_partition", &[]).await?;
    rows.iter().map(|r| Ok((r.get("topic")?, r.get("kafka_partition")?, r.get("next_offset")?))).collect()
}

/// Why the stored model cannot be served by this code.
#[derive(Debug, thiserror::Error)]
pub enum VersionError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The model was built by another version of the projection.
    #[error(
        "the read model was built by projection version {stored}, this code is version {PROJECTION_VERSION}: \
         run `saga-query --rebuild` (it refolds every order from the stored history) before serving"
    )]
    NeedsRebuild {
        /// The stored version.
        stored: i64,
    },
}

/// Records this code's projection version in a new model; refuses a model another version built.
pub async fn check_version(db: &Db) -> Result<(), VersionError> {
    let mut c = db.pool().acquire().await?;
    let mut conn = Conn::Sqlx(&mut c);
    match conn.fetch_optional("SELECT version FROM projection_meta WHERE name = 'orders'", &[]).await? {
        Some(row) => {
            let stored: i64 = row.get("version")?;
            if stored != PROJECTION_VERSION {
                return Err(VersionError::NeedsRebuild { stored });
            }
        }
        None => {
            conn.execute(
                "INSERT INTO projection_meta (name, version, built_at_ms) VALUES ('orders', $1, $2) ON CONFLICT (name) DO NOTHING",
                args![PROJECTION_VERSION, saga_contracts::now_ms()],
            )
            .await?;
        }
    }
    Ok(())
}

/// Records this code's projection version as the one that built the model, in the caller's
/// transaction.
pub async fn record_version(conn: &mut Conn<'_>) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO projection_meta (name, version, built_at_ms) VALUES ('orders', $1, $2) \
         ON CONFLICT (name) DO UPDATE SET version = excluded.version, built_at_ms = excluded.built_at_ms",
        args![PROJECTION_VERSION, saga_contracts::now_ms()],
    )
    .await?;
    Ok(())
}

/// Refolds every order's view from the stored history and records this code's version, in one
/// transaction: queries read the old views until it commits, then the new ones. Returns how many
/// orders it rebuilt.
pub async fn rebuild(db: &Db) -> Result<usize, sqlx::Error> {
    use sqlx::Acquire as _;
    let mut c = db.pool().acquire().await?;
    let mut tx = c.begin().await?;
    let mut conn = Conn::Sqlx(&mut tx);
    let ids: Vec<String> = conn
        .fetch_all("SELECT DISTINCT order_id FROM order_history ORDER BY order_id", &[])
        .await?
        .iter()
        .map(|r| r.get("order_id"))
        .collect::<Result<_, _>>()?;
    conn.execute("DELETE FROM order_view", &[]).await?;
    for id in &ids {
        let entries = history_on(&mut conn, id).await?;
        let view = OrderView::fold(id, &entries.iter().map(HistoryEntry::applied).collect::<Vec<_>>());
        write_view(&mut conn, &view, true).await?;
    }
    record_version(&mut conn).await?;
    tx.commit().await?;
    Ok(ids.len())
}
