//! Rebuild by replay: every topic the projection reads, from offset 0, into a fresh copy of the
//! read model (a SQLite file beside the live one, or a schema of its own on PostgreSQL); then,
//! with the live model's writers held off, the copy catches up to exactly where the live model
//! stands and replaces its views and history in one transaction. Readers keep the old rows until
//! that transaction commits; the live service waits while it runs, then goes on from where it
//! was, on the new rows.
//!
//! For a projection change that the stored facts cannot serve (`--rebuild` refolds those); runs
//! beside the live service: `saga-query --replay`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use saga_contracts::Topics;
use saga_runtime::codec::{Codec, DecodeError};
use saga_runtime::{Incoming, ServiceSettings};
use saga_store::{Backend, Conn, Db};
use sqlx::Acquire as _;

use crate::{store, CONSUMES};

/// The PostgreSQL schema the copy is built in (spelled out in the statements below).
pub const REPLAY_SCHEMA: &str = "saga_query_replay";

/// Records per transaction of the copy.
const BATCH: usize = 500;

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read from the topics and applied to the copy.
    pub applied: u64,
    /// Records that could not be read (the live service dead-lettered them too).
    pub unreadable: u64,
    /// Orders in the model after the switch.
    pub orders: i64,
    /// Wall time, ms.
    pub elapsed_ms: u128,
}

/// Why a replay failed; the live model is then unchanged.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// A database failed.
    #[error("database: {0}")]
    Store(#[from] sqlx::Error),
    /// The copy's database could not be opened.
    #[error("the copy's database: {0}")]
    Open(String),
    /// The broker failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The registry could not be reached.
    #[error("schema registry: {0}")]
    Registry(String),
    /// A SQLite model in memory has no file to copy beside.
    #[error("a replay needs the read model in a SQLite file or on PostgreSQL")]
    NoFile,
    /// The topics ended before the live model's positions.
    #[error("the topics did not reach the live model's positions within {0:?}: {1}")]
    Stalled(Duration, String),
}

/// Replays the topics into a fresh copy and switches the live model `live` to it.
pub async fn replay(settings: &ServiceSettings, live: &Db) -> Result<ReplayReport, ReplayError> {
    let started = Instant::now();
    let copy = open_copy(settings, live).await?;
    let codec = Arc::new(Codec::connect(&settings.registry).map_err(|e| ReplayError::Registry(e.to_string()))?);
    let topics = Topics::new(settings.topics.prefix.clone());
    let mut reader = Reader::new(settings, &topics, codec)?;

    // Up to where the live model stands now; it moves on meanwhile.
    let mut applied = 0;
    let target = store::positions(live).await?;
    applied += reader.apply_until(&copy, &target).await?;

    // Hold the live model's writers off, catch up to where it stands then, and switch.
    let report = match live.backend() {
        Backend::Sqlite => switch_sqlite(live, &copy, &mut reader).await?,
        Backend::Postgres => switch_postgres(live, &mut reader, &copy).await?,
    };
    applied += report;
    copy.close().await;
    if live.backend() == Backend::Postgres {
        sqlx::query("DROP SCHEMA IF EXISTS saga_query_replay CASCADE").execute(live.pool()).await?;
    } else if let Some(file) = copy_file(live) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
        }
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM order_view").fetch_one(live.pool()).await?;
    Ok(ReplayReport { applied, unreadable: reader.unreadable, orders, elapsed_ms: started.elapsed().as_millis() })
}

fn copy_file(live: &Db) -> Option<std::path::PathBuf> {
    live.direct_sqlite_file().map(|f| {
        let mut name = f.as_os_str().to_owned();
        name.push(".replay");
        name.into()
    })
}

/// A fresh, migrated copy of the model.
async fn open_copy(settings: &ServiceSettings, live: &Db) -> Result<Db, ReplayError> {
    let url = match live.backend() {
        Backend::Sqlite => {
            let file = copy_file(live).ok_or(ReplayError::NoFile)?;
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
            format!("sqlite://{}", file.display())
        }
        Backend::Postgres => {
            sqlx::query("DROP SCHEMA IF EXISTS saga_query_replay CASCADE").execute(live.pool()).await?;
            sqlx::query("CREATE SCHEMA saga_query_replay").execute(live.pool()).await?;
            // Every connection of the copy's pool resolves table names in its schema.
            let sep = if settings.database.url.contains('?') { '&' } else { '?' };
            format!("{}{sep}options=-c%20search_path%3D{REPLAY_SCHEMA}", settings.database.url)
        }
    };
    saga_runtime::service::open_database(&url, 4, &crate::MIGRATIONS).await.map_err(|e| ReplayError::Open(e.to_string()))
}

/// Reads the projection's topics from offset 0, in order per partition.
struct Reader {
    consumer: StreamConsumer,
    codec: Arc<Codec>,
    topics: Topics,
    /// Next offset to read, per partition read so far.
    next: BTreeMap<(String, i32), i64>,
    unreadable: u64,
}

impl Reader {
    fn new(settings: &ServiceSettings, topics: &Topics, codec: Arc<Codec>) -> Result<Reader, ReplayError> {
        let group = format!("{}.replay", settings.kafka.group_id);
        let consumer: StreamConsumer = saga_runtime::kafka::reader_config(&settings.kafka, "saga-query-replay", &group).create()?;
        let mut assignment = TopicPartitionList::new();
        for kind in CONSUMES {
            let topic = topics.name(*kind);
            let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(10))?;
            for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
                assignment.add_partition_offset(&topic, p.id(), Offset::Beginning)?;
            }
        }
        consumer.assign(&assignment)?;
        Ok(Reader { consumer, codec, topics: topics.clone(), next: BTreeMap::new(), unreadable: 0 })
    }

    fn reached(&self, target: &[(String, i32, i64)]) -> bool {
        target.iter().all(|(t, p, n)| self.next.get(&(t.clone(), *p)).copied().unwrap_or(0) >= *n)
    }

    /// Applies records to `copy` until every partition of `target` is read up to its offset.
    async fn apply_until(&mut self, copy: &Db, target: &[(String, i32, i64)]) -> Result<u64, ReplayError> {
        let mut applied = 0;
        let quiet = Duration::from_secs(30);
        while !self.reached(target) {
            let mut batch = Vec::new();
            // The first record waits; the rest of a batch is what is already there.
            let first = tokio::time::timeout(quiet, self.consumer.stream().next()).await;
            let first = match first {
                Ok(Some(r)) => r?,
                Ok(None) => break,
                Err(_) => {
                    let behind: Vec<String> = target
                        .iter()
                        .filter(|(t, p, n)| self.next.get(&(t.clone(), *p)).copied().unwrap_or(0) < *n)
                        .map(|(t, p, n)| format!("{t}:{p} at {} of {n}", self.next.get(&(t.clone(), *p)).copied().unwrap_or(0)))
                        .collect();
                    return Err(ReplayError::Stalled(quiet, behind.join(", ")));
                }
            };
            batch.push(first.detach());
            while batch.len() < BATCH {
                match tokio::time::timeout(Duration::from_millis(1), self.consumer.stream().next()).await {
                    Ok(Some(r)) => batch.push(r?.detach()),
                    _ => break,
                }
            }
            let mut incoming = Vec::with_capacity(batch.len());
            for record in &batch {
                let topic = record.topic().to_string();
                self.next.insert((topic.clone(), record.partition()), record.offset() + 1);
                let Some(kind) = self.topics.kind_of(&topic) else { continue };
                loop {
                    match self.codec.decode(kind, record.payload()).await {
                        Ok(message) => {
                            incoming.push(Incoming {
                                topic: topic.clone(),
                                partition: record.partition(),
                                offset: record.offset(),
                                message,
                                trace: Vec::new(),
                            });
                            break;
                        }
                        Err(DecodeError::Poison { .. }) => {
                            self.unreadable += 1;
                            break;
                        }
                        Err(DecodeError::Retryable(why)) => {
                            tracing::warn!(%why, "schema registry unavailable during the replay; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }
            let mut c = copy.pool().acquire().await?;
            let mut tx = c.begin().await?;
            for i in &incoming {
                store::apply(&mut Conn::Sqlx(&mut tx), i).await?;
            }
            tx.commit().await?;
            applied += incoming.len() as u64;
        }
        Ok(applied)
    }
}

/// SQLite: `BEGIN IMMEDIATE` on the live file holds its writer off (it waits, up to its busy
/// timeout, then retries its batch); the copy catches up to the positions read under the lock;
/// its views and history replace the live ones in that transaction. (The copy is not attached:
/// `BEGIN IMMEDIATE` would lock an attached file too, and the copy is written while it runs.)
async fn switch_sqlite(live: &Db, copy: &Db, reader: &mut Reader) -> Result<u64, ReplayError> {
    let mut conn = live.pool().acquire().await?;
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let switched = async {
        let target = positions_on(&mut conn).await?;
        let applied = reader.apply_until(copy, &target).await?;
        copy_rows(copy, &mut conn).await?;
        store::record_version(&mut Conn::Sqlx(&mut conn)).await?;
        Ok::<u64, ReplayError>(applied)
    }
    .await;
    match switched {
        Ok(applied) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(applied)
        }
        Err(e) => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}

/// Replaces the views and history on `live` (in its open transaction) with the copy's rows.
async fn copy_rows(copy: &Db, live: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    const PAGE: i64 = 2000;
    let mut live = Conn::Sqlx(live);
    live.execute("DELETE FROM order_view", &[]).await?;
    live.execute("DELETE FROM order_history", &[]).await?;
    let mut c = copy.pool().acquire().await?;
    let mut from = Conn::Sqlx(&mut c);
    let mut after = String::new();
    loop {
        let rows = from
            .fetch_all(
                "SELECT order_id, customer_id, status, created_at_ms, updated_at_ms, view FROM order_view WHERE order_id > $1 ORDER BY order_id LIMIT $2",
                saga_store::args![after.as_str(), PAGE],
            )
            .await?;
        for r in &rows {
            let (id, customer, status, view): (String, String, String, String) = (r.get("order_id")?, r.get("customer_id")?, r.get("status")?, r.get("view")?);
            let (created, updated): (i64, i64) = (r.get("created_at_ms")?, r.get("updated_at_ms")?);
            live.execute(
                "INSERT INTO order_view (order_id, customer_id, status, created_at_ms, updated_at_ms, view) VALUES ($1, $2, $3, $4, $5, $6)",
                saga_store::args![&id, &customer, &status, created, updated, &view],
            )
            .await?;
            after = id;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    let mut after = String::new();
    loop {
        let rows = from
            .fetch_all(
                "SELECT message_id, order_id, message_type, topic, kafka_partition, kafka_offset, occurred_at_ms, applied_at_ms, saga_id, causation_id, fact \
                 FROM order_history WHERE message_id > $1 ORDER BY message_id LIMIT $2",
                saga_store::args![after.as_str(), PAGE],
            )
            .await?;
        for r in &rows {
            let message_id: String = r.get("message_id")?;
            let (order_id, message_type, topic, fact): (String, String, String, String) =
                (r.get("order_id")?, r.get("message_type")?, r.get("topic")?, r.get("fact")?);
            let (partition, offset, occurred, applied): (i32, i64, i64, i64) =
                (r.get("kafka_partition")?, r.get("kafka_offset")?, r.get("occurred_at_ms")?, r.get("applied_at_ms")?);
            let (saga_id, causation_id): (Option<String>, Option<String>) = (r.get("saga_id")?, r.get("causation_id")?);
            live.execute(
                "INSERT INTO order_history (message_id, order_id, message_type, topic, kafka_partition, kafka_offset, occurred_at_ms, applied_at_ms, saga_id, causation_id, fact) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                saga_store::args![&message_id, &order_id, &message_type, &topic, partition, offset, occurred, applied, saga_id.as_deref(), causation_id.as_deref(), &fact],
            )
            .await?;
            after = message_id;
        }
        if (rows.len() as i64) < PAGE {
            break;
        }
    }
    Ok(())
}

/// PostgreSQL: an EXCLUSIVE lock on the live tables holds writers off and lets readers on; the
/// copy (in its own schema) catches up to the positions read under the lock; its views and
/// history replace the live ones in that transaction.
async fn switch_postgres(live: &Db, reader: &mut Reader, copy: &Db) -> Result<u64, ReplayError> {
    let mut conn = live.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("LOCK TABLE order_view, order_history, projection_position IN EXCLUSIVE MODE").execute(&mut *tx).await?;
    let target = positions_on(&mut tx).await?;
    let applied = reader.apply_until(copy, &target).await?;
    for statement in [
        "DELETE FROM order_view",
        "INSERT INTO order_view SELECT * FROM saga_query_replay.order_view",
        "DELETE FROM order_history",
        "INSERT INTO order_history SELECT * FROM saga_query_replay.order_history",
    ] {
        sqlx::query(statement).execute(&mut *tx).await?;
    }
    store::record_version(&mut Conn::Sqlx(&mut tx)).await?;
    tx.commit().await?;
    Ok(applied)
}

async fn positions_on(conn: &mut sqlx::AnyConnection) -> Result<Vec<(String, i32, i64)>, sqlx::Error> {
    let rows = Conn::Sqlx(conn).fetch_all("SELECT topic, kafka_partition, next_offset FROM projection_position", &[]).await?;
    rows.iter().map(|r| Ok((r.get("topic")?, r.get("kafka_partition")?, r.get("next_offset")?))).collect()
}
