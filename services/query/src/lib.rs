//! The query service: the read side of the system (CQRS). It projects the order, inventory and
//! payment events (and the clients' `PlaceOrder` commands) into a read model of orders, and
//! answers `GET /orders/...` from it, never from the write side's tables.
//!
//! # Layout
//! - [`model`]: the view of one order folded from its facts (pure; order-independent).
//! - [`store`]: the tables: applying a record in the consumer's transaction, and the queries.
//! - [`api`]: the HTTP JSON API and its OpenAPI document.
//! - [`lag`]: how far the model is behind the topics.
//! - [`replay`]: rebuild by replay: the topics from offset 0 into a fresh copy, then a switch.
//! - this file: the [`QueryHandler`] the runtime drives.
//!
//! Delivery: see `saga-runtime`. Each batch of records is applied in one transaction with the
//! inbox rows; positions (next offset per partition) are stored in the same transaction, so
//! "reflects at least this record" is a question the database answers.

pub mod api;
pub mod lag;
pub mod model;
pub mod replay;
pub mod store;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use saga_contracts::{Message, TopicKind};
use saga_runtime::{HandleError, Handler, Incoming, Observed};
use saga_store::Conn;

/// Migrations of the read model (versions 2400–2499).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations"), postgres: &sqlx::migrate!("./migrations") };

/// The topics the projection reads.
pub const CONSUMES: &[TopicKind] = &[TopicKind::OrderCommands, TopicKind::OrderEvents, TopicKind::InventoryEvents, TopicKind::PaymentEvents];

/// What readers share with the projection: that a batch committed, and the newest event applied.
#[derive(Debug)]
pub struct Progress {
    /// Bumped after every committed batch; long-polling readers wait on it.
    committed: tokio::sync::watch::Sender<u64>,
    /// `occurred_at_ms` of the newest message applied (0 before any).
    newest_event_ms: AtomicI64,
}

impl Default for Progress {
    fn default() -> Self {
        Progress { committed: tokio::sync::watch::channel(0).0, newest_event_ms: AtomicI64::new(0) }
    }
}

impl Progress {
    /// A receiver that sees the next committed batch.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.committed.subscribe()
    }

    /// `occurred_at_ms` of the newest message applied, if any.
    pub fn newest_event_ms(&self) -> Option<i64> {
        Some(self.newest_event_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    fn batch_committed(&self, newest: Option<i64>) {
        if let Some(t) = newest {
            self.newest_event_ms.fetch_max(t, Ordering::Relaxed);
        }
        self.committed.send_modify(|n| *n += 1);
    }
}

/// The projection, as the runtime drives it.
pub struct QueryHandler {
    progress: Arc<Progress>,
    lag: Arc<lag::LagWatch>,
    api: api::ApiSettings,
}

impl QueryHandler {
    /// A projection whose lag is measured against the partitions of `topics` on the broker of `kafka`.
    pub fn new(lag: lag::LagWatch, api: api::ApiSettings) -> QueryHandler {
        QueryHandler { progress: Arc::default(), lag: Arc::new(lag), api }
    }

    /// What the API reads besides the database (to serve it from another process's router).
    pub fn reader(&self, db: saga_store::Db) -> api::Reader {
        api::Reader { db, progress: self.progress.clone(), lag: self.lag.clone(), settings: self.api.clone() }
    }
}

impl Handler for QueryHandler {
    const SERVICE: &'static str = "query";

    /// `occurred_at_ms` of each applied message.
    type Note = i64;

    fn consumes(&self) -> &'static [TopicKind] {
        CONSUMES
    }

    fn produces(&self) -> &'static [&'static str] {
        &[]
    }

    async fn handle(&self, conn: &mut Conn<'_>, incoming: &Incoming, notes: &mut Vec<i64>) -> Result<Vec<Message>, HandleError> {
        store::apply(conn, incoming).await?;
        notes.push(incoming.message.envelope().occurred_at_ms);
        Ok(vec![])
    }

    fn committed(&self, notes: Vec<i64>) {
        self.progress.batch_committed(notes.into_iter().max());
    }
}

impl Observed for QueryHandler {
    fn register_metrics(&self, registry: &saga_runtime::prometheus::Registry) {
        self.lag.register(registry);
    }

    async fn refresh_gauges(&self, db: &saga_store::Db) {
        self.lag.refresh(db, self.progress.newest_event_ms()).await;
    }

    fn http_routes(&self, db: &saga_store::Db) -> Option<axum::Router> {
        Some(api::router(self.reader(db.clone())))
    }

    fn gauge_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }

    fn readiness_details(&self) -> Option<serde_json::Value> {
        Some(serde_json::json!({ "projection": self.lag.last() }))
    }
}

/// Where the orchestrator's saga view is, for the links of each order (`http://host:port`).
pub const SAGA_VIEW_URL_ENV: &str = "SAGA_QUERY_SAGA_VIEW_URL";

/// Builds the handler for the service binary: refuses a model another projection version built,
/// and measures lag against the topics it consumes.
pub async fn make(settings: &saga_runtime::ServiceSettings, db: &saga_store::Db) -> Result<QueryHandler, saga_runtime::ServiceError> {
    store::check_version(db).await.map_err(|e| saga_runtime::ServiceError::Refused(e.to_string()))?;
    let topics = saga_contracts::Topics::new(settings.topics.prefix.clone());
    let lag = lag::LagWatch::new(&settings.kafka, CONSUMES.iter().map(|k| topics.name(*k)).collect())
        .map_err(|e| saga_runtime::ServiceError::Kafka(saga_runtime::kafka::KafkaSetupError::from(e)))?;
    let saga_view_url = std::env::var(SAGA_VIEW_URL_ENV).ok().filter(|u| !u.is_empty());
    Ok(QueryHandler::new(lag, api::ApiSettings { saga_view_url }))
}

/// The arguments of `saga-query`.
#[derive(Debug, clap::Parser)]
#[command(about = "The read side of the order saga system: orders projected from the event stream, served over HTTP.")]
struct QueryArgs {
    #[command(flatten)]
    service: saga_runtime::service::ServiceArgs,
    /// Refold every order's view from the stored history in one transaction (queries keep the
    /// old views until it commits), record this code's projection version, and exit.
    #[arg(long, conflicts_with = "replay")]
    rebuild: bool,
    /// Replay the topics from offset 0 into a fresh copy of the read model, then replace the
    /// live views and history with it in one transaction (queries keep the old ones until then;
    /// a running saga-query waits during the switch), and exit. Runs beside the live service.
    #[arg(long)]
    replay: bool,
}

/// The whole `main` of `saga-query`.
pub async fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    let args = QueryArgs::parse();
    if !args.rebuild && !args.replay {
        return saga_runtime::service::service_main(make, &MIGRATIONS, |s| Ok(s.observed())).await;
    }
    let rebuilt = async {
        let _telemetry = saga_runtime::telemetry::init(QueryHandler::SERVICE)?;
        let settings = saga_runtime::ServiceSettings::load(QueryHandler::SERVICE, args.service.config.as_deref())?;
        let db = saga_runtime::service::open_database(&settings.database.url, 2, &MIGRATIONS).await?;
        let said = if args.replay {
            let r = replay::replay(&settings, &db).await?;
            format!(
                "replayed {} records ({} unreadable, skipped as the service dead-lettered them) into a fresh copy and switched to it: {} orders, in {} ms",
                r.applied, r.unreadable, r.orders, r.elapsed_ms
            )
        } else {
            let n = store::rebuild(&db).await?;
            format!("rebuilt the read model of {n} orders from their history (projection version {})", store::PROJECTION_VERSION)
        };
        db.close().await;
        Ok::<String, Box<dyn std::error::Error>>(said)
    };
    match rebuilt.await {
        Ok(said) => {
            println!("{said}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: rebuilding the read model: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
