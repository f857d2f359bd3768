//! Persistence scenarios of the orchestrator, each run on SQLite and on PostgreSQL.
//!
//! No broker: every event is applied to the orchestrator's own database exactly as the consume
//! loop applies it (inbox row, handler, commit in one transaction), and the participants' replies
//! are built from the commands it emitted, as the participants build them.

mod support;

use saga_contracts::{Envelope, Message, OrderCreated, PaymentDeclined, StockLine, StockReserved};
use saga_orchestrator::saga::{Position, Status};
use saga_orchestrator::store::{count_by_status, get_saga, saga_log};
use saga_orchestrator::Orchestrator;
use saga_runtime::HandleError;
use saga_sandbox::TestDb;
use support::*;

saga_sandbox::backend_tests!(
    starts_a_saga_and_reserves_stock,
    completes_the_happy_path,
    compensates_a_declined_payment,
    rejects_when_stock_runs_out,
    a_reply_after_the_end_is_logged_as_ignored,
    a_reply_out_of_turn_is_ignored_and_the_saga_goes_on,
    replies_for_unknown_sagas_are_strays,
    the_same_order_created_twice_starts_one_saga,
    v2_checks_risk_and_a_rejection_releases_the_stock,
    a_saga_keeps_its_version_and_an_unknown_version_is_never_guessed,
    the_view_finds_sagas_by_id_state_step_and_reason_and_pages_by_keyset,
    one_instance_keeps_its_sagas_and_reads_again_what_others_moved,
    two_messages_of_one_saga_in_one_transaction,
);

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn starts_a_saga_and_reserves_stock(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");

    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;

    let Message::ReserveStock(r) = &reserve else { panic!("expected ReserveStock, got {reserve:?}") };
    assert_eq!(r.order_id, "o1");
    let want: Vec<StockLine> = lines().into_iter().map(|l| StockLine { sku: l.sku, quantity: l.quantity }).collect();
    assert_eq!(r.lines, want);

    let s = get_saga(db, "o1").await.unwrap().expect("saga row");
    assert_eq!((s.state.status, s.state.position, s.state.attempt, s.version), (Status::Running, Position::Step(0), 1, 1));
    assert_eq!((s.saga_type.as_str(), s.definition_version), ("order", 1));
    assert_eq!((s.data.customer_id.as_str(), s.data.currency.as_str(), s.data.total_minor), ("alice", "EUR", 7_499));
    assert_eq!(s.data.lines, lines());
    assert_eq!(s.correlation_id, "corr-o1");
    assert_eq!(log(db, "o1").await, vec![entry(1, "started", None, "RUNNING", &created, &[&reserve])]);
    assert_eq!(count_by_status(db).await.unwrap(), vec![("RUNNING".to_string(), 1)]);
}

async fn completes_the_happy_path(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;

    let reserved = stock_reserved(&reserve);
    let pay = feed_one(db, &reserved, "o1:authorize_payment:do:1").await;
    let Message::AuthorizePayment(p) = &pay else { panic!("expected AuthorizePayment, got {pay:?}") };
    assert_eq!((p.customer_id.as_str(), p.amount_minor, p.currency.as_str()), ("alice", 7_499, "EUR"));
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(1), 1, None, 2));

    let authorized = payment_authorized(&pay);
    let approve = feed_one(db, &authorized, "o1:approve_order:do:1").await;
    assert!(matches!(&approve, Message::ApproveOrder(m) if m.order_id == "o1"), "{approve:?}");
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(2), 1, None, 3));

    let approved = order_approved(&approve);
    assert!(feed(db, &approved).await.is_empty(), "a completed saga sends nothing");
    assert_eq!(saga(db, "o1").await, (Status::Completed, Position::Done, 0, None, 4));

    assert_eq!(
        log(db, "o1").await,
        vec![
            entry(1, "started", None, "RUNNING", &created, &[&reserve]),
            entry(2, "step-succeeded", Some("RUNNING"), "RUNNING", &reserved, &[&pay]),
            entry(3, "step-succeeded", Some("RUNNING"), "RUNNING", &authorized, &[&approve]),
            entry(4, "completed", Some("RUNNING"), "COMPLETED", &approved, &[]),
        ]
    );
    assert_eq!(count_by_status(db).await.unwrap(), vec![("COMPLETED".to_string(), 1)]);
}

async fn compensates_a_declined_payment(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;
    let reserved = stock_reserved(&reserve);
    let pay = feed_one(db, &reserved, "o1:authorize_payment:do:1").await;

    let why = "insufficient credit: 100 EUR available, 7499 requested";
    let declined = payment_declined(&pay, why);
    let release = feed_one(db, &declined, "o1:reserve_stock:undo:1").await;
    assert!(matches!(&release, Message::ReleaseStock(m) if m.reason == why), "{release:?}");
    assert_eq!(saga(db, "o1").await, (Status::Compensating, Position::Compensation(0), 1, Some(why.into()), 3));

    let released = stock_released(&release);
    let reject = feed_one(db, &released, "o1:finalize:finalize:1").await;
    assert!(matches!(&reject, Message::RejectOrder(m) if m.reason == why), "{reject:?}");
    assert_eq!(saga(db, "o1").await, (Status::Compensating, Position::Finalizing, 1, Some(why.into()), 4));

    let rejected = order_rejected(&reject);
    assert!(feed(db, &rejected).await.is_empty());
    assert_eq!(saga(db, "o1").await, (Status::Compensated, Position::Done, 0, Some(why.into()), 5));

    assert_eq!(
        log(db, "o1").await,
        vec![
            entry(1, "started", None, "RUNNING", &created, &[&reserve]),
            entry(2, "step-succeeded", Some("RUNNING"), "RUNNING", &reserved, &[&pay]),
            entry(3, "step-failed", Some("RUNNING"), "COMPENSATING", &declined, &[&release]),
            entry(4, "step-compensated", Some("COMPENSATING"), "COMPENSATING", &released, &[&reject]),
            entry(5, "compensated", Some("COMPENSATING"), "COMPENSATED", &rejected, &[]),
        ]
    );
    let full = saga_log(db, "o1").await.unwrap();
    assert_eq!(full[2].detail.as_deref(), Some(why), "the failure reason is logged with the failure");
    assert_eq!(full[2].cause_message_type.as_deref(), Some(PaymentDeclined::FULL_NAME));
    assert_eq!(full[2].step.as_deref(), Some("authorize_payment"));
    assert_eq!(count_by_status(db).await.unwrap(), vec![("COMPENSATED".to_string(), 1)]);
}

async fn rejects_when_stock_runs_out(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;

    // Nothing was reserved, so nothing is released: straight to the final action.
    let why = "out of stock: sku WIDGET-1 has 1 left, 2 requested";
    let failed = stock_failed(&reserve, why);
    let reject = feed_one(db, &failed, "o1:finalize:finalize:1").await;
    assert!(matches!(&reject, Message::RejectOrder(m) if m.reason == why), "{reject:?}");
    assert_eq!(saga(db, "o1").await, (Status::Compensating, Position::Finalizing, 1, Some(why.into()), 2));

    let rejected = order_rejected(&reject);
    assert!(feed(db, &rejected).await.is_empty());
    assert_eq!(saga(db, "o1").await, (Status::Compensated, Position::Done, 0, Some(why.into()), 3));
    let events: Vec<String> = log(db, "o1").await.into_iter().map(|e| e.1).collect();
    assert_eq!(events, ["started", "step-failed", "compensated"]);
}

async fn a_reply_after_the_end_is_logged_as_ignored(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;
    let reserved = stock_reserved(&reserve);
    let pay = feed_one(db, &reserved, "o1:authorize_payment:do:1").await;
    let approve = feed_one(db, &payment_authorized(&pay), "o1:approve_order:do:1").await;
    feed(db, &order_approved(&approve)).await;
    assert_eq!(saga(db, "o1").await, (Status::Completed, Position::Done, 0, None, 4));

    // The same reply redelivered: the inbox swallows it, the log does not move.
    assert!(apply(db, &reserved).await.unwrap().is_none());
    assert_eq!(log(db, "o1").await.len(), 4);

    // A duplicate answer under another id (the participant answered twice): logged, not applied.
    let mut late = stock_reserved(&reserve);
    late.envelope_mut().message_id = "o1:reserve_stock:do:1/StockReserved#again".into();
    assert!(feed(db, &late).await.is_empty(), "an ignored reply sends nothing");

    assert_eq!(saga(db, "o1").await, (Status::Completed, Position::Done, 0, None, 5));
    let full = saga_log(db, "o1").await.unwrap();
    assert_eq!(full.len(), 5);
    let last = &full[4];
    assert_eq!((last.seq, last.event.as_str(), last.step.as_deref()), (5, "ignored", None));
    assert_eq!((last.from_status.as_deref(), last.to_status.as_str()), (Some("COMPLETED"), "COMPLETED"));
    assert_eq!(last.cause_message_id.as_deref(), Some("o1:reserve_stock:do:1/StockReserved#again"));
    assert_eq!(last.cause_message_type.as_deref(), Some(StockReserved::FULL_NAME));
    assert!(last.sent.is_empty());
    assert!(last.detail.as_deref().is_some_and(|d| d.contains("after the saga ended")), "{last:?}");
    assert!(strays(db, "o1").await.is_empty(), "a reply for a known saga is not a stray");
}

async fn a_reply_out_of_turn_is_ignored_and_the_saga_goes_on(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;

    // A payment reply while the saga waits for stock: not applied to the wrong step.
    let early = payment_declined(&reserve, "confused participant");
    assert!(feed(db, &early).await.is_empty());
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(0), 1, None, 2));

    let reserved = stock_reserved(&reserve);
    let pay = feed_one(db, &reserved, "o1:authorize_payment:do:1").await;
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(1), 1, None, 3));
    assert_eq!(
        log(db, "o1").await,
        vec![
            entry(1, "started", None, "RUNNING", &created, &[&reserve]),
            entry(2, "ignored", Some("RUNNING"), "RUNNING", &early, &[]),
            entry(3, "step-succeeded", Some("RUNNING"), "RUNNING", &reserved, &[&pay]),
        ]
    );
}

async fn replies_for_unknown_sagas_are_strays(test_db: TestDb) {
    let db = migrated(&test_db).await;
    // A reply to a command this orchestrator never sent (say, its database was restored).
    let ghost_command: Message = saga_contracts::ReserveStock {
        envelope: Envelope {
            message_id: "ghost:reserve_stock:do:1".into(),
            message_type: saga_contracts::ReserveStock::FULL_NAME.into(),
            saga_id: Some("ghost".into()),
            correlation_id: "corr-ghost".into(),
            causation_id: None,
            occurred_at_ms: 1,
        },
        order_id: "ghost".into(),
        lines: vec![],
    }
    .into();

    let reply = stock_reserved(&ghost_command);
    assert!(feed(db, &reply).await.is_empty(), "no saga, no command");

    assert_eq!(get_saga(db, "ghost").await.unwrap(), None, "a stray reply starts nothing");
    assert!(saga_log(db, "ghost").await.unwrap().is_empty());
    assert_eq!(
        strays(db, "ghost").await,
        vec![("ghost:reserve_stock:do:1/StockReserved".into(), StockReserved::FULL_NAME.into(), "no saga with this id".into())]
    );
    // Redelivered: the inbox swallows it; nothing is recorded twice.
    assert!(apply(db, &reply).await.unwrap().is_none());
    assert_eq!(strays(db, "ghost").await.len(), 1);
    assert!(count_by_status(db).await.unwrap().is_empty());
}

async fn the_same_order_created_twice_starts_one_saga(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let created = order_created("place-o1", "o1");
    let reserve = feed_one(db, &created, "o1:reserve_stock:do:1").await;

    // Redelivered: the inbox swallows it.
    assert!(apply(db, &created).await.unwrap().is_none());
    // The same order announced again under another id: recorded, no second saga, no command.
    let again = order_created("place-o1-again", "o1");
    assert!(feed(db, &again).await.is_empty());

    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(0), 1, None, 1));
    assert_eq!(log(db, "o1").await, vec![entry(1, "started", None, "RUNNING", &created, &[&reserve])]);
    assert_eq!(
        strays(db, "o1").await,
        vec![("place-o1-again/OrderCreated".into(), OrderCreated::FULL_NAME.into(), "a saga for this order already exists".into())]
    );
    assert_eq!(count_by_status(db).await.unwrap(), vec![("RUNNING".to_string(), 1)]);
}

/// One orchestrator for the whole saga, as a running service is: it finds the saga it moved last
/// without reading it, and when another writer moved it since (here a second instance logging an
/// ignored reply, then its own ignored reply) it reads the saga again instead of applying a reply
/// to a state that is gone.
async fn one_instance_keeps_its_sagas_and_reads_again_what_others_moved(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let orch = on_v1();
    let one = |m: &Message| {
        let m = m.clone();
        let orch = &orch;
        async move { apply_with(db, orch, &m).await.unwrap().unwrap() }
    };
    let created = order_created("place-o1", "o1");
    let reserve = one(&created).await.remove(0);
    let reserved = stock_reserved(&reserve);
    let pay = one(&reserved).await.remove(0);
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(1), 1, None, 2));

    // Another instance logs a second answer to the reservation: the saga's version moves.
    let mut twice = stock_reserved(&reserve);
    twice.envelope_mut().message_id = "o1:reserve_stock:do:1/StockReserved#again".into();
    assert!(apply_with(db, &on_v1(), &twice).await.unwrap().unwrap().is_empty());

    let authorized = payment_authorized(&pay);
    let approve = one(&authorized).await.remove(0);
    assert_eq!(approve.envelope().message_id, "o1:approve_order:do:1");
    // This instance logs an ignored reply itself, then the last reply completes the saga.
    let mut late = payment_authorized(&pay);
    late.envelope_mut().message_id = "o1:authorize_payment:do:1/PaymentAuthorized#again".into();
    assert!(one(&late).await.is_empty());
    let approved = order_approved(&approve);
    assert!(one(&approved).await.is_empty());

    assert_eq!(saga(db, "o1").await, (Status::Completed, Position::Done, 0, None, 6));
    assert_eq!(
        log(db, "o1").await,
        vec![
            entry(1, "started", None, "RUNNING", &created, &[&reserve]),
            entry(2, "step-succeeded", Some("RUNNING"), "RUNNING", &reserved, &[&pay]),
            entry(3, "ignored", Some("RUNNING"), "RUNNING", &twice, &[]),
            entry(4, "step-succeeded", Some("RUNNING"), "RUNNING", &authorized, &[&approve]),
            entry(5, "ignored", Some("RUNNING"), "RUNNING", &late, &[]),
            entry(6, "completed", Some("RUNNING"), "COMPLETED", &approved, &[]),
        ]
    );
}

/// A batch may carry two messages of one saga: the second finds the saga as the first left it in
/// the same transaction, not as last committed.
async fn two_messages_of_one_saga_in_one_transaction(test_db: TestDb) {
    use saga_runtime::{Handler, Incoming};
    use sqlx::Acquire;
    let db = migrated(&test_db).await;
    let orch = on_v1();
    let created = order_created("place-o1", "o1");
    let reserve = apply_with(db, &orch, &created).await.unwrap().unwrap();
    let reserved = stock_reserved(&reserve[0]);
    let (mut conn, mut notes) = (db.pool().acquire().await.unwrap(), Vec::new());
    let mut tx = conn.begin().await.unwrap();
    let topics = saga_contracts::Topics::default();
    let mut conn = saga_store::Conn::Sqlx(&mut tx);
    let pay = orch.handle(&mut conn, &Incoming::new(&topics, reserved.clone()), &mut notes).await.unwrap();
    let mut twice = reserved.clone();
    twice.envelope_mut().message_id = "o1:reserve_stock:do:1/StockReserved#again".into();
    assert!(orch.handle(&mut conn, &Incoming::new(&topics, twice.clone()), &mut notes).await.unwrap().is_empty());
    tx.commit().await.unwrap();
    orch.committed(notes);

    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(1), 1, None, 3));
    let approve = apply_with(db, &orch, &payment_authorized(&pay[0])).await.unwrap().unwrap();
    assert_eq!(approve.iter().map(|m| m.envelope().message_id.as_str()).collect::<Vec<_>>(), vec!["o1:approve_order:do:1"]);
    assert_eq!(saga(db, "o1").await, (Status::Running, Position::Step(2), 1, None, 4));
    assert_eq!(log(db, "o1").await.iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), vec!["started", "step-succeeded", "ignored", "step-succeeded"]);
}

async fn v2_checks_risk_and_a_rejection_releases_the_stock(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let v2 = Orchestrator::default();
    assert_eq!(v2.definition().version, 2, "new sagas start on the newest version by default");
    let run = |m: Message| {
        let v2 = &v2;
        async move {
            let mut out = apply_with(db, v2, &m).await.unwrap().expect("new message");
            assert_eq!(out.len(), 1, "{out:?}");
            out.remove(0)
        }
    };
    let reserve = run(order_created("place-o1", "o1")).await;
    let check = run(stock_reserved(&reserve)).await;
    let Message::CheckRisk(c) = &check else { panic!("expected CheckRisk, got {check:?}") };
    assert_eq!((c.envelope.message_id.as_str(), c.customer_id.as_str(), c.amount_minor), ("o1:check_risk:do:1", "alice", 7_499));
    let release = run(risk_rejected(&check, "order total above the review line")).await;
    assert!(matches!(&release, Message::ReleaseStock(r) if r.reason == "order total above the review line"), "{release:?}");
    let reject = run(stock_released(&release)).await;
    assert!(matches!(reject, Message::RejectOrder(_)), "{reject:?}");

    // The happy path of another order goes through the check to the authorization.
    let reserve = run(order_created("place-o2", "o2")).await;
    let check = run(stock_reserved(&reserve)).await;
    let pay = run(risk_accepted(&check)).await;
    assert!(matches!(pay, Message::AuthorizePayment(_)), "{pay:?}");
    let log = saga_log(db, "o1").await.unwrap();
    let steps: Vec<_> = log.iter().map(|e| (e.event.as_str(), e.step.as_deref().unwrap_or("-"), e.definition_version)).collect();
    assert_eq!(
        steps,
        vec![
            ("started", "reserve_stock", 2),
            ("step-succeeded", "reserve_stock", 2),
            ("step-failed", "check_risk", 2),
            ("step-compensated", "reserve_stock", 2),
        ]
    );
}

async fn a_saga_keeps_its_version_and_an_unknown_version_is_never_guessed(test_db: TestDb) {
    let db = migrated(&test_db).await;
    // o1 starts on v1 (the configuration before an upgrade) ...
    let reserve = feed_one(db, &order_created("place-o1", "o1"), "o1:reserve_stock:do:1").await;
    // ... and after the switch to v2 it still runs v1's steps: no risk check.
    let upgraded = Orchestrator::default();
    let next = apply_with(db, &upgraded, &stock_reserved(&reserve)).await.unwrap().unwrap();
    assert!(matches!(next.as_slice(), [Message::AuthorizePayment(_)]), "{next:?}");
    assert!(saga_log(db, "o1").await.unwrap().iter().all(|e| e.definition_version == 1));

    // o2 starts on v2; a binary that knows only v1 (an instance not yet upgraded) never guesses.
    let reserve2 = apply_with(db, &upgraded, &order_created("place-o2", "o2")).await.unwrap().unwrap().remove(0);
    let old = Orchestrator::with_versions(vec![saga_orchestrator::definition::order_saga_v1()], None).unwrap();
    match apply_with(db, &old, &stock_reserved(&reserve2)).await {
        Err(HandleError::Unsupported(why)) => assert!(why.contains("saga o2 runs definition version 2") && why.contains("it knows 1"), "{why}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    assert_eq!(saga(db, "o2").await.1, Position::Step(0), "nothing moved");
    let refused = old.check_in_flight(db).await.unwrap_err().to_string();
    assert!(refused.contains("version 2: 1 saga(s), e.g. o2") && refused.contains("it knows 1"), "{refused}");
    upgraded.check_in_flight(db).await.expect("the upgraded binary knows every version in flight");
    // A start on a version this binary lacks is a configuration error that names its key.
    let settings = saga_runtime::ServiceSettings::defaults_for("orchestrator");
    let saga = saga_orchestrator::SagaSettings { order_version: 3, ..Default::default() };
    let bad = Orchestrator::configured(&settings, &saga).err().expect("version 3 refused").to_string();
    assert!(bad.contains("saga.order_version") && bad.contains("no version 3"), "{bad}");
}

async fn the_view_finds_sagas_by_id_state_step_and_reason_and_pages_by_keyset(test_db: TestDb) {
    use saga_orchestrator::store::{search, Cursor, Search};
    let db = migrated(&test_db).await;
    // Seven sagas on v1: ab-1..ab-5 wait for their reservation, ac-1 failed (out of stock) and
    // is releasing, ac-2 is at the payment step.
    let mut reserve = std::collections::HashMap::new();
    for id in ["ab-1", "ab-2", "ab-3", "ab-4", "ab-5", "ac-1", "ac-2"] {
        reserve.insert(id, feed(db, &order_created(&format!("place-{id}"), id)).await.remove(0));
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    feed(db, &stock_failed(&reserve["ac-1"], "out of stock: sku RARE-GEM has 3 left")).await;
    feed(db, &stock_reserved(&reserve["ac-2"])).await;
    let ids = |found: &[saga_orchestrator::store::SagaRecord]| found.iter().map(|s| s.saga_id.clone()).collect::<Vec<_>>();
    let find = |search: Search| async move { search_all(db, &search).await };

    assert_eq!(find(Search { id_prefix: Some("ac-".into()), ..Search::default() }).await, ["ac-2", "ac-1"], "newest first");
    assert_eq!(find(Search { id_prefix: Some("ab-3".into()), ..Search::default() }).await, ["ab-3"]);
    assert_eq!(find(Search { status: Some(Status::Compensating), ..Search::default() }).await, ["ac-1"]);
    assert_eq!(find(Search { reason: Some("rare-GEM".into()), ..Search::default() }).await, ["ac-1"], "any case");
    assert_eq!(find(Search { reason: Some("100%_".into()), ..Search::default() }).await, Vec::<String>::new(), "% and _ are text");
    assert_eq!(find(Search { positions: vec![(1, "step:1".into())], ..Search::default() }).await, ["ac-2"]);
    assert_eq!(find(Search { version: Some(2), ..Search::default() }).await, Vec::<String>::new());
    let all = find(Search::default()).await;
    assert_eq!(all.len(), 7);
    let since = get_saga(db, "ab-4").await.unwrap().unwrap().created_at_ms;
    assert!(find(Search { since_ms: Some(since), ..Search::default() }).await.iter().all(|id| !["ab-1", "ab-2", "ab-3"].contains(&id.as_str())));

    // Pages of three: every saga once, in the same order as one big page, the last without a cursor.
    let (mut paged, mut after) = (Vec::new(), None::<Cursor>);
    loop {
        let (page, next) = search(db, &Search::default(), after.as_ref(), 3).await.unwrap();
        paged.extend(ids(&page));
        match next {
            Some(c) => after = Some(Cursor::decode(&c.encode()).expect("a cursor round-trips")),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // The overview's reads: nothing has finished yet; one saga has a failure reason.
    assert_eq!(saga_orchestrator::store::finished_per_bucket(db, 0, 10_000).await.unwrap(), vec![]);
    let reasons = saga_orchestrator::store::failure_reasons(db, 0, 10).await.unwrap();
    assert_eq!(reasons, vec![("out of stock: sku RARE-GEM has 3 left".to_string(), 1)]);
}

async fn search_all(db: &saga_store::Db, search: &saga_orchestrator::store::Search) -> Vec<String> {
    let (found, next) = saga_orchestrator::store::search(db, search, None, 100).await.unwrap();
    assert!(next.is_none());
    found.into_iter().map(|s| s.saga_id).collect()
}
