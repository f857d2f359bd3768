//! `sagactl bench`: drives sagas through the embedded stack and prints throughput and latency.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use saga_contracts::TopicKind;
use serde::Serialize;

use crate::sample::sample_order;
use crate::seed::{Seed, StockItem};
use crate::stack::{Stack, StackOptions};
use crate::watch::watch_outcomes;

/// Options of `sagactl bench`.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Sagas to run.
    pub sagas: usize,
    /// Sagas in flight at once.
    pub concurrency: usize,
    /// Partitions per topic.
    pub partitions: i32,
    /// Records per consumer transaction.
    pub batch_size: usize,
}

/// What the benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Sagas that finished.
    pub sagas: usize,
    /// In flight at once.
    pub concurrency: usize,
    /// Sagas that did not finish within the wait.
    pub unfinished: usize,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Finished sagas per second.
    pub sagas_per_sec: f64,
    /// End-to-end latency (PlaceOrder published → outcome read), percentiles in milliseconds.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
}

/// Runs the benchmark on a fresh embedded stack (SQLite with `synchronous=FULL`: every commit is
/// durable).
pub async fn run(options: BenchOptions) -> anyhow::Result<BenchReport> {
    let dir = tempfile::tempdir()?;
    let mut stack_options = StackOptions::embedded(dir.path().to_path_buf());
    stack_options.partitions = options.partitions;
    stack_options.batch_size = options.batch_size;
    // Enough of the scarce sku that the mix stays the same however many sagas run.
    let mut seed = Seed::dev();
    seed.stock.retain(|s| s.sku != "RARE-GEM");
    seed.stock.push(StockItem { sku: "RARE-GEM".into(), on_hand: 3 });
    stack_options.seed = seed;
    let stack = Arc::new(Stack::start(stack_options).await?);
    let mut watch = watch_outcomes(&stack.settings.kafka, stack.topic(TopicKind::OrderEvents), stack.codec())?;

    let run_id = format!("bench{}", saga_store::now_ms());
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::with_capacity(options.sagas);
    let (errors_tx, mut errors_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut next = 0;
    let send = |i: usize, sent_at: &mut HashMap<String, Instant>| {
        let (order, _) = sample_order(&run_id, i);
        sent_at.insert(order.order_id.clone(), Instant::now());
        let stack = stack.clone();
        let errors = errors_tx.clone();
        tokio::spawn(async move {
            if let Err(e) = stack.publish(&order.into()).await {
                let _ = errors.send(e);
            }
        });
    };
    // Warm up: the consumer groups form and the schemas are cached before the clock starts.
    let warmup = 20;
    for i in 0..warmup {
        let (order, _) = sample_order(&format!("{run_id}-warmup"), i);
        stack.publish(&order.into()).await?;
    }
    let mut warmed = 0;
    while warmed < warmup {
        tokio::select! {
            o = watch.outcomes.recv() => if o.is_some() { warmed += 1 } else { anyhow::bail!("watcher stopped during warm-up") },
            _ = tokio::time::sleep(Duration::from_secs(60)) => anyhow::bail!("warm-up sagas did not finish within 60 s"),
        }
    }
    let started = Instant::now();
    while next < options.concurrency.min(options.sagas) {
        send(next, &mut sent_at);
        next += 1;
    }
    let wait = Duration::from_secs(60);
    while latencies.len() < options.sagas {
        let outcome = tokio::select! {
            o = watch.outcomes.recv() => match o { Some(o) => o, None => break },
            e = errors_rx.recv() => return Err(e.unwrap_or_else(|| anyhow::anyhow!("publisher stopped"))),
            _ = tokio::time::sleep(wait) => break,
        };
        let Some(at) = sent_at.remove(&outcome.order_id) else { continue };
        latencies.push(outcome.seen_at.duration_since(at));
        if next < options.sagas {
            send(next, &mut sent_at);
            next += 1;
        }
    }
    let elapsed = started.elapsed();
    watch.close().await;
    if let Ok(stack) = Arc::try_unwrap(stack) {
        stack.stop().await;
    }
    latencies.sort();
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1000.0
    };
    Ok(BenchReport {
        sagas: latencies.len(),
        concurrency: options.concurrency,
        unfinished: options.sagas - latencies.len(),
        elapsed_s: elapsed.as_secs_f64(),
        sagas_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        p50_ms: pct(0.50),
        p95_ms: pct(0.95),
        p99_ms: pct(0.99),
    })
}
