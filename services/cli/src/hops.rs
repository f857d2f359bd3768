//! `sagactl bench --mode hops`: the broker alone, under the saga's traffic without the services.
//!
//! A saga of the benchmark is eight records in a row, each consumed by the next service and
//! answered with the next record. Here each "saga" is a chain of eight records through eight
//! topics (`<run>.hop0` .. `<run>.hop7`), moved along by four relays that stand for the four
//! services: each consumes its topics in one consumer group and produces every record it reads to
//! the next topic, with the services' own client settings (`saga_runtime::kafka`), batch by batch,
//! storing offsets once the batch is acknowledged, as the services do; but with no database, no
//! decoding and no outbox. The last topic is read by the load's watch. So the figures are the
//! ceiling the broker and the Kafka clients allow any eight-hop saga on this machine: where the
//! full system reaches a large part of it, the broker binds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::Message as _;
use saga_runtime::config::ServiceSettings;
use saga_runtime::CancellationToken;

use crate::bench::{peak_rss_mib, process_cpu, BenchOptions, BenchReport, Driver};
use saga_sandbox::stack::{BrokerChoice, EmbeddedBroker};

/// Records per saga, as in the benchmark's saga (PlaceOrder .. OrderApproved).
pub const HOPS: usize = 8;

/// Which hop topics each relay consumes, as the services consume the saga's records: the order
/// service the first and the seventh, the orchestrator every reply, inventory and payment one
/// command each. Each relay produces what it reads from `hop<i>` to `hop<i+1>`.
const RELAYS: [(&str, &[usize]); 4] = [("order", &[0, 6]), ("orchestrator", &[1, 3, 5]), ("inventory", &[2]), ("payment", &[4])];

/// Runs `options.sagas` chains of [`HOPS`] records (closed or open loop, as `sagactl bench`) and
/// reports them as sagas: all of them "completed".
pub async fn run(options: &BenchOptions) -> anyhow::Result<BenchReport> {
    let run = format!("hops{}", saga_contracts::now_ms());
    let topics: Vec<String> = (0..HOPS).map(|i| format!("{run}.hop{i}")).collect();
    // Defaults plus `SAGA_*` variables, as the stack reads them (`SAGA_KAFKA__FETCH_WAIT_MAX_MS`).
    let mut settings = ServiceSettings::load("hops", None)?;
    settings.kafka.partitions = options.partitions;
    let broker = match &options.broker {
        BrokerChoice::Embedded => Some(EmbeddedBroker::start(options.partitions, topics.clone())?),
        BrokerChoice::External(bootstrap) => {
            settings.kafka.bootstrap_servers = bootstrap.clone();
            saga_runtime::kafka::create_topics(&settings.kafka, &topics).await?;
            None
        }
    };
    if let Some(b) = &broker {
        settings.kafka.bootstrap_servers = b.bootstrap().to_string();
    }
    let stop = CancellationToken::new();
    let mut relays = Vec::new();
    for (name, consumed) in RELAYS {
        let mut kafka = settings.kafka.clone();
        kafka.group_id = format!("{run}-{name}");
        let consumer: StreamConsumer = saga_runtime::kafka::consumer_config(&kafka, &format!("hops-{name}")).create()?;
        let names: Vec<&str> = consumed.iter().map(|i| topics[*i].as_str()).collect();
        consumer.subscribe(&names)?;
        let producer = saga_runtime::kafka::producer(&kafka, &format!("hops-{name}"))?;
        let next: HashMap<String, String> = consumed.iter().map(|i| (topics[*i].clone(), topics[*i + 1].clone())).collect();
        relays.push(tokio::spawn(relay(consumer, producer, next, options.batch_size, stop.clone())));
    }
    let mut kafka = settings.kafka.clone();
    kafka.group_id = format!("{run}-watch");
    let watch: StreamConsumer = saga_runtime::kafka::consumer_config(&kafka, "hops-watch").set("enable.auto.offset.store", "true").create()?;
    watch.subscribe(&[topics[HOPS - 1].as_str()])?;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watching = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut stream = watch.stream();
            loop {
                let record = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = stream.next() => match r { Some(Ok(r)) => r, Some(Err(_)) => continue, None => return },
                };
                let key = record.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
                if seen_tx.send((key, Instant::now())).is_err() {
                    return;
                }
            }
        }
    });
    let producer = saga_runtime::kafka::producer(&settings.kafka, "hops-load")?;
    let start_chain = {
        let (producer, first) = (producer.clone(), topics[0].clone());
        move |key: String| {
            let (producer, first) = (producer.clone(), first.clone());
            tokio::spawn(async move {
                let record = FutureRecord::to(&first).key(key.as_bytes()).payload(key.as_bytes());
                producer.send(record, Duration::from_secs(30)).await.map(|_| ()).map_err(|(e, _)| anyhow::anyhow!("producing to {first}: {e}"))
            })
        }
    };

    // Warm up: the groups form before the clock starts.
    let warmup = 20;
    for i in 0..warmup {
        start_chain(format!("warmup-{i}"));
    }
    let mut warmed = 0;
    while warmed < warmup {
        tokio::select! {
            s = seen.recv() => if s.is_some() { warmed += 1 } else { anyhow::bail!("the watch stopped during warm-up") },
            _ = tokio::time::sleep(Duration::from_secs(60)) => anyhow::bail!("warm-up chains did not finish within 60 s"),
        }
    }

    let cpu_before = process_cpu("self");
    let threads_before = crate::threads::snapshot();
    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let send = {
        let (sent_at, start_chain) = (sent_at.clone(), start_chain.clone());
        move |i: usize, at: Instant| {
            let key = format!("{run}-{i:06}");
            sent_at.lock().expect("sent_at").insert(key.clone(), at);
            start_chain(key);
        }
    };
    let mut driver = Driver::start(options.load, options.sagas, send);
    let mut latencies = Vec::with_capacity(options.sagas);
    while latencies.len() < options.sagas {
        let (key, at) = tokio::select! {
            s = seen.recv() => match s { Some(s) => s, None => break },
            _ = tokio::time::sleep(Duration::from_secs(60)) => break,
        };
        let Some(sent) = sent_at.lock().expect("sent_at").remove(&key) else { continue };
        latencies.push(at.duration_since(sent));
        driver.finished();
    }
    let elapsed = driver.started.elapsed();
    let cpu = process_cpu("self").since(cpu_before);
    let threads = crate::threads::by_kind(&threads_before, &crate::threads::snapshot(), elapsed.as_secs_f64(), latencies.len());
    driver.stop();
    stop.cancel();
    let _ = watching.await;
    for r in relays {
        let _ = r.await;
    }
    if let Some(b) = broker {
        b.stop();
    }
    Ok(BenchReport { threads, ..BenchReport::new(options, "hops", "none", latencies, elapsed, &[cpu], peak_rss_mib("self")) })
}

/// One stand-in service: reads batches from its topics, produces each record to the next topic,
/// and stores the batch's offsets once every record of it is acknowledged.
async fn relay(consumer: StreamConsumer, producer: rdkafka::producer::FutureProducer, next: HashMap<String, String>, batch: usize, stop: CancellationToken) {
    let mut stream = consumer.stream().ready_chunks(batch);
    loop {
        let records = tokio::select! {
            _ = stop.cancelled() => return,
            b = stream.next() => match b { Some(b) => b, None => return },
        };
        let records: Vec<_> = records.into_iter().filter_map(Result::ok).map(|r| r.detach()).collect();
        let sends = records.iter().map(|r| {
            let to = &next[r.topic()];
            let record = FutureRecord::to(to).key(r.key().unwrap_or_default()).payload(r.payload().unwrap_or_default());
            producer.send(record, Duration::from_secs(30))
        });
        if futures::future::join_all(sends).await.iter().any(Result::is_err) {
            tracing::warn!("a hop's produce failed; its chain is lost to this run");
        }
        for r in &records {
            let _ = consumer.store_offset(r.topic(), r.partition(), r.offset());
        }
    }
}
