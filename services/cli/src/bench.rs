//! `sagactl bench`: drives sagas through the embedded stack and prints throughput and latency.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use saga_contracts::TopicKind;
use serde::Serialize;

use saga_contracts::PlaceOrder;

use crate::sample::{place_order, sample_order, Expect};
use crate::threads::{CpuTime, ThreadCpu};
use crate::watch::watch_outcomes;
use saga_sandbox::seed::Seed;
use saga_sandbox::stack::{BrokerChoice, DatabaseChoice, Stack, StackOptions};

/// How load is offered.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// A fixed number of sagas in flight: each outcome starts the next one.
    Closed {
        /// Sagas in flight at once.
        concurrency: usize,
    },
    /// Sagas started on a schedule, whatever the system does. Latency counts from the scheduled
    /// start, so a stall is charged to every saga it delays (no coordinated omission).
    Open {
        /// Sagas started per second.
        rate: f64,
    },
}

/// Options of `sagactl bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sagas to run.
    pub sagas: usize,
    /// Closed or open loop.
    pub load: Load,
    /// Partitions per topic.
    pub partitions: i32,
    /// Records per consumer transaction.
    pub batch_size: usize,
    /// The broker: in-process, or an external Kafka-protocol broker (tansu) by bootstrap address.
    pub broker: BrokerChoice,
    /// Fresh databases on the PostgreSQL test server instead of SQLite files.
    pub postgres: bool,
    /// Instances of each service (one consumer group per service).
    pub instances: usize,
    /// The services as processes of the binaries in this directory, instead of tasks of this
    /// process.
    pub processes: Option<std::path::PathBuf>,
    /// Run the query service (the read side) too, and measure how long its lag takes to return
    /// to 0 once the load ends.
    pub query: bool,
    /// Where to serve the query API during the run (embedded mode), for a load tool beside.
    pub query_api: Option<String>,
    /// The order saga's definition version the sagas run.
    pub saga_version: u32,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `closed` or `open`.
    pub load: &'static str,
    /// In flight at once (closed loop), else 0.
    pub concurrency: usize,
    /// Offered sagas per second (open loop), else 0.
    pub rate: f64,
    /// Sagas that finished.
    pub sagas: usize,
    /// Of those, approved (every step done).
    pub completed: usize,
    /// Of those, rejected (a step failed and what was done before it was compensated).
    pub compensated: usize,
    /// Sagas that did not finish within the wait.
    pub unfinished: usize,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Finished sagas per second.
    pub sagas_per_sec: f64,
    /// End-to-end latency (PlaceOrder published, or due to be in an open loop, to its outcome
    /// read), nearest-rank percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p99_9_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// `embedded` (everything in this process) or `processes`.
    pub mode: &'static str,
    /// `embedded` (the in-process broker) or the external broker's bootstrap address.
    pub broker: String,
    /// `sqlite` or `postgres`.
    pub database: &'static str,
    /// The order saga's definition version the sagas ran.
    pub saga_version: u32,
    /// Partitions per topic.
    pub partitions: i32,
    /// Instances of each service.
    pub instances: usize,
    /// CPU over the run, in cores: of this process (the broker and the load, and in embedded
    /// mode every service) plus the services' processes.
    pub cpu_cores: f64,
    /// CPU per finished saga, milliseconds: `cpu_cores` x the run's length / sagas.
    pub cpu_ms_per_saga: f64,
    /// The part of that CPU spent in the kernel (system time: the loopback sockets between the
    /// Kafka clients and the broker, futex wake-ups between threads, the commits' writes and
    /// fsyncs), from 0 to 1; the rest is user space.
    pub cpu_kernel_share: f64,
    /// The rate at which this CPU per saga would fill every core of the machine: a ceiling that
    /// no overlap of the stages can pass without making a saga cheaper.
    pub cpu_ceiling_sagas_per_sec: f64,
    /// Peak resident set of this process, MiB.
    pub peak_rss_mib: f64,
    /// Batch transactions committed per finished saga, over every service's consume loop. Each
    /// pays a commit's fixed cost (on SQLite a WAL fsync and its frame writes) however many
    /// records it holds: with one saga in flight every record is a commit of its own.
    pub commits_per_saga: f64,
    /// Records consumed per batch transaction committed: how many share one commit's cost.
    pub records_per_commit: f64,
    /// This process's CPU by kind of thread (in embedded mode every service's: its SQLite writer,
    /// the Kafka clients, the broker, the runtime's workers), most first.
    pub threads: Vec<ThreadCpu>,
    /// In processes mode, each process's CPU over the run and peak resident set; the first is
    /// `sagactl` itself.
    pub processes: Vec<ProcessFigure>,
    /// Mean time per observation of each runtime stage (`saga_stage_seconds`), over all four
    /// services, during the measured run.
    pub stages: Vec<StageFigure>,
    /// Per service, the fraction of the run its consume loop was busy decoding and applying.
    pub busy: Vec<ServiceBusy>,
    /// With the query service: the read model's lag when the last saga finished, and how long
    /// after that it reached 0.
    pub projection: Option<ProjectionFigure>,
}

/// How the read model kept up.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionFigure {
    /// Records not yet applied when the last saga's outcome was read.
    pub lag_at_end: i64,
    /// Milliseconds from then until the lag was 0 (`None`: not within 60 s).
    pub caught_up_ms: Option<f64>,
}

/// What one process used.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessFigure {
    /// `sagactl`, `registry`, `order`, ... (`order-1` for a second instance).
    pub name: String,
    /// CPU over the measured run, in cores.
    pub cpu_cores: f64,
    /// Peak resident set since it started, MiB.
    pub peak_rss_mib: f64,
}

/// How busy one service's consume loop was.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceBusy {
    /// The service.
    pub service: String,
    /// Seconds decoding and applying per second of the run (at most 1: the loop is serial).
    pub fraction: f64,
}

/// One stage's figures (see `saga_runtime::metrics::Stage`).
#[derive(Debug, Clone, Serialize)]
pub struct StageFigure {
    /// The stage's label.
    pub stage: String,
    /// Observations: one per record for `deliver` and `handoff`, one per batch or burst otherwise.
    pub count: u64,
    /// Mean, milliseconds.
    pub mean_ms: f64,
}

/// Sums and counts of `saga_stage_seconds` by (service, stage), from Prometheus text.
fn stage_totals(text: &str) -> HashMap<(String, String), (f64, f64)> {
    let mut totals: HashMap<(String, String), (f64, f64)> = HashMap::new();
    for line in text.lines() {
        let (is_sum, rest) = if let Some(rest) = line.strip_prefix("saga_stage_seconds_sum{") {
            (true, rest)
        } else if let Some(rest) = line.strip_prefix("saga_stage_seconds_count{") {
            (false, rest)
        } else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label = |name: &str| labels.split(',').find_map(|l| l.strip_prefix(&format!("{name}=\""))).map(|v| v.trim_end_matches('"').to_string());
        let (Some(service), Some(stage)) = (label("service"), label("stage")) else { continue };
        let Ok(value) = value.trim().parse::<f64>() else { continue };
        let entry = totals.entry((service, stage)).or_default();
        if is_sum {
            entry.0 += value;
        } else {
            entry.1 += value;
        }
    }
    totals
}

/// Per service, the fraction of `elapsed` its consume loop spent decoding and applying batches
/// between two snapshots: near 1, that loop is what the run waits for.
fn loop_busy(before: &str, after: &str, elapsed_s: f64) -> Vec<ServiceBusy> {
    let (before, after) = (stage_totals(before), stage_totals(after));
    let mut busy: HashMap<String, f64> = HashMap::new();
    for ((service, stage), (sum, _)) in &after {
        if stage == "decode" || stage == "apply" {
            let earlier = before.get(&(service.clone(), stage.clone())).map_or(0.0, |t| t.0);
            *busy.entry(service.clone()).or_default() += sum - earlier;
        }
    }
    let mut busy: Vec<ServiceBusy> =
        busy.into_iter().map(|(service, s)| ServiceBusy { service, fraction: if elapsed_s > 0.0 { s / elapsed_s } else { 0.0 } }).collect();
    busy.sort_by(|a, b| a.service.cmp(&b.service));
    busy
}

/// What each stage took between two snapshots of the metrics, in the order of the stages.
fn stage_figures(before: &str, after: &str) -> Vec<StageFigure> {
    let by_stage = |totals: HashMap<(String, String), (f64, f64)>| {
        let mut out: HashMap<String, (f64, f64)> = HashMap::new();
        for ((_, stage), (sum, n)) in totals {
            let e = out.entry(stage).or_default();
            e.0 += sum;
            e.1 += n;
        }
        out
    };
    let (before, after) = (by_stage(stage_totals(before)), by_stage(stage_totals(after)));
    saga_runtime::metrics::Stage::ALL
        .iter()
        .map(|s| {
            let label = s.label();
            let (sum0, n0) = before.get(label).copied().unwrap_or_default();
            let (sum1, n1) = after.get(label).copied().unwrap_or_default();
            let n = (n1 - n0).max(0.0);
            StageFigure { stage: label.to_string(), count: n as u64, mean_ms: if n > 0.0 { (sum1 - sum0) * 1000.0 / n } else { 0.0 } }
        })
        .collect()
}

/// Commits per saga and records per commit, from the stages' counts (`commit` is observed once
/// per batch transaction, `deliver` once per record); 0 where there is nothing to divide by.
fn commit_shares(stages: &[StageFigure], sagas: usize) -> (f64, f64) {
    let count = |stage: &str| stages.iter().find(|s| s.stage == stage).map_or(0, |s| s.count) as f64;
    let (commits, records) = (count("commit"), count("deliver"));
    let per_saga = if sagas > 0 { commits / sagas as f64 } else { 0.0 };
    let per_commit = if commits > 0.0 { records / commits } else { 0.0 };
    (per_saga, per_commit)
}

impl BenchReport {
    /// One line of `key=value` pairs.
    pub fn render_text(&self) -> String {
        let load = match self.load {
            "open" => format!("rate={:.0}", self.rate),
            _ => format!("concurrency={}", self.concurrency),
        };
        let mut stages: String = self.stages.iter().map(|s| format!(" {}_ms={:.3}", s.stage, s.mean_ms)).collect();
        stages.extend(self.busy.iter().map(|b| format!(" busy_{}={:.2}", b.service, b.fraction)));
        stages.extend(self.processes.iter().map(|p| format!(" cpu_{}={:.2} rss_mib_{}={:.0}", p.name, p.cpu_cores, p.name, p.peak_rss_mib)));
        stages.extend(self.threads.iter().map(|t| format!(" cpu_ms_per_saga_{}={:.3} kernel_share_{}={:.2}", t.kind, t.ms_per_saga, t.kind, t.kernel_share)));
        if let Some(p) = &self.projection {
            let caught_up = p.caught_up_ms.map_or("never".to_string(), |ms| format!("{ms:.0}"));
            stages.push_str(&format!(" projection_lag_at_end={} projection_caught_up_ms={caught_up}", p.lag_at_end));
        }
        format!(
            "mode={} broker={} database={} saga_version={} partitions={} instances={} load={} {load} sagas={} completed={} compensated={} unfinished={} elapsed_s={:.2} sagas_per_sec={:.0} \
             p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} p99.9_ms={:.1} max_ms={:.1} cpu_cores={:.2} cpu_ms_per_saga={:.3} cpu_kernel_share={:.2} cpu_ceiling_sagas_per_sec={:.0} peak_rss_mib={:.0} \
             commits_per_saga={:.2} records_per_commit={:.2}{stages}",
            self.mode,
            self.broker,
            self.database,
            self.saga_version,
            self.partitions,
            self.instances,
            self.load,
            self.sagas,
            self.completed,
            self.compensated,
            self.unfinished,
            self.elapsed_s,
            self.sagas_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p99_9_ms,
            self.max_ms,
            self.cpu_cores,
            self.cpu_ms_per_saga,
            self.cpu_kernel_share,
            self.cpu_ceiling_sagas_per_sec,
            self.peak_rss_mib,
            self.commits_per_saga,
            self.records_per_commit,
        )
    }
}

/// The `i`-th order of a benchmark: the peers' mix, nine in ten approved, one in ten declined by
/// payment and so compensated (stock released, order rejected).
fn bench_order(run: &str, i: usize) -> PlaceOrder {
    // sample_order's 0th is approved and its 6th declined (see crate::sample).
    let (like, expect) = sample_order(run, if i % 10 == 9 { 6 } else { 0 });
    debug_assert!(matches!(expect, Expect::Approved | Expect::Declined));
    place_order(&format!("{run}-{i:06}"), &like.customer_id, like.lines)
}

/// Runs the benchmark on a fresh stack of the four services in this process: on the embedded
/// broker and SQLite (`synchronous=FULL`: every commit is durable) unless told otherwise. On an
/// external broker its topics and groups are named for this run alone.
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir()?;
    let mut stack_options = StackOptions::embedded(dir.path().to_path_buf());
    if let BrokerChoice::External(_) = options.broker {
        let run = format!("bench{}", saga_contracts::now_ms());
        stack_options.topic_prefix = run.clone();
        stack_options.group_suffix = format!("-{run}");
    }
    stack_options.broker = options.broker.clone();
    if options.postgres {
        stack_options.database = DatabaseChoice::Postgres;
    }
    stack_options.partitions = options.partitions;
    stack_options.batch_size = options.batch_size;
    stack_options.instances = options.instances;
    stack_options.processes = options.processes.clone();
    stack_options.query = options.query;
    stack_options.order_version = options.saga_version;
    stack_options.seed = bench_seed();
    let stack = Arc::new(Stack::start(stack_options).await?);
    let api_stop = saga_runtime::CancellationToken::new();
    if let (Some(addr), Some(routes)) = (&options.query_api, stack.query_routes()) {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("--query-api {addr}: {e}"))?;
        eprintln!("query API at http://{}", listener.local_addr()?);
        let stop = api_stop.clone();
        tokio::spawn(async move { axum::serve(listener, routes).with_graceful_shutdown(async move { stop.cancelled().await }).await });
    } else if let Some(url) = &stack.query_url {
        eprintln!("query API at {url}");
    }
    let mut watch = watch_outcomes(&stack.settings.kafka, stack.topic(TopicKind::OrderEvents), stack.codec())?;

    let run_id = format!("bench{}", saga_contracts::now_ms());
    // Warm up: the consumer groups form and the schemas are cached before the clock starts.
    let warmup = 20;
    for i in 0..warmup {
        stack.publish(&bench_order(&format!("{run_id}-warmup"), i).into()).await?;
    }
    let mut warmed = 0;
    while warmed < warmup {
        tokio::select! {
            o = watch.outcomes.recv() => if o.is_some() { warmed += 1 } else { anyhow::bail!("watcher stopped during warm-up") },
            _ = tokio::time::sleep(Duration::from_secs(60)) => anyhow::bail!("warm-up sagas did not finish within 60 s"),
        }
    }

    let pids = stack.process_ids();
    let cpu_of = |pids: &[(String, u32)]| -> Vec<CpuTime> {
        std::iter::once(process_cpu("self")).chain(pids.iter().map(|(_, pid)| process_cpu(&pid.to_string()))).collect()
    };
    let cpu_before = cpu_of(&pids);
    let threads_before = crate::threads::snapshot();
    let metrics_before = stack.metrics_text().await?;
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::unbounded_channel();
    let send = {
        let (stack, sent_at, run_id) = (stack.clone(), sent_at.clone(), run_id.clone());
        move |i: usize, at: Instant| {
            let order = bench_order(&run_id, i);
            sent_at.lock().expect("sent_at").insert(order.order_id.clone(), at);
            let (stack, errors) = (stack.clone(), errors_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = stack.publish(&order.into()).await {
                    let _ = errors.send(e);
                }
            });
        }
    };
    let mut driver = Driver::start(options.load, options.sagas, send);
    let mut latencies = Vec::with_capacity(options.sagas);
    let mut completed = 0;
    let wait = Duration::from_secs(60);
    while latencies.len() < options.sagas {
        let outcome = tokio::select! {
            o = watch.outcomes.recv() => match o { Some(o) => o, None => break },
            e = errors_rx.recv() => return Err(e.unwrap_or_else(|| anyhow::anyhow!("publisher stopped"))),
            _ = tokio::time::sleep(wait) => break,
        };
        let Some(at) = sent_at.lock().expect("sent_at").remove(&outcome.order_id) else { continue };
        latencies.push(outcome.seen_at.duration_since(at));
        completed += usize::from(outcome.approved);
        driver.finished();
    }
    let elapsed = driver.started.elapsed();
    let projection = if options.query { Some(projection_catch_up(&stack).await) } else { None };
    let spent: Vec<CpuTime> = cpu_of(&pids).iter().zip(&cpu_before).map(|(after, before)| after.since(*before)).collect();
    let cpu: Vec<f64> = spent.iter().map(|c| c.total()).collect();
    let threads = crate::threads::by_kind(&threads_before, &crate::threads::snapshot(), elapsed.as_secs_f64(), latencies.len());
    let processes: Vec<ProcessFigure> = if pids.is_empty() {
        Vec::new()
    } else {
        std::iter::once("sagactl".to_string())
            .chain(pids.iter().map(|(name, _)| name.clone()))
            .zip(std::iter::once("self".to_string()).chain(pids.iter().map(|(_, pid)| pid.to_string())))
            .zip(&cpu)
            .map(|((name, pid), cpu)| ProcessFigure { name, cpu_cores: cpu / elapsed.as_secs_f64(), peak_rss_mib: peak_rss_mib(&pid) })
            .collect()
    };
    let metrics_after = stack.metrics_text().await?;
    let stages = stage_figures(&metrics_before, &metrics_after);
    let (commits_per_saga, records_per_commit) = commit_shares(&stages, latencies.len());
    let busy = loop_busy(&metrics_before, &metrics_after, elapsed.as_secs_f64());
    driver.stop();
    watch.close().await;
    api_stop.cancel();
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.stop().await;
    }
    let report = BenchReport::new(
        &options,
        if options.processes.is_some() { "processes" } else { "embedded" },
        if options.postgres { "postgres" } else { "sqlite" },
        latencies,
        elapsed,
        &spent,
        peak_rss_mib("self"),
    );
    Ok(BenchReport {
        completed,
        compensated: report.sagas - completed,
        processes,
        stages,
        busy,
        projection,
        threads,
        commits_per_saga,
        records_per_commit,
        ..report
    })
}

/// Starts sagas as the load says: a closed loop starts `concurrency` at once and one more for each
/// that finishes ([`Driver::finished`]); an open loop starts them on schedule from a task of its
/// own, whatever happens to them. `send(i, at)` starts saga `i`, due at `at`.
pub(crate) struct Driver<F> {
    send: F,
    load: Load,
    sagas: usize,
    next: usize,
    scheduler: Option<tokio::task::JoinHandle<()>>,
    /// When the first saga was started: the run's clock.
    pub(crate) started: Instant,
}

impl<F: Fn(usize, Instant) + Clone + Send + 'static> Driver<F> {
    /// Starts the first sagas of a closed loop, or the schedule of an open one.
    pub(crate) fn start(load: Load, sagas: usize, send: F) -> Driver<F> {
        let started = Instant::now();
        let mut driver = Driver { send, load, sagas, next: 0, scheduler: None, started };
        match load {
            Load::Closed { concurrency } => {
                while driver.next < concurrency.min(sagas) {
                    (driver.send)(driver.next, Instant::now());
                    driver.next += 1;
                }
            }
            Load::Open { rate } => {
                let send = driver.send.clone();
                driver.scheduler = Some(tokio::spawn(async move {
                    for i in 0..sagas {
                        let due = started + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(due.into()).await;
                        send(i, due);
                    }
                }));
            }
        }
        driver
    }

    /// A saga finished: a closed loop starts the next one.
    pub(crate) fn finished(&mut self) {
        if matches!(self.load, Load::Closed { .. }) && self.next < self.sagas {
            (self.send)(self.next, Instant::now());
            self.next += 1;
        }
    }

    /// Stops an open loop's schedule.
    pub(crate) fn stop(self) {
        if let Some(s) = self.scheduler {
            s.abort();
        }
    }
}

impl BenchReport {
    /// The figures of a run of `options` in `mode` on `database` whose sagas took `latencies`
    /// (all "completed"), in `elapsed`, using `cpu_seconds` of CPU; no per-process, per-thread,
    /// stage or projection figures.
    pub(crate) fn new(
        options: &BenchOptions,
        mode: &'static str,
        database: &'static str,
        mut latencies: Vec<Duration>,
        elapsed: Duration,
        cpu: &[CpuTime],
        peak_rss_mib: f64,
    ) -> BenchReport {
        let cpu_seconds: f64 = cpu.iter().map(|c| c.total()).sum();
        latencies.sort();
        let pct = |p: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
            latencies[i].as_secs_f64() * 1000.0
        };
        let (load, concurrency, rate) = match options.load {
            Load::Closed { concurrency } => ("closed", concurrency, 0.0),
            Load::Open { rate } => ("open", 0, rate),
        };
        let cpu_ms_per_saga = cpu_seconds * 1000.0 / latencies.len().max(1) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        BenchReport {
            load,
            concurrency,
            rate,
            sagas: latencies.len(),
            completed: latencies.len(),
            compensated: 0,
            unfinished: options.sagas.saturating_sub(latencies.len()),
            elapsed_s: elapsed.as_secs_f64(),
            sagas_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p95_ms: pct(0.95),
            p99_ms: pct(0.99),
            p99_9_ms: pct(0.999),
            max_ms: pct(1.0),
            mode,
            broker: match &options.broker {
                BrokerChoice::Embedded => "embedded".to_string(),
                BrokerChoice::External(bootstrap) => bootstrap.clone(),
            },
            database,
            saga_version: options.saga_version,
            partitions: options.partitions,
            instances: options.instances,
            cpu_cores: cpu_seconds / elapsed.as_secs_f64(),
            cpu_ms_per_saga,
            cpu_kernel_share: kernel_share(cpu),
            cpu_ceiling_sagas_per_sec: if cpu_ms_per_saga > 0.0 { cores * 1000.0 / cpu_ms_per_saga } else { 0.0 },
            peak_rss_mib,
            commits_per_saga: 0.0,
            records_per_commit: 0.0,
            threads: Vec::new(),
            processes: Vec::new(),
            stages: Vec::new(),
            busy: Vec::new(),
            projection: None,
        }
    }
}

/// The read model's lag now, and how long it takes to reach 0 (measured every 20 ms, up to 60 s).
async fn projection_catch_up(stack: &Stack) -> ProjectionFigure {
    let since = Instant::now();
    let lag_at_end = stack.projection_lag().await.unwrap_or(-1);
    let mut lag = lag_at_end;
    while lag != 0 && since.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        lag = stack.projection_lag().await.unwrap_or(-1);
    }
    ProjectionFigure { lag_at_end, caught_up_ms: (lag == 0).then(|| since.elapsed().as_secs_f64() * 1000.0) }
}

/// The shipped seed, with stock and credit enough that no approved benchmark order is refused
/// however many run (bob's low credit limit still declines his).
fn bench_seed() -> Seed {
    let mut seed = Seed::dev();
    for item in &mut seed.stock {
        item.on_hand = item.on_hand.max(1_000_000_000);
    }
    for customer in seed.customers.iter_mut().filter(|c| c.customer_id != "bob") {
        customer.credit_limit_minor = customer.credit_limit_minor.max(1_000_000_000_000_000);
    }
    seed
}

/// User and system CPU time of a process (`self` or a process id) so far (0 where /proc is not
/// there).
pub(crate) fn process_cpu(pid: &str) -> CpuTime {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().and_then(|stat| crate::threads::parse_stat(&stat)).map_or(CpuTime::default(), |(_, cpu)| cpu)
}

/// The share of `spent` that was system time (0 when nothing was spent).
fn kernel_share(spent: &[CpuTime]) -> f64 {
    let total: f64 = spent.iter().map(|c| c.total()).sum();
    if total > 0.0 {
        spent.iter().map(|c| c.system_s).sum::<f64>() / total
    } else {
        0.0
    }
}

/// Peak resident set (VmHWM) of a process (`self` or a process id), MiB (0 where /proc is not
/// there).
pub(crate) fn peak_rss_mib(pid: &str) -> f64 {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0.0 };
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok()).map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_figures_are_the_difference_of_two_snapshots_over_every_service() {
        let before = "saga_stage_seconds_sum{service=\"order\",stage=\"apply\"} 1\n\
                      saga_stage_seconds_count{service=\"order\",stage=\"apply\"} 10\n";
        let after = "# TYPE saga_stage_seconds histogram\n\
                     saga_stage_seconds_bucket{service=\"order\",stage=\"apply\",le=\"0.1\"} 20\n\
                     saga_stage_seconds_sum{service=\"order\",stage=\"apply\"} 1.5\n\
                     saga_stage_seconds_count{service=\"order\",stage=\"apply\"} 20\n\
                     saga_stage_seconds_sum{service=\"payment\",stage=\"apply\"} 0.5\n\
                     saga_stage_seconds_count{service=\"payment\",stage=\"apply\"} 10\n";
        let figures = stage_figures(before, after);
        let apply = figures.iter().find(|f| f.stage == "apply").expect("apply is reported");
        // (1.5 - 1 + 0.5) s over (20 - 10 + 10) observations.
        assert_eq!(apply.count, 20);
        assert!((apply.mean_ms - 50.0).abs() < 1e-9, "{apply:?}");
        let publish = figures.iter().find(|f| f.stage == "publish").expect("every stage is reported");
        assert_eq!((publish.count, publish.mean_ms), (0, 0.0));
        // Over 2 s, order's loop applied for 0.5 s more, payment's for 0.5 s.
        let busy = loop_busy(before, after, 2.0);
        let fractions: Vec<(&str, f64)> = busy.iter().map(|b| (b.service.as_str(), b.fraction)).collect();
        assert_eq!(fractions, vec![("order", 0.25), ("payment", 0.25)]);
    }

    #[test]
    fn commits_are_shared_out_per_saga_and_records_per_commit() {
        let figure = |stage: &str, count: u64| StageFigure { stage: stage.to_string(), count, mean_ms: 1.0 };
        let stages = vec![figure("deliver", 800), figure("apply", 260), figure("commit", 250)];
        // 250 commits over 100 sagas; 800 records over 250 commits.
        assert_eq!(commit_shares(&stages, 100), (2.5, 3.2));
        assert_eq!(commit_shares(&stages, 0), (0.0, 3.2));
        assert_eq!(commit_shares(&[figure("deliver", 8)], 1), (0.0, 0.0));
    }

    #[test]
    fn the_kernel_share_is_system_time_over_all_time_of_every_process() {
        let spent = [CpuTime { user_s: 1.0, system_s: 1.0 }, CpuTime { user_s: 1.5, system_s: 0.5 }];
        assert_eq!(kernel_share(&spent), 0.375);
        assert_eq!(kernel_share(&[]), 0.0);
        assert_eq!(kernel_share(&[CpuTime::default()]), 0.0);
        let later = CpuTime { user_s: 3.0, system_s: 2.0 };
        assert_eq!(later.since(spent[0]), CpuTime { user_s: 2.0, system_s: 1.0 });
    }
}
