//! The whole system: broker, registry, four services, seeded databases.
//!
//! `sagactl dev`, `sagactl bench` and the end-to-end tests all run this. The broker is either
//! the in-process [`saga_broker`] or an external Kafka-protocol broker (tansu in CI); the
//! databases are SQLite files in a directory or fresh PostgreSQL databases. The registry and the
//! services run as tasks of this process, or (`sagactl bench --mode processes`) as the shipped
//! binaries, one OS process each, configured by `SAGA_*` variables as in a deployment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_contracts::{Message, PlaceOrder, TopicKind, Topics};
use saga_runtime::codec::Codec;
use saga_runtime::config::ServiceSettings;
use saga_runtime::service::{open_database, Service};
use saga_runtime::{CancellationToken, Handler};
use saga_store::{Db, Migrations};
use tokio::task::JoinHandle;

use crate::procs::free_port;
use crate::seed::Seed;

/// Where the broker comes from.
#[derive(Debug, Clone)]
pub enum BrokerChoice {
    /// The in-process broker ([`saga_broker`]), with the topics created in it.
    Embedded,
    /// An external broker at these bootstrap servers; topics are created through the admin API.
    External(String),
}

/// Where the databases come from.
#[derive(Debug, Clone)]
pub enum DatabaseChoice {
    /// One SQLite file per service in this directory.
    Sqlite(PathBuf),
    /// One fresh database per service on the PostgreSQL test server.
    Postgres,
}

/// How to assemble a stack.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// The broker.
    pub broker: BrokerChoice,
    /// The databases.
    pub database: DatabaseChoice,
    /// Registry address; port 0 picks a free port.
    pub registry_bind: SocketAddr,
    /// Partitions per topic.
    pub partitions: i32,
    /// Topic prefix (unique per test run on a shared broker).
    pub topic_prefix: String,
    /// Suffix of every consumer group id (unique per test run on a shared broker).
    pub group_suffix: String,
    /// Instances of each service (they share the consumer group and the database).
    pub instances: usize,
    /// Stock and accounts.
    pub seed: Seed,
    /// Records per consumer transaction.
    pub batch_size: usize,
    /// Run the registry and the services as processes of the binaries in this directory
    /// (`saga-registry`, `saga-order`, ...) instead of as tasks of this process.
    pub processes: Option<PathBuf>,
    /// Run the query service (the read side) too.
    pub query: bool,
    /// Base URL of the saga view the query API links each order's saga to.
    pub saga_view_url: Option<String>,
    /// The order saga's definition version new sagas start on (`saga.order_version`); 0 for the
    /// newest.
    pub order_version: u32,
}

impl StackOptions {
    /// Embedded broker, SQLite in `dir`, shipped seed, 6 partitions.
    pub fn embedded(dir: PathBuf) -> StackOptions {
        StackOptions {
            broker: BrokerChoice::Embedded,
            database: DatabaseChoice::Sqlite(dir),
            registry_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            partitions: 6,
            topic_prefix: "saga".into(),
            group_suffix: String::new(),
            instances: 1,
            seed: Seed::dev(),
            batch_size: 500,
            processes: None,
            query: true,
            saga_view_url: None,
            order_version: 0,
        }
    }
}

/// The databases of the four services.
#[derive(Clone, Debug)]
pub struct Databases {
    /// Orders.
    pub order: Db,
    /// Stock and reservations.
    pub inventory: Db,
    /// Accounts and authorizations.
    pub payment: Db,
    /// Sagas and their log.
    pub orchestrator: Db,
    /// The read model (the query service's), when it runs.
    pub query: Option<Db>,
}

/// A running system.
pub struct Stack {
    /// Bootstrap servers of the broker.
    pub bootstrap: String,
    /// Base URL of the schema registry.
    pub registry_url: String,
    /// Topic names.
    pub topics: Topics,
    /// The services' databases.
    pub dbs: Databases,
    /// The settings the services were started with (without per-service overrides).
    pub settings: ServiceSettings,
    /// The orchestrator's own settings (`saga.*`).
    pub saga: saga_orchestrator::SagaSettings,
    /// The query API, when the query service runs as a process (`http://127.0.0.1:PORT`).
    pub query_url: Option<String>,
    /// What the query API reads, when the query service runs in this process.
    query: Option<saga_query::api::Reader>,
    /// The read model's database URL, when the query service runs.
    pub query_database_url: Option<String>,
    codec: Arc<Codec>,
    producer: FutureProducer,
    shutdown: CancellationToken,
    services: Vec<JoinHandle<()>>,
    metrics: Vec<saga_runtime::Metrics>,
    registry: Option<JoinHandle<()>>,
    registry_stop: CancellationToken,
    broker: Option<EmbeddedBroker>,
    /// PostgreSQL databases this stack created, dropped by [`Stack::stop`].
    created_databases: Vec<String>,
    /// The registry and the services, when they run as processes.
    procs: Vec<ServiceProcess>,
    /// Where the processes log; held so the files live as long as the stack.
    _log_dir: Option<tempfile::TempDir>,
}

impl Stack {
    /// Starts everything and returns once the services are consuming.
    pub async fn start(options: StackOptions) -> anyhow::Result<Stack> {
        let topics = Topics::new(options.topic_prefix.clone());
        let broker = match &options.broker {
            BrokerChoice::Embedded => Some(EmbeddedBroker::start(options.partitions, topics.all_with_dlts())?),
            BrokerChoice::External(_) => None,
        };
        let bootstrap = match (&options.broker, &broker) {
            (BrokerChoice::External(b), _) => b.clone(),
            (BrokerChoice::Embedded, Some(b)) => b.bootstrap.clone(),
            (BrokerChoice::Embedded, None) => unreachable!("embedded broker started above"),
        };

        let mut urls = Vec::new();
        let mut created_databases = Vec::new();
        for name in ["registry", "order", "inventory", "payment", "orchestrator", "query"] {
            let url = match &options.database {
                DatabaseChoice::Sqlite(dir) => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
                DatabaseChoice::Postgres => {
                    let url = crate::db::create_postgres_database().await?;
                    created_databases.push(url.clone());
                    url
                }
            };
            urls.push(url);
        }

        let log_dir = match options.processes {
            Some(_) => Some(tempfile::Builder::new().prefix("saga-stack-logs").tempdir().context("creating a directory for the processes' logs")?),
            None => None,
        };
        let mut procs = Vec::new();
        let registry_stop = CancellationToken::new();
        let (registry_url, registry_task) = match (&options.processes, &log_dir) {
            (Some(bin_dir), Some(logs)) => {
                let port = free_port().context("finding a free port")?;
                let env = [("SAGA_REGISTRY_BIND".to_string(), format!("127.0.0.1:{port}")), ("SAGA_REGISTRY_DATABASE_URL".to_string(), urls[0].clone())];
                let registry = ServiceProcess::spawn(bin_dir, "saga-registry", "registry", &env, port, logs.path())?;
                registry.wait_ready(Duration::from_secs(30)).await?;
                procs.push(registry);
                (format!("http://127.0.0.1:{port}"), None)
            }
            _ => {
                let registry_db = Db::connect(&urls[0], 4).await.context("opening the registry database")?;
                let registry = saga_registry::Registry::build_with_db(registry_db, options.registry_bind).await.context("starting the schema registry")?;
                let registry_url = registry.url();
                let stop = registry_stop.clone();
                let task = tokio::spawn(async move {
                    if let Err(e) = registry.run_until_stopped(async move { stop.cancelled().await }).await {
                        tracing::error!(error = %e, "schema registry stopped with an error");
                    }
                });
                (registry_url, Some(task))
            }
        };

        let max_connections = 8;
        let open = |url: String, m: &'static Migrations| async move { open_database(&url, max_connections, m).await };
        let dbs = Databases {
            order: open(urls[1].clone(), &saga_order::MIGRATIONS).await?,
            inventory: open(urls[2].clone(), &saga_inventory::MIGRATIONS).await?,
            payment: open(urls[3].clone(), &saga_payment::MIGRATIONS).await?,
            orchestrator: open(urls[4].clone(), &saga_orchestrator::MIGRATIONS).await?,
            query: if options.query { Some(open(urls[5].clone(), &saga_query::MIGRATIONS).await?) } else { None },
        };
        options.seed.apply_stock(&dbs.inventory).await.context("seeding stock")?;
        options.seed.apply_accounts(&dbs.payment).await.context("seeding accounts")?;

        // Defaults plus `SAGA_*` variables, so librdkafka settings can be tuned (`SAGA_KAFKA_CLIENT_*`).
        let (mut settings, mut saga) = ServiceSettings::load_with::<saga_orchestrator::SagaSettings>("stack", None)?;
        settings.kafka.bootstrap_servers = bootstrap.clone();
        settings.kafka.partitions = options.partitions;
        settings.kafka.create_topics = matches!(options.broker, BrokerChoice::External(_));
        // Four services in one process cannot share one health address; the stack has none.
        settings.http.bind = String::new();
        settings.registry.url = registry_url.clone();
        settings.topics.prefix = options.topic_prefix.clone();
        settings.consumer.batch_size = options.batch_size;
        if options.order_version > 0 {
            saga.order_version = options.order_version;
        }
        settings.validate()?;

        let shutdown = CancellationToken::new();
        let mut services = Vec::new();
        let mut query_url = None;
        let mut query = None;
        if let (Some(bin_dir), Some(logs)) = (&options.processes, &log_dir) {
            if options.instances > 1 && matches!(options.database, DatabaseChoice::Sqlite(_)) {
                anyhow::bail!("{} instances per service as processes need PostgreSQL: a SQLite file takes one writing process", options.instances);
            }
            let mut databases = vec![("order", &urls[1]), ("inventory", &urls[2]), ("payment", &urls[3]), ("orchestrator", &urls[4])];
            if options.query {
                databases.push(("query", &urls[5]));
            }
            for instance in 0..options.instances.max(1) {
                for &(service, url) in &databases {
                    let port = free_port().context("finding a free port")?;
                    let env = [
                        ("SAGA_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
                        ("SAGA_KAFKA__GROUP_ID", format!("saga-{service}{}", options.group_suffix)),
                        ("SAGA_KAFKA__PARTITIONS", options.partitions.to_string()),
                        ("SAGA_KAFKA__CREATE_TOPICS", settings.kafka.create_topics.to_string()),
                        ("SAGA_REGISTRY__URL", registry_url.clone()),
                        ("SAGA_DATABASE__URL", url.clone()),
                        ("SAGA_TOPICS__PREFIX", options.topic_prefix.clone()),
                        ("SAGA_CONSUMER__BATCH_SIZE", options.batch_size.to_string()),
                        ("SAGA_HTTP__BIND", format!("127.0.0.1:{port}")),
                        ("SAGA_SAGA__ORDER_VERSION", saga.order_version.to_string()),
                    ]
                    .map(|(k, v)| (k.to_string(), v));
                    let mut env = env.to_vec();
                    if let Some(url) = &options.saga_view_url {
                        env.push((saga_query::SAGA_VIEW_URL_ENV.to_string(), url.clone()));
                    }
                    let name = if options.instances > 1 { format!("{service}-{instance}") } else { service.to_string() };
                    if service == "query" && instance == 0 {
                        query_url = Some(format!("http://127.0.0.1:{port}"));
                    }
                    procs.push(ServiceProcess::spawn(bin_dir, &format!("saga-{service}"), &name, &env, port, logs.path())?);
                }
            }
            for p in procs.iter().filter(|p| p.name != "registry") {
                p.wait_ready(Duration::from_secs(60)).await?;
            }
        }
        for _ in 0..if options.processes.is_some() { 0 } else { options.instances.max(1) } {
            services.push(spawn(&settings, &options.group_suffix, saga_order::OrderHandler, Ok, &dbs.order, &shutdown).await?);
            services.push(spawn(&settings, &options.group_suffix, saga_inventory::InventoryHandler, Ok, &dbs.inventory, &shutdown).await?);
            services.push(spawn(&settings, &options.group_suffix, saga_payment::PaymentHandler, Ok, &dbs.payment, &shutdown).await?);
            let orchestrator = saga_orchestrator::Orchestrator::configured(&settings, &saga)?;
            orchestrator.check_in_flight(&dbs.orchestrator).await?;
            services.push(
                spawn(&settings, &options.group_suffix, orchestrator, saga_orchestrator::Orchestrator::capabilities, &dbs.orchestrator, &shutdown).await?,
            );
            if let Some(db) = &dbs.query {
                let lag = saga_query::lag::LagWatch::new(&settings.kafka, saga_query::CONSUMES.iter().map(|k| topics.name(*k)).collect())?;
                let handler = saga_query::QueryHandler::new(lag, saga_query::api::ApiSettings { saga_view_url: options.saga_view_url.clone() });
                query.get_or_insert_with(|| handler.reader(db.clone()));
                services.push(spawn(&settings, &options.group_suffix, handler, |s| Ok(s.observed()), db, &shutdown).await?);
            }
        }
        let (services, metrics): (Vec<_>, Vec<_>) = services.into_iter().unzip();
        let codec = Arc::new(Codec::new(&registry_url)?);
        codec.register(&[PlaceOrder::FULL_NAME]).await?;
        let producer = saga_runtime::kafka::producer(&settings.kafka, "sagactl")?;
        Ok(Stack {
            bootstrap,
            registry_url,
            topics,
            dbs,
            settings,
            saga,
            query_url,
            query,
            query_database_url: options.query.then(|| urls[5].clone()),
            codec,
            producer,
            shutdown,
            services,
            metrics,
            registry: registry_task,
            registry_stop,
            broker,
            created_databases,
            procs,
            _log_dir: log_dir,
        })
    }

    /// Publishes a message to its topic as any client would: wire format, keyed by order id.
    /// Returns where the broker wrote it: (partition, offset).
    pub async fn publish(&self, message: &Message) -> anyhow::Result<(i32, i64)> {
        let payload = self.codec.encode(message).await?;
        let topic = self.topics.name(message.topic_kind());
        self.publish_raw(&topic, Some(message.order_id().as_bytes()), &payload).await
    }

    /// Publishes raw bytes (for poison-message tests and redrives); returns (partition, offset).
    pub async fn publish_raw(&self, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> anyhow::Result<(i32, i64)> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).payload(payload);
        if let Some(k) = key {
            record = record.key(k);
        }
        let delivered = self.producer.send(record, Duration::from_secs(30)).await.map_err(|(e, _)| anyhow::anyhow!("publishing to {topic}: {e}"))?;
        Ok((delivered.partition, delivered.offset))
    }

    /// The Prometheus text of every service instance's metrics (each series labelled with its
    /// service): rendered here, or scraped from each process's `/metrics`.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        let mut text: String = self.metrics.iter().map(saga_runtime::Metrics::render).collect();
        for p in self.procs.iter().filter(|p| p.name != "registry") {
            text.push_str(&http_get(p.http_port, "/metrics").await.with_context(|| format!("scraping the metrics of {}", p.name))?.1);
        }
        Ok(text)
    }

    /// The registry's and the services' processes, by name and process id (none when they run as
    /// tasks of this process).
    pub fn process_ids(&self) -> Vec<(String, u32)> {
        self.procs.iter().filter_map(|p| Some((p.name.clone(), p.child.id()?))).collect()
    }

    /// Stops the process `name` (SIGTERM: it finishes its batch and drains its outbox) and starts
    /// it again on the same port with its environment changed by `env` (a rolling upgrade's
    /// step: the same binary, a new configuration), then waits until it answers ready.
    pub async fn restart_process(&mut self, name: &str, env: &[(&str, String)]) -> anyhow::Result<()> {
        let i = self.procs.iter().position(|p| p.name == name).with_context(|| {
            format!("no process {name} in this stack (it has {})", self.procs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", "))
        })?;
        let old = self.procs.remove(i);
        let (program, log, http_port, name) = (old.program.clone(), old.log.clone(), old.http_port, old.name.clone());
        let mut new_env = old.env.clone();
        old.terminate().await;
        for (k, v) in env {
            new_env.retain(|(key, _)| key != k);
            new_env.push((k.to_string(), v.clone()));
        }
        let child = ServiceProcess::start(&program, &new_env, &log)?;
        let restarted = ServiceProcess { name, child, http_port, log, program, env: new_env };
        let ready = restarted.wait_ready(Duration::from_secs(60)).await;
        self.procs.push(restarted);
        ready
    }

    /// The live saga view and `/metrics` for the whole stack, to serve on an address of the
    /// caller's; with `query_url`, each saga links to its order in the query API, and to its trace
    /// when `SAGA_ORCHESTRATOR_TRACE_URL` holds a URL template; retry and abort for holders of
    /// `settings.http.operator_token` when it is set.
    pub fn web_routes(&self, query_url: Option<String>) -> axum::Router {
        let metrics = self.metrics.clone();
        let links = saga_orchestrator::web::Links { query_url, trace_url: saga_orchestrator::web::Links::from_env().trace_url };
        // Retry and abort when an operator token is configured (SAGA_HTTP__OPERATOR_TOKEN).
        let actions = saga_orchestrator::web_actions(&self.settings, &self.saga).unwrap_or_else(|e| {
            tracing::error!(error = %e, "the saga view's actions are off: they could not be set up");
            None
        });
        saga_orchestrator::web::router(self.dbs.orchestrator.clone(), links, actions)
            .route("/metrics", axum::routing::get(move || async move { metrics.iter().map(saga_runtime::Metrics::render).collect::<String>() }))
    }

    /// Records the read model has not applied yet, over every partition it reads, measured now
    /// (`None` when the query service does not run, or the broker or its database did not answer).
    pub async fn projection_lag(&self) -> Option<i64> {
        if let Some(reader) = &self.query {
            return reader.lag.refresh(&reader.db, reader.progress.newest_event_ms()).await.map(|r| r.total_lag);
        }
        let port: u16 = self.query_url.as_deref()?.rsplit(':').next()?.parse().ok()?;
        let (status, body) = http_get(port, "/projection").await.ok()?;
        let report: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        report["total_lag"].as_i64()
    }

    /// The query API, to serve on an address of the caller's, when the query service runs in
    /// this process.
    pub fn query_routes(&self) -> Option<axum::Router> {
        self.query.clone().map(saga_query::api::router)
    }

    /// The codec the stack uses (to decode what tests read back).
    pub fn codec(&self) -> Arc<Codec> {
        self.codec.clone()
    }

    /// Name of a topic.
    pub fn topic(&self, kind: TopicKind) -> String {
        self.topics.name(kind)
    }

    /// Stops the services (each finishes its batch, commits, drains its outbox), the registry and
    /// the broker.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for s in self.services.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(30), s).await;
        }
        // The services before the registry, as in-process.
        let mut procs = std::mem::take(&mut self.procs);
        procs.sort_by_key(|p| p.name == "registry");
        for p in procs {
            p.terminate().await;
        }
        self.registry_stop.cancel();
        if let Some(r) = self.registry.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
        }
        // Clients go before the broker, so none of them reports the broker gone.
        let broker = self.broker.take();
        let created = std::mem::take(&mut self.created_databases);
        for db in [&self.dbs.order, &self.dbs.inventory, &self.dbs.payment, &self.dbs.orchestrator].into_iter().chain(self.dbs.query.as_ref()) {
            db.close().await;
        }
        drop(self);
        crate::db::drop_postgres_databases(&created).await;
        if let Some(b) = broker {
            b.stop();
        }
    }
}

impl Drop for Stack {
    /// A stack dropped without [`Stack::stop`] (a failing test) still stops its tasks. Its broker
    /// stays up until the process exits: stopping it under consumers that are still closing
    /// would leave them waiting for it forever.
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.registry_stop.cancel();
        if let Some(b) = self.broker.take() {
            std::mem::forget(b);
        }
    }
}

/// Builds and starts one service as a task: `add` adds its capabilities (`Ok` for none).
async fn spawn<H: Handler>(
    settings: &ServiceSettings,
    group_suffix: &str,
    handler: H,
    add: impl FnOnce(Service<H>) -> Result<Service<H>, saga_runtime::ServiceError>,
    db: &Db,
    shutdown: &CancellationToken,
) -> anyhow::Result<(JoinHandle<()>, saga_runtime::Metrics)> {
    let mut settings = settings.clone();
    settings.kafka.group_id = format!("saga-{}{group_suffix}", H::SERVICE);
    let service = Service::build_with_db(settings, handler, db.clone()).await.and_then(add).with_context(|| format!("starting the {} service", H::SERVICE))?;
    let metrics = service.metrics().clone();
    let shutdown = shutdown.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = service.run_until_stopped(shutdown).await {
            tracing::error!(service = H::SERVICE, error = %e, "service stopped with an error");
        }
    });
    Ok((task, metrics))
}

/// The in-process broker ([`saga_broker`]), with the stack's topics created in it, served by a
/// runtime of its own: librdkafka clients close synchronously (dropping a consumer blocks its
/// thread until the group is left), and a broker on the services' runtime could then be starved
/// of the threads it needs to answer them.
pub struct EmbeddedBroker {
    bootstrap: String,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts the broker with `topics` of `partitions` each.
    pub fn start(partitions: i32, topics: Vec<String>) -> anyhow::Result<EmbeddedBroker> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let thread = std::thread::Builder::new().name("broker".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("starting the in-process broker's runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let config = saga_broker::BrokerConfig { default_partitions: partitions, auto_create_partitions: None, ..Default::default() };
                let broker = match saga_broker::Broker::start(config).await {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("starting the in-process broker: {e}")));
                        return;
                    }
                };
                for t in &topics {
                    if let Err(code) = broker.create_topic(t, partitions) {
                        let _ = ready_tx.send(Err(anyhow::anyhow!("creating topic {t}: {code:?}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(broker.bootstrap_servers()));
                stopped.cancelled().await;
                broker.stop();
            });
        })?;
        let bootstrap = ready_rx.recv().context("the in-process broker thread died")??;
        Ok(EmbeddedBroker { bootstrap, stop, thread })
    }

    /// Where clients reach it.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// Stops the broker and waits for its thread.
    pub fn stop(self) {
        self.stop.cancel();
        let _ = self.thread.join();
    }
}

/// One of the shipped binaries running as a child process, its stderr in a log file.
struct ServiceProcess {
    /// `registry`, `order`, ... (`order-1` for a second instance).
    name: String,
    child: tokio::process::Child,
    /// Its HTTP port (health, readiness, metrics; the registry's API).
    http_port: u16,
    log: PathBuf,
    /// The executable, and the environment it was started with (to start it again).
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl ServiceProcess {
    /// Starts `binary` from `bin_dir` with this process's environment plus `env`; killed if the
    /// stack is dropped without [`Stack::stop`].
    fn spawn(
        bin_dir: &std::path::Path,
        binary: &str,
        name: &str,
        env: &[(String, String)],
        http_port: u16,
        log_dir: &std::path::Path,
    ) -> anyhow::Result<ServiceProcess> {
        let program = bin_dir.join(binary);
        anyhow::ensure!(
            program.is_file(),
            "{} is missing: the services run as processes of the binaries beside sagactl; build them with `cargo build --release --bins`",
            program.display()
        );
        let log = log_dir.join(format!("{name}.log"));
        let child = Self::start(&program, env, &log)?;
        Ok(ServiceProcess { name: name.to_string(), child, http_port, log, program, env: env.to_vec() })
    }

    fn start(program: &std::path::Path, env: &[(String, String)], log: &std::path::Path) -> anyhow::Result<tokio::process::Child> {
        // Appended to: a restarted process's log follows its predecessor's.
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log).with_context(|| format!("opening {}", log.display()))?;
        let mut command = tokio::process::Command::new(program);
        command.envs(env.iter().map(|(k, v)| (k, v))).stdin(std::process::Stdio::null()).stdout(std::process::Stdio::null()).stderr(stderr).kill_on_drop(true);
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "warn");
        }
        command.spawn().with_context(|| format!("starting {}", program.display()))
    }

    /// Waits until the process answers ready (a service's `/readyz`, the registry's `/subjects`).
    async fn wait_ready(&self, within: Duration) -> anyhow::Result<()> {
        let path = if self.name == "registry" { "/subjects" } else { "/readyz" };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Ok((200, _)) = http_get(self.http_port, path).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                let tail: String = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
                anyhow::bail!(
                    "{} did not answer ready on port {} within {} s; the end of its log ({}):\n{tail}",
                    self.name,
                    self.http_port,
                    within.as_secs(),
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then up to 30 s for a clean exit, then SIGKILL.
    async fn terminate(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::warn!(process = %self.name, %status, log = %self.log.display(), "exited with an error on SIGTERM"),
            Ok(Err(e)) => tracing::warn!(process = %self.name, error = %e, "could not wait for it"),
            Err(_) => {
                tracing::warn!(process = %self.name, "did not stop within 30 s of SIGTERM; killing it");
                let _ = self.child.kill().await;
            }
        }
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1: the status code and the body.
async fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes()).await?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await?;
        anyhow::Ok(response)
    };
    let response = tokio::time::timeout(Duration::from_secs(10), exchange).await.context("no answer within 10 s")??;
    let status = response.split(' ').nth(1).and_then(|c| c.parse().ok()).with_context(|| format!("not an HTTP response: {:.80}", response))?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}
