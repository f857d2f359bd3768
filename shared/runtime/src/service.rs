//! A service assembled from its handler: database, codec, consumer, relay; and the capabilities
//! some handlers add when they are built ([`Service::with_deadlines`],
//! [`Service::with_dead_letter_watch`], [`Service::observed`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use saga_contracts::Topics;
use saga_store::{Db, Migrations};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::codec::Codec;
use crate::config::{Section, ServiceSettings};
use crate::consumer::ConsumeLoop;
use crate::dlt::DeadLetters;
use crate::handler::{Deadlines, Handler, Observed, WatchesDeadLetters};
use crate::kafka::{self, LoggingContext};
use crate::metrics::Metrics;
use crate::read_through::ReadThrough;
use crate::relay::{HandOff, Relay};

/// Why a service could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The database could not be opened or migrated.
    #[error("database {url}: {source}")]
    Database {
        /// The URL, password hidden.
        url: String,
        /// What failed.
        source: saga_store::StoreError,
    },
    /// The Kafka client could not be created.
    #[error(transparent)]
    Kafka(#[from] kafka::KafkaSetupError),
    /// The registry client could not be created.
    #[error("schema registry client: {0}")]
    Registry(String),
    /// A background task (relay, inbox janitor, deadlines, dead-letter watch, HTTP, the consume
    /// loop itself) ended or panicked while nothing asked it to stop: the service stopped, so
    /// that it is restarted, rather than run on without it.
    #[error("{0}; the service stopped so that it is restarted")]
    TaskFailed(String),
    /// The handler refused to start (a read model built by another version of its code).
    #[error("{0}")]
    Refused(String),
    /// The health endpoint's address could not be bound.
    #[error("http.bind {addr}: {source}")]
    Http {
        /// The configured address.
        addr: String,
        /// Why binding failed.
        source: std::io::Error,
    },
}

/// Opens a service database and runs its migrations: the inbox and outbox, then `migrations`.
pub async fn open_database(url: &str, max_connections: u32, migrations: &Migrations) -> Result<Db, ServiceError> {
    let db_error = |source| ServiceError::Database { url: saga_store::redact_url(url), source };
    let db = Db::connect(url, max_connections).await.map_err(db_error)?;
    db.migrate(&crate::outbox::MIGRATIONS).await.map_err(db_error)?;
    db.migrate(migrations).await.map_err(db_error)?;
    Ok(db)
}

/// A built service, ready to run.
pub struct Service<H: Handler> {
    handler: Arc<H>,
    settings: ServiceSettings,
    db: Db,
    codec: Arc<Codec>,
    producer: FutureProducer,
    consumer: StreamConsumer<LoggingContext>,
    topics: Topics,
    http: Option<tokio::net::TcpListener>,
    metrics: Metrics,
    /// Set while a fatal database error holds the consume loop still.
    halt: Arc<crate::health::Halt>,
    /// Set when a supervised task failed and the service stops.
    failed: Arc<crate::health::Halt>,
    /// The handler's own HTTP routes ([`Service::observed`]).
    routes: Option<axum::Router>,
    /// The handler's gauge refresh loop ([`Service::observed`]), started with the health tasks.
    gauges: Option<GaugeTask>,
    /// What the handler adds to `/readyz` ([`Service::observed`]).
    details: Option<crate::health::Details>,
    /// How far the consumer has read each partition it owns; the deadlines wait for it.
    read_through: Arc<ReadThrough>,
    /// Tasks the capabilities add beside the consume loop (deadlines, the dead-letter watch);
    /// started once schemas are registered, stopped before the relay.
    side: Vec<(&'static str, SideTask)>,
}

/// The handler's gauge refresh loop, given the database and when to stop.
type GaugeTask = Box<dyn FnOnce(Db, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// A task a capability runs beside the consume loop, given what it shares with it.
type SideTask = Box<dyn FnOnce(Side) -> BoxFuture<'static, ()> + Send>;

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// What a side task shares with the consume loop.
struct Side {
    db: Db,
    codec: Arc<Codec>,
    topics: Topics,
    outbox: Arc<HandOff>,
    read_through: Arc<ReadThrough>,
    stop: CancellationToken,
}

impl<H: Handler> Service<H> {
    /// Opens and migrates the database (inbox, outbox and `migrations`), creates the Kafka clients
    /// and subscribes. Nothing is consumed until [`Service::run_until_stopped`].
    pub async fn build(settings: ServiceSettings, handler: H, migrations: &Migrations) -> Result<Service<H>, ServiceError> {
        let db = open_database(&settings.database.url, settings.database.max_connections, migrations).await?;
        Self::build_with_db(settings, handler, db).await
    }

    /// Like [`Service::build`], with a database the caller opened and migrated.
    pub async fn build_with_db(settings: ServiceSettings, handler: H, db: Db) -> Result<Service<H>, ServiceError> {
        let topics = Topics::new(settings.topics.prefix.clone());
        let codec = Arc::new(Codec::connect(&settings.registry).map_err(|e| ServiceError::Registry(e.to_string()))?);
        let client_id = format!("saga-{}", H::SERVICE);
        let producer = kafka::producer(&settings.kafka, &client_id).map_err(kafka::KafkaSetupError::from)?;
        if settings.kafka.create_topics {
            kafka::create_topics(&settings.kafka, &topics.all_with_dlts()).await?;
        }
        let metrics = Metrics::new(H::SERVICE);
        let read_through = Arc::new(ReadThrough::new(Duration::from_millis(u64::from(settings.kafka.fetch_wait_max_ms))));
        let consumer: StreamConsumer<LoggingContext> = kafka::consumer_config(&settings.kafka, &client_id)
            .create_with_context(LoggingContext { service: H::SERVICE, metrics: Some(metrics.clone()), read_through: Some(read_through.clone()) })
            .map_err(kafka::KafkaSetupError::from)?;
        let names: Vec<String> = handler.consumes().iter().map(|k| topics.name(*k)).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(kafka::KafkaSetupError::from)?;
        let http = match settings.http.bind.as_str() {
            "" => None,
            addr => Some(crate::health::bind(addr).await.map_err(|source| ServiceError::Http { addr: addr.into(), source })?),
        };
        Ok(Service {
            handler: Arc::new(handler),
            settings,
            db,
            codec,
            producer,
            consumer,
            topics,
            http,
            metrics,
            halt: Arc::default(),
            failed: Arc::default(),
            routes: None,
            gauges: None,
            details: None,
            read_through,
            side: Vec::new(),
        })
    }

    /// Adds deadlines: every [`Deadlines::deadline_interval`], due work is fired in a transaction
    /// of its own, with what it emits written to the outbox.
    pub fn with_deadlines(mut self) -> Self
    where
        H: Deadlines,
    {
        let handler = self.handler.clone();
        self.side.push((
            "deadlines",
            Box::new(move |side: Side| {
                let timers = crate::timers::Timers {
                    interval: handler.deadline_interval(),
                    handler,
                    db: side.db,
                    codec: side.codec,
                    topics: side.topics,
                    outbox: side.outbox,
                    read_through: side.read_through,
                };
                Box::pin(timers.run(side.stop))
            }),
        ));
        self
    }

    /// Adds the dead-letter watch: every dead-letter topic of the system, followed in a consumer
    /// group of its own (`<group>.dead-letters`), each record handed to
    /// [`WatchesDeadLetters::on_dead_letter`].
    pub fn with_dead_letter_watch(mut self) -> Result<Self, ServiceError>
    where
        H: WatchesDeadLetters,
    {
        let mut kafka = self.settings.kafka.clone();
        kafka.group_id = format!("{}.dead-letters", self.settings.kafka.group_id);
        // A static member id (kafka.client group.instance.id) names this consumer in its own
        // group, distinct from the main consumer's.
        if let Some(id) = kafka.client.get("group.instance.id").cloned() {
            kafka.client.insert("group.instance.id".into(), format!("{id}.dead-letters"));
        }
        let consumer: StreamConsumer<LoggingContext> = kafka::consumer_config(&kafka, &format!("saga-{}-dead-letters", H::SERVICE))
            .create_with_context(LoggingContext::logging(H::SERVICE))
            .map_err(kafka::KafkaSetupError::from)?;
        let dlts: Vec<String> = self.topics.all_with_dlts().into_iter().filter(|t| t.ends_with(saga_contracts::topics::DLT_SUFFIX)).collect();
        let refs: Vec<&str> = dlts.iter().map(String::as_str).collect();
        consumer.subscribe(&refs).map_err(kafka::KafkaSetupError::from)?;
        let group = crate::rejoin::GroupWatch::new(dlts, Duration::from_millis(self.settings.consumer.rejoin_after_ms));
        let handler = self.handler.clone();
        self.side
            .push(("dead-letter watch", Box::new(move |side: Side| Box::pin(crate::timers::watch_dead_letters(handler, consumer, group, side.db, side.stop)))));
        Ok(self)
    }

    /// Adds the handler's own metrics (registered now), its gauges (refreshed every
    /// [`Observed::gauge_interval`] while the service runs), its HTTP routes (served beside the
    /// health endpoints) and its `/readyz` details.
    pub fn observed(mut self) -> Self
    where
        H: Observed,
    {
        self.handler.register_metrics(self.metrics.registry());
        self.routes = self.handler.http_routes(&self.db);
        let handler = self.handler.clone();
        self.details = Some(Arc::new(move || handler.readiness_details()));
        let handler = self.handler.clone();
        self.gauges = Some(Box::new(move |db: Db, stop: CancellationToken| {
            Box::pin(async move {
                loop {
                    handler.refresh_gauges(&db).await;
                    tokio::select! {
                        _ = tokio::time::sleep(handler.gauge_interval()) => {}
                        _ = stop.cancelled() => return,
                    }
                }
            })
        }));
        self
    }

    /// The instance's metrics (served at `/metrics` when the HTTP endpoints are on).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Where the health endpoints listen, when they are on.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.http.as_ref().and_then(crate::health::local_addr)
    }

    /// The service's database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs until `shutdown` is cancelled: registers schemas (waiting for the registry), then
    /// consumes and relays. On shutdown it finishes the batch in hand, commits offsets, drains the
    /// outbox and returns.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) -> Result<(), ServiceError> {
        // Every background task is supervised: one that ends or panics unasked stops the service.
        let (failed, mut failures) = tokio::sync::mpsc::unbounded_channel();
        let supervisor = Supervisor { failed };
        // Health first: while schemas cannot be registered, /readyz already says what is down.
        let health_stop = CancellationToken::new();
        let mut health_tasks = Vec::new();
        if let Some(listener) = self.http.take() {
            let readiness = Arc::new(crate::health::Readiness::new(self.halt.clone(), self.failed.clone()).with_details(self.details.take()));
            let extra = self.routes.take();
            health_tasks.push(supervisor.spawn(
                "HTTP endpoints",
                &health_stop,
                crate::health::serve(listener, readiness.clone(), self.metrics.clone(), extra, health_stop.clone()),
            ));
            health_tasks.push(supervisor.spawn(
                "readiness checks",
                &health_stop,
                crate::health::check_until(
                    readiness,
                    self.db.clone(),
                    self.settings.registry.clone(),
                    self.producer.clone(),
                    Duration::from_secs(5),
                    health_stop.clone(),
                ),
            ));
        }
        // Gauges read from the database (sagas by state), whether or not HTTP is on: an embedding
        // process (sagactl dev) serves the metrics itself.
        if let Some(gauges) = self.gauges.take() {
            health_tasks.push(supervisor.spawn("gauges", &health_stop, gauges(self.db.clone(), health_stop.clone())));
        }
        let result = self.run_services(shutdown, &supervisor, &mut failures).await;
        health_stop.cancel();
        for t in health_tasks {
            let _ = t.await;
        }
        result
    }

    async fn run_services(
        mut self,
        shutdown: CancellationToken,
        supervisor: &Supervisor,
        failures: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    ) -> Result<(), ServiceError> {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.codec.register(self.handler.produces()).await {
                Ok(()) => break,
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(service = H::SERVICE, error = %e, retry_in_ms = delay.as_millis() as u64, "schema registration failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => return Ok(()),
                    }
                }
            }
        }
        let handoff = HandOff::new(self.settings.relay.batch_size * 10);
        let relay = Relay {
            db: self.db.clone(),
            producer: self.producer.clone(),
            handoff: handoff.clone(),
            batch_size: self.settings.relay.batch_size,
            poll_interval: Duration::from_millis(self.settings.relay.poll_interval_ms),
            orphan_after: Duration::from_millis(self.settings.relay.orphan_after_ms),
            service: H::SERVICE,
            metrics: self.metrics.clone(),
        };
        let relay_stop = CancellationToken::new();
        let relay_task = supervisor.spawn("relay", &relay_stop, relay.run(relay_stop.clone()));
        let janitor = supervisor.spawn(
            "inbox janitor",
            &relay_stop,
            prune_inbox_until(self.db.clone(), Duration::from_secs(self.settings.consumer.inbox_retention_hours * 3600), H::SERVICE, relay_stop.clone()),
        );
        // Deadlines and dead letters write to the outbox, so they stop before the relay does.
        let side_stop = CancellationToken::new();
        let mut side_tasks = Vec::new();
        for (name, task) in std::mem::take(&mut self.side) {
            let side = Side {
                db: self.db.clone(),
                codec: self.codec.clone(),
                topics: self.topics.clone(),
                outbox: handoff.clone(),
                read_through: self.read_through.clone(),
                stop: side_stop.clone(),
            };
            side_tasks.push(supervisor.spawn(name, &side_stop, task(side)));
        }
        // On SQLite, each batch's transaction runs on a connection in a thread of its own.
        let writer = match self.db.writer(H::SERVICE) {
            None => None,
            Some(Ok(writer)) => Some(writer),
            Some(Err(e)) => {
                return Err(ServiceError::Database { url: saga_store::redact_url(&self.settings.database.url), source: saga_store::StoreError::Sqlx(e) })
            }
        };
        let failed = self.failed.clone();
        let consume = ConsumeLoop {
            handler: self.handler,
            consumer: self.consumer,
            db: self.db.clone(),
            codec: self.codec,
            topics: self.topics,
            dead_letters: DeadLetters { producer: self.producer, group_id: self.settings.kafka.group_id.clone() },
            group_id: self.settings.kafka.group_id.clone(),
            outbox: handoff,
            batch_size: self.settings.consumer.batch_size,
            rejoin_after: Duration::from_millis(self.settings.consumer.rejoin_after_ms),
            metrics: self.metrics,
            writer,
            halt: self.halt,
            read_through: self.read_through,
        };
        tracing::info!(service = H::SERVICE, "consuming");
        let consume_stop = CancellationToken::new();
        let consuming = supervisor.spawn("consume loop", &consume_stop, consume.run(consume_stop.clone()));
        let failure = tokio::select! {
            _ = shutdown.cancelled() => None,
            why = failures.recv() => why,
        };
        if let Some(why) = &failure {
            tracing::error!(service = H::SERVICE, failure = %why, "a background task failed; stopping (finishing the batch in hand) so that the service is restarted");
            // /readyz answers 503 with the reason for as long as the stop takes.
            failed.set(why);
        }
        consume_stop.cancel();
        let stopping = async {
            let _ = consuming.await;
            side_stop.cancel();
            for t in side_tasks {
                let _ = t.await;
            }
            // The consumer stopped and committed; let the relay publish what it committed last.
            relay_stop.cancel();
            let _ = relay_task.await;
            let _ = janitor.await;
        };
        match failure {
            None => {
                stopping.await;
                tracing::info!(service = H::SERVICE, "stopped");
                Ok(())
            }
            Some(why) => {
                // A failed service stops within a bounded grace, whatever it was waiting for.
                if tokio::time::timeout(FAILED_STOP_GRACE, stopping).await.is_err() {
                    tracing::error!(service = H::SERVICE, grace_s = FAILED_STOP_GRACE.as_secs(), "did not stop within the grace; exiting anyway");
                }
                Err(ServiceError::TaskFailed(why))
            }
        }
    }
}

/// How long a service whose background task failed takes at most to stop.
const FAILED_STOP_GRACE: Duration = Duration::from_secs(30);

/// Watches the service's background tasks: one that ends or panics while its stop token is not
/// cancelled reports why, and the service stops with [`ServiceError::TaskFailed`].
struct Supervisor {
    failed: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Supervisor {
    /// Spawns `task` under the name `name`; `stop` is the token that asks it to end.
    fn spawn(&self, name: &'static str, stop: &CancellationToken, task: impl std::future::Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        use futures::FutureExt as _;
        let (failed, stop) = (self.failed.clone(), stop.clone());
        tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(task).catch_unwind().await;
            if stop.is_cancelled() {
                return;
            }
            let why = match outcome {
                Ok(()) => format!("the {name} task ended while nothing asked it to"),
                Err(panic) => {
                    let message = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                    format!("the {name} task panicked: {message}")
                }
            };
            let _ = failed.send(why);
        })
    }
}

/// Deletes inbox rows older than `retention` every few minutes until `stop`.
async fn prune_inbox_until(db: Db, retention: Duration, service: &'static str, stop: CancellationToken) {
    let every = (retention / 10).clamp(Duration::from_secs(10), Duration::from_secs(300));
    loop {
        let cutoff = saga_contracts::now_ms() - retention.as_millis() as i64;
        match crate::outbox::prune_inbox(&db, cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(service, deleted = n, "pruned inbox rows past the dedupe window"),
            Err(e) => tracing::warn!(service, error = %e, "pruning the inbox failed; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Command-line arguments every service binary takes.
#[derive(Debug, clap::Parser)]
pub struct ServiceArgs {
    /// TOML configuration file; `SAGA_*` environment variables override it.
    #[arg(long, short, env = "SAGA_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// The whole `main` of a service binary: parse arguments, load settings, build, run until
/// Ctrl-C or SIGTERM. A bad setting stops startup with the key that is wrong.
///
/// An error that stops it is printed as a sentence with its causes (`error: invalid
/// configuration: kafka.partitions must be at least 1`), and the exit code is 1.
///
/// `make` builds the handler from the loaded settings and the opened, migrated database (it may
/// refuse: [`ServiceError::Refused`]); `add` adds the capabilities it uses (`Ok` for none; the
/// orchestrator's: `|s| s.observed().with_deadlines().with_dead_letter_watch()`).
pub async fn service_main<H: Handler>(
    make: impl AsyncFnOnce(&ServiceSettings, &Db) -> Result<H, ServiceError>,
    migrations: &Migrations,
    add: impl FnOnce(Service<H>) -> Result<Service<H>, ServiceError>,
) -> std::process::ExitCode {
    let load = |file: Option<&std::path::Path>| ServiceSettings::load(H::SERVICE, file).map(|s| (s, ()));
    exit_code(run_service::<H, ()>(load, async |settings, (), db| make(settings, db).await, migrations, add).await)
}

/// Like [`service_main`], for a service with settings of its own (a [`Section`], read from the
/// same file and variables), which `make` is given too.
pub async fn service_main_with<H: Handler, S: Section>(
    make: impl AsyncFnOnce(&ServiceSettings, S, &Db) -> Result<H, ServiceError>,
    migrations: &Migrations,
    add: impl FnOnce(Service<H>) -> Result<Service<H>, ServiceError>,
) -> std::process::ExitCode {
    let load = |file: Option<&std::path::Path>| ServiceSettings::load_with::<S>(H::SERVICE, file);
    exit_code(run_service::<H, S>(load, make, migrations, add).await)
}

fn exit_code(ran: Result<(), Box<dyn std::error::Error>>) -> std::process::ExitCode {
    match ran {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                let text = cause.to_string();
                if !message.ends_with(&text) {
                    message.push_str(&format!(": {text}"));
                }
                source = cause.source();
            }
            eprintln!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_service<H: Handler, S>(
    load: impl FnOnce(Option<&std::path::Path>) -> Result<(ServiceSettings, S), crate::config::ConfigError>,
    make: impl AsyncFnOnce(&ServiceSettings, S, &Db) -> Result<H, ServiceError>,
    migrations: &Migrations,
    add: impl FnOnce(Service<H>) -> Result<Service<H>, ServiceError>,
) -> Result<(), Box<dyn std::error::Error>> {
    use clap::Parser;
    let args = ServiceArgs::parse();
    let _telemetry = crate::telemetry::init(H::SERVICE)?;
    let (settings, own) = load(args.config.as_deref())?;
    tracing::info!(service = H::SERVICE, ?settings, "starting");
    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        crate::telemetry::shutdown_signal().await;
        tracing::info!(service = H::SERVICE, "shutdown requested; finishing in-flight work");
        trigger.cancel();
    });
    // A database that is down at startup (restarting, failing over) is waited for, as it is once
    // running; a wrong URL or a failed migration stops startup.
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    let db = loop {
        match open_database(&settings.database.url, settings.database.max_connections, migrations).await {
            Ok(db) => break db,
            Err(ServiceError::Database { url, source }) if source.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(service = H::SERVICE, database = %url, error = %source, retry_in_ms = delay.as_millis() as u64, "database unreachable at startup; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return Ok(()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let handler = make(&settings, own, &db).await?;
    let service = add(Service::build_with_db(settings, handler, db).await?)?;
    service.run_until_stopped(shutdown).await?;
    Ok(())
}
