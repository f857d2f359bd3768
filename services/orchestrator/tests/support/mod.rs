//! Shared harness of the orchestrator's persistence scenarios: apply events as the consume loop
//! does, and build the participants' replies from the commands the orchestrator emitted.
#![allow(dead_code)]

use saga_contracts::{
    Envelope, Message, OrderApproved, OrderCreated, OrderLine, OrderRejected, PaymentAuthorized, PaymentDeclined, RiskAccepted, RiskRejected, StockReleased,
    StockReservationFailed, StockReserved,
};
use saga_orchestrator::saga::{Position, Status};
use saga_orchestrator::store::{get_saga, saga_log};
use saga_orchestrator::Orchestrator;
use saga_runtime::HandleError;
use saga_sandbox::TestDb;
use saga_store::Db;

pub async fn migrated(test_db: &TestDb) -> &Db {
    saga_sandbox::migrate(&test_db.db, &saga_orchestrator::MIGRATIONS).await;
    &test_db.db
}

/// Applies one message as the consume loop does, with an orchestrator that starts sagas on
/// definition v1 (the scenarios follow its three steps). `Ok(None)`: the inbox already had its id.
pub async fn apply(db: &Db, message: &Message) -> Result<Option<Vec<Message>>, HandleError> {
    apply_with(db, &on_v1(), message).await
}

/// Applies one message as the consume loop does, with `orchestrator`.
pub async fn apply_with(db: &Db, orchestrator: &Orchestrator, message: &Message) -> Result<Option<Vec<Message>>, HandleError> {
    saga_sandbox::apply(db, orchestrator, message.clone()).await
}

/// An orchestrator that knows every definition version and starts new sagas on v1.
pub fn on_v1() -> Orchestrator {
    Orchestrator::with_versions(saga_orchestrator::definition::order_saga_versions(), Some(1)).unwrap()
}

/// Applies a new event; returns the commands it caused.
pub async fn feed(db: &Db, message: &Message) -> Vec<Message> {
    let id = &message.envelope().message_id;
    apply(db, message).await.unwrap_or_else(|e| panic!("{id} failed: {e}")).unwrap_or_else(|| panic!("{id} was taken for a duplicate"))
}

/// Applies a new event that must cause exactly one command, with this message id.
pub async fn feed_one(db: &Db, message: &Message, command_id: &str) -> Message {
    let mut out = feed(db, message).await;
    assert_eq!(out.len(), 1, "{} caused {out:?}", message.short_name());
    let command = out.remove(0);
    let e = command.envelope();
    assert_eq!(e.message_id, command_id, "the command's id is its idempotency key");
    assert_eq!(e.causation_id.as_deref(), Some(message.envelope().message_id.as_str()));
    assert_eq!(e.saga_id.as_deref(), Some(message.order_id()));
    assert_eq!(e.correlation_id, "corr-o1");
    command
}

pub fn lines() -> Vec<OrderLine> {
    let line = |sku: &str, quantity, unit_price_minor| OrderLine { sku: sku.into(), quantity, unit_price_minor, currency: "EUR".into() };
    vec![line("WIDGET-1", 2, 1250), line("GADGET-2", 1, 4999)]
}

/// The event the order service emits for a valid `PlaceOrder` with this message id.
pub fn order_created(place_id: &str, order_id: &str) -> Message {
    let place = Envelope {
        message_id: place_id.into(),
        message_type: "saga.order.PlaceOrder".into(),
        saga_id: Some(order_id.into()),
        correlation_id: "corr-o1".into(),
        causation_id: None,
        occurred_at_ms: 1,
    };
    OrderCreated {
        envelope: Envelope::reply_to(&place, OrderCreated::FULL_NAME),
        order_id: order_id.into(),
        customer_id: "alice".into(),
        currency: "EUR".into(),
        total_minor: 7_499,
        lines: lines(),
    }
    .into()
}

/// A participant's reply to `command`, with the id participants derive from it.
pub fn reply(command: &Message, build: impl FnOnce(Envelope, String) -> Message, full_name: &str) -> Message {
    build(Envelope::reply_to(command.envelope(), full_name), command.order_id().to_string())
}

pub fn stock_reserved(cmd: &Message) -> Message {
    reply(cmd, |envelope, order_id| StockReserved { envelope, order_id }.into(), StockReserved::FULL_NAME)
}

pub fn stock_failed(cmd: &Message, reason: &str) -> Message {
    let reason = reason.to_string();
    reply(cmd, |envelope, order_id| StockReservationFailed { envelope, order_id, reason }.into(), StockReservationFailed::FULL_NAME)
}

pub fn stock_released(cmd: &Message) -> Message {
    reply(cmd, |envelope, order_id| StockReleased { envelope, order_id, released: true }.into(), StockReleased::FULL_NAME)
}

pub fn payment_authorized(cmd: &Message) -> Message {
    let build = |envelope, order_id: String| {
        PaymentAuthorized { envelope, authorization_id: format!("auth-{order_id}"), order_id, amount_minor: 7_499, currency: "EUR".into() }.into()
    };
    reply(cmd, build, PaymentAuthorized::FULL_NAME)
}

pub fn payment_declined(cmd: &Message, reason: &str) -> Message {
    let reason = reason.to_string();
    reply(cmd, |envelope, order_id| PaymentDeclined { envelope, order_id, reason }.into(), PaymentDeclined::FULL_NAME)
}

pub fn risk_accepted(cmd: &Message) -> Message {
    reply(cmd, |envelope, order_id| RiskAccepted { envelope, order_id, score: 2 }.into(), RiskAccepted::FULL_NAME)
}

pub fn risk_rejected(cmd: &Message, reason: &str) -> Message {
    let reason = reason.to_string();
    reply(cmd, |envelope, order_id| RiskRejected { envelope, order_id, score: 100, reason }.into(), RiskRejected::FULL_NAME)
}

pub fn order_approved(cmd: &Message) -> Message {
    reply(cmd, |envelope, order_id| OrderApproved { envelope, order_id }.into(), OrderApproved::FULL_NAME)
}

pub fn order_rejected(cmd: &Message) -> Message {
    let reason = match cmd {
        Message::RejectOrder(m) => m.reason.clone(),
        other => panic!("expected RejectOrder, got {other:?}"),
    };
    reply(cmd, |envelope, order_id| OrderRejected { envelope, order_id, reason }.into(), OrderRejected::FULL_NAME)
}

/// (status, position, attempt, failure, version) of a saga that must exist.
pub async fn saga(db: &Db, saga_id: &str) -> (Status, Position, u32, Option<String>, i64) {
    let s = get_saga(db, saga_id).await.expect("read saga").unwrap_or_else(|| panic!("saga {saga_id} is missing"));
    (s.state.status, s.state.position, s.state.attempt, s.state.failure, s.version)
}

/// The saga log, one `(seq, event, from, to, cause id, sent ids)` per entry.
pub async fn log(db: &Db, saga_id: &str) -> Vec<(i64, String, Option<String>, String, String, Vec<String>)> {
    saga_log(db, saga_id)
        .await
        .expect("read saga log")
        .into_iter()
        .map(|e| (e.seq, e.event, e.from_status, e.to_status, e.cause_message_id.expect("every entry names its cause"), e.sent))
        .collect()
}

pub fn entry(
    seq: i64,
    event: &str,
    from: Option<&str>,
    to: &str,
    cause: &Message,
    sent: &[&Message],
) -> (i64, String, Option<String>, String, String, Vec<String>) {
    let sent = sent.iter().map(|m| m.envelope().message_id.clone()).collect();
    (seq, event.into(), from.map(str::to_string), to.into(), cause.envelope().message_id.clone(), sent)
}

/// Stray replies recorded for `saga_id`: (message id, message type, reason).
pub async fn strays(db: &Db, saga_id: &str) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT message_id, message_type, reason FROM stray_messages WHERE saga_id = $1 ORDER BY message_id")
        .bind(saga_id)
        .fetch_all(db.pool())
        .await
        .expect("read stray messages")
}
