//! The inbox (dedupe) and outbox (durable intent to publish) tables shared by every service.

use saga_contracts::{Message, Topics};
use saga_store::{args, Backend, Conn};

use crate::codec::{Codec, EncodeError};

/// Migrations of the inbox and outbox tables (versions 1000–1999).
pub static MIGRATIONS: saga_store::Migrations =
    saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations/sqlite"), postgres: &sqlx::migrate!("./migrations/postgres") };

/// Records a message as handled. Returns false when it was handled before: the caller must then
/// apply nothing.
pub async fn record_in_inbox(conn: &mut Conn<'_>, message: &Message, topic: &str, partition: i32, offset: i64) -> Result<bool, sqlx::Error> {
    let done = conn
        .execute(
            "INSERT INTO inbox (message_id, message_type, topic, kafka_partition, kafka_offset, received_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
            args![&message.envelope().message_id, message.full_name(), topic, partition, offset, saga_store::now_ms()],
        )
        .await?;
    Ok(done == 1)
}

/// Why an outgoing message could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database refused the row.
    #[error(transparent)]
    Store(#[from] sqlx::Error),
    /// The message could not be encoded (usually: the registry is unreachable).
    #[error(transparent)]
    Encode(#[from] EncodeError),
}

/// One outbox row: what the relay publishes.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    /// Its id: publication follows id order.
    pub id: i64,
    /// Destination topic.
    pub topic: String,
    /// Record key (the order id).
    pub key: String,
    /// Encoded value.
    pub payload: Vec<u8>,
    /// Record headers, as a JSON list of pairs.
    pub headers: String,
}

/// Writes an outgoing message, encoded, into the outbox in the caller's transaction, and returns
/// the row. It is published to its topic, keyed by its order id, after the transaction commits:
/// by the writer's own relay when `owner` names it (the writer hands the row over once it has
/// committed), otherwise (`None`, another program) by whichever relay next looks in the table.
pub async fn write_to_outbox(
    conn: &mut Conn<'_>,
    codec: &Codec,
    topics: &Topics,
    message: &Message,
    headers: &[(String, String)],
    owner: Option<&str>,
) -> Result<OutboxRow, OutboxError> {
    let payload = codec.encode(message).await?;
    let mut all_headers =
        vec![("message_id".to_string(), message.envelope().message_id.clone()), ("message_type".to_string(), message.full_name().to_string())];
    all_headers.extend(headers.iter().cloned());
    let key = message.order_id().to_string();
    let record = Record { topic: topics.name(message.topic_kind()), key, payload, headers: all_headers };
    Ok(write_record_to_outbox(conn, record, &message.envelope().message_id, message.full_name(), owner).await?)
}

/// A record to publish as it is: already encoded, with its headers.
#[derive(Debug, Clone)]
pub struct Record {
    /// Destination topic.
    pub topic: String,
    /// Record key (the order id).
    pub key: String,
    /// Encoded value.
    pub payload: Vec<u8>,
    /// Record headers.
    pub headers: Vec<(String, String)>,
}

/// Writes `record` into the outbox in the caller's transaction, to be published as it is (a
/// redriven dead letter, say); `message_id` and `message_type` describe it. `owner` as in
/// [`write_to_outbox`].
pub async fn write_record_to_outbox(
    conn: &mut Conn<'_>,
    record: Record,
    message_id: &str,
    message_type: &str,
    owner: Option<&str>,
) -> Result<OutboxRow, sqlx::Error> {
    let headers = serde_json::to_string(&record.headers).expect("string pairs always serialize");
    let id: i64 = conn
        .fetch_one(
            "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, created_at_ms, owner) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            args![message_id, message_type, &record.topic, &record.key, &record.payload, &headers, saga_store::now_ms(), owner],
        )
        .await?
        .at(0)?;
    Ok(OutboxRow { id, topic: record.topic, key: record.key, payload: record.payload, headers })
}

/// Deletes the outbox rows `ids` (published ones) in the caller's transaction.
pub async fn delete_from_outbox(conn: &mut Conn<'_>, ids: &[i64]) -> Result<(), sqlx::Error> {
    if ids.is_empty() {
        return Ok(());
    }
    // One statement text for any number of ids, so it is prepared once per connection (a text
    // per list would be parsed every time and crowd the statement cache).
    let list = format!("[{}]", ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
    let sql = match conn.backend() {
        Backend::Postgres => "DELETE FROM outbox WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb)::bigint)",
        Backend::Sqlite => "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each($1))",
    };
    conn.execute(sql, args![&list]).await?;
    Ok(())
}

/// Deletes inbox rows received before `cutoff_ms` (ms since epoch); returns how many.
///
/// The inbox is the dedupe window: a message redelivered after its row is gone is applied again,
/// so the window must be longer than any redelivery (consumer lag, redrive). Business keys
/// (reservation and authorization per order, one order per id, one saga per order) still make
/// such a late duplicate harmless in every handler of this system.
pub async fn prune_inbox(db: &saga_store::Db, cutoff_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM inbox WHERE received_at_ms < $1").bind(cutoff_ms).execute(db.pool()).await?;
    Ok(done.rows_affected())
}

/// Rows waiting in the outbox, and the age of the oldest in milliseconds.
pub async fn backlog(db: &saga_store::Db) -> Result<(i64, i64), sqlx::Error> {
    let (count, oldest): (i64, Option<i64>) = sqlx::query_as("SELECT COUNT(*), MIN(created_at_ms) FROM outbox").fetch_one(db.pool()).await?;
    Ok((count, oldest.map(|t| saga_store::now_ms() - t).unwrap_or(0)))
}
