//! `sagactl`: run the system in one process, manage topics and seed data, benchmark.

/// mimalloc rather than the system allocator: many threads allocate small objects per message.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use saga_cli::{bench, dev};

#[derive(Parser)]
#[command(name = "sagactl", version, about = "Saga orchestration on Kafka: run, operate and measure")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run broker, registry and all four services in this process and place sample orders.
    Dev {
        /// Sample orders to place.
        #[arg(long, default_value_t = 35)]
        orders: usize,
        /// Exit once the sample orders are finished, instead of running on.
        #[arg(long)]
        exit: bool,
        /// Print the summary as one JSON object.
        #[arg(long)]
        json: bool,
        /// Keep the SQLite databases here (default: a temporary directory).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Port of the embedded schema registry (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        registry_port: u16,
        /// Partitions per topic.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1024))]
        partitions: i32,
        /// Seconds to wait for the sample orders.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        /// Serve the live saga view (/sagas) and metrics (/metrics) here; "" turns it off.
        #[arg(long, default_value = "127.0.0.1:9100")]
        web: String,
        /// Serve the query API (the read side: /orders, /openapi.json) here; "" turns the query
        /// service off.
        #[arg(long, default_value = "127.0.0.1:9200")]
        query: String,
    },
    /// Ask the query service (the read side) about orders.
    Orders {
        /// Base URL of the query API.
        #[arg(long, env = "SAGA_QUERY_URL", default_value = "http://127.0.0.1:9200")]
        url: String,
        /// Print the API's JSON instead of text.
        #[arg(long, global = true)]
        json: bool,
        #[command(subcommand)]
        command: OrdersCommand,
    },
    /// Create the topics (and their dead-letter topics) on a broker.
    Topics {
        /// Broker bootstrap servers.
        #[arg(long, env = "SAGA_KAFKA__BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
        bootstrap_servers: String,
        /// Partitions per topic.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=10000))]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=16))]
        replication_factor: i32,
        /// Topic prefix.
        #[arg(long, env = "SAGA_TOPICS__PREFIX", default_value = "saga")]
        prefix: String,
    },
    /// Load stock and customer accounts from a seed file into the services' databases.
    Seed {
        /// Seed file (TOML), e.g. deploy/seed/dev.toml.
        #[arg(long)]
        file: PathBuf,
        /// Inventory database URL.
        #[arg(long, env = "SAGA_INVENTORY_DATABASE_URL")]
        inventory_db: String,
        /// Payment database URL.
        #[arg(long, env = "SAGA_PAYMENT_DATABASE_URL")]
        payment_db: String,
    },
    /// Read the orchestrator's saga log (what happened to an order, when, and why), and retry or
    /// abort a saga.
    Sagas {
        /// Orchestrator database URL (sqlite://… or postgres://…).
        #[arg(long, env = "SAGA_ORCHESTRATOR_DATABASE_URL", default_value = "sqlite://orchestrator.db")]
        db: String,
        /// The orchestrator's configuration file, for retry and abort: schema registry (to encode
        /// the commands), topic prefix and deadlines. `SAGA_*` variables override it, as for the
        /// orchestrator itself.
        #[arg(long, short, env = "SAGA_CONFIG")]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: SagasCommand,
    },
    /// The saga definitions this build knows: every version's steps, kinds, compensations and
    /// timeouts; `in-flight` says which versions still have sagas running (and so cannot be
    /// retired).
    Definitions {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        command: Option<DefinitionsCommand>,
    },
    /// List, redrive and purge the records in the dead-letter topics.
    ///
    /// Purge does not delete records: it moves a mark (the committed offsets of the consumer
    /// group <prefix>.sagactl-dlt) that list and redrive selections start from.
    Dlt {
        #[command(flatten)]
        connection: saga_cli::dlt::ConnectArgs,
        #[command(subcommand)]
        command: DltCommand,
    },
    /// Drive sagas through the embedded stack; print sagas per second, latency percentiles, CPU
    /// and memory. Closed loop (`--concurrency`) or open loop (`--rate`).
    Bench {
        /// Sagas to run (with --rate, or instead --duration).
        #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
        sagas: u64,
        /// Closed loop: sagas in flight at once.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..), conflicts_with = "rate")]
        concurrency: u64,
        /// Open loop: sagas started per second, on schedule whatever the system does; latency
        /// counts from each saga's scheduled start.
        #[arg(long, value_parser = positive_rate)]
        rate: Option<f64>,
        /// With --rate: run this many seconds (sagas = rate x duration) instead of --sagas.
        #[arg(long, requires = "rate", value_parser = clap::value_parser!(u64).range(1..=3600))]
        duration: Option<u64>,
        /// Partitions per topic.
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=1024))]
        partitions: i32,
        /// Records per consumer transaction.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        /// An external Kafka-protocol broker (e.g. tansu) at this bootstrap address instead of the
        /// in-process one; the run creates topics of its own there.
        #[arg(long, value_name = "HOST:PORT")]
        broker: Option<String>,
        /// Fresh databases on the PostgreSQL server at SAGA_TEST_POSTGRES_URL (default
        /// postgres://postgres@127.0.0.1:5432/postgres) instead of SQLite files; dropped afterwards.
        #[arg(long)]
        postgres: bool,
        /// `embedded`: every service a task of this process. `processes`: the registry and the
        /// services as processes of the shipped binaries beside sagactl (the broker stays here
        /// unless --broker names one).
        #[arg(long, value_enum, default_value_t = BenchMode::Embedded)]
        mode: BenchMode,
        /// Instances of each service, sharing its consumer group (processes mode: with --postgres).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
        instances: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Run the query service (the read side) too, and report how long its lag takes to
        /// return to 0 once the load ends.
        #[arg(long)]
        query: bool,
        /// With --query in embedded mode: serve the query API here during the run (for a load
        /// tool such as wrk beside it).
        #[arg(long, requires = "query", value_name = "HOST:PORT")]
        query_api: Option<String>,
        /// The order saga's definition version to run (`sagactl definitions` lists them). 1, the
        /// three steps the peers' benchmark runs (reserve, authorize, approve), unless told.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
        saga_version: u32,
    },
}

#[derive(Subcommand)]
enum OrdersCommand {
    /// One order as the read model knows it.
    Show {
        /// The order id.
        order_id: String,
        /// The order as it was at this time (RFC 3339 or epoch ms).
        #[arg(long)]
        as_of: Option<String>,
        /// Wait up to this many ms for the order to exist (with --until-not: to leave that status).
        #[arg(long)]
        wait_ms: Option<u64>,
        /// With --wait-ms: wait until the order is not in this status (PENDING, APPROVED, REJECTED).
        #[arg(long)]
        until_not: Option<String>,
    },
    /// Orders, newest first.
    List {
        /// Only this customer's.
        #[arg(long)]
        customer: Option<String>,
        /// Only in this status (PENDING, APPROVED, REJECTED).
        #[arg(long)]
        status: Option<String>,
        /// Only created at or after this time (RFC 3339 or epoch ms).
        #[arg(long)]
        since: Option<String>,
        /// Orders per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Where the previous page ended.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every event that touched an order.
    History {
        /// The order id.
        order_id: String,
    },
}

#[derive(Subcommand)]
enum SagasCommand {
    /// Sagas, most recently changed first.
    List {
        /// Only sagas in this status (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, STUCK, PARKED).
        #[arg(long, value_parser = saga_cli::sagas::parse_status)]
        state: Option<saga_orchestrator::saga::Status>,
        /// At most this many.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
    },
    /// One saga with its full step log: causes, commands sent, reasons, timestamps.
    Show {
        /// The order id (sagas are identified by their order).
        order_id: String,
    },
    /// Send the command a saga waits on again (a STUCK compensation, a PARKED step, a slow one),
    /// as a new attempt with its own idempotency key, through the orchestrator's outbox.
    Retry {
        /// The order id.
        order_id: String,
    },
    /// Compensate a saga from where it stands (before or at its pivot only). The commands go out
    /// through the orchestrator's outbox, one at a time as each is confirmed.
    Abort {
        /// The order id.
        order_id: String,
        /// Why, recorded in the saga log and sent to the order as its rejection reason.
        #[arg(long, default_value = "aborted by an operator")]
        reason: String,
        /// Print the compensations that would be sent, in order, with their idempotency keys,
        /// and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum DefinitionsCommand {
    /// Unfinished sagas per definition version, with a few of their ids: a version may be
    /// retired only when none runs it. With --version, exits 1 while that version has any.
    InFlight {
        /// Orchestrator database URL (sqlite://… or postgres://…).
        #[arg(long, env = "SAGA_ORCHESTRATOR_DATABASE_URL", default_value = "sqlite://orchestrator.db")]
        db: String,
        /// Only this version; exit status 1 while it has sagas in flight.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        version: Option<i64>,
    },
}

#[derive(Subcommand)]
enum DltCommand {
    /// Dead letters with their origin, cause, consumer group, time and redrive count.
    List(saga_cli::dlt::ListArgs),
    /// Send dead letters back to their original topic; exits 2 if any was refused.
    ///
    /// Key, value and headers are the original ones, without saga.dlt.* and with
    /// saga.redrive.count one higher. A record whose count reached --max-redrives is refused.
    Redrive(saga_cli::dlt::RedriveArgs),
    /// Hide dead letters from list and redrive by moving the purge mark forward.
    Purge(saga_cli::dlt::PurgeArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let _telemetry = saga_runtime::telemetry::init_with_default("sagactl", "warn")?;
    match cli.command {
        Command::Dev { orders, exit, json, data_dir, registry_port, partitions, timeout_secs, web, query } => {
            let timeout = Duration::from_secs(timeout_secs);
            let summary = dev::run(dev::DevOptions { orders, exit, json, data_dir, registry_port, partitions, timeout, web, query }).await?;
            if summary.stuck > 0 {
                std::process::exit(2);
            }
        }
        Command::Topics { bootstrap_servers, partitions, replication_factor, prefix } => {
            let mut kafka = saga_runtime::ServiceSettings::defaults_for("sagactl").kafka;
            kafka.bootstrap_servers = bootstrap_servers;
            kafka.partitions = partitions;
            kafka.replication_factor = replication_factor;
            let topics = saga_contracts::Topics::new(prefix).all_with_dlts();
            saga_runtime::kafka::create_topics(&kafka, &topics).await?;
            for t in topics {
                println!("{t} ({partitions} partitions)");
            }
        }
        Command::Seed { file, inventory_db, payment_db } => {
            let seed = saga_sandbox::seed::Seed::read(&file)?;
            let inventory = saga_runtime::service::open_database(&inventory_db, 2, &saga_inventory::MIGRATIONS).await?;
            seed.apply_stock(&inventory).await?;
            let payment = saga_runtime::service::open_database(&payment_db, 2, &saga_payment::MIGRATIONS).await?;
            seed.apply_accounts(&payment).await?;
            println!("seeded {} skus and {} customers", seed.stock.len(), seed.customers.len());
        }
        Command::Orders { url, json, command } => {
            let api = saga_cli::orders::Orders::new(&url)?;
            let some = |k: &'static str, v: Option<String>| v.map(|v| (k, v));
            let (body, text): (_, fn(&serde_json::Value) -> String) = match command {
                OrdersCommand::Show { order_id, as_of, wait_ms, until_not } => {
                    let q: Vec<_> =
                        [some("as_of", as_of), some("wait_ms", wait_ms.map(|w| w.to_string())), some("until_not", until_not)].into_iter().flatten().collect();
                    (api.get(&format!("/orders/{}", saga_runtime::health::path_segment(&order_id)), &q).await?, saga_cli::orders::render_order)
                }
                OrdersCommand::List { customer, status, since, limit, cursor } => {
                    let q: Vec<_> =
                        [some("customer", customer), some("status", status), some("since", since), Some(("limit", limit.to_string())), some("cursor", cursor)]
                            .into_iter()
                            .flatten()
                            .collect();
                    (api.get("/orders", &q).await?, saga_cli::orders::render_page)
                }
                OrdersCommand::History { order_id } => {
                    (api.get(&format!("/orders/{}/history", saga_runtime::health::path_segment(&order_id)), &[]).await?, saga_cli::orders::render_history)
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", text(&body));
            }
        }
        Command::Sagas { db, config, command } => {
            let db = open_orchestrator_db(&db).await?;
            let text = match command {
                SagasCommand::List { state, limit } => saga_cli::sagas::list(&db, state, limit).await?,
                SagasCommand::Show { order_id } => saga_cli::sagas::show(&db, &order_id).await?,
                SagasCommand::Abort { order_id, dry_run: true, .. } => saga_cli::sagas::abort_plan(&db, &order_id).await?,
                SagasCommand::Retry { order_id } => {
                    let ops = saga_cli::sagas::Operator::from_config(config.as_deref())?;
                    ops.retry(&db, &order_id).await?
                }
                SagasCommand::Abort { order_id, reason, dry_run: false } => {
                    let ops = saga_cli::sagas::Operator::from_config(config.as_deref())?;
                    ops.abort(&db, &order_id, &reason).await?
                }
            };
            print!("{text}");
        }
        Command::Definitions { json, command: None } => {
            let versions = saga_cli::definitions::known();
            if json {
                println!("{}", serde_json::to_string_pretty(&saga_cli::definitions::to_json(&versions))?);
            } else {
                print!("{}", saga_cli::definitions::render(&versions));
            }
        }
        Command::Definitions { json, command: Some(DefinitionsCommand::InFlight { db, version }) } => {
            let db = open_orchestrator_db(&db).await?;
            let mut rows = saga_cli::definitions::in_flight(&db, &saga_cli::definitions::known()).await?;
            if let Some(v) = version {
                rows.retain(|r| r.version == v);
                if rows.is_empty() {
                    rows.push(saga_cli::definitions::InFlight { version: v, known: false, count: 0, examples: vec![] });
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", saga_cli::definitions::render_in_flight(&rows));
            }
            if version.is_some() && rows.iter().any(|r| r.count > 0) {
                std::process::exit(1);
            }
        }
        Command::Dlt { connection, command } => {
            let dlt = saga_cli::dlt::Dlt::connect(&connection)?;
            match command {
                DltCommand::List(args) => {
                    let listing = dlt.list(&args).await?;
                    print!("{}", if args.json { listing.render_json() } else { listing.render_text() });
                }
                DltCommand::Redrive(args) => {
                    let report = dlt.redrive(&args).await?;
                    print!("{}", report.render_text());
                    if !report.all_ok() {
                        std::process::exit(2);
                    }
                }
                DltCommand::Purge(args) => print!("{}", saga_cli::dlt::render_purge(&dlt.purge(&args)?)),
            }
        }
        Command::Bench {
            sagas,
            concurrency,
            rate,
            duration,
            partitions,
            batch_size,
            broker,
            postgres,
            mode,
            instances,
            json,
            query,
            query_api,
            saga_version,
        } => {
            let (load, sagas) = match rate {
                Some(rate) => (bench::Load::Open { rate }, duration.map_or(sagas as usize, |d| (rate * d as f64).ceil() as usize)),
                None => (bench::Load::Closed { concurrency: concurrency as usize }, sagas as usize),
            };
            let broker = match broker {
                Some(b) if b.trim().is_empty() => anyhow::bail!("--broker: expected HOST:PORT of a Kafka-protocol broker, found an empty value"),
                Some(b) => saga_sandbox::stack::BrokerChoice::External(b),
                None => saga_sandbox::stack::BrokerChoice::Embedded,
            };
            let processes = match mode {
                BenchMode::Embedded | BenchMode::Hops => None,
                BenchMode::Processes => Some(std::env::current_exe()?.parent().context("sagactl's own directory")?.to_path_buf()),
            };
            let options = bench::BenchOptions {
                sagas,
                load,
                partitions,
                batch_size: batch_size as usize,
                broker,
                postgres,
                instances: instances as usize,
                query,
                query_api,
                processes,
                saga_version,
            };
            let report = match mode {
                BenchMode::Hops => saga_cli::hops::run(&options).await?,
                BenchMode::Embedded | BenchMode::Processes => bench::run(options).await?,
            };
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", report.render_text());
            }
            if report.unfinished > 0 {
                std::process::exit(2);
            }
        }
    }
    Ok(())
}

/// Where `sagactl bench` runs the services.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BenchMode {
    /// Every service a task of this process.
    Embedded,
    /// The registry and the services as processes of the shipped binaries.
    Processes,
    /// No services: the broker alone under the saga's traffic (eight records per saga moved
    /// along by four relays with the services' client settings; no database), the ceiling any
    /// eight-hop saga reaches on this broker (see `saga_cli::hops`).
    Hops,
}

/// A `--rate`: a positive number of sagas per second.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("expected a positive number of sagas per second, found {s:?}")),
    }
}

/// Opens the orchestrator's database for reading the saga log; a SQLite file that does not exist
/// is an error (opening would create an empty one).
async fn open_orchestrator_db(url: &str) -> anyhow::Result<saga_store::Db> {
    if let Some(path) = url.strip_prefix("sqlite://").map(|p| p.split('?').next().unwrap_or(p)) {
        anyhow::ensure!(std::path::Path::new(path).exists(), "no orchestrator database at {path} (--db)");
    }
    saga_store::Db::connect(url, 2).await.map_err(|e| anyhow::anyhow!("orchestrator database {}: {e}", saga_store::redact_url(url)))
}
