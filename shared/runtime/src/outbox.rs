//! The inbox (dedupe) and outbox (durable intent to publish) tables shared by every service.

use saga_contracts::{Message, Topics};
use sqlx::AnyConnection;

use crate::codec::{Codec, EncodeError};

/// Migrations of the inbox and outbox tables (versions 1000–1999).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations {
    sqlite: &sqlx::migrate!("./migrations/sqlite"),
    postgres: &sqlx::migrate!("./migrations/postgres"),
};

/// Records a message as handled. Returns false when it was handled before: the caller must then
/// apply nothing.
pub async fn record_in_inbox(
    conn: &mut AnyConnection,
    message: &Message,
    topic: &str,
    partition: i32,
    offset: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO inbox (message_id, message_type, topic, kafka_partition, kafka_offset, received_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(&message.envelope().message_id)
    .bind(message.full_name())
    .bind(topic)
    .bind(partition)
    .bind(offset)
    .bind(saga_store::now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
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

/// Writes an outgoing message, encoded, into the outbox in the caller's transaction. It is
/// published to its topic, keyed by its order id, after the transaction commits.
pub async fn write_to_outbox(
    conn: &mut AnyConnection,
    codec: &Codec,
    topics: &Topics,
    message: &Message,
    headers: &[(String, String)],
) -> Result<(), OutboxError> {
    let payload = codec.encode(message).await?;
    let mut all_headers = vec![
        ("message_id".to_string(), message.envelope().message_id.clone()),
        ("message_type".to_string(), message.full_name().to_string()),
    ];
    all_headers.extend(headers.iter().cloned());
    let headers = serde_json::to_string(&all_headers).expect("string pairs always serialize");
    sqlx::query(
        "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, created_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&message.envelope().message_id)
    .bind(message.full_name())
    .bind(topics.name(message.topic_kind()))
    .bind(message.order_id())
    .bind(payload)
    .bind(headers)
    .bind(saga_store::now_ms())
    .execute(&mut *conn)
    .await?;
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
    let (count, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(created_at_ms) FROM outbox").fetch_one(db.pool()).await?;
    Ok((count, oldest.map(|t| saga_store::now_ms() - t).unwrap_or(0)))
}
