//! The read side (the query service) against the running system: the read model equals the write
//! side once quiet, a replay from offset 0 builds the same model, read-your-writes holds, and
//! history and `as_of` tell what happened. Each scenario runs on the in-process broker with
//! SQLite, and (ignored by default; `.ci/run` runs them) on tansu with PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use saga_cli::sample::sample_order;
use saga_contracts::TopicKind;
use saga_integration_tests::{options, read_topic, wait_for_orders, Infra};
use saga_inventory::ReservationStatus;
use saga_payment::AuthorizationStatus;
use saga_query::model::{PaymentState, Status, StockState};
use saga_sandbox::stack::Stack;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(120);

saga_integration_tests::scenarios!(
    read_model_equals_write_side_and_a_replay_rebuilds_it,
    read_your_writes_holds_every_time,
    history_and_as_of_tell_what_happened,
    unreadable_records_are_dead_lettered_and_the_rest_applied,
    a_replay_beside_the_live_service_switches_without_losing_anything,
);

struct Running {
    stack: Stack,
    api: String,
    _dir: tempfile::TempDir,
    stop: saga_runtime::CancellationToken,
}

async fn start(infra: Infra) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(infra, dir.path());
    o.query = true;
    let stack = Stack::start(o).await.expect("stack starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let routes = stack.query_routes().expect("the query service runs in the stack");
    let stop = saga_runtime::CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move { axum::serve(listener, routes).with_graceful_shutdown(async move { stopped.cancelled().await }).await });
    Running { stack, api, _dir: dir, stop }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.stack.stop().await;
    }
}

async fn get(url: &str) -> (u16, Value) {
    let r = reqwest::get(url).await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_else(|e| panic!("GET {url}: body is not JSON: {e}")))
}

/// What the write side says of an order: (status, stock, payment).
async fn write_side(stack: &Stack, id: &str) -> (Status, StockState, PaymentState) {
    let order = saga_order::get_order(&stack.dbs.order, id).await.unwrap().expect("order exists");
    let status = Status::parse(order.status.as_str()).unwrap();
    let stock = match saga_inventory::reservation_status(&stack.dbs.inventory, id).await.unwrap() {
        None => StockState::Pending,
        Some(ReservationStatus::Reserved) => StockState::Reserved,
        Some(ReservationStatus::Released) => StockState::Released,
        Some(ReservationStatus::Failed) => StockState::Failed,
    };
    let payment = match saga_payment::authorization_of(&stack.dbs.payment, id).await.unwrap() {
        None => PaymentState::Pending,
        Some((AuthorizationStatus::Authorized, _)) => PaymentState::Authorized,
        Some((AuthorizationStatus::Declined, _)) => PaymentState::Declined,
        Some((AuthorizationStatus::Voided, _)) => PaymentState::Voided,
    };
    (status, stock, payment)
}

/// Waits until the read model says of every order in `ids` what the write side says (order
/// status, reservation, authorization); panics with examples after 30 s.
async fn wait_until_read_equals_write(stack: &Stack, ids: &[String]) {
    let query = stack.dbs.query.as_ref().expect("the query service runs");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut differ = Vec::new();
        for id in ids {
            let want = write_side(stack, id).await;
            let got = saga_query::store::get(query, id).await.unwrap().map(|v| (v.status, v.stock, v.payment));
            if got != Some(want) {
                differ.push(format!("{id}: read {got:?}, write {want:?}"));
            }
        }
        if differ.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} orders differ from the write side, e.g. {:?}",
            differ.len(),
            ids.len(),
            &differ[..differ.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every row of a read model, by order id.
async fn snapshot(db: &saga_store::Db) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>("SELECT order_id, view FROM order_view").fetch_all(db.pool()).await.unwrap().into_iter().collect()
}

async fn place(stack: &Stack, run: &str, n: usize) -> Vec<String> {
    let orders: Vec<saga_contracts::Message> = (0..n).map(|i| sample_order(run, i).0.into()).collect();
    for r in futures::future::join_all(orders.iter().map(|m| stack.publish(m))).await {
        r.unwrap();
    }
    orders.iter().map(|m| m.order_id().to_string()).collect()
}

async fn read_model_equals_write_side_and_a_replay_rebuilds_it(infra: Infra) {
    let running = start(infra).await;
    let stack = &running.stack;
    let ids = place(stack, "q", 300).await;
    wait_for_orders(stack, &ids, WAIT).await;
    // Quiet: every order is final on the write side. The read model must come to the same.
    wait_until_read_equals_write(stack, &ids).await;
    let query = stack.dbs.query.as_ref().unwrap();
    let (_, page) = get(&format!("{}/orders?customer=alice&status=APPROVED&limit=1000", running.api)).await;
    let listed = page["orders"].as_array().unwrap();
    assert!(!listed.is_empty() && listed.iter().all(|o| o["customer_id"] == "alice" && o["status"] == "APPROVED"), "filters hold: {page}");
    let mut approved_for_alice = 0;
    for id in &ids {
        let o = saga_order::get_order(&stack.dbs.order, id).await.unwrap().unwrap();
        approved_for_alice += usize::from(o.customer_id == "alice" && o.status.as_str() == "APPROVED");
    }
    assert_eq!(listed.len(), approved_for_alice, "every approved order of alice, none other");

    // A replay from offset 0: a second projection, its own consumer group and a fresh database,
    // reads every topic from the beginning; its model must equal the live one, row for row.
    let live = snapshot(query).await;
    let replica_dir = tempfile::tempdir().unwrap();
    let replica_url = match infra {
        Infra::Embedded => format!("sqlite://{}", replica_dir.path().join("replica.db").display()),
        Infra::External => saga_sandbox::create_postgres_database().await.unwrap_or_else(|e| panic!("{e}")),
    };
    let replica_db = saga_runtime::service::open_database(&replica_url, 4, &saga_query::MIGRATIONS).await.unwrap();
    let mut settings = stack.settings.clone();
    settings.kafka.group_id = format!("saga-query-replay-{}", uuid::Uuid::new_v4().simple());
    let topics = saga_contracts::Topics::new(settings.topics.prefix.clone());
    let lag = saga_query::lag::LagWatch::new(&settings.kafka, saga_query::CONSUMES.iter().map(|k| topics.name(*k)).collect()).unwrap();
    let replica =
        saga_runtime::Service::build_with_db(settings, saga_query::QueryHandler::new(lag, Default::default()), replica_db.clone()).await.unwrap().observed();
    let stop = saga_runtime::CancellationToken::new();
    let task = tokio::spawn(replica.run_until_stopped(stop.clone()));
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let copy = snapshot(&replica_db).await;
        if copy == live {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let differ: Vec<_> = live.keys().filter(|k| copy.get(*k) != live.get(*k)).take(3).map(|k| (k, live.get(k), copy.get(k))).collect();
            panic!("the replay's model ({} rows) differs from the live one ({} rows), e.g. {differ:?}", copy.len(), live.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    // And the rebuild from the stored history gives the same rows again.
    assert_eq!(saga_query::store::rebuild(query).await.unwrap(), live.len());
    assert_eq!(snapshot(query).await, live, "rebuilt from history");
    replica_db.close().await;
    if let Infra::External = infra {
        saga_sandbox::drop_postgres_database(&replica_url).await.unwrap_or_else(|e| panic!("{e}"));
    }
    running.stop().await;
}

async fn read_your_writes_holds_every_time(infra: Infra) {
    let running = start(infra).await;
    let stack = &running.stack;
    let topic = stack.topic(TopicKind::OrderCommands);
    for i in 0..100 {
        let (order, _) = sample_order("ryw", i);
        let id = order.order_id.clone();
        let (partition, offset) = stack.publish(&order.into()).await.unwrap();
        // Alternately: the producer's position, or a long poll until the order exists.
        let url = if i % 2 == 0 {
            format!("{}/orders/{id}?min_position={topic}:{partition}:{offset}", running.api)
        } else {
            format!("{}/orders/{id}?wait_ms=5000", running.api)
        };
        let (status, body) = get(&url).await;
        assert_eq!(status, 200, "order {i} not seen right after it was placed: {body}");
        assert_eq!(body["order_id"], id.as_str());
        if i % 2 == 0 {
            // min_position: the PlaceOrder itself is reflected. (A long poll may first see the
            // order from its OrderCreated, read from another topic before the command.)
            assert!(body["position"].as_array().unwrap().iter().any(|p| p["topic"] == topic.as_str()), "reflects the PlaceOrder: {body}");
        }
    }
    // The outcome, by waiting until the order leaves PENDING.
    let (status, body) = get(&format!("{}/orders/ryw-00099?wait_ms=30000&until_not=PENDING", running.api)).await;
    assert_eq!(status, 200, "{body}");
    assert_ne!(body["status"], "PENDING");
    // A position the model cannot have reached: a 504 that says how far behind it is.
    let (status, body) = get(&format!("{}/orders/ryw-00001?min_position={topic}:0:999999999&wait_ms=300", running.api)).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["behind"]["partition"], 0);
    assert!(body["behind"]["applied_next_offset"].as_i64().unwrap() < 999_999_999);
    // Unknown orders and malformed parameters.
    assert_eq!(get(&format!("{}/orders/nope", running.api)).await.0, 404);
    let (status, body) = get(&format!("{}/orders/ryw-00001?wait_ms=soon", running.api)).await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().starts_with("wait_ms:"), "{body}");
    running.stop().await;
}

async fn history_and_as_of_tell_what_happened(infra: Infra) {
    let running = start(infra).await;
    let stack = &running.stack;
    // Order 6 of a sample run is declined: reserved, declined, released, rejected.
    let ids = place(stack, "h", 7).await;
    wait_for_orders(stack, &ids, WAIT).await;
    let id = &ids[6];
    // The order's events travel on three topics, so its OrderRejected may be applied before the
    // StockReleased: wait for the whole outcome.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let outcome = loop {
        let (status, order) = get(&format!("{}/orders/{id}?wait_ms=30000&until_not=PENDING", running.api)).await;
        assert_eq!(status, 200, "{order}");
        let outcome = [&order["status"], &order["stock"]["state"], &order["payment"]["state"]].map(|v| v.as_str().unwrap_or_default().to_string());
        if outcome[1] == "released" || tokio::time::Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outcome, ["REJECTED", "released", "declined"]);
    // Wait until the compensation's events are in too.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let history = loop {
        let (_, h) = get(&format!("{}/orders/{id}/history", running.api)).await;
        if h["events"].as_array().is_some_and(|e| e.len() >= 6) || tokio::time::Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let events = history["events"].as_array().unwrap();
    // Exactly the messages of this order on the topics the projection reads.
    let mut on_topics = BTreeSet::new();
    for kind in saga_query::CONSUMES {
        let topic = stack.topic(*kind);
        for r in read_topic(stack, &topic, usize::MAX, Duration::from_secs(10)).await {
            use rdkafka::Message as _;
            if r.key() == Some(id.as_bytes()) {
                let m = stack.codec().decode(*kind, r.payload()).await.unwrap();
                if saga_query::model::Fact::of(&m).is_some() {
                    on_topics.insert(m.envelope().message_id.clone());
                }
            }
        }
    }
    let in_history: BTreeSet<String> = events.iter().map(|e| e["message_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(in_history, on_topics, "history lists exactly the events applied");
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for want in ["PlaceOrder", "OrderCreated", "StockReserved", "PaymentDeclined", "StockReleased", "OrderRejected"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    // As of each event's time: the state after it (and every event of the same millisecond).
    for e in events {
        let t = e["occurred_at_ms"].as_i64().unwrap();
        let (status, then) = get(&format!("{}/orders/{id}?as_of={t}", running.api)).await;
        assert_eq!(status, 200, "{then}");
        let upto: Vec<&str> = events.iter().filter(|x| x["occurred_at_ms"].as_i64().unwrap() <= t).map(|x| x["event"].as_str().unwrap()).collect();
        let expect_stock = if upto.contains(&"StockReleased") {
            "released"
        } else if upto.contains(&"StockReserved") {
            "reserved"
        } else {
            "pending"
        };
        let expect_payment = if upto.contains(&"PaymentDeclined") { "declined" } else { "pending" };
        let expect_status = if upto.contains(&"OrderRejected") { "REJECTED" } else { "PENDING" };
        assert_eq!(
            (then["status"].as_str(), then["stock"]["state"].as_str(), then["payment"]["state"].as_str()),
            (Some(expect_status), Some(expect_stock), Some(expect_payment)),
            "as of {t} (after {upto:?})"
        );
    }
    let first = events[0]["occurred_at_ms"].as_i64().unwrap();
    assert_eq!(get(&format!("{}/orders/{id}?as_of={}", running.api, first - 1)).await.0, 404, "nothing known before its first event");
    running.stop().await;
}

async fn unreadable_records_are_dead_lettered_and_the_rest_applied(infra: Infra) {
    let running = start(infra).await;
    let stack = &running.stack;
    let events = stack.topic(TopicKind::OrderEvents);
    stack.publish_raw(&events, Some(b"poison-q"), b"not avro").await.unwrap();
    // A valid event after it, on the same partition (same key).
    let created = saga_contracts::OrderCreated {
        envelope: saga_sandbox::envelope("poison-q-created", saga_contracts::OrderCreated::FULL_NAME, "poison-q"),
        order_id: "poison-q".into(),
        customer_id: "alice".into(),
        currency: "EUR".into(),
        total_minor: 1250,
        lines: vec![saga_cli::sample::line("WIDGET-1", 1, 1250)],
    };
    stack.publish(&created.into()).await.unwrap();
    let (status, body) = get(&format!("{}/orders/poison-q?wait_ms=30000", running.api)).await;
    assert_eq!(status, 200, "the event after the poison is applied: {body}");
    let dlt = saga_contracts::Topics::dlt(&events);
    // The orchestrator reads that topic too, and dead-letters the record as well.
    let records = read_topic(stack, &dlt, 2, WAIT).await;
    let ours: Vec<_> = records
        .iter()
        .filter(|r| saga_integration_tests::header(r, saga_runtime::dlt::headers::CONSUMER_GROUP).is_some_and(|g| g.starts_with("saga-query")))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "one dead letter from the query service: {:?}",
        records.iter().map(|r| saga_integration_tests::header(r, saga_runtime::dlt::headers::CONSUMER_GROUP)).collect::<Vec<_>>()
    );
    use rdkafka::Message as _;
    assert_eq!(ours[0].payload(), Some(&b"not avro"[..]), "value kept");
    assert_eq!(saga_integration_tests::header(ours[0], saga_runtime::dlt::headers::ERROR_CLASS).as_deref(), Some("not-wire-format"));
    running.stop().await;
}

async fn a_replay_beside_the_live_service_switches_without_losing_anything(infra: Infra) {
    let running = start(infra).await;
    let stack = &running.stack;
    let ids = place(stack, "r", 150).await;
    wait_for_orders(stack, &ids, WAIT).await;
    let query = stack.dbs.query.as_ref().unwrap();
    // Readers keep getting answers all through the replay, and orders keep coming.
    let stop = saga_runtime::CancellationToken::new();
    let reads = {
        let (api, id, stop) = (running.api.clone(), ids[0].clone(), stop.clone());
        tokio::spawn(async move {
            // When each successful read ended.
            let mut answered = Vec::new();
            while !stop.is_cancelled() {
                let (status, body) = get(&format!("{api}/orders/{id}")).await;
                assert_eq!(status, 200, "a read during the replay: {body}");
                answered.push(tokio::time::Instant::now());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            answered
        })
    };
    let more: Vec<saga_contracts::Message> = (0..60).map(|i| sample_order("r2", i).0.into()).collect();
    let placing = async {
        for m in &more {
            stack.publish(m).await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let mut settings = stack.settings.clone();
    settings.database.url = stack.query_database_url.clone().unwrap();
    let replay_started = tokio::time::Instant::now();
    let (report, ()) = tokio::join!(async { (saga_query::replay::replay(&settings, query).await, tokio::time::Instant::now()) }, placing);
    let (report, replay_ended) = report;
    let report = report.expect("the replay switches");
    stop.cancel();
    // Not how many (that depends on the machine's load): that the live model answered while the
    // replay ran, and every answer was a 200.
    let answered = reads.await.unwrap();
    assert!(
        answered.iter().any(|t| (replay_started..replay_ended).contains(t)),
        "no read was answered during the replay ({} reads, the replay took {:?})",
        answered.len(),
        replay_ended - replay_started
    );
    assert!(report.applied >= 150 * 5, "{report:?}");
    // Once quiet, every order of both runs is in the model as the write side has it, and the
    // model equals a refold of its own history.
    let all: Vec<String> = ids.iter().cloned().chain(more.iter().map(|m| m.order_id().to_string())).collect();
    wait_for_orders(stack, &all, WAIT).await;
    wait_until_read_equals_write(stack, &all).await;
    let before = snapshot(query).await;
    saga_query::store::rebuild(query).await.unwrap();
    assert_eq!(snapshot(query).await, before, "the replayed model is what its history folds to");
    running.stop().await;
}
