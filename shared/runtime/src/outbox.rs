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
            args![&message.envelope().message_id, message.full_name(), topic, partition, offset, saga_contracts::now_ms()],
        )
        .await?;
    Ok(done == 1)
}

/// One consumed record, as the inbox keeps it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct InboxEntry<'a> {
    /// Its message id (the idempotency key).
    pub message_id: &'a str,
    /// Its Avro full name.
    pub message_type: &'a str,
    /// Where it was read.
    pub topic: &'a str,
    /// Partition there.
    pub kafka_partition: i32,
    /// Offset there.
    pub kafka_offset: i64,
}

/// Records a batch of consumed messages in the inbox, in the caller's transaction: for each
/// entry, true when it is new (false when the inbox held its id, or an earlier entry of the batch
/// had it). PostgreSQL gets one statement for the whole batch (each statement is a round trip
/// there), or a few when the batch is large, see [`JSON_BUDGET`]); SQLite, whose statements run
/// in-process, one prepared statement per entry.
pub async fn record_all_in_inbox(conn: &mut Conn<'_>, entries: &[InboxEntry<'_>]) -> Result<Vec<bool>, sqlx::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    if conn.backend() == Backend::Postgres && entries.len() > 1 {
        let mut new = std::collections::HashSet::with_capacity(entries.len());
        for json in json_arrays(entries) {
            let inserted = conn
                .fetch_all(
                    "INSERT INTO inbox (message_id, message_type, topic, kafka_partition, kafka_offset, received_at_ms) \
                     SELECT r.message_id, r.message_type, r.topic, r.kafka_partition, r.kafka_offset, $2 \
                     FROM jsonb_to_recordset($1::jsonb) AS r(message_id text, message_type text, topic text, kafka_partition integer, kafka_offset bigint) \
                     ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
                    args![&json, saga_contracts::now_ms()],
                )
                .await?;
            for row in inserted {
                new.insert(row.at::<String>(0)?);
            }
        }
        // The first entry with an id takes it; a repeat within the batch is a duplicate.
        return Ok(entries.iter().map(|e| new.remove(e.message_id)).collect());
    }
    let mut fresh = Vec::with_capacity(entries.len());
    for e in entries {
        let done = conn
            .execute(
                "INSERT INTO inbox (message_id, message_type, topic, kafka_partition, kafka_offset, received_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (message_id) DO NOTHING",
                args![e.message_id, e.message_type, e.topic, e.kafka_partition, e.kafka_offset, saga_contracts::now_ms()],
            )
            .await?;
        fresh.push(done == 1);
    }
    Ok(fresh)
}

/// Largest JSON text sent in one statement. sqlx does not set `TCP_NODELAY`: a statement of more
/// than about 16 KiB leaves in several writes, and the last waits for the server's delayed ACK.
/// Measured on PostgreSQL 15 over loopback: outbox statements of 16-32 KiB took 43 ms (median),
/// of 8-16 KiB 0.25 ms.
const JSON_BUDGET: usize = 12 * 1024;

/// `items` as JSON arrays of at most [`JSON_BUDGET`] bytes each (an item larger than that alone),
/// in order.
fn json_arrays<T: serde::Serialize>(items: &[T]) -> Vec<String> {
    let mut arrays = Vec::new();
    let mut current = String::from("[");
    for item in items {
        let json = serde_json::to_string(item).expect("plain structs always serialize");
        if current.len() > 1 && current.len() + json.len() + 1 > JSON_BUDGET {
            current.push(']');
            arrays.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&json);
    }
    if current.len() > 1 {
        current.push(']');
        arrays.push(current);
    }
    arrays
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
    let out = outgoing(codec, topics, message, headers).await?;
    Ok(write_record_to_outbox(conn, out.record, &out.message_id, out.message_type, owner).await?)
}

/// A message encoded for the outbox, not written yet.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// What to publish.
    pub record: Record,
    /// Its message id.
    pub message_id: String,
    /// Its Avro full name.
    pub message_type: &'static str,
}

/// Encodes `message` for the outbox, with its `message_id` and `message_type` headers and
/// `headers` (trace context).
pub async fn outgoing(codec: &Codec, topics: &Topics, message: &Message, headers: &[(String, String)]) -> Result<Outgoing, OutboxError> {
    let payload = codec.encode(message).await?;
    let message_id = message.envelope().message_id.clone();
    let mut all_headers = Vec::with_capacity(headers.len() + 2);
    all_headers.push(("message_id".to_string(), message_id.clone()));
    all_headers.push(("message_type".to_string(), message.full_name().to_string()));
    all_headers.extend(headers.iter().cloned());
    let record = Record { topic: topics.name(message.topic_kind()), key: message.order_id().to_string(), payload, headers: all_headers };
    Ok(Outgoing { record, message_id, message_type: message.full_name() })
}

/// Writes `all` into the outbox in the caller's transaction, in order (ids ascending), and
/// returns their rows; `owner` as in [`write_to_outbox`]. PostgreSQL gets one statement for all
/// of them; SQLite one prepared statement each.
pub async fn write_all_to_outbox(conn: &mut Conn<'_>, all: Vec<Outgoing>, owner: Option<&str>) -> Result<Vec<OutboxRow>, sqlx::Error> {
    if conn.backend() == Backend::Sqlite || all.len() < 2 {
        let mut rows = Vec::with_capacity(all.len());
        for out in all {
            rows.push(write_record_to_outbox(conn, out.record, &out.message_id, out.message_type, owner).await?);
        }
        return Ok(rows);
    }
    #[derive(serde::Serialize)]
    struct Line<'a> {
        i: usize,
        message_id: &'a str,
        message_type: &'a str,
        topic: &'a str,
        msg_key: &'a str,
        payload: String,
        headers: &'a str,
    }
    let headers: Vec<String> = all.iter().map(|o| serde_json::to_string(&o.record.headers).expect("string pairs always serialize")).collect();
    let lines: Vec<Line<'_>> = all
        .iter()
        .zip(&headers)
        .enumerate()
        .map(|(i, (o, h))| Line {
            i,
            message_id: &o.message_id,
            message_type: o.message_type,
            topic: &o.record.topic,
            msg_key: &o.record.key,
            payload: hex(&o.record.payload),
            headers: h,
        })
        .collect();
    let mut ids = Vec::with_capacity(all.len());
    for json in json_arrays(&lines) {
        // Rows are inserted in `i` order, so their ids ascend in it: the relay publishes by id.
        let inserted = conn
            .fetch_all(
                "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, created_at_ms, owner) \
                 SELECT r.message_id, r.message_type, r.topic, r.msg_key, decode(r.payload, 'hex'), r.headers, $2, $3 \
                 FROM jsonb_to_recordset($1::jsonb) AS r(i bigint, message_id text, message_type text, topic text, msg_key text, payload text, headers text) \
                 ORDER BY r.i RETURNING id, message_id",
                args![&json, saga_contracts::now_ms(), owner],
            )
            .await?;
        let mut chunk = Vec::with_capacity(inserted.len());
        for row in inserted {
            chunk.push((row.at::<i64>(0)?, row.at::<String>(1)?));
        }
        chunk.sort_unstable_by_key(|(id, _)| *id);
        ids.extend(chunk);
    }
    if ids.len() != all.len() || ids.iter().zip(&all).any(|((_, mid), o)| *mid != o.message_id) {
        return Err(sqlx::Error::Protocol(format!("the outbox returned {} ids for {} rows, or out of order", ids.len(), all.len())));
    }
    Ok(all
        .into_iter()
        .zip(ids)
        .zip(headers)
        .map(|((o, (id, _)), headers)| OutboxRow { id, topic: o.record.topic, key: o.record.key, payload: o.record.payload, headers })
        .collect())
}

/// Lower-case hexadecimal, as PostgreSQL's `decode(_, 'hex')` reads it.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
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
            args![message_id, message_type, &record.topic, &record.key, &record.payload, &headers, saga_contracts::now_ms(), owner],
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
    Ok((count, oldest.map(|t| saga_contracts::now_ms() - t).unwrap_or(0)))
}
