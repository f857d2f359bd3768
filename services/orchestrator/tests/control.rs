//! Deadlines, dead letters and operator commands against the saga log, each run on SQLite and on
//! PostgreSQL. Deadlines are read back from the database by a fresh orchestrator, as after a
//! restart.

mod support;

use saga_contracts::Message;
use saga_orchestrator::control::{self, OperatorError};
use saga_orchestrator::saga::{Position, Status, Timing};
use saga_orchestrator::store::{count_by_status, get_saga, saga_log};
use saga_orchestrator::Orchestrator;
use saga_runtime::dlt::record::DeadLetterRecord;
use saga_runtime::timers::{Cutoffs, DeadLetterSeen};
use saga_runtime::{Deadlines, WatchesDeadLetters};
use saga_sandbox::TestDb;
use saga_store::{Conn, Db};
use sqlx::Acquire;
use support::*;

saga_sandbox::backend_tests!(
    a_step_past_its_deadline_is_compensated_by_a_fresh_orchestrator,
    a_deadline_read_before_the_saga_moved_does_nothing,
    a_deadline_waits_until_its_partition_was_read_past_it,
    a_deadline_of_a_saga_that_awaits_nothing_is_cleared_and_logged,
    a_compensation_unconfirmed_after_its_attempts_leaves_the_saga_stuck_until_retried,
    a_dead_letter_parks_its_saga_and_a_later_reply_resumes_it,
    abort_sends_the_planned_compensations_and_refuses_what_it_cannot_do,
    a_kept_dead_letter_of_a_parked_saga_is_redriven_once_by_the_dlt_rules,
);

/// Deadlines of 1 ms; new sagas start on definition v1 (the scenarios follow its steps).
fn fast(max_compensation_attempts: u32) -> Orchestrator {
    on_v1().with_timing(Timing { timeout_override_ms: Some(1), max_delay_ms: 1, max_compensation_attempts })
}

/// Waits past the 1 ms deadlines, then fires every due saga as the timer task does, one
/// transaction each; returns what they sent.
async fn fire_due(db: &Db, orch: &Orchestrator) -> Vec<Message> {
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = saga_contracts::now_ms();
    let mut sent = Vec::new();
    for due in orch.due(db, &read_through(now), 100).await.unwrap() {
        let mut conn = db.pool().acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        sent.extend(orch.fire(&mut Conn::Sqlx(&mut tx), &due.id, now, &mut Vec::new()).await.unwrap());
        tx.commit().await.unwrap();
    }
    sent
}

/// Cutoffs of an instance that owns partition 0 (where the test sagas start) and read it through `now`.
fn read_through(now: i64) -> Cutoffs {
    Cutoffs { by_partition: vec![(0, now)], floor: now }
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.envelope().message_id.clone()).collect()
}

async fn started(test_db: &TestDb) -> (&Db, Message) {
    let db = migrated(test_db).await;
    let mut out = saga_sandbox::apply(db, &fast(5), order_created("place-o1", "o1")).await.unwrap().unwrap();
    (db, out.remove(0))
}

async fn a_step_past_its_deadline_is_compensated_by_a_fresh_orchestrator(test_db: TestDb) {
    let (db, reserve) = started(&test_db).await;
    assert!(get_saga(db, "o1").await.unwrap().unwrap().deadline_at_ms.is_some(), "the deadline is stored with the saga");
    let sent = fire_due(db, &fast(5)).await;
    assert_eq!(ids(&sent), vec!["o1:reserve_stock:undo:1"], "the reservation may still land, so it is released first");
    assert_eq!(saga(db, "o1").await.0, Status::Compensating);
    let log = saga_log(db, "o1").await.unwrap();
    let last = log.last().unwrap();
    assert_eq!((last.event.as_str(), last.cause_message_type.as_deref()), ("step-timed-out", Some("deadline")));
    // The late StockReserved is logged and ignored; the release confirms, the order is rejected.
    assert_eq!(feed(db, &stock_reserved(&reserve)).await.len(), 0);
    assert_eq!(saga_log(db, "o1").await.unwrap().last().unwrap().event, "ignored");
    let release = sent.into_iter().next().unwrap();
    let reject = feed(db, &stock_released(&release)).await.remove(0);
    assert_eq!(reject.envelope().message_id, "o1:finalize:finalize:1");
    feed(db, &order_rejected(&reject)).await;
    assert_eq!(saga(db, "o1").await.0, Status::Compensated);
    assert!(get_saga(db, "o1").await.unwrap().unwrap().deadline_at_ms.is_none(), "an ended saga has no deadline");
}

async fn a_deadline_read_before_the_saga_moved_does_nothing(test_db: TestDb) {
    let (db, reserve) = started(&test_db).await;
    let orch = fast(5);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let due = orch.due(db, &read_through(saga_contracts::now_ms()), 100).await.unwrap();
    assert_eq!(due.len(), 1);
    // The reply lands between reading the deadline and firing it.
    feed(db, &stock_reserved(&reserve)).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let before = get_saga(db, "o1").await.unwrap().unwrap();
    let out = orch.fire(&mut Conn::Sqlx(&mut tx), "o1", before.deadline_at_ms.unwrap() - 1, &mut Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    assert!(out.is_empty(), "a deadline that has not passed for the saga's current wait fires nothing");
    assert_eq!(saga(db, "o1").await.1, Position::Step(1));
}

async fn a_deadline_of_a_saga_that_awaits_nothing_is_cleared_and_logged(test_db: TestDb) {
    let (db, _reserve) = started(&test_db).await;
    // A saga that awaits nothing yet has a deadline (a row mended by hand, say).
    sqlx::query("UPDATE sagas SET status = 'STUCK' WHERE saga_id = 'o1'").execute(db.pool()).await.unwrap();
    assert!(fire_due(db, &fast(5)).await.is_empty(), "nothing is awaited, so nothing is timed out");
    let saga = get_saga(db, "o1").await.unwrap().unwrap();
    assert_eq!((saga.state.status, saga.deadline_at_ms), (Status::Stuck, None), "the deadline is cleared, the saga left as it was");
    let log = saga_log(db, "o1").await.unwrap();
    let last = log.last().unwrap();
    assert_eq!((last.event.as_str(), last.cause_message_type.as_deref()), ("deadline-cleared", Some("deadline")));
    assert_eq!(log.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=saga.version).collect::<Vec<_>>(), "the log's seqs run to the saga's version");
    assert!(orch_due(db).await.is_empty(), "a cleared deadline is not due again");
}

async fn orch_due(db: &Db) -> Vec<String> {
    let due = fast(5).due(db, &read_through(saga_contracts::now_ms() + 60_000), 100).await.unwrap();
    due.into_iter().map(|d| d.id).collect()
}

async fn a_deadline_waits_until_its_partition_was_read_past_it(test_db: TestDb) {
    let (db, _reserve) = started(&test_db).await;
    let orch = &fast(5);
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let now = saga_contracts::now_ms();
    let saga = get_saga(db, "o1").await.unwrap().unwrap();
    let (deadline, partition) = (saga.deadline_at_ms.unwrap(), saga.kafka_partition);
    assert_eq!(partition, Some(0), "the saga keeps the partition of the record that started it");
    let due = |cutoffs: Cutoffs| async move { orch.due(db, &cutoffs, 100).await.unwrap().into_iter().map(|d| d.id).collect::<Vec<_>>() };
    // Replies written before the deadline may still be unread: it waits.
    assert!(due(Cutoffs { by_partition: vec![(0, deadline - 1)], floor: deadline - 1 }).await.is_empty());
    // Another instance owns partition 0: not this one's to fire, however far it read its own.
    assert!(due(Cutoffs { by_partition: vec![(1, now)], floor: now }).await.is_empty());
    // Partition 0 read past the deadline, even while another lags behind.
    assert_eq!(due(Cutoffs { by_partition: vec![(0, deadline), (1, deadline - 5_000)], floor: deadline - 5_000 }).await, vec!["o1"]);
    // Many partitions (the statement is cut in chunks): the saga's, in a later chunk, decides.
    sqlx::query("UPDATE sagas SET kafka_partition = 230").execute(db.pool()).await.unwrap();
    let many = |at_230: i64| Cutoffs { by_partition: (0..250).map(|p| (p, if p == 230 { at_230 } else { now })).collect(), floor: deadline - 1 };
    assert_eq!(due(many(deadline)).await, vec!["o1"]);
    assert!(due(many(deadline - 1)).await.is_empty());
    // A saga started before the partition was kept waits for every partition this instance owns.
    sqlx::query("UPDATE sagas SET kafka_partition = NULL").execute(db.pool()).await.unwrap();
    assert!(due(Cutoffs { by_partition: vec![(0, now), (1, deadline - 1)], floor: deadline - 1 }).await.is_empty());
    assert_eq!(due(Cutoffs { by_partition: vec![(0, now), (1, deadline)], floor: deadline }).await, vec!["o1"]);
}

async fn a_compensation_unconfirmed_after_its_attempts_leaves_the_saga_stuck_until_retried(test_db: TestDb) {
    let (db, reserve) = started(&test_db).await;
    let orch = fast(2);
    let feed_fast = |m: Message| saga_sandbox::apply(db, &orch, m);
    let authorize = feed_fast(stock_reserved(&reserve)).await.unwrap().unwrap().remove(0);
    feed_fast(payment_declined(&authorize, "card declined")).await.unwrap().unwrap();
    assert_eq!(ids(&fire_due(db, &orch).await), vec!["o1:reserve_stock:undo:2"]);
    assert!(fire_due(db, &orch).await.is_empty());
    let stuck = get_saga(db, "o1").await.unwrap().unwrap();
    assert_eq!(stuck.state.status, Status::Stuck);
    assert!(stuck.state.blocked.as_deref().unwrap().contains("gave up after 2 attempts"), "{:?}", stuck.state.blocked);
    assert!(stuck.deadline_at_ms.is_none());
    assert!(count_by_status(db).await.unwrap().contains(&("STUCK".to_string(), 1)));
    // An operator retries: one more attempt, with its own key, on a fresh deadline.
    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let done = control::retry(&orch, &mut Conn::Sqlx(&mut tx), "o1", "test", &mut Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids(&done.commands), vec!["o1:reserve_stock:undo:3"]);
    assert_eq!(done.before.state.status, Status::Stuck);
    let s = get_saga(db, "o1").await.unwrap().unwrap();
    assert_eq!((s.state.status, s.state.blocked.clone()), (Status::Compensating, None));
    assert!(s.deadline_at_ms.is_some());
    assert_eq!(saga_log(db, "o1").await.unwrap().last().unwrap().cause_message_type.as_deref(), Some("operator"));
}

fn dead_letter(key: &str, offset: i64) -> DeadLetterSeen {
    DeadLetterSeen {
        topic: "saga.inventory.commands.dlt".into(),
        partition: 2,
        offset,
        key: Some(key.into()),
        original_topic: Some("saga.inventory.commands".into()),
        class: Some("handler-failed".into()),
        message: Some("sku table is corrupt".into()),
        message_id: Some(format!("{key}:reserve_stock:do:1")),
        record: DeadLetterRecord {
            dlt_topic: "saga.inventory.commands.dlt".into(),
            partition: 2,
            offset,
            key: Some(key.as_bytes().to_vec()),
            value: Some(b"a body".to_vec()),
            headers: vec![
                ("message_id".into(), Some(format!("{key}:reserve_stock:do:1").into_bytes())),
                ("saga.dlt.original.topic".into(), Some(b"saga.inventory.commands".to_vec())),
                ("saga.dlt.error.class".into(), Some(b"handler-failed".to_vec())),
            ],
            purged: false,
        },
    }
}

async fn on_dead_letter(db: &Db, letter: &DeadLetterSeen) {
    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    Orchestrator::default().on_dead_letter(&mut Conn::Sqlx(&mut tx), letter, &mut Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
}

async fn a_dead_letter_parks_its_saga_and_a_later_reply_resumes_it(test_db: TestDb) {
    let (db, reserve) = started(&test_db).await;
    on_dead_letter(db, &dead_letter("o1", 7)).await;
    let parked = get_saga(db, "o1").await.unwrap().unwrap();
    assert_eq!(parked.state.status, Status::Parked);
    let why = parked.state.blocked.clone().unwrap();
    assert!(why.contains("saga.inventory.commands.dlt/2/7") && why.contains("handler-failed"), "{why}");
    assert!(parked.deadline_at_ms.is_none(), "a parked saga does not time out into compensation");
    assert!(fire_due(db, &fast(5)).await.is_empty());
    let last = saga_log(db, "o1").await.unwrap().pop().unwrap();
    assert_eq!((last.event.as_str(), last.cause_message_id.as_deref()), ("parked", Some("saga.inventory.commands.dlt/2/7")));
    // Redriven, the command is applied after all; its reply resumes the saga.
    feed(db, &stock_reserved(&reserve)).await;
    assert_eq!(saga(db, "o1").await.0, Status::Running);
    // A dead letter of no saga is kept as a stray.
    on_dead_letter(db, &dead_letter("nobody", 8)).await;
    assert_eq!(strays(db, "nobody").await.len(), 1);
}

async fn abort_sends_the_planned_compensations_and_refuses_what_it_cannot_do(test_db: TestDb) {
    let (db, reserve) = started(&test_db).await;
    let orch = Orchestrator::default();
    feed(db, &stock_reserved(&reserve)).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let plan: Vec<String> = control::abort_plan(&orch, &mut Conn::Sqlx(&mut conn), "o1").await.unwrap().into_iter().map(|(_, key)| key).collect();
    assert_eq!(plan, vec!["o1:authorize_payment:undo:1", "o1:reserve_stock:undo:1", "o1:finalize:finalize:1"]);
    assert!(matches!(control::abort(&orch, &mut Conn::Sqlx(&mut conn), "ghost", "x", "test", &mut Vec::new()).await, Err(OperatorError::UnknownSaga(_))));
    let mut tx = conn.begin().await.unwrap();
    let done = control::abort(&orch, &mut Conn::Sqlx(&mut tx), "o1", "customer called", "test", &mut Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(ids(&done.commands), plan[..1].to_vec(), "the first planned command goes out now, the rest as each is confirmed");
    let s = get_saga(db, "o1").await.unwrap().unwrap();
    assert_eq!(s.state.failure.as_deref(), Some("aborted by an operator: customer called"));
    let again = control::abort(&orch, &mut Conn::Sqlx(&mut conn), "o1", "again", "test", &mut Vec::new()).await.unwrap_err();
    assert!(again.to_string().contains("already compensating"), "{again}");
}

async fn redrive(db: &Db, reference: &str, who: Option<&str>) -> Result<control::RedrivePlan, OperatorError> {
    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let plan = control::redrive(&Orchestrator::default(), &mut Conn::Sqlx(&mut tx), "o1", reference, who).await;
    tx.commit().await.unwrap();
    plan
}

async fn a_kept_dead_letter_of_a_parked_saga_is_redriven_once_by_the_dlt_rules(test_db: TestDb) {
    let (db, _) = started(&test_db).await;
    on_dead_letter(db, &dead_letter("o1", 7)).await;
    on_dead_letter(db, &dead_letter("o1", 7)).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let kept = saga_orchestrator::store::dead_letters(&mut Conn::Sqlx(&mut conn), "o1").await.unwrap();
    drop(conn);
    assert_eq!(kept.len(), 1, "a dead letter seen twice is kept once");
    assert_eq!(kept[0].record, dead_letter("o1", 7).record, "kept whole");

    // A dry run (no asker) changes nothing; the plan is sagactl dlt redrive's.
    let plan = redrive(db, "saga.inventory.commands.dlt/2/7", None).await.unwrap();
    assert_eq!((plan.record.topic.as_str(), plan.record.key.as_str(), plan.count), ("saga.inventory.commands", "o1", 1));
    assert_eq!(plan.record.headers, vec![("message_id".to_string(), "o1:reserve_stock:do:1".to_string()), ("saga.redrive.count".to_string(), "1".to_string())]);
    assert_eq!(plan.message_id, "o1:reserve_stock:do:1");
    assert_eq!(saga_log(db, "o1").await.unwrap().last().unwrap().event, "parked");

    let done = redrive(db, "saga.inventory.commands.dlt/2/7", Some("ops (test)")).await.unwrap();
    assert_eq!(done.record.payload, b"a body".to_vec());
    let last = saga_log(db, "o1").await.unwrap().pop().unwrap();
    assert_eq!((last.event.as_str(), last.cause_message_id.as_deref()), ("operator-redrove", Some("ops (test)")));
    assert!(last.detail.as_deref().is_some_and(|d| d.contains("redriven to saga.inventory.commands (redrive 1)")), "{last:?}");
    let again = redrive(db, "saga.inventory.commands.dlt/2/7", Some("ops (test)")).await.unwrap_err().to_string();
    assert!(again.contains("already redriven") && again.contains("ops (test)"), "{again}");
    let unknown = redrive(db, "saga.inventory.commands.dlt/2/8", None).await.unwrap_err().to_string();
    assert!(unknown.contains("no dead letter saga.inventory.commands.dlt/2/8"), "{unknown}");

    // One at the limit is refused; and once the saga ended, none is redriven.
    let mut at_limit = dead_letter("o1", 9);
    at_limit.record.headers.push(("saga.redrive.count".into(), Some(b"3".to_vec())));
    on_dead_letter(db, &at_limit).await;
    let limit = redrive(db, "saga.inventory.commands.dlt/2/9", None).await.unwrap_err().to_string();
    assert!(limit.contains("redriven 3 time(s) already, the limit is 3"), "{limit}");
    on_dead_letter(db, &dead_letter("o1", 10)).await;
    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let aborted = control::abort(&Orchestrator::default(), &mut Conn::Sqlx(&mut tx), "o1", "test", "test", &mut Vec::new()).await.unwrap();
    tx.commit().await.unwrap();
    drop(conn);
    let reject = feed(db, &stock_released(&aborted.commands[0])).await;
    feed(db, &order_rejected(&reject[0])).await;
    assert_eq!(saga(db, "o1").await.0, Status::Compensated);
    let late = redrive(db, "saga.inventory.commands.dlt/2/10", None).await.unwrap_err().to_string();
    assert!(late.contains("the saga is COMPENSATED, not PARKED"), "{late}");
}
