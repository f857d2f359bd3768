//! Persistence scenarios of the inventory service, each run on SQLite and on PostgreSQL.
//!
//! No broker: every message is applied to the service's own database exactly as the consume loop
//! applies it (inbox row, handler, commit in one transaction; a handler error rolls it all back).

use std::collections::BTreeMap;

use saga_contracts::{Message, ReleaseStock, ReserveStock, StockLine};
use saga_inventory::{reservation_status, reserved_by_reservations, set_stock, stock_of, InventoryHandler, ReservationStatus};
use saga_runtime::HandleError;
use saga_sandbox::TestDb;
use saga_store::Db;

saga_sandbox::backend_tests!(
    reserves_every_line_and_moves_units_to_reserved,
    reserves_all_or_nothing,
    unknown_skus_and_bad_quantities_reserve_nothing,
    a_repeated_reserve_answers_from_the_reservation,
    competing_orders_never_oversell,
    concurrent_reservations_never_oversell,
    releases_a_reservation_once,
    a_release_before_the_reservation_makes_it_fail,
    other_messages_are_refused,
    a_stored_reservation_that_cannot_be_read_is_an_error_not_a_default,
);

// ---------------------------------------------------------------------------------------------
// Harness

async fn migrated(test_db: &TestDb) -> &Db {
    saga_sandbox::migrate(&test_db.db, &saga_inventory::MIGRATIONS).await;
    &test_db.db
}

/// Applies one message as the consume loop does. `Ok(None)`: the inbox already had its id.
async fn apply(db: &Db, message: impl Into<Message>) -> Result<Option<Vec<Message>>, HandleError> {
    saga_sandbox::apply(db, &InventoryHandler, message).await
}

/// Applies a new command the handler accepts; returns its one reply.
async fn reply(db: &Db, message: impl Into<Message>) -> Message {
    saga_sandbox::reply(db, &InventoryHandler, message).await
}

use saga_sandbox::envelope;

fn reserve(message_id: &str, order_id: &str, lines: &[(&str, i32)]) -> ReserveStock {
    ReserveStock {
        envelope: envelope(message_id, ReserveStock::FULL_NAME, order_id),
        order_id: order_id.into(),
        lines: lines.iter().map(|(sku, quantity)| StockLine { sku: (*sku).into(), quantity: *quantity }).collect(),
    }
}

fn release(message_id: &str, order_id: &str) -> ReleaseStock {
    ReleaseStock { envelope: envelope(message_id, ReleaseStock::FULL_NAME, order_id), order_id: order_id.into(), reason: "insufficient credit".into() }
}

async fn seed(db: &Db, items: &[(&str, i64)]) {
    let items: Vec<(String, i64)> = items.iter().map(|(s, n)| ((*s).to_string(), *n)).collect();
    set_stock(db, &items).await.expect("seed stock");
}

/// (on hand, reserved) of a seeded sku.
async fn stock(db: &Db, sku: &str) -> (i64, i64) {
    stock_of(db, sku).await.expect("read stock").unwrap_or_else(|| panic!("sku {sku} is not seeded"))
}

async fn status(db: &Db, order_id: &str) -> Option<ReservationStatus> {
    reservation_status(db, order_id).await.expect("read reservation")
}

async fn reserved_rows(db: &Db) -> BTreeMap<String, i64> {
    reserved_by_reservations(db).await.expect("read reservations")
}

#[track_caller]
fn assert_reserved(reply: &Message, order_id: &str) {
    assert!(matches!(reply, Message::StockReserved(m) if m.order_id == order_id), "expected StockReserved for {order_id}, got {reply:?}");
}

/// Asserts a refusal and returns its reason.
#[track_caller]
fn failure_reason(reply: &Message, order_id: &str) -> String {
    match reply {
        Message::StockReservationFailed(m) if m.order_id == order_id => m.reason.clone(),
        other => panic!("expected StockReservationFailed for {order_id}, got {other:?}"),
    }
}

#[track_caller]
fn released_flag(reply: &Message, order_id: &str) -> bool {
    match reply {
        Message::StockReleased(m) if m.order_id == order_id => m.released,
        other => panic!("expected StockReleased for {order_id}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn reserves_every_line_and_moves_units_to_reserved(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10), ("B", 5), ("C", 7)]).await;

    // A sku on two lines counts once, with the sum of its quantities.
    let r = reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 3), ("B", 2), ("A", 1)])).await;

    assert_reserved(&r, "o1");
    assert_eq!(r.envelope().saga_id.as_deref(), Some("o1"));
    assert_eq!(r.envelope().correlation_id, "corr-o1");
    assert_eq!(stock(db, "A").await, (6, 4));
    assert_eq!(stock(db, "B").await, (3, 2));
    assert_eq!(stock(db, "C").await, (7, 0), "skus not ordered are untouched");
    assert_eq!(status(db, "o1").await, Some(ReservationStatus::Reserved));
    assert_eq!(reserved_rows(db).await, BTreeMap::from([("A".into(), 4), ("B".into(), 2)]));
}

async fn reserves_all_or_nothing(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10), ("B", 1), ("C", 0)]).await;

    let r = reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 3), ("B", 2)])).await;
    assert_eq!(failure_reason(&r, "o1"), "out of stock: sku B has 1 left, 2 requested");
    assert_eq!(stock(db, "A").await, (10, 0), "the line that fit is not reserved either");
    assert_eq!(stock(db, "B").await, (1, 0));
    assert_eq!(status(db, "o1").await, Some(ReservationStatus::Failed));

    let r = reply(db, reserve("o2:reserve_stock:do:1", "o2", &[("C", 1), ("A", 10), ("B", 1)])).await;
    assert_eq!(failure_reason(&r, "o2"), "out of stock: sku C has 0 left, 1 requested");
    assert_eq!((stock(db, "A").await, stock(db, "B").await, stock(db, "C").await), ((10, 0), (1, 0), (0, 0)));

    // A failed order keeps failing: the answer comes from its row, even once stock arrived.
    seed(db, &[("B", 50)]).await;
    let r = reply(db, reserve("o1:reserve_stock:do:2", "o1", &[("A", 3), ("B", 2)])).await;
    assert_eq!(failure_reason(&r, "o1"), "out of stock: sku B has 1 left, 2 requested");
    assert_eq!((stock(db, "A").await, stock(db, "B").await), ((10, 0), (50, 0)));
    assert!(reserved_rows(db).await.is_empty());
}

async fn unknown_skus_and_bad_quantities_reserve_nothing(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10)]).await;

    let r = reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 1), ("NOPE", 1)])).await;
    assert_eq!(failure_reason(&r, "o1"), "sku NOPE is unknown");
    let r = reply(db, reserve("o2:reserve_stock:do:1", "o2", &[("A", 1), ("A", 0)])).await;
    assert!(failure_reason(&r, "o2").contains("must be positive"), "{r:?}");
    let r = reply(db, reserve("o3:reserve_stock:do:1", "o3", &[])).await;
    assert_eq!(failure_reason(&r, "o3"), "nothing to reserve");

    assert_eq!(stock(db, "A").await, (10, 0));
    assert_eq!(stock_of(db, "NOPE").await.unwrap(), None, "a reservation never creates a sku");
    for order in ["o1", "o2", "o3"] {
        assert_eq!(status(db, order).await, Some(ReservationStatus::Failed), "{order}");
    }
    assert!(reserved_rows(db).await.is_empty());
}

async fn a_repeated_reserve_answers_from_the_reservation(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10)]).await;
    reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 4)])).await;

    // Redelivered: the inbox swallows it.
    assert!(apply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 4)])).await.unwrap().is_none());
    // Sent again under a new id: answered StockReserved, nothing reserved twice.
    let r = reply(db, reserve("o1:reserve_stock:do:2", "o1", &[("A", 4)])).await;
    assert_reserved(&r, "o1");

    assert_eq!(stock(db, "A").await, (6, 4));
    assert_eq!(reserved_rows(db).await, BTreeMap::from([("A".into(), 4)]));
}

async fn competing_orders_never_oversell(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 5), ("B", 3)]).await;

    assert_reserved(&reply(db, reserve("o1:r:1", "o1", &[("A", 3), ("B", 1)])).await, "o1");
    let r = reply(db, reserve("o2:r:1", "o2", &[("A", 3)])).await;
    assert_eq!(failure_reason(&r, "o2"), "out of stock: sku A has 2 left, 3 requested");
    assert_reserved(&reply(db, reserve("o3:r:1", "o3", &[("A", 2), ("B", 2)])).await, "o3");

    assert_eq!(stock(db, "A").await, (0, 5));
    assert_eq!(stock(db, "B").await, (0, 3));
    assert_eq!(reserved_rows(db).await, BTreeMap::from([("A".into(), 5), ("B".into(), 3)]));
}

async fn concurrent_reservations_never_oversell(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10), ("B", 100)]).await;

    // Twenty orders race for ten units, through a pool of four connections. Like the consume loop,
    // a transient failure or a conflict is retried with the same message.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let order = format!("o{i}");
                let cmd = reserve(&format!("{order}:reserve_stock:do:1"), &order, &[("B", 1), ("A", 1)]);
                saga_sandbox::applied_retrying(&db, &InventoryHandler, cmd).await.remove(0)
            })
        })
        .collect();
    let mut reserved = 0;
    for task in tasks {
        match task.await.expect("task") {
            Message::StockReserved(_) => reserved += 1,
            Message::StockReservationFailed(m) => assert!(m.reason.contains("sku A has 0 left"), "{m:?}"),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    assert_eq!(reserved, 10);
    assert_eq!(stock(db, "A").await, (0, 10));
    assert_eq!(stock(db, "B").await, (90, 10), "a failed order reserved none of its other lines");
    assert_eq!(reserved_rows(db).await, BTreeMap::from([("A".into(), 10), ("B".into(), 10)]));
}

async fn releases_a_reservation_once(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10), ("B", 5)]).await;
    reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 3), ("B", 2), ("A", 1)])).await;
    reply(db, reserve("o2:reserve_stock:do:1", "o2", &[("A", 1)])).await;

    let r = reply(db, release("o1:reserve_stock:undo:1", "o1")).await;
    assert!(released_flag(&r, "o1"));
    assert_eq!(stock(db, "A").await, (9, 1), "o1's units are back; o2's stay reserved");
    assert_eq!(stock(db, "B").await, (5, 0));
    assert_eq!(status(db, "o1").await, Some(ReservationStatus::Released));
    assert_eq!(reserved_rows(db).await, BTreeMap::from([("A".into(), 1)]));

    // Released again (a retry, under a new id): nothing to release, nothing changes.
    let r = reply(db, release("o1:reserve_stock:undo:2", "o1")).await;
    assert!(!released_flag(&r, "o1"));
    assert_eq!((stock(db, "A").await, stock(db, "B").await), ((9, 1), (5, 0)));
    // Redelivered: the inbox swallows it.
    assert!(apply(db, release("o1:reserve_stock:undo:1", "o1")).await.unwrap().is_none());
    assert_eq!(stock(db, "A").await, (9, 1));

    // A late ReserveStock for the released order reserves nothing.
    let r = reply(db, reserve("o1:reserve_stock:do:2", "o1", &[("A", 3)])).await;
    assert!(failure_reason(&r, "o1").contains("already released"), "{r:?}");
    assert_eq!(stock(db, "A").await, (9, 1));

    // Releasing a failed reservation returns nothing either.
    reply(db, reserve("o3:reserve_stock:do:1", "o3", &[("B", 99)])).await;
    assert!(!released_flag(&reply(db, release("o3:reserve_stock:undo:1", "o3")).await, "o3"));
    assert_eq!(stock(db, "B").await, (5, 0));
    assert_eq!(status(db, "o3").await, Some(ReservationStatus::Failed));
}

async fn a_release_before_the_reservation_makes_it_fail(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10)]).await;

    let r = reply(db, release("o1:reserve_stock:undo:1", "o1")).await;
    assert!(!released_flag(&r, "o1"), "there was nothing to release");
    assert_eq!(status(db, "o1").await, Some(ReservationStatus::Released), "the early release is remembered");
    assert_eq!(stock(db, "A").await, (10, 0));

    let r = reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 2)])).await;
    assert!(failure_reason(&r, "o1").contains("already released"), "{r:?}");
    assert_eq!(stock(db, "A").await, (10, 0));
    assert_eq!(status(db, "o1").await, Some(ReservationStatus::Released));
    assert!(reserved_rows(db).await.is_empty());
}

async fn other_messages_are_refused(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let not_ours =
        saga_contracts::StockReserved { envelope: envelope("x/StockReserved", saga_contracts::StockReserved::FULL_NAME, "o1"), order_id: "o1".into() };
    match apply(db, not_ours).await {
        Err(HandleError::Reject(why)) => assert!(why.contains("StockReserved"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(status(db, "o1").await, None);
}

async fn a_stored_reservation_that_cannot_be_read_is_an_error_not_a_default(test_db: TestDb) {
    let db = migrated(&test_db).await;
    seed(db, &[("A", 10)]).await;
    reply(db, reserve("o1:reserve_stock:do:1", "o1", &[("A", 3)])).await;
    reply(db, reserve("o2:reserve_stock:do:1", "o2", &[("A", 1)])).await;
    saga_sandbox::write_past_status_check(db, "reservations", "UPDATE reservations SET status = 'ON_HOLD' WHERE order_id = 'o1'").await;
    sqlx::query("UPDATE reservations SET lines = 'not json' WHERE order_id = 'o2'").execute(db.pool()).await.unwrap();
    let e = reservation_status(db, "o1").await.expect_err("an unknown status is an error").to_string();
    assert!(e.contains("order o1") && e.contains("\"ON_HOLD\""), "{e}");
    // A repeated reserve answers from the row: it must not guess what ON_HOLD means.
    let e = apply(db, reserve("o1:reserve_stock:do:2", "o1", &[("A", 3)])).await.expect_err("the handler refuses to guess");
    assert!(e.to_string().contains("\"ON_HOLD\""), "{e}");
    // Releasing o2 must not give back nothing for lines it cannot read.
    let e = apply(db, release("o2:reserve_stock:undo:1", "o2")).await.expect_err("unreadable lines are an error");
    assert!(e.to_string().contains("unreadable lines"), "{e}");
    assert_eq!(stock(db, "A").await, (6, 4), "nothing moved");
    let e = reserved_by_reservations(db).await.expect_err("unreadable lines are not counted as none").to_string();
    assert!(e.contains("order o2"), "{e}");
}
