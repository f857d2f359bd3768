//! Persistence scenarios of the payment service, each run on SQLite and on PostgreSQL.
//!
//! No broker: every message is applied to the service's own database exactly as the consume loop
//! applies it (inbox row, handler, commit in one transaction; a handler error rolls it all back).

use saga_contracts::{AuthorizePayment, CheckRisk, Message, VoidPayment};
use saga_payment::{authorization_of, authorized_total, set_accounts, AuthorizationStatus, PaymentHandler};
use saga_runtime::HandleError;
use saga_sandbox::TestDb;
use saga_store::Db;

saga_sandbox::backend_tests!(
    authorizes_within_the_limit,
    declines_what_the_rules_refuse,
    a_repeated_authorize_answers_from_the_authorization,
    a_void_restores_credit_once,
    a_void_before_the_authorization_makes_it_decline,
    concurrent_authorizations_never_exceed_the_limit,
    other_messages_are_refused,
    a_risk_check_is_assessed_once_and_answered_alike,
    a_stored_authorization_that_cannot_be_read_is_an_error_not_a_default,
);

// ---------------------------------------------------------------------------------------------
// Harness

async fn migrated(test_db: &TestDb) -> &Db {
    saga_sandbox::migrate(&test_db.db, &saga_payment::MIGRATIONS).await;
    set_accounts(&test_db.db, &[("alice".into(), "EUR".into(), 10_000), ("bob".into(), "EUR".into(), 5_000), ("dave".into(), "USD".into(), 10_000)])
        .await
        .expect("seed accounts");
    &test_db.db
}

/// Applies one message as the consume loop does. `Ok(None)`: the inbox already had its id.
async fn apply(db: &Db, message: impl Into<Message>) -> Result<Option<Vec<Message>>, HandleError> {
    saga_sandbox::apply(db, &PaymentHandler, message).await
}

/// Applies a new command the handler accepts; returns its one reply.
async fn reply(db: &Db, message: impl Into<Message>) -> Message {
    saga_sandbox::reply(db, &PaymentHandler, message).await
}

use saga_sandbox::envelope;

fn authorize(message_id: &str, order_id: &str, customer: &str, amount_minor: i64, currency: &str) -> AuthorizePayment {
    AuthorizePayment {
        envelope: envelope(message_id, AuthorizePayment::FULL_NAME, order_id),
        order_id: order_id.into(),
        customer_id: customer.into(),
        amount_minor,
        currency: currency.into(),
    }
}

fn void(message_id: &str, order_id: &str) -> VoidPayment {
    VoidPayment { envelope: envelope(message_id, VoidPayment::FULL_NAME, order_id), order_id: order_id.into(), reason: "order rejected".into() }
}

/// Credit a customer has in use. The crate has no reader for it, so the test reads the table.
async fn credit_used(db: &Db, customer: &str) -> i64 {
    sqlx::query_scalar("SELECT authorized_minor FROM accounts WHERE customer_id = $1").bind(customer).fetch_one(db.pool()).await.expect("read account")
}

async fn authorization(db: &Db, order_id: &str) -> Option<(AuthorizationStatus, i64)> {
    authorization_of(db, order_id).await.expect("read authorization")
}

async fn total(db: &Db) -> (i64, i64) {
    authorized_total(db).await.expect("read authorized total")
}

/// Asserts an authorization; returns (authorization id, amount, currency).
#[track_caller]
fn authorized(reply: &Message, order_id: &str) -> (String, i64, String) {
    match reply {
        Message::PaymentAuthorized(m) if m.order_id == order_id => (m.authorization_id.clone(), m.amount_minor, m.currency.clone()),
        other => panic!("expected PaymentAuthorized for {order_id}, got {other:?}"),
    }
}

/// Asserts a decline; returns its reason.
#[track_caller]
fn declined(reply: &Message, order_id: &str) -> String {
    match reply {
        Message::PaymentDeclined(m) if m.order_id == order_id => m.reason.clone(),
        other => panic!("expected PaymentDeclined for {order_id}, got {other:?}"),
    }
}

#[track_caller]
fn voided(reply: &Message, order_id: &str) -> bool {
    match reply {
        Message::PaymentVoided(m) if m.order_id == order_id => m.voided,
        other => panic!("expected PaymentVoided for {order_id}, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn authorizes_within_the_limit(test_db: TestDb) {
    let db = migrated(&test_db).await;

    let r = reply(db, authorize("o1:authorize_payment:do:1", "o1", "alice", 6_000, "EUR")).await;
    assert_eq!(authorized(&r, "o1"), ("auth-o1".to_string(), 6_000, "EUR".to_string()));
    assert_eq!(r.envelope().saga_id.as_deref(), Some("o1"));
    assert_eq!(r.envelope().correlation_id, "corr-o1");
    assert_eq!(authorization(db, "o1").await, Some((AuthorizationStatus::Authorized, 6_000)));
    assert_eq!(credit_used(db, "alice").await, 6_000);

    // Exactly up to the limit is allowed.
    let r = reply(db, authorize("o2:authorize_payment:do:1", "o2", "alice", 4_000, "EUR")).await;
    assert_eq!(authorized(&r, "o2").1, 4_000);
    assert_eq!(credit_used(db, "alice").await, 10_000);
    assert_eq!(credit_used(db, "bob").await, 0, "other customers are untouched");
    assert_eq!(total(db).await, (10_000, 2));
}

async fn declines_what_the_rules_refuse(test_db: TestDb) {
    let db = migrated(&test_db).await;
    reply(db, authorize("o0:a:1", "o0", "alice", 1, "EUR")).await;

    let cases = [
        ("o1", "alice", 10_000, "EUR", "insufficient credit: 9999 EUR available, 10000 requested"),
        ("o2", "mallory", 100, "EUR", "customer mallory has no account"),
        ("o3", "alice", 100, "USD", "account of customer alice is in EUR, payment is in USD"),
        ("o4", "dave", 100, "EUR", "account of customer dave is in USD, payment is in EUR"),
        ("o5", "bob", 0, "EUR", "amount 0 must be positive"),
    ];
    for (order, customer, amount, currency, why) in cases {
        let r = reply(db, authorize(&format!("{order}:a:1"), order, customer, amount, currency)).await;
        assert_eq!(declined(&r, order), why);
        assert_eq!(authorization(db, order).await.map(|(s, _)| s), Some(AuthorizationStatus::Declined), "{order}");
    }

    // A declined order stays declined when asked again, with the same reason.
    let r = reply(db, authorize("o1:a:2", "o1", "alice", 10_000, "EUR")).await;
    assert_eq!(declined(&r, "o1"), "insufficient credit: 9999 EUR available, 10000 requested");
    assert_eq!((credit_used(db, "alice").await, credit_used(db, "bob").await, credit_used(db, "dave").await), (1, 0, 0));
    assert_eq!(total(db).await, (1, 1));
}

async fn a_repeated_authorize_answers_from_the_authorization(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let first = reply(db, authorize("o1:authorize_payment:do:1", "o1", "alice", 3_000, "EUR")).await;

    // Redelivered: the inbox swallows it.
    assert!(apply(db, authorize("o1:authorize_payment:do:1", "o1", "alice", 3_000, "EUR")).await.unwrap().is_none());
    // Sent again under a new id: the same authorization again, credit used once.
    let again = reply(db, authorize("o1:authorize_payment:do:2", "o1", "alice", 3_000, "EUR")).await;
    assert_eq!(authorized(&again, "o1"), authorized(&first, "o1"));

    assert_eq!(credit_used(db, "alice").await, 3_000);
    assert_eq!(authorization(db, "o1").await, Some((AuthorizationStatus::Authorized, 3_000)));
    assert_eq!(total(db).await, (3_000, 1));
}

async fn a_void_restores_credit_once(test_db: TestDb) {
    let db = migrated(&test_db).await;
    reply(db, authorize("o1:a:1", "o1", "alice", 7_000, "EUR")).await;
    reply(db, authorize("o2:a:1", "o2", "alice", 2_000, "EUR")).await;

    let r = reply(db, void("o1:authorize_payment:undo:1", "o1")).await;
    assert!(voided(&r, "o1"));
    assert_eq!(credit_used(db, "alice").await, 2_000);
    assert_eq!(authorization(db, "o1").await.map(|(s, _)| s), Some(AuthorizationStatus::Voided));
    assert_eq!(total(db).await, (2_000, 1));

    // Voided again under a new id: nothing to void, credit is not given back twice.
    let r = reply(db, void("o1:authorize_payment:undo:2", "o1")).await;
    assert!(!voided(&r, "o1"));
    assert_eq!(credit_used(db, "alice").await, 2_000);
    // Redelivered: the inbox swallows it.
    assert!(apply(db, void("o1:authorize_payment:undo:1", "o1")).await.unwrap().is_none());
    assert_eq!(credit_used(db, "alice").await, 2_000);

    // The credit given back can be used again; the voided order itself cannot be authorized.
    let r = reply(db, authorize("o3:a:1", "o3", "alice", 8_000, "EUR")).await;
    assert_eq!(authorized(&r, "o3").1, 8_000);
    let r = reply(db, authorize("o1:a:2", "o1", "alice", 7_000, "EUR")).await;
    assert!(declined(&r, "o1").contains("already voided"), "{r:?}");
    assert_eq!(credit_used(db, "alice").await, 10_000);
    assert_eq!(total(db).await, (10_000, 2));

    // Voiding a declined authorization gives nothing back.
    reply(db, authorize("o4:a:1", "o4", "bob", 9_999, "EUR")).await;
    assert!(!voided(&reply(db, void("o4:undo:1", "o4")).await, "o4"));
    assert_eq!(credit_used(db, "bob").await, 0);
    assert_eq!(authorization(db, "o4").await.map(|(s, _)| s), Some(AuthorizationStatus::Declined));
}

async fn a_void_before_the_authorization_makes_it_decline(test_db: TestDb) {
    let db = migrated(&test_db).await;

    let r = reply(db, void("o1:authorize_payment:undo:1", "o1")).await;
    assert!(!voided(&r, "o1"), "there was nothing to void");
    assert_eq!(authorization(db, "o1").await.map(|(s, _)| s), Some(AuthorizationStatus::Voided));

    let r = reply(db, authorize("o1:authorize_payment:do:1", "o1", "alice", 1_000, "EUR")).await;
    assert!(declined(&r, "o1").contains("already voided"), "{r:?}");
    assert_eq!(credit_used(db, "alice").await, 0);
    assert_eq!(total(db).await, (0, 0));
}

async fn concurrent_authorizations_never_exceed_the_limit(test_db: TestDb) {
    let db = migrated(&test_db).await;

    // Twenty orders of 1,000 race for alice's 10,000 through a pool of four connections. Like the
    // consume loop, a transient failure or a conflict is retried with the same message.
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                let order = format!("o{i}");
                let cmd = authorize(&format!("{order}:a:1"), &order, "alice", 1_000, "EUR");
                saga_sandbox::applied_retrying(&db, &PaymentHandler, cmd).await.remove(0)
            })
        })
        .collect();
    let mut authorized = 0;
    for task in tasks {
        match task.await.expect("task") {
            Message::PaymentAuthorized(_) => authorized += 1,
            Message::PaymentDeclined(m) => assert!(m.reason.starts_with("insufficient credit: 0 EUR"), "{m:?}"),
            other => panic!("unexpected reply {other:?}"),
        }
    }

    assert_eq!(authorized, 10);
    assert_eq!(credit_used(db, "alice").await, 10_000);
    assert_eq!(total(db).await, (10_000, 10));
}

async fn other_messages_are_refused(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let not_ours = saga_contracts::PaymentVoided {
        envelope: envelope("x/PaymentVoided", saga_contracts::PaymentVoided::FULL_NAME, "o1"),
        order_id: "o1".into(),
        voided: true,
    };
    match apply(db, not_ours).await {
        Err(HandleError::Reject(why)) => assert!(why.contains("PaymentVoided"), "{why}"),
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(authorization(db, "o1").await, None);
}

async fn a_risk_check_is_assessed_once_and_answered_alike(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let check = |message_id: &str, order_id: &str, amount_minor: i64| CheckRisk {
        envelope: envelope(message_id, CheckRisk::FULL_NAME, order_id),
        order_id: order_id.into(),
        customer_id: "alice".into(),
        amount_minor,
        currency: "EUR".into(),
    };
    match reply(db, check("o1:check_risk:do:1", "o1", 250_000)).await {
        Message::RiskAccepted(m) => assert_eq!((m.order_id.as_str(), m.score), ("o1", 50)),
        other => panic!("expected RiskAccepted, got {other:?}"),
    }
    let rejected = |m: Message| match m {
        Message::RiskRejected(m) => (m.score, m.reason),
        other => panic!("expected RiskRejected, got {other:?}"),
    };
    let (score, reason) = rejected(reply(db, check("o2:check_risk:do:1", "o2", 600_000)).await);
    assert_eq!(score, 100);
    assert!(reason.contains("manual fraud review"), "{reason}");
    // A retry after a timeout (a new attempt, so a new message id) answers from the stored
    // assessment, even with another amount; a redelivery of the same id is a duplicate.
    assert_eq!(rejected(reply(db, check("o2:check_risk:do:2", "o2", 1)).await), (100, reason));
    assert_eq!(apply(db, check("o2:check_risk:do:1", "o2", 600_000)).await.unwrap(), None);
    // Checking takes no credit.
    assert_eq!(authorized_total(db).await.unwrap(), (0, 0));
}

async fn a_stored_authorization_that_cannot_be_read_is_an_error_not_a_default(test_db: TestDb) {
    let db = migrated(&test_db).await;
    reply(db, authorize("o1:authorize_payment:do:1", "o1", "alice", 6_000, "EUR")).await;
    saga_sandbox::write_past_status_check(db, "authorizations", "UPDATE authorizations SET status = 'CAPTURED' WHERE order_id = 'o1'").await;
    let e = authorization_of(db, "o1").await.expect_err("an unknown status is an error").to_string();
    assert!(e.contains("order o1") && e.contains("\"CAPTURED\""), "{e}");
    let e = apply(db, authorize("o1:authorize_payment:do:2", "o1", "alice", 6_000, "EUR")).await.expect_err("the handler refuses to guess");
    assert!(e.to_string().contains("\"CAPTURED\""), "{e}");
    let e = apply(db, void("o1:authorize_payment:undo:1", "o1")).await.expect_err("a void does not guess either");
    assert!(e.to_string().contains("\"CAPTURED\""), "{e}");
    assert_eq!(credit_used(db, "alice").await, 6_000, "nothing moved");
}
