//! Persistence scenarios of the order service, each run on SQLite and on PostgreSQL.
//!
//! No broker: every message is applied to the service's own database exactly as the consume loop
//! applies it (inbox row, handler, commit in one transaction; a handler error rolls it all back).

use saga_contracts::{ApproveOrder, Envelope, Message, OrderLine, PlaceOrder, RejectOrder};
use saga_order::domain::OrderStatus;
use saga_order::{count_by_status, get_order, OrderHandler};
use saga_runtime::HandleError;
use saga_sandbox::TestDb;
use saga_store::Db;

saga_sandbox::backend_tests!(
    places_a_valid_order_as_pending,
    refuses_invalid_orders_with_a_reason,
    the_same_order_placed_again_changes_nothing,
    approves_a_pending_order,
    a_repeated_approve_answers_again_and_changes_nothing,
    rejects_a_pending_order_and_keeps_the_first_reason,
    a_command_contradicting_a_final_order_is_refused_and_rolled_back,
    commands_for_unknown_orders_are_refused,
    a_stored_order_that_cannot_be_read_is_an_error_not_a_default,
);

// ---------------------------------------------------------------------------------------------
// Harness

async fn migrated(test_db: &TestDb) -> &Db {
    saga_sandbox::migrate(&test_db.db, &saga_order::MIGRATIONS).await;
    &test_db.db
}

/// Applies one message as the consume loop does. `Ok(None)`: the inbox already had its id.
async fn apply(db: &Db, message: impl Into<Message>) -> Result<Option<Vec<Message>>, HandleError> {
    saga_sandbox::apply(db, &OrderHandler, message).await
}

/// Applies a message the inbox has not seen and that the handler accepts.
async fn applied(db: &Db, message: impl Into<Message>) -> Vec<Message> {
    saga_sandbox::applied(db, &OrderHandler, message).await
}

/// Applies a message the handler must refuse; returns the reason.
async fn refused(db: &Db, message: impl Into<Message>) -> String {
    match apply(db, message).await {
        Err(HandleError::Reject(reason)) => reason,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn line(sku: &str, quantity: i32, unit_price_minor: i64, currency: &str) -> OrderLine {
    OrderLine { sku: sku.into(), quantity, unit_price_minor, currency: currency.into() }
}

fn place(message_id: &str, order_id: &str, lines: Vec<OrderLine>) -> PlaceOrder {
    PlaceOrder {
        envelope: Envelope {
            message_id: message_id.into(),
            message_type: PlaceOrder::FULL_NAME.into(),
            saga_id: None,
            correlation_id: format!("corr-{order_id}"),
            causation_id: None,
            occurred_at_ms: 1,
        },
        order_id: order_id.into(),
        customer_id: "alice".into(),
        currency: "EUR".into(),
        lines,
        promotion_code: None,
    }
}

fn valid_lines() -> Vec<OrderLine> {
    vec![line("WIDGET-1", 2, 1250, "EUR"), line("GADGET-2", 1, 4999, "EUR")]
}

fn approve(message_id: &str, order_id: &str) -> ApproveOrder {
    ApproveOrder { envelope: saga_sandbox::envelope(message_id, ApproveOrder::FULL_NAME, order_id), order_id: order_id.into() }
}

fn reject(message_id: &str, order_id: &str, reason: &str) -> RejectOrder {
    RejectOrder { envelope: saga_sandbox::envelope(message_id, RejectOrder::FULL_NAME, order_id), order_id: order_id.into(), reason: reason.into() }
}

async fn status_of(db: &Db, order_id: &str) -> OrderStatus {
    get_order(db, order_id).await.expect("read order").unwrap_or_else(|| panic!("order {order_id} is missing")).status
}

/// Asserts the reply answers `cause` with an id derived from it, in its saga and correlation.
#[track_caller]
fn assert_reply_to(reply: &Message, cause: &Envelope, full_name: &str, saga_id: &str) {
    let short = full_name.rsplit('.').next().unwrap();
    let e = reply.envelope();
    assert_eq!(reply.full_name(), full_name);
    assert_eq!(e.message_type, full_name);
    assert_eq!(e.message_id, format!("{}/{short}", cause.message_id));
    assert_eq!(e.causation_id.as_deref(), Some(cause.message_id.as_str()));
    assert_eq!(e.correlation_id, cause.correlation_id);
    assert_eq!(e.saga_id.as_deref(), Some(saga_id));
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn places_a_valid_order_as_pending(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let cmd = place("place-o1", "o1", valid_lines());

    let out = applied(db, cmd.clone()).await;

    assert_eq!(out.len(), 1, "{out:?}");
    let Message::OrderCreated(created) = &out[0] else { panic!("expected OrderCreated, got {out:?}") };
    assert_reply_to(&out[0], &cmd.envelope, "saga.order.OrderCreated", "o1");
    assert_eq!(created.envelope.message_id, "place-o1/OrderCreated");
    assert_eq!(created.order_id, "o1");
    assert_eq!(created.customer_id, "alice");
    assert_eq!(created.currency, "EUR");
    assert_eq!(created.total_minor, 2 * 1250 + 4999);
    assert_eq!(created.lines, valid_lines());

    let order = get_order(db, "o1").await.unwrap().expect("order row");
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.customer_id, "alice");
    assert_eq!(order.total_minor, 7499);
    assert_eq!(order.reason, None);
    assert_eq!(order.lines, valid_lines());
    assert_eq!(count_by_status(db).await.unwrap(), (1, 0, 0));
    assert_eq!(get_order(db, "o2").await.unwrap(), None);
}

async fn refuses_invalid_orders_with_a_reason(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let cases = [
        ("no-lines", vec![], "order has no lines"),
        ("negative", vec![line("WIDGET-1", 1, 100, "EUR"), line("GADGET-2", -2, 100, "EUR")], "line 2 (GADGET-2) has quantity -2, it must be positive"),
        ("mixed-currency", vec![line("WIDGET-1", 1, 100, "USD")], "line 1 (WIDGET-1) is priced in USD, the order is in EUR"),
    ];
    for (order_id, lines, why) in cases {
        let cmd = place(&format!("place-{order_id}"), order_id, lines.clone());
        let out = applied(db, cmd.clone()).await;

        assert_eq!(out.len(), 1, "{order_id}: {out:?}");
        let Message::OrderRejected(rejected) = &out[0] else { panic!("{order_id}: expected OrderRejected, got {out:?}") };
        assert_reply_to(&out[0], &cmd.envelope, "saga.order.OrderRejected", order_id);
        assert_eq!(rejected.order_id, order_id);
        assert_eq!(rejected.reason, why);

        let order = get_order(db, order_id).await.unwrap().expect("a refused order is stored too");
        assert_eq!(order.status, OrderStatus::Rejected, "{order_id}");
        assert_eq!(order.reason.as_deref(), Some(why));
        assert_eq!(order.total_minor, 0, "{order_id}: a refused order has no total");
        assert_eq!(order.lines, lines, "{order_id}: the lines are kept as asked");
    }
    assert_eq!(count_by_status(db).await.unwrap(), (0, 0, 3));
}

async fn the_same_order_placed_again_changes_nothing(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;

    // The same message redelivered: the inbox recognises its id, the handler never sees it.
    assert!(apply(db, place("place-o1", "o1", valid_lines())).await.unwrap().is_none());
    // The same order under a new message id, even with other lines: no row, no event.
    let again = applied(db, place("place-o1-retry", "o1", vec![line("OTHER", 9, 1, "EUR")])).await;
    assert!(again.is_empty(), "{again:?}");
    let order = get_order(db, "o1").await.unwrap().unwrap();
    assert_eq!((order.status, order.total_minor, order.lines), (OrderStatus::Pending, 7499, valid_lines()));

    // Also for an order refused by validation: it stays refused, nothing is announced again.
    applied(db, place("place-o2", "o2", vec![])).await;
    let again = applied(db, place("place-o2-retry", "o2", valid_lines())).await;
    assert!(again.is_empty(), "{again:?}");
    let order = get_order(db, "o2").await.unwrap().unwrap();
    assert_eq!((order.status, order.total_minor), (OrderStatus::Rejected, 0));
    assert_eq!(count_by_status(db).await.unwrap(), (1, 0, 1));
}

async fn approves_a_pending_order(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;
    let cmd = approve("o1:approve_order:do:1", "o1");

    let out = applied(db, cmd.clone()).await;

    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(&out[0], Message::OrderApproved(m) if m.order_id == "o1"), "{out:?}");
    assert_reply_to(&out[0], &cmd.envelope, "saga.order.OrderApproved", "o1");
    assert_eq!(out[0].envelope().message_id, "o1:approve_order:do:1/OrderApproved");
    let order = get_order(db, "o1").await.unwrap().unwrap();
    assert_eq!((order.status, order.reason, order.total_minor), (OrderStatus::Approved, None, 7499));
    assert_eq!(count_by_status(db).await.unwrap(), (0, 1, 0));
}

async fn a_repeated_approve_answers_again_and_changes_nothing(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;
    applied(db, approve("o1:approve_order:do:1", "o1")).await;

    // Redelivered: the inbox swallows it.
    assert!(apply(db, approve("o1:approve_order:do:1", "o1")).await.unwrap().is_none());
    // Sent again by the orchestrator (a retry has a new id): answered again, from the new id.
    let retry = approve("o1:approve_order:do:2", "o1");
    let out = applied(db, retry.clone()).await;
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(matches!(&out[0], Message::OrderApproved(_)), "{out:?}");
    assert_reply_to(&out[0], &retry.envelope, "saga.order.OrderApproved", "o1");

    let order = get_order(db, "o1").await.unwrap().unwrap();
    assert_eq!((order.status, order.reason, order.total_minor), (OrderStatus::Approved, None, 7499));
    assert_eq!(count_by_status(db).await.unwrap(), (0, 1, 0));
}

async fn rejects_a_pending_order_and_keeps_the_first_reason(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;
    let cmd = reject("o1:finalize:finalize:1", "o1", "insufficient credit");

    let out = applied(db, cmd.clone()).await;

    assert_eq!(out.len(), 1, "{out:?}");
    let Message::OrderRejected(rejected) = &out[0] else { panic!("expected OrderRejected, got {out:?}") };
    assert_eq!(rejected.reason, "insufficient credit");
    assert_reply_to(&out[0], &cmd.envelope, "saga.order.OrderRejected", "o1");
    let order = get_order(db, "o1").await.unwrap().unwrap();
    assert_eq!(order.status, OrderStatus::Rejected);
    assert_eq!(order.reason.as_deref(), Some("insufficient credit"));

    // A repeated reject is answered again, and the stored reason stays the first one.
    let out = applied(db, reject("o1:finalize:finalize:2", "o1", "something else")).await;
    assert!(matches!(&out[..], [Message::OrderRejected(_)]), "{out:?}");
    let order = get_order(db, "o1").await.unwrap().unwrap();
    assert_eq!(order.reason.as_deref(), Some("insufficient credit"));
    assert_eq!(count_by_status(db).await.unwrap(), (0, 0, 1));
}

async fn a_command_contradicting_a_final_order_is_refused_and_rolled_back(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;
    applied(db, approve("o1:approve_order:do:1", "o1")).await;
    applied(db, place("place-o2", "o2", valid_lines())).await;
    applied(db, reject("o2:finalize:finalize:1", "o2", "out of stock")).await;

    let why = refused(db, reject("o1:finalize:finalize:1", "o1", "late")).await;
    assert!(why.contains("o1") && why.contains("APPROVED") && why.contains("REJECTED"), "{why}");
    let why = refused(db, approve("o2:approve_order:do:1", "o2")).await;
    assert!(why.contains("o2") && why.contains("REJECTED") && why.contains("APPROVED"), "{why}");

    // Nothing of the refused messages committed, their inbox rows included: replayed, they are
    // refused again rather than taken for duplicates.
    refused(db, reject("o1:finalize:finalize:1", "o1", "late")).await;
    refused(db, approve("o2:approve_order:do:1", "o2")).await;
    assert_eq!(status_of(db, "o1").await, OrderStatus::Approved);
    let o2 = get_order(db, "o2").await.unwrap().unwrap();
    assert_eq!((o2.status, o2.reason.as_deref()), (OrderStatus::Rejected, Some("out of stock")));
    assert_eq!(count_by_status(db).await.unwrap(), (0, 1, 1));
}

async fn commands_for_unknown_orders_are_refused(test_db: TestDb) {
    let db = migrated(&test_db).await;

    let why = refused(db, approve("ghost:approve_order:do:1", "ghost")).await;
    assert!(why.contains("ghost") && why.contains("does not exist"), "{why}");
    let why = refused(db, reject("ghost:finalize:finalize:1", "ghost", "x")).await;
    assert!(why.contains("ghost") && why.contains("does not exist"), "{why}");

    assert_eq!(get_order(db, "ghost").await.unwrap(), None, "a command never creates an order");
    assert_eq!(count_by_status(db).await.unwrap(), (0, 0, 0));
}

async fn a_stored_order_that_cannot_be_read_is_an_error_not_a_default(test_db: TestDb) {
    let db = migrated(&test_db).await;
    applied(db, place("place-o1", "o1", valid_lines())).await;
    applied(db, place("place-o2", "o2", valid_lines())).await;
    saga_sandbox::write_past_status_check(db, "orders", "UPDATE orders SET status = 'SHIPPED' WHERE order_id = 'o1'").await;
    sqlx::query("UPDATE orders SET lines = 'not json' WHERE order_id = 'o2'").execute(db.pool()).await.unwrap();
    let e = get_order(db, "o1").await.expect_err("an unknown status is not read as PENDING").to_string();
    assert!(e.contains("order o1") && e.contains("\"SHIPPED\""), "{e}");
    let e = get_order(db, "o2").await.expect_err("unreadable lines are not read as none").to_string();
    assert!(e.contains("order o2") && e.contains("unreadable lines"), "{e}");
    let e = count_by_status(db).await.expect_err("an unknown status is not left out of the counts").to_string();
    assert!(e.contains("\"SHIPPED\""), "{e}");
}
