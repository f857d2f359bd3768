//! End to end: all four services, the registry and a broker. Each scenario is written once and
//! runs on the in-process broker with SQLite, and (ignored by default; `.ci/run` runs them) on
//! tansu with PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use saga_cli::sample::{line, place_order};
use saga_contracts::{ApproveOrder, Envelope, Message, ReleaseStock, ReserveStock, StockLine, StockReleased, TopicKind, VoidPayment};
use saga_integration_tests::{header, in_inbox, options, read_topic, wait_for_orders, Infra};
use saga_order::domain::OrderStatus;
use saga_runtime::dlt::headers as dlt;
use saga_sandbox::seed::{Customer, Seed, StockItem};
use saga_sandbox::stack::Stack;

const WAIT: Duration = Duration::from_secs(90);

saga_integration_tests::scenarios!(
    happy_path,
    out_of_stock,
    payment_declined,
    duplicates_apply_once,
    poison_records_are_dead_lettered,
    concurrent_orders_conserve_stock_and_credit
);

async fn start(infra: Infra, seed: Option<Seed>) -> (Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = options(infra, dir.path());
    if let Some(seed) = seed {
        o.seed = seed;
    }
    (Stack::start(o).await.expect("stack starts"), dir)
}

fn envelope(id: &str, full_name: &str, order_id: &str) -> Envelope {
    Envelope {
        message_id: id.into(),
        message_type: full_name.into(),
        saga_id: Some(order_id.into()),
        correlation_id: order_id.into(),
        causation_id: None,
        occurred_at_ms: 0,
    }
}

/// `event step` of each entry of a saga's log.
async fn log_steps(stack: &saga_sandbox::stack::Stack, saga_id: &str) -> Vec<String> {
    let log = saga_orchestrator::store::saga_log(&stack.dbs.orchestrator, saga_id).await.unwrap();
    log.into_iter().map(|e| format!("{} {}", e.event, e.step.unwrap_or_default())).collect()
}

async fn happy_path(infra: Infra) {
    let (stack, _dir) = start(infra, None).await;
    let before = saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap().unwrap();
    let order = place_order("happy-1", "alice", vec![line("WIDGET-1", 3, 1250)]);
    stack.publish(&order.into()).await.unwrap();
    let done = wait_for_orders(&stack, &["happy-1".into()], WAIT).await;
    assert_eq!(done["happy-1"], OrderStatus::Approved);
    let after = saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap().unwrap();
    assert_eq!(after, (before.0 - 3, before.1 + 3), "three units moved from on hand to reserved");
    assert_eq!(saga_payment::authorization_of(&stack.dbs.payment, "happy-1").await.unwrap(), Some((saga_payment::AuthorizationStatus::Authorized, 3750)));
    let saga = saga_orchestrator::store::get_saga(&stack.dbs.orchestrator, "happy-1").await.unwrap().unwrap();
    assert_eq!(saga.state.status.as_str(), "COMPLETED");
    assert_eq!(saga.definition_version, 2, "new sagas start on the newest definition");
    let steps = log_steps(&stack, "happy-1").await;
    assert_eq!(
        steps,
        ["started reserve_stock", "step-succeeded reserve_stock", "step-succeeded check_risk", "step-succeeded authorize_payment", "completed approve_order"]
    );
    stack.stop().await;
}

async fn out_of_stock(infra: Infra) {
    let (stack, _dir) = start(infra, None).await;
    let before = saga_inventory::stock_of(&stack.dbs.inventory, "RARE-GEM").await.unwrap().unwrap();
    let order = place_order("oos-1", "alice", vec![line("WIDGET-1", 1, 1250), line("RARE-GEM", 4, 100)]);
    stack.publish(&order.into()).await.unwrap();
    let done = wait_for_orders(&stack, &["oos-1".into()], WAIT).await;
    assert_eq!(done["oos-1"], OrderStatus::Rejected);
    let view = saga_order::get_order(&stack.dbs.order, "oos-1").await.unwrap().unwrap();
    assert!(view.reason.unwrap().contains("RARE-GEM has 3 left, 4 requested"));
    assert_eq!(saga_inventory::stock_of(&stack.dbs.inventory, "RARE-GEM").await.unwrap().unwrap(), before, "nothing reserved");
    assert_eq!(saga_inventory::reservation_status(&stack.dbs.inventory, "oos-1").await.unwrap(), Some(saga_inventory::ReservationStatus::Failed));
    assert_eq!(saga_payment::authorization_of(&stack.dbs.payment, "oos-1").await.unwrap(), None, "no payment asked");
    let saga = saga_orchestrator::store::get_saga(&stack.dbs.orchestrator, "oos-1").await.unwrap().unwrap();
    assert_eq!(saga.state.status.as_str(), "COMPENSATED");
    stack.stop().await;
}

async fn payment_declined(infra: Infra) {
    let (stack, _dir) = start(infra, None).await;
    let before = saga_inventory::stock_of(&stack.dbs.inventory, "GADGET-2").await.unwrap().unwrap();
    let order = place_order("declined-1", "bob", vec![line("GADGET-2", 2, 4999)]);
    stack.publish(&order.into()).await.unwrap();
    let done = wait_for_orders(&stack, &["declined-1".into()], WAIT).await;
    assert_eq!(done["declined-1"], OrderStatus::Rejected);
    assert_eq!(saga_inventory::stock_of(&stack.dbs.inventory, "GADGET-2").await.unwrap().unwrap(), before, "stock released");
    assert_eq!(saga_inventory::reservation_status(&stack.dbs.inventory, "declined-1").await.unwrap(), Some(saga_inventory::ReservationStatus::Released));
    assert_eq!(saga_payment::authorization_of(&stack.dbs.payment, "declined-1").await.unwrap().unwrap().0, saga_payment::AuthorizationStatus::Declined);
    let steps = log_steps(&stack, "declined-1").await;
    assert_eq!(
        steps,
        [
            "started reserve_stock",
            "step-succeeded reserve_stock",
            "step-succeeded check_risk",
            "step-failed authorize_payment",
            "step-compensated reserve_stock",
            "compensated finalize"
        ]
    );
    stack.stop().await;
}

async fn duplicates_apply_once(infra: Infra) {
    let (stack, _dir) = start(infra, None).await;
    let before = saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap().unwrap();
    let order: Message = place_order("dup-1", "alice", vec![line("WIDGET-1", 2, 1000)]).into();
    stack.publish(&order).await.unwrap();
    stack.publish(&order).await.unwrap();
    // The same PlaceOrder under a new message id (a client retry) is the same order too.
    let mut retry = order.clone();
    retry.envelope_mut().message_id = "place-dup-1-retry".into();
    stack.publish(&retry).await.unwrap();
    wait_for_orders(&stack, &["dup-1".into()], WAIT).await;
    // A participant's command delivered twice: the orchestrator's own ReserveStock again, and a
    // ReserveStock with a new id for the same order.
    let lines = vec![StockLine { sku: "WIDGET-1".into(), quantity: 2 }];
    for id in ["dup-1:reserve_stock:do:1", "dup-1:reserve_stock:do:9"] {
        let cmd = ReserveStock { envelope: envelope(id, ReserveStock::FULL_NAME, "dup-1"), order_id: "dup-1".into(), lines: lines.clone() };
        stack.publish(&cmd.into()).await.unwrap();
    }
    // Wait until inventory has applied the new-id command (the other is a known duplicate).
    let deadline = tokio::time::Instant::now() + WAIT;
    while !in_inbox(&stack.dbs.inventory, "dup-1:reserve_stock:do:9").await {
        assert!(tokio::time::Instant::now() < deadline, "inventory never applied the repeated command");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders WHERE order_id = 'dup-1'").fetch_one(stack.dbs.order.pool()).await.unwrap();
    assert_eq!(orders, 1, "one order");
    let after = saga_inventory::stock_of(&stack.dbs.inventory, "WIDGET-1").await.unwrap().unwrap();
    assert_eq!(after, (before.0 - 2, before.1 + 2), "one reservation");
    let auths: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM authorizations WHERE order_id = 'dup-1'").fetch_one(stack.dbs.payment.pool()).await.unwrap();
    assert_eq!(auths, 1, "one authorization");
    let sagas: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sagas WHERE saga_id = 'dup-1'").fetch_one(stack.dbs.orchestrator.pool()).await.unwrap();
    assert_eq!(sagas, 1, "one saga");
    assert_eq!(saga_order::get_order(&stack.dbs.order, "dup-1").await.unwrap().unwrap().status, OrderStatus::Approved);
    stack.stop().await;
}

async fn poison_records_are_dead_lettered(infra: Infra) {
    let (stack, _dir) = start(infra, None).await;
    let codec = stack.codec();
    // A valid record of another topic's type: well-formed, but it does not belong here.
    let stray_type =
        codec.encode(&StockReleased { envelope: envelope("x", StockReleased::FULL_NAME, "k"), order_id: "k".into(), released: false }.into()).await.unwrap();
    // The right schema id for the topic, then a body that cannot be read: its first string claims
    // a length of gigabytes, which the decoder's allocation limit refuses.
    let malformed_like = |wire: Vec<u8>| {
        let mut m = wire[..5].to_vec();
        m.extend_from_slice(&[0xfe, 0xff, 0xff, 0xff, 0x0f]);
        m
    };
    let order_cmd = codec.encode(&place_order("k", "alice", vec![line("A", 1, 1)]).into()).await.unwrap();
    let pay_cmd =
        codec.encode(&VoidPayment { envelope: envelope("y", VoidPayment::FULL_NAME, "k"), order_id: "k".into(), reason: "r".into() }.into()).await.unwrap();
    let cases: Vec<(TopicKind, Vec<u8>, &str)> = vec![
        (TopicKind::OrderCommands, b"not avro at all".to_vec(), "not-wire-format"),
        (TopicKind::OrderCommands, vec![0, 0, 0x0f, 0x42, 0x40, 2, 4], "unknown-schema-id"),
        (TopicKind::OrderCommands, stray_type.clone(), "unexpected-type"),
        (TopicKind::OrderCommands, malformed_like(order_cmd), "malformed-avro"),
        (TopicKind::InventoryCommands, b"{\"json\": true}".to_vec(), "not-wire-format"),
        (TopicKind::PaymentCommands, malformed_like(pay_cmd), "malformed-avro"),
        (TopicKind::OrderEvents, vec![0, 0, 0x0f, 0x42, 0x40], "unknown-schema-id"),
        (TopicKind::InventoryEvents, b"".to_vec(), "not-wire-format"),
        (TopicKind::PaymentEvents, stray_type.clone(), "unexpected-type"),
    ];
    // Well-formed but impossible: approving an order that does not exist. Its batch fails, is
    // replayed one message per transaction, and only this record is dead-lettered.
    let ghost =
        codec.encode(&ApproveOrder { envelope: envelope("approve-ghost", ApproveOrder::FULL_NAME, "ghost"), order_id: "ghost".into() }.into()).await.unwrap();
    let mut cases = cases;
    cases.push((TopicKind::OrderCommands, ghost, "handler-failed"));
    for (kind, payload, _) in &cases {
        stack.publish_raw(&stack.topic(*kind), Some(b"poison-key"), payload).await.unwrap();
    }
    // Valid messages after the poison, on the same partitions (same key).
    let follow_ups: Vec<(Message, &saga_store::Db)> = vec![
        (place_order("poison-key", "alice", vec![line("WIDGET-1", 1, 100)]).into(), &stack.dbs.order),
        (
            ReleaseStock { envelope: envelope("follow-inv", ReleaseStock::FULL_NAME, "poison-key"), order_id: "poison-key".into(), reason: "t".into() }.into(),
            &stack.dbs.inventory,
        ),
        (
            VoidPayment { envelope: envelope("follow-pay", VoidPayment::FULL_NAME, "poison-key"), order_id: "poison-key".into(), reason: "t".into() }.into(),
            &stack.dbs.payment,
        ),
    ];
    for (m, _) in &follow_ups {
        stack.publish(m).await.unwrap();
    }
    for (m, db) in &follow_ups {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !in_inbox(db, &m.envelope().message_id).await {
            assert!(tokio::time::Instant::now() < deadline, "{} after the poison was never processed", m.short_name());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut per_topic: BTreeMap<TopicKind, Vec<(&Vec<u8>, &str)>> = BTreeMap::new();
    for (kind, payload, class) in &cases {
        per_topic.entry(*kind).or_default().push((payload, class));
    }
    for (kind, expected) in per_topic {
        let topic = stack.topic(kind);
        let dlt_topic = saga_contracts::Topics::dlt(&topic);
        let records = read_topic(&stack, &dlt_topic, expected.len(), WAIT).await;
        assert_eq!(records.len(), expected.len(), "{dlt_topic} holds exactly the poison records");
        for (record, (payload, class)) in records.iter().zip(&expected) {
            use rdkafka::Message as _;
            assert_eq!(record.payload().unwrap_or_default(), payload.as_slice(), "{dlt_topic}: value kept");
            assert_eq!(record.key(), Some(&b"poison-key"[..]), "{dlt_topic}: key kept");
            assert_eq!(header(record, dlt::ORIGINAL_TOPIC).as_deref(), Some(topic.as_str()));
            assert_eq!(header(record, dlt::ERROR_CLASS).as_deref(), Some(*class), "{dlt_topic}: {:?}", header(record, dlt::ERROR_MESSAGE));
            assert!(header(record, dlt::ORIGINAL_PARTITION).unwrap().parse::<i32>().is_ok());
            assert!(header(record, dlt::ORIGINAL_OFFSET).unwrap().parse::<i64>().is_ok());
            assert!(header(record, dlt::ORIGINAL_TIMESTAMP).unwrap().parse::<i64>().is_ok());
            assert!(header(record, dlt::CONSUMER_GROUP).unwrap().starts_with("saga-"));
            assert!(!header(record, dlt::ERROR_MESSAGE).unwrap().is_empty());
        }
    }
    stack.stop().await;
}

async fn concurrent_orders_conserve_stock_and_credit(infra: Infra) {
    let skus = ["S1", "S2", "S3"];
    let seed = Seed {
        stock: skus.iter().map(|s| StockItem { sku: s.to_string(), on_hand: 120 }).collect(),
        customers: (0..4)
            .map(|c| Customer { customer_id: format!("c{c}"), currency: "EUR".into(), credit_limit_minor: if c == 3 { 20_000 } else { 10_000_000 } })
            .collect(),
    };
    let (stack, _dir) = start(infra, Some(seed)).await;
    let n = 300;
    let mut ids = Vec::new();
    let mut publishes = Vec::new();
    for i in 0..n {
        let id = format!("many-{i:04}");
        let lines = vec![line(skus[i % 3], 1 + (i % 4) as i32, 500), line(skus[(i + 1) % 3], 1, 700)];
        let order: Message = place_order(&id, &format!("c{}", i % 4), lines).into();
        ids.push(id);
        let stack = &stack;
        publishes.push(async move { stack.publish(&order).await });
    }
    for r in futures::future::join_all(publishes).await {
        r.unwrap();
    }
    let done = wait_for_orders(&stack, &ids, Duration::from_secs(180)).await;
    let approved: Vec<_> = ids.iter().filter(|id| done[*id] == OrderStatus::Approved).collect();
    assert!(!approved.is_empty() && approved.len() < n, "the mix must both approve and reject ({} approved)", approved.len());
    let mut want_reserved: BTreeMap<String, i64> = BTreeMap::new();
    let mut want_authorized = 0;
    for id in &approved {
        let o = saga_order::get_order(&stack.dbs.order, id).await.unwrap().unwrap();
        want_authorized += o.total_minor;
        for l in o.lines {
            *want_reserved.entry(l.sku).or_default() += i64::from(l.quantity);
        }
    }
    for sku in skus {
        let (on_hand, reserved) = saga_inventory::stock_of(&stack.dbs.inventory, sku).await.unwrap().unwrap();
        assert!(on_hand >= 0, "{sku} went negative");
        assert_eq!(on_hand + reserved, 120, "{sku}: stock conserved");
        assert_eq!(reserved, want_reserved.get(sku).copied().unwrap_or(0), "{sku}: reserved equals approved orders");
    }
    assert_eq!(saga_inventory::reserved_by_reservations(&stack.dbs.inventory).await.unwrap(), want_reserved);
    let (authorized, count) = saga_payment::authorized_total(&stack.dbs.payment).await.unwrap();
    assert_eq!(authorized, want_authorized, "authorized amounts equal approved totals");
    assert_eq!(count as usize, approved.len(), "one authorization per approved order");
    let unfinished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sagas WHERE status NOT IN ('COMPLETED', 'COMPENSATED')")
        .fetch_one(stack.dbs.orchestrator.pool())
        .await
        .unwrap();
    assert_eq!(unfinished, 0);
    stack.stop().await;
}
