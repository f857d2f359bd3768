//! `sagactl dev`: the whole system in one process, sample orders, outcomes as they happen.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use saga_contracts::TopicKind;
use serde::Serialize;

use crate::sample::{sample_order, Expect};
use crate::watch::{watch_outcomes, Settled};
use saga_sandbox::stack::{Stack, StackOptions};

/// Options of `sagactl dev`.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// Sample orders to place.
    pub orders: usize,
    /// Exit after the sample orders finish (or `timeout`) instead of running on.
    pub exit: bool,
    /// Print the summary as one JSON object.
    pub json: bool,
    /// Where the SQLite databases live; a temporary directory when `None`.
    pub data_dir: Option<PathBuf>,
    /// Registry port (0 picks one).
    pub registry_port: u16,
    /// Partitions per topic.
    pub partitions: i32,
    /// How long to wait for the sample orders.
    pub timeout: Duration,
    /// Where to serve the saga view and `/metrics` (`host:port`); empty turns it off.
    pub web: String,
    /// Where to serve the query API (`host:port`); empty turns the query service off.
    pub query: String,
}

/// The summary `dev --exit` prints.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DevSummary {
    /// Orders approved.
    pub approved: usize,
    /// Orders rejected (out of stock, declined).
    pub rejected: usize,
    /// Orders with no final outcome when the wait ended.
    pub stuck: usize,
    /// Orders placed.
    pub total: usize,
    /// Orders whose outcome differs from what the sample was built for.
    pub unexpected: usize,
    /// Wall time from the first order to the last outcome, in milliseconds.
    pub elapsed_ms: u128,
}

/// Runs `sagactl dev`; returns the summary of the sample orders.
pub async fn run(options: DevOptions) -> anyhow::Result<DevSummary> {
    let (dir, _temp) = match &options.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::tempdir()?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    let mut stack_options = StackOptions::embedded(dir.clone());
    stack_options.registry_bind.set_port(options.registry_port);
    stack_options.partitions = options.partitions;
    let web = match options.web.as_str() {
        "" => None,
        addr => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--web {addr}: cannot listen there"))?),
    };
    let query = match options.query.as_str() {
        "" => None,
        addr => Some(tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--query {addr}: cannot listen there"))?),
    };
    stack_options.query = query.is_some();
    let query_url = query.as_ref().map(|l| l.local_addr()).transpose()?.map(|a| format!("http://{a}"));
    if let Some(w) = &web {
        stack_options.saga_view_url = Some(format!("http://{}", w.local_addr()?));
    }
    let stack = Stack::start(stack_options).await?;
    let say = |line: String| {
        if !options.json {
            println!("{line}");
        }
    };
    let web_stop = saga_runtime::CancellationToken::new();
    if let Some(listener) = web {
        say(format!("saga view:                           http://{}/sagas   (metrics at /metrics)", listener.local_addr()?));
        let (routes, stop) = (stack.web_routes(query_url.clone()), web_stop.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, routes).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
    }
    if let (Some(listener), Some(routes)) = (query, stack.query_routes()) {
        say(format!("query API (read side):               http://{}/orders   (OpenAPI at /openapi.json)", listener.local_addr()?));
        let stop = web_stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, routes).with_graceful_shutdown(async move { stop.cancelled().await }).await;
        });
    }
    say(format!("broker (in-process, Kafka protocol): {}", stack.bootstrap));
    say(format!("schema registry:                     {}", stack.registry_url));
    say(format!("databases (SQLite):                  {}", dir.display()));

    let mut watch = watch_outcomes(&stack.settings.kafka, stack.topic(TopicKind::OrderEvents), stack.codec())?;

    let run_id = format!("dev{}", saga_contracts::now_ms() / 1000);
    let mut expected: HashMap<String, Expect> = HashMap::new();
    say(format!("placing {} sample orders (5 in 7 should be approved, 1 runs out of stock, 1 is declined)", options.orders));
    let started = Instant::now();
    for i in 0..options.orders {
        let (order, expect) = sample_order(&run_id, i);
        expected.insert(order.order_id.clone(), expect);
        stack.publish(&order.into()).await?;
    }

    let mut summary = DevSummary { approved: 0, rejected: 0, stuck: 0, total: options.orders, unexpected: 0, elapsed_ms: 0 };
    let mut seen = HashSet::new();
    let deadline = tokio::time::Instant::now() + options.timeout;
    while seen.len() < options.orders {
        let outcome = tokio::select! {
            o = watch.outcomes.recv() => match o { Some(o) => o, None => break },
            _ = tokio::time::sleep_until(deadline) => break,
        };
        let Some(expect) = expected.get(&outcome.order_id) else { continue };
        if !seen.insert(outcome.order_id.clone()) {
            continue;
        }
        if outcome.approved {
            summary.approved += 1;
        } else {
            summary.rejected += 1;
        }
        if outcome.approved != (*expect == Expect::Approved) {
            summary.unexpected += 1;
        }
        summary.elapsed_ms = started.elapsed().as_millis();
        if !options.json {
            println!("{}", describe(&stack, &outcome).await);
        }
    }
    summary.stuck = options.orders - seen.len();
    if options.json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        println!(
            "summary: {} approved, {} rejected, {} stuck, {} total ({} unexpected) in {} ms",
            summary.approved, summary.rejected, summary.stuck, summary.total, summary.unexpected, summary.elapsed_ms
        );
    }

    if !options.exit {
        println!();
        println!("the system keeps running. Publish your own orders to {}:", stack.topic(TopicKind::OrderCommands));
        println!("  bootstrap servers: {}", stack.bootstrap);
        println!("  schema registry:   {}   (subject saga.order.PlaceOrder, RecordNameStrategy)", stack.registry_url);
        println!("  outcomes appear on {} and below. Ctrl-C stops.", stack.topic(TopicKind::OrderEvents));
        loop {
            tokio::select! {
                o = watch.outcomes.recv() => match o {
                    Some(o) if !expected.contains_key(&o.order_id) => println!("{}", describe(&stack, &o).await),
                    Some(_) => {}
                    None => break,
                },
                _ = saga_runtime::telemetry::shutdown_signal() => break,
            }
        }
        println!("shutting down");
    }
    watch.close().await;
    web_stop.cancel();
    stack.stop().await;
    Ok(summary)
}

/// One line per finished order: outcome, reason, and the saga's steps from its log. The order's
/// outcome can arrive before the orchestrator wrote the saga's last entry (it consumes the same
/// event): wait briefly for the saga to end, so the line is complete.
async fn describe(stack: &Stack, outcome: &Settled) -> String {
    let verdict = if outcome.approved { "APPROVED" } else { "REJECTED" };
    let db = &stack.dbs.orchestrator;
    for _ in 0..50 {
        match saga_orchestrator::store::get_saga(db, &outcome.order_id).await {
            Ok(Some(s)) if !s.state.status.is_terminal() => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
            _ => break,
        }
    }
    let steps = match saga_orchestrator::store::saga_log(db, &outcome.order_id).await {
        Ok(log) if !log.is_empty() => log
            .iter()
            .map(|e| match (&e.step, e.event.as_str()) {
                (Some(step), "step-succeeded") => format!("{step} ok"),
                (Some(step), "step-failed") => format!("{step} FAILED"),
                (Some(step), "step-compensated") => format!("{step} compensated"),
                (_, event) => event.to_string(),
            })
            .collect::<Vec<_>>()
            .join(" -> "),
        Ok(_) => "no saga (refused by validation)".into(),
        Err(e) => format!("saga log unavailable: {e}"),
    };
    match &outcome.reason {
        Some(r) => format!("{} {verdict}  {steps}\n    reason: {r}", outcome.order_id),
        None => format!("{} {verdict}  {steps}", outcome.order_id),
    }
}
