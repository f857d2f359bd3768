//! Support for the end-to-end suites: start a whole stack on the in-process broker with SQLite,
//! or on an external broker (tansu) with PostgreSQL, and observe it from outside.
//!
//! The external variants read `SAGA_TEST_KAFKA_BOOTSTRAP` (default `127.0.0.1:9092`) and
//! `SAGA_TEST_POSTGRES_URL`; when either cannot be reached they fail and say how to start it.

pub mod chaos;
pub mod tls;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use saga_order::domain::OrderStatus;
use saga_sandbox::stack::{BrokerChoice, DatabaseChoice, Stack, StackOptions};

/// Which infrastructure a scenario runs on.
#[derive(Debug, Clone, Copy)]
pub enum Infra {
    /// In-process mock broker, SQLite files.
    Embedded,
    /// tansu (or any Kafka-protocol broker) as a separate process, PostgreSQL.
    External,
}

/// Bootstrap servers of the external test broker.
pub fn external_bootstrap() -> String {
    std::env::var("SAGA_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// Stack options for `infra`, with unique topic and group names so runs never meet.
pub fn options(infra: Infra, dir: &std::path::Path) -> StackOptions {
    let mut o = StackOptions::embedded(dir.to_path_buf());
    // The query service joins only the suites about it (it dead-letters what it cannot read too).
    o.query = false;
    if let Infra::External = infra {
        let bootstrap = external_bootstrap();
        let addr = bootstrap.split(',').next().unwrap_or_default().to_string();
        if std::net::TcpStream::connect_timeout(&addr.parse().expect("SAGA_TEST_KAFKA_BOOTSTRAP is host:port"), Duration::from_secs(2)).is_err() {
            panic!(
                "no broker at {bootstrap}. Start one with `tansu broker --listener-url tcp://127.0.0.1:9092 \
                 --advertised-listener-url tcp://127.0.0.1:9092 --storage-engine memory://tansu/` \
                 (install: cargo install --locked tansu --features dynostore,libsql,postgres) or set SAGA_TEST_KAFKA_BOOTSTRAP"
            );
        }
        let run = uuid::Uuid::new_v4().simple().to_string();
        o.broker = BrokerChoice::External(bootstrap);
        o.database = DatabaseChoice::Postgres;
        o.topic_prefix = format!("t{}", &run[..12]);
        o.group_suffix = format!("-{}", &run[..12]);
    }
    o
}

/// Waits until every order in `ids` is APPROVED or REJECTED and its saga (if it has one) has
/// ended; returns the orders' statuses.
pub async fn wait_for_orders(stack: &Stack, ids: &[String], timeout: Duration) -> HashMap<String, OrderStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let mut done = HashMap::new();
        for id in ids {
            if let Some(o) = saga_order::get_order(&stack.dbs.order, id).await.expect("order database readable") {
                let saga = saga_orchestrator::store::get_saga(&stack.dbs.orchestrator, id).await.expect("saga database readable");
                if o.status != OrderStatus::Pending && saga.is_none_or(|s| s.state.status.is_terminal()) {
                    done.insert(id.clone(), o.status);
                }
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        if tokio::time::Instant::now() > deadline {
            let missing: Vec<_> = ids.iter().filter(|i| !done.contains_key(*i)).take(10).collect();
            panic!("{} of {} orders not final after {timeout:?}; e.g. {missing:?}", ids.len() - done.len(), ids.len());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads records from `topic` (from the beginning) until `want` have arrived or `timeout` passes.
pub async fn read_topic(stack: &Stack, topic: &str, want: usize, timeout: Duration) -> Vec<OwnedMessage> {
    let mut kafka = stack.settings.kafka.clone();
    kafka.group_id = format!("test-reader-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = saga_runtime::kafka::consumer_config(&kafka, "test-reader").create().expect("reader consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut out = Vec::new();
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    while out.len() < want {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(m))) => out.push(m.detach()),
            Ok(Some(Err(e))) => panic!("reading {topic}: {e}"),
            Ok(None) | Err(_) => break,
        }
    }
    out
}

pub use saga_runtime::consumer::header;

/// True when the consuming service's inbox holds `message_id` (the message was applied).
pub async fn in_inbox(db: &saga_store::Db, message_id: &str) -> bool {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM inbox WHERE message_id = $1").bind(message_id).fetch_one(db.pool()).await.expect("inbox readable");
    n == 1
}

/// Declares each scenario `name(infra)` twice: `embedded::name` on the in-process broker with
/// SQLite, and `tansu_postgres::name` (ignored by default; `.ci/run` runs it with `--ignored`)
/// on tansu with PostgreSQL.
#[macro_export]
macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::Infra::Embedded).await
                }
            )*
        }
        mod tansu_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                #[ignore = "needs tansu at SAGA_TEST_KAFKA_BOOTSTRAP and PostgreSQL; .ci/run runs it with --ignored"]
                async fn $name() {
                    super::$name($crate::Infra::External).await
                }
            )*
        }
    };
}
