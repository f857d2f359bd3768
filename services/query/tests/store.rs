//! The projection's SQL on each backend: messages applied as the consume loop applies them
//! (inbox row, projection, commit), in every order and with duplicates, give the view the pure
//! fold gives; history and `as_of` read back what was applied; `--rebuild` refolds the same rows.

use saga_contracts::{Envelope, Message, OrderCreated, OrderLine, OrderRejected, PaymentDeclined, PlaceOrder, RejectOrder, StockReleased, StockReserved};
use saga_query::model::{PaymentState, Status, StockState};
use saga_query::{store, QueryHandler};
use saga_sandbox::TestDb;
use saga_store::Db;

saga_sandbox::backend_tests!(
    every_arrival_order_with_duplicates_gives_the_same_view,
    history_as_of_and_rebuild_read_back_what_was_applied,
    a_stored_view_that_cannot_be_read_is_an_error,
    two_instances_applying_facts_of_the_same_orders_lose_none,
);

async fn migrated(test_db: &TestDb) -> &Db {
    saga_sandbox::migrate(&test_db.db, &saga_query::MIGRATIONS).await;
    store::check_version(&test_db.db).await.expect("a new model takes this version");
    &test_db.db
}

fn handler() -> QueryHandler {
    // The lag watch never reaches a broker in these tests; creating it connects to nothing.
    let kafka = saga_runtime::ServiceSettings::defaults_for("query").kafka;
    QueryHandler::new(saga_query::lag::LagWatch::new(&kafka, vec![]).expect("client"), Default::default())
}

fn envelope(id: &str, full_name: &str, order: &str, at: i64) -> Envelope {
    Envelope {
        message_id: id.into(),
        message_type: full_name.into(),
        saga_id: Some(order.into()),
        correlation_id: order.into(),
        causation_id: Some("cause".into()),
        occurred_at_ms: at,
    }
}

/// The messages of a compensated saga (placed, created, reserved, declined, released, rejected),
/// plus an orchestrator command the projection ignores.
fn compensated(order: &str) -> Vec<Message> {
    let lines = vec![OrderLine { sku: "A".into(), quantity: 2, unit_price_minor: 150, currency: "EUR".into() }];
    vec![
        PlaceOrder {
            envelope: envelope(&format!("{order}-1"), PlaceOrder::FULL_NAME, order, 1000),
            order_id: order.into(),
            customer_id: "alice".into(),
            currency: "EUR".into(),
            lines: lines.clone(),
            promotion_code: None,
        }
        .into(),
        OrderCreated {
            envelope: envelope(&format!("{order}-2"), OrderCreated::FULL_NAME, order, 1001),
            order_id: order.into(),
            customer_id: "alice".into(),
            currency: "EUR".into(),
            total_minor: 300,
            lines,
        }
        .into(),
        StockReserved { envelope: envelope(&format!("{order}-3"), StockReserved::FULL_NAME, order, 1002), order_id: order.into() }.into(),
        PaymentDeclined {
            envelope: envelope(&format!("{order}-4"), PaymentDeclined::FULL_NAME, order, 1003),
            order_id: order.into(),
            reason: "no credit".into(),
        }
        .into(),
        StockReleased { envelope: envelope(&format!("{order}-5"), StockReleased::FULL_NAME, order, 1004), order_id: order.into(), released: true }.into(),
        RejectOrder { envelope: envelope(&format!("{order}-6"), RejectOrder::FULL_NAME, order, 1005), order_id: order.into(), reason: "declined".into() }
            .into(),
        OrderRejected { envelope: envelope(&format!("{order}-7"), OrderRejected::FULL_NAME, order, 1006), order_id: order.into(), reason: "declined".into() }
            .into(),
    ]
}

async fn apply_all(db: &Db, handler: &QueryHandler, messages: &[Message]) {
    for m in messages {
        saga_sandbox::apply(db, handler, m.clone()).await.unwrap_or_else(|e| panic!("{}: {e}", m.short_name()));
    }
}

async fn every_arrival_order_with_duplicates_gives_the_same_view(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let handler = handler();
    // Orders o0..o11 get the same messages in twelve different orders (rotations and reversals,
    // then a deterministic shuffle), each with two of its messages delivered again.
    let mut views = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for k in 0..12 {
        let order = format!("o{k}");
        let mut messages = compensated(&order);
        let n = messages.len();
        messages.rotate_left(k % n);
        if k % 2 == 1 {
            messages.reverse();
        }
        for i in (1..messages.len()).rev() {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            if k >= 6 {
                messages.swap(i, (seed >> 33) as usize % (i + 1));
            }
        }
        let again = [messages[k % 7].clone(), messages[(k + 3) % 7].clone()];
        messages.extend(again);
        apply_all(db, &handler, &messages).await;
        let v = store::get(db, &order).await.unwrap().expect("view exists");
        assert_eq!((v.status, v.stock, v.payment), (Status::Rejected, StockState::Released, PaymentState::Declined), "{order}");
        assert_eq!((v.customer_id.as_str(), v.total_minor, v.created_at_ms, v.updated_at_ms), ("alice", 300, 1000, 1006), "{order}");
        assert_eq!(store::history(db, &order).await.unwrap().len(), 6, "{order}: six facts, each once (RejectOrder is not one)");
        views.push(v);
    }
    // Equal but for the order id.
    let normalized: Vec<_> = views
        .into_iter()
        .map(|mut v| {
            v.order_id.clear();
            v.saga_id = None;
            v
        })
        .collect();
    assert!(normalized.windows(2).all(|w| w[0] == w[1]), "every arrival order gives the same view");
}

async fn history_as_of_and_rebuild_read_back_what_was_applied(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let handler = handler();
    apply_all(db, &handler, &compensated("h1")).await;
    let history = store::history(db, "h1").await.unwrap();
    let types: Vec<&str> = history.iter().map(|e| e.message_type.rsplit('.').next().unwrap()).collect();
    assert_eq!(types, ["PlaceOrder", "OrderCreated", "StockReserved", "PaymentDeclined", "StockReleased", "OrderRejected"]);
    let at = |t| async move { store::as_of(db, "h1", t).await.unwrap().map(|v| (v.status, v.stock, v.payment)) };
    assert_eq!(at(999).await, None);
    assert_eq!(at(1000).await, Some((Status::Pending, StockState::Pending, PaymentState::Pending)));
    assert_eq!(at(1002).await, Some((Status::Pending, StockState::Reserved, PaymentState::Pending)));
    assert_eq!(at(1003).await, Some((Status::Pending, StockState::Reserved, PaymentState::Declined)));
    assert_eq!(at(1004).await, Some((Status::Pending, StockState::Released, PaymentState::Declined)));
    assert_eq!(at(5000).await, store::get(db, "h1").await.unwrap().map(|v| (v.status, v.stock, v.payment)));
    // Listing and paging.
    apply_all(db, &handler, &compensated("h2")).await;
    let (page, next) = store::list(db, &store::ListFilter { limit: 1, ..Default::default() }).await.unwrap();
    assert_eq!(page.len(), 1);
    let after = next.expect("a second page");
    let (rest, last) = store::list(db, &store::ListFilter { limit: 5, after: Some(after), ..Default::default() }).await.unwrap();
    assert_eq!((rest.len(), last), (1, None));
    assert_ne!(page[0].order_id, rest[0].order_id);
    // The rebuild refolds the same rows.
    let before = (store::get(db, "h1").await.unwrap(), store::get(db, "h2").await.unwrap());
    assert_eq!(store::rebuild(db).await.unwrap(), 2);
    assert_eq!((store::get(db, "h1").await.unwrap(), store::get(db, "h2").await.unwrap()), before);
}

async fn a_stored_view_that_cannot_be_read_is_an_error(test_db: TestDb) {
    let db = migrated(&test_db).await;
    apply_all(db, &handler(), &compensated("bad")).await;
    sqlx::query("UPDATE order_view SET view = 'not json' WHERE order_id = 'bad'").execute(db.pool()).await.unwrap();
    let e = store::get(db, "bad").await.expect_err("an unreadable row is an error, never a default");
    assert!(e.to_string().contains("stored view of order bad cannot be read"), "{e}");
    // And another projection version refuses to serve it.
    sqlx::query("UPDATE projection_meta SET version = 999").execute(db.pool()).await.unwrap();
    let e = store::check_version(db).await.expect_err("another version's model");
    assert!(e.to_string().contains("saga-query --rebuild"), "{e}");
}

/// Two instances of the projection own different topics' partitions, so facts of one order are
/// applied by both at once: neither may overwrite what the other joined into the view.
async fn two_instances_applying_facts_of_the_same_orders_lose_none(test_db: TestDb) {
    let db = migrated(&test_db).await.clone();
    let orders: Vec<String> = (0..40).map(|k| format!("c{k}")).collect();
    // One instance gets the order topics' messages, the other the inventory and payment events.
    let split = |order: &str| -> (Vec<Message>, Vec<Message>) { compensated(order).into_iter().partition(|m| m.full_name().starts_with("saga.order.")) };
    let (first, second): (Vec<_>, Vec<_>) = orders.iter().map(|o| split(o)).unzip();
    let run = |db: Db, batches: Vec<Vec<Message>>| {
        tokio::spawn(async move {
            let handler = handler();
            for messages in batches {
                for m in messages {
                    // A conflict or deadlock between the two is retried, as the consume loop does.
                    let mut tries = 0;
                    while let Err(e) = saga_sandbox::apply(&db, &handler, m.clone()).await {
                        tries += 1;
                        assert!(tries < 50, "{}: {e}", m.short_name());
                        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    }
                }
            }
        })
    };
    let (a, b) = (run(db.clone(), first), run(db.clone(), second));
    a.await.unwrap();
    b.await.unwrap();
    for order in &orders {
        let v = store::get(&db, order).await.unwrap().expect("view exists");
        assert_eq!((v.status, v.stock, v.payment), (Status::Rejected, StockState::Released, PaymentState::Declined), "{order}: a fact was lost");
        assert_eq!((v.customer_id.as_str(), v.total_minor), ("alice", 300), "{order}");
    }
}
