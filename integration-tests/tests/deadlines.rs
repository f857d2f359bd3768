//! A deadline is judged by what was read: a reply that reached Kafka while the orchestrator was
//! down is read before the deadline it came in time for is fired.
//!
//! Inventory does not run at first, so the saga waits at its first step. The orchestrator is
//! killed; inventory starts and replies within the step's deadline; the orchestrator comes back
//! only after the deadline passed, and gets its partitions back only after the group gave up on
//! the killed member (its session timeout). Its timers find the passed deadline at once; they may
//! fire it only once the partition's replies have been read, and then the reply moves the saga on.

use std::time::{Duration, Instant};

use saga_cli::sample::sample_order;
use saga_integration_tests::procs::{free_port, mock_broker, seed, service_binary, spawn, spawn_registry, terminate, OrderClient, TestBroker};
use saga_orchestrator::saga::Status;

const STEP_TIMEOUT: Duration = Duration::from_secs(8);

async fn status_of(db: &saga_store::Db, id: &str) -> Option<Status> {
    saga_orchestrator::store::get_saga(db, id).await.unwrap().map(|s| s.state.status)
}

/// Waits until saga `id` has one of the statuses `want`; returns it.
async fn seen(db: &saga_store::Db, id: &str, want: &[Status], within: Duration) -> Status {
    let deadline = Instant::now() + within;
    loop {
        match status_of(db, id).await {
            Some(status) if want.contains(&status) => return status,
            status => assert!(Instant::now() < deadline, "saga {id} was not one of {want:?} within {within:?} (it is {status:?})"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn a_reply_that_came_in_time_while_the_orchestrator_was_down_wins_over_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let TestBroker { cluster: _broker, bootstrap, topics } = mock_broker("deadlines", 2);
    let port = free_port();
    let registry_url = format!("http://127.0.0.1:{port}");
    let db = |name: &str| format!("sqlite://{}", dir.path().join(format!("{name}.db")).display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(seed(&db("inventory"), &db("payment")));
    let registry = spawn_registry(port, dir.path());
    let env = |name: &str| {
        vec![
            ("SAGA_KAFKA__BOOTSTRAP_SERVERS", bootstrap.clone()),
            ("SAGA_REGISTRY__URL", registry_url.clone()),
            ("SAGA_DATABASE__URL", db(name)),
            ("SAGA_TOPICS__PREFIX", "deadlines".to_string()),
            ("SAGA_KAFKA__FETCH_WAIT_MAX_MS", "10".into()),
            ("SAGA_HTTP__BIND", String::new()),
            ("SAGA_SAGA__STEP_TIMEOUT_MS", STEP_TIMEOUT.as_millis().to_string()),
            ("SAGA_SAGA__TIMER_INTERVAL_MS", "50".into()),
        ]
    };
    let start = |s: &str| spawn(service_binary(s), &env(s), dir.path());
    let (order, payment) = (start("order"), start("payment"));
    let mut orchestrator = start("orchestrator");

    rt.block_on(async {
        let client = OrderClient::connect(&registry_url, &bootstrap, &topics).await;
        let sagas = saga_store::Db::connect(&db("orchestrator"), 1).await.unwrap();
        // Sample 0 is an order that is approved: stock and credit suffice.
        let placed = sample_order("deadlines-a", 0).0;
        let id = placed.order_id.clone();
        client.place(placed, None).await;
        seen(&sagas, &id, &[Status::Running], Duration::from_secs(60)).await;
        let waiting_since = Instant::now();

        orchestrator.child.kill().unwrap();
        orchestrator.child.wait().unwrap();
        let inventory = start("inventory");
        // The reply is committed before the deadline (inventory reserved; its relay publishes a
        // committed row at once, and deletes it only in a later transaction).
        let stock = saga_store::Db::connect(&db("inventory"), 1).await.unwrap();
        while saga_inventory::reservation_status(&stock, &id).await.unwrap() != Some(saga_inventory::ReservationStatus::Reserved) {
            assert!(waiting_since.elapsed() + Duration::from_secs(1) < STEP_TIMEOUT, "inventory did not reply well within the deadline (a slow start)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The deadline passes while the orchestrator is down.
        tokio::time::sleep(STEP_TIMEOUT.saturating_sub(waiting_since.elapsed()) + Duration::from_secs(2)).await;
        assert!(waiting_since.elapsed() > STEP_TIMEOUT);
        assert_eq!(status_of(&sagas, &id).await, Some(Status::Running), "nothing moved while the orchestrator was down");
        let orchestrator = start("orchestrator");

        let ended = seen(&sagas, &id, &[Status::Completed, Status::Compensated, Status::Compensating], Duration::from_secs(90)).await;
        let log = saga_orchestrator::store::saga_log(&sagas, &id).await.unwrap();
        let events: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(ended, Status::Completed, "the reply that came in time was read before the deadline fired; the saga's log: {events:?}");
        assert!(!events.contains(&"step-timed-out"), "{events:?}");
        for p in [orchestrator, inventory, order, payment, registry] {
            terminate(p, dir.path());
        }
    });
}
