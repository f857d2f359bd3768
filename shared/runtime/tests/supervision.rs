//! Supervision: a background task of a service that panics (here: a deadlines capability whose
//! `due` has a bug) must stop the service with an error that names the task, instead of leaving
//! it running without deadlines behind a green `/readyz`; `/readyz` says why while it stops.

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use saga_contracts::{Message, TopicKind};
use saga_runtime::handler::Due;
use saga_runtime::{Deadlines, HandleError, Handler, Incoming, Service, ServiceError};
use saga_store::Conn;
use tokio_util::sync::CancellationToken;

/// Consumes order commands and does nothing with them; its deadlines panic.
struct Brittle;

impl Handler for Brittle {
    const SERVICE: &'static str = "brittle";
    type Note = ();

    fn consumes(&self) -> &'static [TopicKind] {
        &[TopicKind::OrderCommands]
    }

    fn produces(&self) -> &'static [&'static str] {
        &[]
    }

    async fn handle(&self, _conn: &mut Conn<'_>, _incoming: &Incoming, _notes: &mut Vec<()>) -> Result<Vec<Message>, HandleError> {
        Ok(Vec::new())
    }
}

impl Deadlines for Brittle {
    fn deadline_interval(&self) -> Duration {
        Duration::from_millis(50)
    }

    async fn due(&self, _db: &saga_store::Db, _cutoffs: &saga_runtime::timers::Cutoffs, _limit: i64) -> Result<Vec<Due>, sqlx::Error> {
        panic!("a bug in due()")
    }

    async fn fire(&self, _conn: &mut Conn<'_>, _id: &str, _now_ms: i64, _notes: &mut Vec<()>) -> Result<Vec<Message>, HandleError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_background_task_stops_the_service_with_an_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let registry_db = saga_store::Db::connect(&format!("sqlite://{}", dir.path().join("registry.db").display()), 2).await.unwrap();
    let registry = saga_registry::Registry::build_with_db(registry_db, "127.0.0.1:0".parse().unwrap()).await.unwrap();
    let registry_url = registry.url();
    let registry_stop = CancellationToken::new();
    let stopped = registry_stop.clone();
    tokio::spawn(registry.run_until_stopped(async move { stopped.cancelled().await }));
    let cluster = MockCluster::new(1).unwrap();
    // Deadlines are looked for once the consumer owns a partition and has read it through.
    cluster.create_topic(&saga_contracts::Topics::default().name(TopicKind::OrderCommands), 1, 1).unwrap();

    let mut settings = saga_runtime::ServiceSettings::defaults_for("brittle");
    settings.kafka.bootstrap_servers = cluster.bootstrap_servers();
    settings.kafka.create_topics = false;
    settings.registry.url = registry_url;
    settings.database.url = format!("sqlite://{}", dir.path().join("brittle.db").display());
    settings.http.bind = "127.0.0.1:0".into();
    let service = Service::build(settings, Brittle, &saga_runtime::outbox::MIGRATIONS).await.unwrap().with_deadlines();
    let http = service.http_addr().expect("HTTP is on");

    let running = tokio::spawn(service.run_until_stopped(CancellationToken::new()));
    // While it stops, readiness reports the failure (the stop may already be over: then the
    // listener is gone, which a probe also reads as not ready).
    let mut seen_not_ready = false;
    for _ in 0..100 {
        match reqwest::get(format!("http://{http}/readyz")).await {
            Ok(r) => {
                // Not ready at first (its dependencies are not checked yet): wait for the halt.
                let status = r.status();
                let body = r.text().await.unwrap();
                if body.contains("halted") {
                    assert_eq!(status, 503, "{body}");
                    assert!(body.contains("the deadlines task panicked: a bug in due()"), "{body}");
                    seen_not_ready = true;
                    break;
                }
            }
            Err(_) if running.is_finished() => break,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let result = tokio::time::timeout(Duration::from_secs(45), running).await.expect("the service stops by itself within the grace").unwrap();
    match result {
        Err(ServiceError::TaskFailed(why)) => assert_eq!(why, "the deadlines task panicked: a bug in due()"),
        other => panic!("expected TaskFailed, got {other:?} (readiness seen failing: {seen_not_ready})"),
    }
    registry_stop.cancel();
}
