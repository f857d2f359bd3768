//! Carrying out the plan: process kills, broker and PostgreSQL restarts, duplicates of consumed
//! records and poison records. Each fault runs as its own task at its planned time, so faults
//! overlap as they would in production.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message as _;
use saga_contracts::{Message, TopicKind, Topics};
use saga_runtime::config::KafkaSettings;

use super::cluster::Cluster;
use super::inspect;
use super::load::Client;
use super::proxy::Link;
use super::schedule::{Fault, Planned, PoisonKind, Rng, BROKER, PAUSABLE, POSTGRESQL};

/// Which consumer group reads each consumed topic.
pub fn group_of(kind: TopicKind) -> &'static str {
    match kind {
        TopicKind::OrderCommands => "saga-order",
        TopicKind::InventoryCommands => "saga-inventory",
        TopicKind::PaymentCommands => "saga-payment",
        TopicKind::OrderEvents | TopicKind::InventoryEvents | TopicKind::PaymentEvents => "saga-orchestrator",
    }
}

/// A poison record the injector published.
#[derive(Debug, Clone)]
pub struct PoisonRecord {
    /// Topic it went to.
    pub topic: String,
    /// Its key (unique per run).
    pub key: String,
    /// How it is broken.
    pub kind: PoisonKind,
}

/// What was injected, counted as it happened.
#[derive(Debug, Default)]
pub struct Injected {
    /// Registry and service kills.
    pub kills: AtomicUsize,
    /// Broker kills.
    pub broker_restarts: AtomicUsize,
    /// PostgreSQL restarts.
    pub db_restarts: AtomicUsize,
    /// Services paused past their session timeout.
    pub pauses: AtomicUsize,
    /// Services cut off from PostgreSQL.
    pub db_partitions: AtomicUsize,
    /// Network partitions of a service, the broker or PostgreSQL.
    pub net_partitions: AtomicUsize,
    /// Delayed and lossy networks.
    pub net_degrades: AtomicUsize,
    /// Records re-published.
    pub duplicates: AtomicUsize,
    /// The poison records.
    pub poison: Mutex<Vec<PoisonRecord>>,
    /// After each kill or pause of a service: how long from the process being back (restarted,
    /// or continued) to its first record consumed; `None` when that took longer than
    /// [`RECOVERY_LIMIT`].
    pub recoveries: Mutex<Vec<(&'static str, Option<Duration>)>>,
}

/// How long a recovery is waited for before it counts as not recovered.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(60);

/// Everything the faults need.
pub struct Injector {
    /// The processes.
    pub cluster: Arc<Cluster>,
    /// The broker.
    pub kafka: KafkaSettings,
    /// Topic names.
    pub topics: Topics,
    /// Publishes duplicates and poison.
    pub producer: FutureProducer,
    /// Encodes the realistic poison.
    pub client: Arc<Client>,
    /// `--seed`.
    pub seed: u64,
    /// PostgreSQL major version, the cluster's directory under /etc/postgresql.
    pub pg_version: String,
    /// PostgreSQL server, to wait for after a restart.
    pub pg_admin_url: String,
    /// Where pg_ctlcluster's output goes.
    pub run_dir: std::path::PathBuf,
    /// What happened.
    pub injected: Injected,
    /// Each service's binary and its HTTP port (`/metrics`), to time recoveries.
    pub service_ports: Vec<(&'static str, u16)>,
    /// Each service's binary and the relay between it and PostgreSQL.
    pub db_links: Vec<(&'static str, super::proxy::Proxy)>,
    /// The links network faults act on, when the run has them.
    pub network: Option<Network>,
}

/// The links of a run with network faults: every client reaches the broker over `broker`, and each
/// service, in a network namespace of its own, reaches everything over its own link.
pub struct Network {
    /// Between every client and the broker.
    pub broker: Arc<Link>,
    /// Each service's binary and its link to the broker, the registry and PostgreSQL.
    pub services: Vec<(&'static str, Arc<Link>)>,
}

impl Injector {
    /// Runs every planned fault at its time after `start`; returns when all are done.
    pub async fn run(self: Arc<Self>, plan: Vec<Planned>, start: tokio::time::Instant) -> anyhow::Result<()> {
        let mut tasks = Vec::new();
        for (i, planned) in plan.into_iter().enumerate() {
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep_until(start + planned.at).await;
                let began = Instant::now();
                eprintln!("chaos: +{:.1}s fault {i}: {}", planned.at.as_secs_f64(), planned.fault);
                let result = me.inject(i as u64, &planned.fault).await;
                match &result {
                    Ok(()) => eprintln!("chaos: fault {i} done in {} ms", began.elapsed().as_millis()),
                    Err(e) => eprintln!("chaos: fault {i} failed: {e:#}"),
                }
                result.with_context(|| format!("fault {i} ({})", planned.fault))
            }));
        }
        for t in tasks {
            t.await??;
        }
        Ok(())
    }

    async fn inject(&self, index: u64, fault: &Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill { target, down } => {
                self.cluster.kill_and_restart(target, *down).await?;
                self.injected.kills.fetch_add(1, Ordering::Relaxed);
                // A restarted process counts from zero.
                self.time_recovery(target, 0.0, "restart").await;
            }
            Fault::BrokerRestart { down } => {
                self.cluster.kill_and_restart("tansu", *down).await?;
                self.injected.broker_restarts.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Pause { target, paused } => {
                self.cluster.pause(target, *paused).await?;
                self.injected.pauses.fetch_add(1, Ordering::Relaxed);
                // Stopped, it consumed nothing: what it shows now is where it stood.
                let before = self.consumed_by(target).await;
                self.time_recovery(target, before, "pause").await;
            }
            Fault::DbRestart => {
                self.restart_postgres().await?;
                self.injected.db_restarts.fetch_add(1, Ordering::Relaxed);
            }
            Fault::DbPartition { target, cut } => {
                let link = self.db_links.iter().find(|(name, _)| name == target).map(|(_, link)| link);
                let link = link.with_context(|| format!("no link between {target} and PostgreSQL"))?;
                link.cut(true);
                tokio::time::sleep(*cut).await;
                let before = self.consumed_by(target).await;
                link.cut(false);
                self.injected.db_partitions.fetch_add(1, Ordering::Relaxed);
                self.time_recovery(target, before, "partition from postgresql").await;
            }
            Fault::NetPartition { target, cut } => {
                let links = self.links_of(target)?;
                links.iter().for_each(|l| l.cut(true));
                tokio::time::sleep(*cut).await;
                // Cut off, a service may still drain what it had fetched: count from the heal.
                let hit = affected(target);
                let before = futures::future::join_all(hit.iter().map(|s| self.consumed_if_answering(s))).await;
                links.iter().for_each(|l| l.cut(false));
                self.injected.net_partitions.fetch_add(1, Ordering::Relaxed);
                let after = format!("network partition ({target})");
                // A service that did not answer (killed or paused meanwhile) is timed by that fault.
                let timed = hit.iter().zip(before).filter_map(|(s, before)| Some((s, before?)));
                futures::future::join_all(timed.map(|(s, before)| self.time_recovery(s, before, &after))).await;
            }
            Fault::NetDegrade { target, delay, loss, lasting } => {
                let links = self.links_of(target)?;
                links.iter().for_each(|l| l.degrade(Some((*delay, *loss))));
                tokio::time::sleep(*lasting).await;
                links.iter().for_each(|l| l.degrade(None));
                self.injected.net_degrades.fetch_add(1, Ordering::Relaxed);
            }
            Fault::Duplicates { count } => self.duplicate(index, *count).await?,
            Fault::Poison { records } => self.poison(index, records).await?,
        }
        Ok(())
    }

    /// The links a network fault on `target` acts on.
    fn links_of(&self, target: &str) -> anyhow::Result<Vec<Arc<Link>>> {
        let network = self.network.as_ref().context("a network fault in a run without network links")?;
        Ok(match target {
            BROKER => vec![network.broker.clone()],
            POSTGRESQL => self.db_links.iter().map(|(_, proxy)| proxy.link.clone()).collect(),
            service => {
                let link = network.services.iter().find(|(name, _)| *name == service).map(|(_, link)| link.clone());
                vec![link.with_context(|| format!("no network link of {service}"))?]
            }
        })
    }

    /// What `target` has consumed so far; 0 while it does not answer.
    async fn consumed_by(&self, target: &str) -> f64 {
        match self.port_of(target) {
            Some(port) => consumed(port).await.unwrap_or(0.0),
            None => 0.0,
        }
    }

    /// What `target` has consumed so far, if it answers.
    async fn consumed_if_answering(&self, target: &str) -> Option<f64> {
        consumed(self.port_of(target)?).await
    }

    fn port_of(&self, target: &str) -> Option<u16> {
        self.service_ports.iter().find(|(name, _)| *name == target).map(|(_, port)| *port)
    }

    /// Waits (up to [`RECOVERY_LIMIT`]) until `target` has consumed more than `before` records
    /// and records how long that took. Not a service (the registry): nothing to time.
    async fn time_recovery(&self, target: &'static str, before: f64, after: &str) {
        let Some(port) = self.port_of(target) else { return };
        let back = Instant::now();
        let recovered = loop {
            if consumed(port).await.is_some_and(|n| n > before) {
                break Some(back.elapsed());
            }
            if back.elapsed() > RECOVERY_LIMIT {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        match recovered {
            Some(d) => eprintln!("chaos: {target} consumed again {} ms after its {after}", d.as_millis()),
            None => eprintln!("chaos: {target} consumed nothing within {} s of its {after}", RECOVERY_LIMIT.as_secs()),
        }
        self.injected.recoveries.lock().unwrap_or_else(|p| p.into_inner()).push((target, recovered));
    }

    async fn restart_postgres(&self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.run_dir.join("pg_ctlcluster.log"))?;
        // Output to a file, not a pipe: the restarted server would inherit a pipe and keep it open.
        let status = tokio::process::Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &self.pg_version, "main", "restart"])
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await
            .context("running pg_ctlcluster")?;
        if !status.success() {
            bail!("pg_ctlcluster {} main restart exited with {status}", self.pg_version);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match saga_store::Db::connect(&self.pg_admin_url, 1).await {
                Ok(db) => {
                    db.close().await;
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => bail!("postgresql did not come back within 60 s: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Re-publishes `count` records that their consumer group has already committed, with the
    /// same key, value and headers, to the same partition.
    async fn duplicate(&self, index: u64, count: usize) -> anyhow::Result<()> {
        // Right after a broker restart the groups may not have committed anything yet: try again
        // for a while rather than inject fewer duplicates.
        let mut picked = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut round = 0;
        while picked.len() < count {
            let (kafka, topics, want) = (self.kafka.clone(), self.topics.clone(), count - picked.len());
            let rng = Rng::new(self.seed, 1000 + index * 100 + round);
            round += 1;
            match tokio::task::spawn_blocking(move || pick_consumed(&kafka, &topics, rng, want)).await? {
                Ok(more) => picked.extend(more),
                Err(e) => eprintln!("chaos: reading consumed records failed: {e:#}"),
            }
            if picked.len() < count {
                if Instant::now() > deadline {
                    eprintln!("chaos: only {} of {count} records to duplicate could be read", picked.len());
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        for record in &picked {
            let mut headers = OwnedHeaders::new();
            if let Some(h) = record.headers() {
                for h in h.iter() {
                    headers = headers.insert(Header { key: h.key, value: h.value });
                }
            }
            let out = Out { topic: record.topic(), partition: Some(record.partition()), key: record.key(), payload: record.payload(), headers: Some(headers) };
            send(&self.producer, out).await?;
            self.injected.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn poison(&self, index: u64, records: &[(usize, PoisonKind)]) -> anyhow::Result<()> {
        let mut rng = Rng::new(self.seed, 2000 + index);
        for (n, (topic, kind)) in records.iter().enumerate() {
            let kind_of_topic = TopicKind::ALL[*topic];
            let topic = self.topics.name(kind_of_topic);
            let key = format!("poison-{}-{index}-{n}", self.seed);
            let payload = self.poison_payload(&key, kind_of_topic, *kind, &mut rng).await?;
            send(&self.producer, Out { topic: &topic, partition: None, key: Some(key.as_bytes()), payload: Some(&payload), headers: None }).await?;
            self.injected.poison.lock().unwrap().push(PoisonRecord { topic, key, kind: *kind });
        }
        Ok(())
    }

    async fn poison_payload(&self, key: &str, topic: TopicKind, kind: PoisonKind, rng: &mut Rng) -> anyhow::Result<Vec<u8>> {
        let noise: Vec<u8> = (0..8 + rng.below(24)).map(|_| rng.next_u64() as u8).collect();
        Ok(match kind {
            PoisonKind::Garbage => {
                let mut p = format!("chaos garbage {key} ").into_bytes();
                p.extend(noise);
                p
            }
            PoisonKind::BadMagic => [&[7u8, 0, 0, 0, 1][..], &noise].concat(),
            // The development registry numbers schemas from 1; nothing registers two billion.
            PoisonKind::UnknownSchemaId => [&[0u8][..], &(2_000_000_000u32 + rng.below(1000) as u32).to_be_bytes(), &noise].concat(),
            PoisonKind::Undecodable => {
                let order: Message = saga_cli::sample::place_order(key, "alice", vec![saga_cli::sample::line("WIDGET-1", 1, 1250)]).into();
                let mut p = self.client.encode(&order, Duration::from_secs(120)).await?;
                if topic == TopicKind::OrderCommands {
                    // Magic byte and schema id, then a body cut short: malformed Avro.
                    p.truncate(5 + 3);
                }
                p
            }
        })
    }
}

/// The services a network fault on `target` cuts off or slows: all of them for the broker and
/// PostgreSQL.
fn affected(target: &'static str) -> Vec<&'static str> {
    match target {
        BROKER | POSTGRESQL => PAUSABLE.to_vec(),
        service => vec![service],
    }
}

/// One record to publish: topic, partition (else by key), key, value, headers.
struct Out<'a> {
    topic: &'a str,
    partition: Option<i32>,
    key: Option<&'a [u8]>,
    payload: Option<&'a [u8]>,
    headers: Option<OwnedHeaders>,
}

async fn send(producer: &FutureProducer, out: Out<'_>) -> anyhow::Result<()> {
    // The producer retries internally for `message.timeout.ms`; past that, again, for a while.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut r: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(out.topic);
        r.partition = out.partition;
        r.key = out.key;
        r.payload = out.payload;
        r.headers = out.headers.clone();
        match producer.send(r, Duration::from_secs(30)).await {
            Ok(_) => return Ok(()),
            Err((e, _)) if Instant::now() < deadline => {
                eprintln!("chaos: injecting into {} failed ({e}); retrying", out.topic);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err((e, _)) => bail!("injecting into {} failed for two minutes: {e}", out.topic),
        }
    }
}

/// Picks `count` committed records of the six consumed topics: a random partition with committed
/// records, a random committed offset, and a few records from there.
fn pick_consumed(kafka: &KafkaSettings, topics: &Topics, mut rng: Rng, count: usize) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut ranges = Vec::new();
    let mut seen = Vec::new();
    for kind in TopicKind::ALL {
        let topic = topics.name(kind);
        for (p, (low, high, committed)) in inspect::offsets(kafka, group_of(kind), &topic)? {
            seen.push(format!("{}/{p}:{committed}/{high}", kind.suffix()));
            if committed > low {
                ranges.push((topic.clone(), p, low, committed));
            }
        }
    }
    if ranges.is_empty() {
        eprintln!("chaos: no committed records yet (committed/high: {})", seen.join(" "));
    }
    let reader = inspect::reader(kafka)?;
    let mut out = Vec::new();
    let mut attempts = 0;
    while out.len() < count && !ranges.is_empty() && attempts < count * 4 {
        attempts += 1;
        let (topic, p, low, committed) = &ranges[rng.below(ranges.len() as u64) as usize];
        let from = low + rng.below((committed - low) as u64) as i64;
        let run = (count - out.len()).min(1 + rng.below(5) as usize);
        out.extend(inspect::read_range(&reader, topic, *p, from, *committed, run)?);
    }
    Ok(out)
}

/// The records a service has consumed (`saga_records_consumed_total`, every topic), from its
/// `/metrics`; `None` while it does not answer.
async fn consumed(port: u16) -> Option<f64> {
    let response = tokio::task::spawn_blocking(move || saga_sandbox::procs::try_http_get(port, "/metrics")).await.ok()?.ok()?;
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some(response.lines().filter(|l| l.starts_with("saga_records_consumed_total{")).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum())
}
