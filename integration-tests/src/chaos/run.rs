//! One chaos run: set up, load and faults, settle, check, report, clean up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use saga_contracts::Topics;

use super::checker::{self, Dbs, Snapshot, Verdict};
use super::cluster::{Cluster, Spec};
use super::faults::{Injector, Network};
use super::load::{self, Client, Placed};
use super::netns::Netns;
use super::proxy::{Link, Proxy, Upstream};
use super::schedule::{self, Amounts};
use saga_sandbox::procs::free_port;

const SERVICES: [&str; 4] = ["order", "inventory", "payment", "orchestrator"];

/// `chaos` command line.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Runs the saga system on tansu and PostgreSQL under injected faults and checks nothing was lost or applied twice")]
pub struct Options {
    /// Seed of the fault plan (and of which records are duplicated and how poison is broken).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Orders to place (each starts one saga).
    #[arg(long, default_value_t = 200)]
    pub sagas: usize,
    /// Orders placed per second; the faults land while they are placed.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// `kill -9` and restart of the registry and the services (round robin over a shuffled order).
    #[arg(long, default_value_t = 10)]
    pub kills: usize,
    /// `kill -9` and restart of the broker.
    #[arg(long, default_value_t = 2)]
    pub broker_restarts: usize,
    /// PostgreSQL restarts.
    #[arg(long, default_value_t = 2)]
    pub db_restarts: usize,
    /// SIGSTOP of a service for 11-16 s (past its 6 s session timeout), then SIGCONT: a zombie
    /// member that wakes with a batch in hand.
    #[arg(long, default_value_t = 0)]
    pub pauses: usize,
    /// Network partitions of 30 s between a service and PostgreSQL (through a TCP relay the
    /// harness cuts: connections stay open and carry nothing), then healed.
    #[arg(long, default_value_t = 0)]
    pub db_partitions: usize,
    /// Network partitions (of --net-partition-secs), then healed, of a service (from the broker, the registry and
    /// PostgreSQL at once), of the broker (from every client) and of PostgreSQL (from every
    /// service), in turn. The services then run in network namespaces of their own (root and
    /// iproute2 needed), reaching everything through relays the harness controls.
    #[arg(long, default_value_t = 0)]
    pub net_partitions: usize,
    /// Run the services in network namespaces behind the harness's relays even without network
    /// faults (to compare a run with the same faults without them).
    #[arg(long)]
    pub netns: bool,
    /// How long each network partition lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    pub net_partition_secs: u64,
    /// 30 s of a delayed (20-150 ms each way) and lossy (1-5% of chunks held a 200 ms
    /// retransmission) network of a service, the broker or PostgreSQL, in turn.
    #[arg(long, default_value_t = 0)]
    pub net_degrades: usize,
    /// Consumed records to publish again [default: a quarter of --sagas, at least 10].
    #[arg(long)]
    pub duplicates: Option<usize>,
    /// Poison records to publish [default: one per 40 sagas, at least 8].
    #[arg(long)]
    pub poison: Option<usize>,
    /// Partitions per topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    /// Longest wait for the system to settle after the last order and fault.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Keep the databases and the run directory.
    #[arg(long)]
    pub keep: bool,
    /// Do not build the service binaries (by default, under `cargo run`, they are built in the
    /// harness's own profile so they are never stale).
    #[arg(long)]
    pub no_build: bool,
    /// PostgreSQL server to create the run's databases on.
    #[arg(long, env = "SAGA_TEST_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub postgres_url: String,
    /// Run the consumers with static group membership (`group.instance.id`, as StatefulSet pods
    /// would). tansu 0.6 can then leave a group forming under a leader that no longer exists, and
    /// no member gets partitions until the broker restarts: this reproduces that. By default the
    /// members are dynamic, and the services' group watch (`consumer.rejoin_after_ms`) rejoins
    /// when tansu keeps partitions assigned to a member that died.
    #[arg(long)]
    pub static_membership: bool,
    /// An extra `KEY=VALUE` in every service's environment (repeatable), e.g.
    /// `SAGA_KAFKA_CLIENT_DEBUG=cgrp` to see a consumer group's protocol in the logs.
    #[arg(long, value_parser = key_value)]
    pub service_env: Vec<(String, String)>,
    /// The tansu executable, or nisshi's (tansu's next release, renamed; same command line), whose
    /// group coordinator survives a network partition [default: tansu on PATH, else ~/.cargo/bin/tansu].
    #[arg(long)]
    pub tansu: Option<PathBuf>,
    /// tansu's storage: SQLite in the run's directory [default], or tansu's PostgreSQL storage
    /// given as `postgres://…/<template>`: a database holding tansu's schema (its
    /// `etc/initdb.d/010-schema.sql`), from which the run makes a fresh database of its own (and
    /// drops it after). Put it on a server `--db-restarts` does not restart (another cluster), or
    /// the services' database faults take the broker's storage away too.
    #[arg(long)]
    pub broker_storage: Option<String>,
    /// Availability: fail (exit 1) when more than this percentage of sagas ended otherwise than
    /// their order was built for (an order that should have been approved compensated by a
    /// deadline, say), even with no violation. A system that stays consistent but compensates
    /// what it stalled on is not available.
    #[arg(long, default_value_t = 5.0, value_parser = percentage)]
    pub max_unintended_pct: f64,
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, found {text:?}")),
    }
}

fn percentage(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a percentage from 0 to 100, found {text:?}")),
    }
}

/// What a run found.
pub struct Report {
    /// Orders placed.
    pub sagas: usize,
    /// Faults injected.
    pub kills: usize,
    /// Broker kills.
    pub broker_restarts: usize,
    /// PostgreSQL restarts.
    pub db_restarts: usize,
    /// Services paused past their session timeout.
    pub pauses: usize,
    /// Services cut off from PostgreSQL for 30 s.
    pub db_partitions: usize,
    /// Network partitions.
    pub net_partitions: usize,
    /// Delayed and lossy networks.
    pub net_degrades: usize,
    /// After kills, pauses and partitions of services: milliseconds from the process being back
    /// (or the network healed) to its first record consumed (p50, max), and how many consumed
    /// nothing within the limit.
    pub recovery: Recovery,
    /// Records re-published.
    pub duplicates: usize,
    /// Poison records published.
    pub poison: usize,
    /// Processes that exited, or broke while running, by themselves and were restarted.
    pub crashes: usize,
    /// The checker's verdict.
    pub verdict: Verdict,
    /// `--max-unintended-pct`.
    pub max_unintended_pct: f64,
}

impl Report {
    /// Sagas that ended otherwise than intended, in percent of those placed.
    pub fn unintended_pct(&self) -> f64 {
        100.0 * self.verdict.unexpected_outcomes.len() as f64 / self.sagas.max(1) as f64
    }

    /// Why the run fails, if it does: violations, or too many sagas that ended otherwise than
    /// intended.
    pub fn failure(&self) -> Option<String> {
        if !self.verdict.violations.is_empty() {
            return Some(format!("{} violation(s)", self.verdict.violations.len()));
        }
        let pct = self.unintended_pct();
        (pct > self.max_unintended_pct).then(|| {
            format!(
                "not available enough: {} of {} sagas ({pct:.1}%) ended otherwise than intended, more than --max-unintended-pct {}",
                self.verdict.unexpected_outcomes.len(),
                self.sagas,
                self.max_unintended_pct
            )
        })
    }

    /// The last line of the output.
    pub fn figures(&self) -> String {
        format!(
            "sagas={} kills={} broker_restarts={} db_restarts={} pauses={} db_partitions={} net_partitions={} net_degrades={} duplicates={} poison={} completed={} compensated={} unintended={} \
             recovery_p50_ms={} recovery_max_ms={} not_recovered={} crashes={} stuck={} parked={} violations={}",
            self.sagas,
            self.kills,
            self.broker_restarts,
            self.db_restarts,
            self.pauses,
            self.db_partitions,
            self.net_partitions,
            self.net_degrades,
            self.duplicates,
            self.poison,
            self.verdict.completed,
            self.verdict.compensated,
            self.verdict.unexpected_outcomes.len(),
            self.recovery.p50_ms,
            self.recovery.max_ms,
            self.recovery.not_recovered,
            self.crashes,
            self.verdict.stuck,
            self.verdict.parked,
            self.verdict.violations.len()
        )
    }
}

/// How fast killed and paused services consumed again.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// Recoveries timed.
    pub count: usize,
    /// Median, of those that recovered.
    pub p50_ms: u128,
    /// Slowest, of those that recovered.
    pub max_ms: u128,
    /// Consumed nothing within the limit.
    pub not_recovered: usize,
}

impl Recovery {
    fn of(timed: &[(&'static str, Option<Duration>)]) -> Recovery {
        let mut ms: Vec<u128> = timed.iter().filter_map(|(_, d)| d.map(|d| d.as_millis())).collect();
        ms.sort_unstable();
        Recovery {
            count: timed.len(),
            p50_ms: ms.get(ms.len().saturating_sub(1) / 2).copied().unwrap_or(0),
            max_ms: ms.last().copied().unwrap_or(0),
            not_recovered: timed.iter().filter(|(_, d)| d.is_none()).count(),
        }
    }
}

/// Runs the whole thing; `Err` when the harness itself could not do its job.
pub async fn run(opts: Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let run_id = format!("s{}_{}", opts.seed, &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let dir = std::env::temp_dir().join(format!("saga-chaos-{run_id}"));
    std::fs::create_dir_all(dir.join("tansu"))?;
    println!("chaos run {run_id}: seed {}, {} sagas; logs in {}", opts.seed, opts.sagas, dir.display());
    let bins = binaries(opts.no_build)?;
    let built = Instant::now();
    let tansu = tansu_path(opts.tansu.clone())?;
    let pg_version = postgres_version()?;
    let base = opts.postgres_url.rsplit_once('/').map_or(opts.postgres_url.as_str(), |(b, _)| b).to_string();
    let db_urls: BTreeMap<&str, String> = SERVICES.iter().map(|s| (*s, format!("{base}/chaos_{run_id}_{s}"))).collect();

    // Network faults need namespaces: find out before anything is created.
    let network_faults = opts.netns || opts.net_partitions + opts.net_degrades > 0;
    if network_faults {
        Netns::sweep();
        drop(Netns::create(&Netns::name_for(&format!("{run_id}-probe")))?);
    }
    let admin = saga_store::Db::connect(&opts.postgres_url, 1).await.with_context(|| {
        format!(
            "no PostgreSQL at {}: start it with `pg_ctlcluster --skip-systemctl-redirect {pg_version} main start`",
            saga_store::redact_url(&opts.postgres_url)
        )
    })?;
    // From the first database made on, whatever fails reaches the clean-up below: nothing of the
    // run is left behind unless --keep asks for it.
    let mut broker_storage = None;
    let result = async {
        for s in SERVICES {
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE chaos_{run_id}_{s}"))).execute(admin.pool()).await?;
        }
        let storage = broker_storage.insert(BrokerStorage::prepare(opts.broker_storage.as_deref(), &run_id).await?);

        // With --db-partitions or network faults, the services reach PostgreSQL through relays the
        // harness can cut; the harness itself (seeding, the checker) connects directly. Without,
        // nothing stands between.
        let mut db_links = Vec::new();
        let mut service_db_urls = db_urls.clone();
        if opts.db_partitions > 0 || network_faults {
            for s in SERVICES {
                let (url, link) = linked(&db_urls[s]).await?;
                service_db_urls.insert(s, url);
                db_links.push((saga_sandbox::procs::service_binary(s), link));
            }
        }
        let mut http = [0; SERVICES.len()];
        for port in &mut http {
            *port = free_port().context("finding a free port")?;
        }
        let port = || free_port().context("finding a free port");
        let ports = Ports { broker: port()?, broker_listener: port()?, registry: port()?, http };
        let prefix = "chaos".to_string();
        let mut specs = specs(&dir, &bins, &tansu, &storage.url, &ports, &service_db_urls, &prefix, opts.static_membership);
        for spec in specs.iter_mut().filter(|s| s.name.starts_with("saga-") && s.name != "saga-registry") {
            spec.env.extend(opts.service_env.iter().cloned());
        }
        let network = if network_faults { Some(network(&run_id, opts.seed, &ports, &db_links, &mut specs).await?) } else { None };
        let cluster = Arc::new(Cluster::new(dir.clone(), specs));
        let body = body(&opts, &cluster, &ports, &db_urls, db_links, network, &prefix, &pg_version, &dir, started);
        let result = tokio::select! {
            r = body => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        cluster.stop_all().await;
        result
    }
    .await;
    let failed = result.as_ref().map_or(true, |r| r.failure().is_some());
    if opts.keep {
        println!("kept databases {} and {}", db_urls.values().map(|u| saga_store::redact_url(u)).collect::<Vec<_>>().join(", "), dir.display());
        if let Some(storage) = &broker_storage {
            println!("the broker's storage: {}", saga_store::redact_url(&storage.url));
        }
    } else {
        for s in SERVICES {
            let drop = format!("DROP DATABASE IF EXISTS chaos_{run_id}_{s} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(admin.pool()).await {
                eprintln!("chaos: dropping database chaos_{run_id}_{s}: {e}");
            }
        }
        if let Some(storage) = broker_storage {
            storage.drop().await;
        }
        if failed {
            println!("logs kept in {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    admin.close().await;
    println!("wall time {:.1} s ({:.1} s after building the services)", started.elapsed().as_secs_f64(), built.elapsed().as_secs_f64());
    result
}

/// A relay to the PostgreSQL server of `url`, and `url` through it.
async fn linked(url: &str) -> anyhow::Result<(String, Proxy)> {
    let (scheme, rest) = url.split_once("://").with_context(|| format!("not a URL: {}", saga_store::redact_url(url)))?;
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (user, host_port) = authority.rsplit_once('@').map_or(("", authority), |(u, h)| (u, h));
    let host_port = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:5432") };
    let upstream = tokio::net::lookup_host(&host_port).await?.next().with_context(|| format!("{host_port} resolves to nothing"))?;
    let link = Proxy::start(upstream).await?;
    let user = if user.is_empty() { String::new() } else { format!("{user}@") };
    Ok((format!("{scheme}://{user}127.0.0.1:{}/{path}", link.port), link))
}

struct Ports {
    /// Where every client reaches the broker (and what it advertises).
    broker: u16,
    /// Where the broker listens: `broker` itself, or, with network faults, behind a relay on
    /// `broker`.
    broker_listener: u16,
    registry: u16,
    http: [u16; 4],
}

/// Sets up the network that network faults act on, and changes `specs` to use it:
/// - the broker listens on a port of its own and advertises `ports.broker`, where a relay over
///   the broker's link forwards to it, so every client (services and harness) crosses that link;
/// - each service runs in a network namespace of its own, where the harness's relays, over the
///   service's link, listen on the ports of the broker, the registry and its PostgreSQL relay (the
///   service's configuration is unchanged); its HTTP port is relayed out to the harness, on no
///   link, so the harness sees it however its network fares.
async fn network(run_id: &str, seed: u64, ports: &Ports, db_links: &[(&'static str, Proxy)], specs: &mut [Spec]) -> anyhow::Result<Network> {
    let loopback = |port| Upstream::Host(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    let broker = Proxy::on(ports.broker, loopback(ports.broker_listener), Link::new(), seed).await?.link;
    let mut services = Vec::new();
    for (i, (s, http)) in SERVICES.iter().zip(ports.http).enumerate() {
        let name = saga_sandbox::procs::service_binary(s);
        let ns = Arc::new(Netns::create(&Netns::name_for(&format!("{run_id}-{s}")))?);
        let link = Link::new();
        let db = db_links.iter().find(|(n, _)| *n == name).map(|(_, p)| p.port).context("a PostgreSQL relay per service")?;
        for port in [ports.broker, ports.registry, db] {
            super::proxy::serve(ns.bind(port).await?, loopback(port), link.clone(), seed ^ ((i as u64 + 1) << 32) ^ u64::from(port));
        }
        Proxy::on(http, Upstream::Netns(ns.clone(), http), Link::new(), 0).await?;
        specs.iter_mut().find(|spec| spec.name == name).context("a spec per service")?.netns = Some(ns);
        services.push((name, link));
    }
    let tansu = specs.iter_mut().find(|spec| spec.name == "tansu").context("the broker's spec")?;
    let advertised = format!("tcp://127.0.0.1:{}", ports.broker);
    let at = tansu.args.iter().position(|a| a == "--advertised-listener-url").context("tansu's advertised listener")?;
    tansu.args[at + 1] = advertised;
    let at = tansu.args.iter().position(|a| a == "--listener-url").context("tansu's listener")?;
    tansu.args[at + 1] = format!("tcp://127.0.0.1:{}", ports.broker_listener);
    tansu.port = Some(ports.broker_listener);
    Ok(Network { broker, services })
}

#[allow(clippy::too_many_arguments)]
async fn body(
    opts: &Options,
    cluster: &Arc<Cluster>,
    ports: &Ports,
    db_urls: &BTreeMap<&str, String>,
    db_links: Vec<(&'static str, Proxy)>,
    network: Option<Network>,
    prefix: &str,
    pg_version: &str,
    dir: &Path,
    started: Instant,
) -> anyhow::Result<Report> {
    let topics = Topics::new(prefix);
    let mut kafka = saga_runtime::ServiceSettings::defaults_for("chaos").kafka;
    kafka.bootstrap_servers = format!("127.0.0.1:{}", ports.broker);
    kafka.partitions = opts.partitions;
    let registry_url = format!("http://127.0.0.1:{}", ports.registry);

    cluster.start("tansu").await?;
    let all_topics = topics.all_with_dlts();
    retry("creating topics", || saga_runtime::kafka::create_topics(&kafka, &all_topics)).await?;
    let seed = saga_sandbox::seed::Seed::dev();
    saga_sandbox::procs::seed(&db_urls["inventory"], &db_urls["payment"]).await;
    let initial_stock: BTreeMap<String, i64> = seed.stock.iter().map(|s| (s.sku.clone(), s.on_hand)).collect();
    cluster.start("saga-registry").await?;
    for s in SERVICES {
        cluster.start(saga_sandbox::procs::service_binary(s)).await?;
    }
    wait_ready(&ports.http).await?;
    let watcher = tokio::spawn(cluster.clone().watch());
    let _abort_watcher = AbortOnDrop(watcher);
    println!("infrastructure up after {:.1} s: broker 127.0.0.1:{}, registry {registry_url}", started.elapsed().as_secs_f64(), ports.broker);

    let client = Arc::new(Client::new(&registry_url, &kafka, &topics)?);
    let amounts = Amounts {
        kills: opts.kills,
        broker_restarts: opts.broker_restarts,
        db_restarts: opts.db_restarts,
        pauses: opts.pauses,
        db_partitions: opts.db_partitions,
        net_partitions: opts.net_partitions,
        net_partition: Duration::from_secs(opts.net_partition_secs),
        net_degrades: opts.net_degrades,
        duplicates: opts.duplicates.unwrap_or((opts.sagas / 4).max(10)),
        poison: opts.poison.unwrap_or((opts.sagas / 40).max(8)),
    };
    let window = Duration::from_secs_f64(opts.sagas as f64 / opts.rate);
    let plan = schedule::plan(opts.seed, amounts, window);
    println!("fault plan (seed {}, {} faults over {:.0} s of load):", opts.seed, plan.len(), window.as_secs_f64());
    for p in &plan {
        println!("  +{:>6.1}s {}", p.at.as_secs_f64(), p.fault);
    }
    let injector = Arc::new(Injector {
        cluster: cluster.clone(),
        kafka: kafka.clone(),
        topics: topics.clone(),
        producer: saga_runtime::kafka::producer(&kafka, "chaos-injector")?,
        client: client.clone(),
        seed: opts.seed,
        pg_version: pg_version.to_string(),
        pg_admin_url: opts.postgres_url.clone(),
        run_dir: dir.to_path_buf(),
        injected: Default::default(),
        service_ports: SERVICES.iter().map(|s| saga_sandbox::procs::service_binary(s)).zip(ports.http).collect(),
        db_links,
        network,
    });

    let orders = load::orders(&format!("chaos{}", opts.seed), opts.sagas);
    let placed: Vec<Placed> = orders.iter().map(|(p, _)| p.clone()).collect();
    let t0 = tokio::time::Instant::now();
    let faults = tokio::spawn(injector.clone().run(plan, t0));
    load::drive(client, orders.into_iter().map(|(_, m)| m).collect(), opts.rate, t0).await?;
    println!("all {} orders placed after {:.1} s", placed.len(), t0.elapsed().as_secs_f64());
    faults.await??;
    println!("all faults injected after {:.1} s; waiting for the system to settle", t0.elapsed().as_secs_f64());

    let dbs = Dbs {
        order: saga_store::Db::connect(&db_urls["order"], 2).await?,
        inventory: saga_store::Db::connect(&db_urls["inventory"], 2).await?,
        payment: saga_store::Db::connect(&db_urls["payment"], 2).await?,
        orchestrator: saga_store::Db::connect(&db_urls["orchestrator"], 2).await?,
    };
    let poison = injector.injected.poison.lock().unwrap().clone();
    let settle_start = Instant::now();
    let deadline = settle_start + Duration::from_secs(opts.timeout_secs);
    let mut last_progress = Instant::now();
    let verdict = loop {
        let mut snap = Snapshot::default();
        let gathered = checker::gather(&dbs, &kafka, &topics, "", &mut snap).await;
        let verdict = gathered.as_ref().ok().map(|()| checker::check(&snap, &placed, &initial_stock, &poison));
        if let Some(v) = &verdict {
            if v.violations.is_empty() {
                println!("settled after {:.1} s", settle_start.elapsed().as_secs_f64());
                break verdict.expect("checked");
            }
        }
        if Instant::now() > deadline {
            println!("not settled within {} s", opts.timeout_secs);
            match verdict {
                Some(v) => break v,
                None => bail!("cannot read the final state: {:#}", gathered.unwrap_err()),
            }
        }
        if last_progress.elapsed() > Duration::from_secs(10) {
            last_progress = Instant::now();
            match (&gathered, &verdict) {
                (Err(e), _) => println!("settling: cannot read the state yet: {e:#}"),
                (_, Some(v)) => println!(
                    "settling: {} completed, {} compensated, {} stuck, {} parked of {}; {} open issues, e.g. {}",
                    v.completed,
                    v.compensated,
                    v.stuck,
                    v.parked,
                    placed.len(),
                    v.violations.len(),
                    v.violations[0]
                ),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    let exits = cluster.unexpected_exits();
    println!(
        "outcomes: {} completed, {} compensated, {} stuck, {} parked; {} with another outcome than the sample was built for",
        verdict.completed,
        verdict.compensated,
        verdict.stuck,
        verdict.parked,
        verdict.unexpected_outcomes.len()
    );
    for u in verdict.unexpected_outcomes.iter().take(10) {
        println!("  {u}");
    }
    println!("processes that exited (or broke while running) by themselves and were restarted: {}", exits.len());
    for e in exits.iter().take(10) {
        println!("  {} at +{:.1}s: {}\n    {}", e.name, e.at_secs, e.status, e.log_tail.replace('\n', "\n    "));
    }
    for v in verdict.violations.iter().take(50) {
        println!("VIOLATION: {v}");
    }
    if verdict.violations.len() > 50 {
        println!("… and {} more violations", verdict.violations.len() - 50);
    }
    let i = &injector.injected;
    let recovery = Recovery::of(&i.recoveries.lock().unwrap_or_else(|p| p.into_inner()));
    println!(
        "recovery of {} killed, paused or cut-off services (from the process back, or its network healed, to its first record consumed): p50 {} ms, max {} ms, {} not within {} s",
        recovery.count,
        recovery.p50_ms,
        recovery.max_ms,
        recovery.not_recovered,
        super::faults::RECOVERY_LIMIT.as_secs()
    );
    Ok(Report {
        sagas: placed.len(),
        kills: i.kills.load(Ordering::Relaxed),
        broker_restarts: i.broker_restarts.load(Ordering::Relaxed),
        db_restarts: i.db_restarts.load(Ordering::Relaxed),
        pauses: i.pauses.load(Ordering::Relaxed),
        db_partitions: i.db_partitions.load(Ordering::Relaxed),
        net_partitions: i.net_partitions.load(Ordering::Relaxed),
        net_degrades: i.net_degrades.load(Ordering::Relaxed),
        recovery,
        duplicates: i.duplicates.load(Ordering::Relaxed),
        poison: poison.len(),
        crashes: exits.len(),
        verdict,
        max_unintended_pct: opts.max_unintended_pct,
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn retry<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(what: &str, mut f: impl FnMut() -> F) -> anyhow::Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match f().await {
            Ok(t) => return Ok(t),
            Err(e) if Instant::now() > deadline => bail!("{what}: {e}"),
            Err(e) => {
                eprintln!("chaos: {what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn wait_ready(ports: &[u16]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for port in ports {
        loop {
            let response = saga_sandbox::procs::try_http_get(*port, "/readyz").unwrap_or_default();
            if response.starts_with("HTTP/1.1 200") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the service on port {port} is not ready after 120 s: {response}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

/// Where tansu keeps its data: SQLite in the run's directory, or a database of the run's own on a
/// PostgreSQL server, made from a template holding tansu's schema.
struct BrokerStorage {
    /// tansu's `--storage-engine`.
    url: String,
    /// With PostgreSQL: the server's administrative connection and the run's database name.
    postgres: Option<(saga_store::Db, String)>,
}

impl BrokerStorage {
    async fn prepare(given: Option<&str>, run_id: &str) -> anyhow::Result<BrokerStorage> {
        let Some(template_url) = given.filter(|u| u.starts_with("postgres://")) else {
            if let Some(other) = given.filter(|u| *u != "sqlite://tansu.db") {
                bail!("--broker-storage {other}: expected a postgres:// URL of a template database holding tansu's schema (or nothing, for SQLite)");
            }
            return Ok(BrokerStorage { url: "sqlite://tansu.db".into(), postgres: None });
        };
        let (server, template) = template_url.rsplit_once('/').context("--broker-storage: a postgres:// URL ends with /<template database>")?;
        anyhow::ensure!(
            !template.is_empty() && template.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "--broker-storage: the template database's name ({template:?}) must be letters, digits and _"
        );
        let admin = saga_store::Db::connect(&format!("{server}/postgres"), 1)
            .await
            .with_context(|| format!("--broker-storage: no PostgreSQL at {}", saga_store::redact_url(server)))?;
        let name = format!("chaos_{run_id}_broker");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {template}")))
            .execute(admin.pool())
            .await
            .with_context(|| format!("--broker-storage: making the run's broker database from template {template}"))?;
        Ok(BrokerStorage { url: format!("{server}/{name}"), postgres: Some((admin, name)) })
    }

    async fn drop(self) {
        if let Some((admin, name)) = self.postgres {
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(admin.pool()).await {
                eprintln!("chaos: dropping the broker's database {name}: {e}");
            }
            admin.close().await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn specs(
    dir: &Path,
    bins: &Path,
    tansu: &Path,
    storage: &str,
    ports: &Ports,
    db_urls: &BTreeMap<&str, String>,
    prefix: &str,
    static_membership: bool,
) -> Vec<Spec> {
    let log = ("RUST_LOG".to_string(), "info".to_string());
    let listener = format!("tcp://127.0.0.1:{}", ports.broker);
    let mut specs = vec![
        Spec {
            name: "tansu",
            program: tansu.to_path_buf(),
            args: ["broker", "--listener-url", &listener, "--advertised-listener-url", &listener, "--storage-engine", storage].map(String::from).to_vec(),
            // tansu logs every span at info: gigabytes per run. A backtrace says where its storage
            // panicked.
            env: vec![("RUST_LOG".into(), "warn".into()), ("RUST_BACKTRACE".into(), "1".into())],
            cwd: dir.join("tansu"),
            port: Some(ports.broker),
            netns: None,
            broken_when_logged: Some("panicked at"),
        },
        Spec {
            name: "saga-registry",
            program: bins.join("saga-registry"),
            args: vec![],
            env: vec![
                log.clone(),
                ("SAGA_REGISTRY_BIND".into(), format!("127.0.0.1:{}", ports.registry)),
                ("SAGA_REGISTRY_DATABASE_URL".into(), format!("sqlite://{}", dir.join("registry.db").display())),
            ],
            cwd: dir.to_path_buf(),
            port: Some(ports.registry),
            netns: None,
            broken_when_logged: None,
        },
    ];
    for (s, http) in SERVICES.iter().zip(ports.http) {
        let name = saga_sandbox::procs::service_binary(s);
        let mut env = vec![
            log.clone(),
            ("SAGA_KAFKA__BOOTSTRAP_SERVERS".into(), format!("127.0.0.1:{}", ports.broker)),
            ("SAGA_REGISTRY__URL".into(), format!("http://127.0.0.1:{}", ports.registry)),
            ("SAGA_DATABASE__URL".into(), db_urls[s].clone()),
            ("SAGA_TOPICS__PREFIX".into(), prefix.to_string()),
            ("SAGA_HTTP__BIND".into(), format!("127.0.0.1:{http}")),
        ];
        if static_membership {
            // Static membership: a restarted instance takes its predecessor's place (and
            // partitions) at once, as a StatefulSet pod would. See `--static-membership`.
            env.push(("SAGA_KAFKA_CLIENT_GROUP_INSTANCE_ID".into(), format!("{name}-0")));
        }
        specs.push(Spec { name, program: bins.join(name), args: vec![], env, cwd: dir.to_path_buf(), port: Some(http), netns: None, broken_when_logged: None });
    }
    specs
}

/// The directory of the service binaries: the harness's own. Under `cargo run` (which sets
/// `CARGO`) they are built first, in the same profile, so a run never tests stale binaries.
fn binaries(no_build: bool) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the harness has no directory")?.to_path_buf();
    if let (false, Ok(cargo)) = (no_build, std::env::var("CARGO")) {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("workspace root")?;
        let target = dir.parent().context("target directory")?;
        let mut cmd = std::process::Command::new(cargo);
        cmd.arg("build").arg("--manifest-path").arg(workspace.join("Cargo.toml")).arg("--target-dir").arg(target);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        for p in ["saga-registry", "saga-order", "saga-inventory", "saga-payment", "saga-orchestrator"] {
            cmd.args(["-p", p]);
        }
        println!("building the service binaries: {cmd:?}");
        let status = cmd.arg("--bins").status().context("running cargo build")?;
        if !status.success() {
            bail!("building the service binaries failed ({status})");
        }
    }
    for b in ["saga-registry", "saga-order", "saga-inventory", "saga-payment", "saga-orchestrator"] {
        if !dir.join(b).exists() {
            bail!(
                "{} is missing: build the services in the harness's profile (`cargo build --bins`, with --release for a release harness)",
                dir.join(b).display()
            );
        }
    }
    Ok(dir)
}

fn tansu_path(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).map(|d| d.join("tansu"));
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    on_path
        .chain(home)
        .find(|p| p.is_file())
        .context("tansu not found: install it with `cargo install --locked tansu --features dynostore,libsql,postgres` or pass --tansu")
}

fn postgres_version() -> anyhow::Result<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .context("no /etc/postgresql: the harness restarts PostgreSQL with pg_ctlcluster")?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort();
    versions.into_iter().next().context("no cluster under /etc/postgresql")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(unintended: usize, violations: usize) -> Report {
        let verdict = Verdict {
            completed: 100 - unintended,
            compensated: unintended,
            unexpected_outcomes: (0..unintended).map(|i| format!("order {i}: compensated, meant to be approved")).collect(),
            violations: (0..violations).map(|i| format!("violation {i}")).collect(),
            ..Verdict::default()
        };
        Report {
            sagas: 100,
            kills: 0,
            broker_restarts: 0,
            db_restarts: 0,
            pauses: 0,
            db_partitions: 0,
            net_partitions: 0,
            net_degrades: 0,
            recovery: Recovery::default(),
            duplicates: 0,
            poison: 0,
            crashes: 0,
            verdict,
            max_unintended_pct: 5.0,
        }
    }

    #[test]
    fn a_run_fails_on_a_violation_or_on_more_unintended_outcomes_than_allowed() {
        assert_eq!(report(5, 0).failure(), None, "5 of 100 is within 5%");
        let why = report(6, 0).failure().expect("6 of 100 is not");
        assert!(why.contains("6 of 100 sagas (6.0%)") && why.contains("--max-unintended-pct 5"), "{why}");
        assert_eq!(report(0, 2).failure().as_deref(), Some("2 violation(s)"));
    }
}
