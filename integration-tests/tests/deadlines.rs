//! A deadline is judged by what was read: a reply that reached Kafka while the orchestrator was
//! down is read before the deadline it came in time for is fired.
//!
//! Inventory does not run at first, so the saga waits at its first step. Once its command is on
//! the broker, the orchestrator is killed; inventory starts and replies within the step's deadline; the orchestrator comes back
//! only after the deadline passed, and gets its partitions back only after the group gave up on
//! the killed member (its session timeout). Its timers find the passed deadline at once; they may
//! fire it only once the partition's replies have been read, and then the reply moves the saga on.

use std::time::{Duration, Instant};

use saga_cli::sample::sample_order;
use saga_orchestrator::saga::Status;
use saga_sandbox::procs::{await_saga, saga_status, Sandbox};

/// Long enough that inventory, started while the orchestrator is down, has time to start, join its
/// group and reply on a loaded machine; the test waits this long once.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

#[test]
fn a_reply_that_came_in_time_while_the_orchestrator_was_down_wins_over_the_deadline() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut sandbox = Sandbox::start("deadlines", 2, &rt);
    let extra = [
        ("SAGA_KAFKA__FETCH_WAIT_MAX_MS", "10".to_string()),
        ("SAGA_SAGA__STEP_TIMEOUT_MS", STEP_TIMEOUT.as_millis().to_string()),
        ("SAGA_SAGA__TIMER_INTERVAL_MS", "50".into()),
    ];
    let start = |s: &str| sandbox.spawn(s, &extra);
    let (order, payment) = (start("order"), start("payment"));
    let mut orchestrator = start("orchestrator");

    let procs = rt.block_on(async {
        let client = sandbox.client().await;
        let sagas = saga_store::Db::connect(&sandbox.db("orchestrator"), 1).await.unwrap();
        // Sample 0 is an order that is approved: stock and credit suffice.
        let placed = sample_order("deadlines-a", 0).0;
        let id = placed.order_id.clone();
        client.place(placed, None).await;
        await_saga(&sagas, &id, &[Status::Running], Duration::from_secs(60)).await;
        let waiting_since = Instant::now();
        // ReserveStock is committed with the saga, but published by the relay after: killed
        // before that, the orchestrator would take the command down with it and inventory would
        // have nothing to answer. A row leaves the outbox only once the broker acknowledged it.
        while saga_runtime::outbox::backlog(&sagas).await.unwrap().0 > 0 {
            assert!(waiting_since.elapsed() < Duration::from_secs(10), "the orchestrator did not publish ReserveStock within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        orchestrator.child.kill().unwrap();
        orchestrator.child.wait().unwrap();
        let inventory = start("inventory");
        // The reply is committed before the deadline (inventory reserved; its relay publishes a
        // committed row at once, and deletes it only in a later transaction).
        let stock = saga_store::Db::connect(&sandbox.db("inventory"), 1).await.unwrap();
        while saga_inventory::reservation_status(&stock, &id).await.unwrap() != Some(saga_inventory::ReservationStatus::Reserved) {
            assert!(waiting_since.elapsed() + Duration::from_secs(1) < STEP_TIMEOUT, "inventory did not reply well within the deadline (a slow start)");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The deadline passes while the orchestrator is down.
        tokio::time::sleep(STEP_TIMEOUT.saturating_sub(waiting_since.elapsed()) + Duration::from_secs(2)).await;
        assert!(waiting_since.elapsed() > STEP_TIMEOUT);
        assert_eq!(saga_status(&sagas, &id).await, Some(Status::Running), "nothing moved while the orchestrator was down");
        let orchestrator = start("orchestrator");

        let (ended, _) = await_saga(&sagas, &id, &[Status::Completed, Status::Compensated, Status::Compensating], Duration::from_secs(90)).await;
        let log = saga_orchestrator::store::saga_log(&sagas, &id).await.unwrap();
        let events: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
        assert_eq!(ended, Status::Completed, "the reply that came in time was read before the deadline fired; the saga's log: {events:?}");
        assert!(!events.contains(&"step-timed-out"), "{events:?}");
        [orchestrator, inventory, order, payment]
    });
    sandbox.stop(procs);
}
