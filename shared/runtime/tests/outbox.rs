//! The inbox, the outbox and the relay, each scenario run on SQLite and on PostgreSQL.
//!
//! The relay publishes to librdkafka's in-process mock broker; messages are encoded through the
//! project's schema registry, started in-process on 127.0.0.1:0.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{Message as _, Offset, TopicPartitionList};
use saga_contracts::{Message, PaymentVoided, StockReleased, StockReservationFailed, StockReserved, TopicKind, Topics};
use saga_runtime::codec::Codec;
use saga_runtime::config::KafkaSettings;
use saga_runtime::consumer::header;
use saga_runtime::outbox::{backlog, outgoing, prune_inbox, record_all_in_inbox, record_in_inbox, write_all_to_outbox, write_to_outbox, InboxEntry, OutboxRow};
use saga_runtime::relay::{HandOff, Relay, RelayError};
use saga_sandbox::TestDb;
use saga_store::{Conn, Db};
use sqlx::Acquire;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

saga_sandbox::backend_tests!(
    the_inbox_takes_a_message_id_once,
    the_inbox_takes_a_message_id_once_within_a_transaction,
    a_rolled_back_transaction_leaves_no_inbox_or_outbox_row,
    backlog_counts_the_outbox,
    the_inbox_forgets_ids_past_the_retention_window,
    the_relay_publishes_in_id_order_and_deletes,
    the_relay_publishes_at_most_a_batch_per_burst,
    a_failed_publish_keeps_the_rows,
    handed_over_rows_are_published_and_deleted_by_the_next_transaction,
    a_rolled_back_transaction_leaves_published_rows_to_the_next,
    rows_of_an_earlier_run_go_out_before_this_runs,
    rows_of_a_live_instance_are_left_to_it,
    a_batch_goes_into_the_inbox_and_the_outbox_at_once_in_order,
);

// ---------------------------------------------------------------------------------------------
// Harness

async fn migrated(test_db: &TestDb) -> &Db {
    test_db.db.migrate(&saga_runtime::outbox::MIGRATIONS).await.expect("migrate inbox and outbox");
    &test_db.db
}

/// A database, a registry and a mock broker, for as long as the test runs.
struct Kit {
    test_db: TestDb,
    codec: Codec,
    topics: Topics,
    kafka: KafkaSettings,
    // Not Send: the test future owns it and never moves between threads (tokio::test blocks on it).
    cluster: MockCluster<'static, DefaultProducerContext>,
    _registry_db: TestDb,
    _registry_stop: oneshot::Sender<()>,
}

impl Kit {
    async fn start(test_db: TestDb) -> Kit {
        migrated(&test_db).await;
        let registry_db = TestDb::sqlite().await;
        let registry = saga_registry::Registry::build_with_db(registry_db.db.clone(), "127.0.0.1:0".parse().unwrap()).await.expect("build registry");
        let codec = Codec::new(&registry.url()).expect("registry client");
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(registry.run_until_stopped(async move {
            let _ = stopped.await;
        }));

        let cluster = MockCluster::new(1).expect("start mock broker");
        let topics = Topics::new(format!("t{}", uuid::Uuid::new_v4().simple()));
        for kind in [TopicKind::InventoryEvents, TopicKind::PaymentEvents] {
            cluster.create_topic(&topics.name(kind), 1, 1).expect("create topic");
        }
        let kafka = KafkaSettings {
            bootstrap_servers: cluster.bootstrap_servers(),
            group_id: format!("g{}", uuid::Uuid::new_v4().simple()),
            partitions: 1,
            replication_factor: 1,
            create_topics: false,
            fetch_wait_max_ms: 10,
            client: BTreeMap::new(),
            ..saga_runtime::ServiceSettings::defaults_for("outbox-test").kafka
        };
        Kit { test_db, codec, topics, kafka, cluster, _registry_db: registry_db, _registry_stop: stop }
    }

    fn db(&self) -> &Db {
        &self.test_db.db
    }

    fn relay(&self, batch_size: usize) -> Relay {
        Relay {
            db: self.db().clone(),
            producer: saga_runtime::kafka::producer(&self.kafka, "outbox-test").expect("producer"),
            handoff: HandOff::new(100),
            batch_size,
            poll_interval: Duration::from_millis(50),
            orphan_after: Duration::from_secs(10),
            service: "outbox-test",
            metrics: saga_runtime::Metrics::new("outbox-test"),
        }
    }

    /// Writes `messages` to the outbox in one committed transaction, as another program does.
    async fn write(&self, messages: &[Message], extra_headers: &[(String, String)]) {
        self.write_as(None, messages, extra_headers).await;
    }

    /// Writes `messages` to the outbox in one committed transaction, as `owner`; returns the rows.
    async fn write_as(&self, owner: Option<&str>, messages: &[Message], extra_headers: &[(String, String)]) -> Vec<OutboxRow> {
        let mut conn = self.db().pool().acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let mut rows = Vec::new();
        for m in messages {
            rows.push(write_to_outbox(&mut Conn::Sqlx(&mut tx), &self.codec, &self.topics, m, extra_headers, owner).await.expect("write to outbox"));
        }
        tx.commit().await.unwrap();
        rows
    }

    /// Runs a writer's transaction that deletes what the relay has published; returns how many.
    async fn delete_published(&self, handoff: &HandOff, commit: bool) -> usize {
        let mut conn = self.db().pool().acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let deleting = handoff.delete_published(&mut Conn::Sqlx(&mut tx)).await.expect("delete published rows");
        let n = deleting.len();
        if commit {
            tx.commit().await.unwrap();
            deleting.committed();
        } else {
            tx.rollback().await.unwrap();
        }
        n
    }

    /// Reads the first `n` records of a topic's only partition, then checks nothing follows.
    async fn read(&self, kind: TopicKind, n: usize) -> Vec<OwnedMessage> {
        let consumer: StreamConsumer = saga_runtime::kafka::consumer_config(&self.kafka, "outbox-test-reader").create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topics.name(kind), 0, Offset::Beginning).unwrap();
        consumer.assign(&tpl).expect("assign");
        let mut records = Vec::with_capacity(n);
        while records.len() < n {
            let next = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await;
            let record = next.unwrap_or_else(|_| panic!("only {} of {n} records arrived on {}", records.len(), self.topics.name(kind)));
            records.push(record.expect("consume").detach());
        }
        let extra = tokio::time::timeout(Duration::from_millis(1500), consumer.recv()).await;
        assert!(extra.is_err(), "more than {n} records on {}: {:?}", self.topics.name(kind), extra.map(|r| r.map(|m| m.detach())));
        records
    }

    async fn backlog(&self) -> i64 {
        backlog(self.db()).await.expect("read backlog").0
    }
}

use saga_sandbox::envelope;

/// Inventory events of assorted types, for orders o0, o1, …
fn inventory_events(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let order_id = format!("o{i}");
            let id = format!("{order_id}:reserve_stock:do:1/reply");
            match i % 3 {
                0 => StockReserved { envelope: envelope(&id, StockReserved::FULL_NAME, &order_id), order_id }.into(),
                1 => StockReservationFailed { envelope: envelope(&id, StockReservationFailed::FULL_NAME, &order_id), order_id, reason: "out of stock".into() }
                    .into(),
                _ => StockReleased { envelope: envelope(&id, StockReleased::FULL_NAME, &order_id), order_id, released: true }.into(),
            }
        })
        .collect()
}

/// Asserts that `records` are `messages`, in this order: key, headers and the decoded value.
async fn assert_published(kit: &Kit, kind: TopicKind, records: &[OwnedMessage], messages: &[Message]) {
    assert_eq!(records.len(), messages.len());
    for (record, message) in records.iter().zip(messages) {
        let id = &message.envelope().message_id;
        assert_eq!(record.key(), Some(message.order_id().as_bytes()), "{id}: keyed by order id");
        assert_eq!(header(record, "message_id").as_deref(), Some(id.as_str()));
        assert_eq!(header(record, "message_type").as_deref(), Some(message.full_name()));
        let decoded = kit.codec.decode(kind, record.payload()).await.expect("decode what the relay published");
        assert_eq!(&decoded, message, "{id}: the payload round-trips");
    }
}

fn ids(messages: &[Message]) -> Vec<String> {
    messages.iter().map(|m| m.envelope().message_id.clone()).collect()
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn the_inbox_takes_a_message_id_once(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let [first, other] = [inventory_events(1).remove(0), inventory_events(2).remove(1)];

    for (message, expected) in [(&first, true), (&first, false), (&other, true), (&first, false)] {
        let mut conn = db.pool().acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let fresh = record_in_inbox(&mut Conn::Sqlx(&mut tx), message, "saga.inventory.events", 3, 42).await.expect("record in inbox");
        tx.commit().await.unwrap();
        assert_eq!(fresh, expected, "{}", message.envelope().message_id);
    }

    let rows: Vec<(String, String, String, i32, i64)> =
        sqlx::query_as("SELECT message_id, message_type, topic, kafka_partition, kafka_offset FROM inbox ORDER BY message_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            (first.envelope().message_id.clone(), first.full_name().into(), "saga.inventory.events".into(), 3, 42),
            (other.envelope().message_id.clone(), other.full_name().into(), "saga.inventory.events".into(), 3, 42),
        ]
    );
}

async fn the_inbox_takes_a_message_id_once_within_a_transaction(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let message = inventory_events(1).remove(0);

    let mut conn = db.pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    assert!(record_in_inbox(&mut Conn::Sqlx(&mut tx), &message, "t", 0, 1).await.unwrap());
    assert!(!record_in_inbox(&mut Conn::Sqlx(&mut tx), &message, "t", 0, 2).await.unwrap(), "a batch holding the message twice applies it once");
    tx.commit().await.unwrap();
    drop(conn);

    let offsets: Vec<i64> = sqlx::query_scalar("SELECT kafka_offset FROM inbox").fetch_all(db.pool()).await.unwrap();
    assert_eq!(offsets, vec![1], "the first delivery is the one recorded");
}

async fn a_rolled_back_transaction_leaves_no_inbox_or_outbox_row(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(2);

    let mut conn = kit.db().pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    assert!(record_in_inbox(&mut Conn::Sqlx(&mut tx), &messages[0], "t", 0, 7).await.unwrap());
    write_to_outbox(&mut Conn::Sqlx(&mut tx), &kit.codec, &kit.topics, &messages[1], &[], None).await.unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(kit.backlog().await, 0);
    let mut tx = conn.begin().await.unwrap();
    assert!(record_in_inbox(&mut Conn::Sqlx(&mut tx), &messages[0], "t", 0, 7).await.unwrap(), "the rolled-back delivery did not count");
    tx.commit().await.unwrap();
    drop(conn);
    assert_eq!(kit.relay(10).publish_burst().await.expect("publish"), 0, "nothing to publish");
}

async fn backlog_counts_the_outbox(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    assert_eq!(backlog(kit.db()).await.unwrap(), (0, 0), "an empty outbox has no age");

    let messages = inventory_events(5);
    kit.write(&messages[..2], &[]).await;
    assert_eq!(kit.backlog().await, 2);
    kit.write(&messages[2..], &[]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (count, oldest_ms) = backlog(kit.db()).await.unwrap();
    assert_eq!(count, 5);
    assert!((20..60_000).contains(&oldest_ms), "the oldest row's age in ms: {oldest_ms}");

    let rows: Vec<(String, String, String, String)> =
        sqlx::query_as("SELECT message_id, message_type, topic, msg_key FROM outbox ORDER BY id").fetch_all(kit.db().pool()).await.unwrap();
    let topic = kit.topics.name(TopicKind::InventoryEvents);
    let expected: Vec<_> =
        messages.iter().map(|m| (m.envelope().message_id.clone(), m.full_name().to_string(), topic.clone(), m.order_id().to_string())).collect();
    assert_eq!(rows, expected);
}

async fn the_relay_publishes_in_id_order_and_deletes(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let inventory = inventory_events(6);
    let voided: Message = PaymentVoided { envelope: envelope("o9:void/reply", PaymentVoided::FULL_NAME, "o9"), order_id: "o9".into(), voided: false }.into();
    // Three transactions, interleaving two topics; extra headers travel with the record.
    kit.write(&inventory[..3], &[]).await;
    kit.write(std::slice::from_ref(&voided), &[("traceparent".into(), "00-abc-def-01".into())]).await;
    kit.write(&inventory[3..], &[]).await;
    assert_eq!(kit.backlog().await, 7);

    let relay = kit.relay(100);
    assert_eq!(relay.publish_burst().await.expect("publish"), 7);

    assert_eq!(kit.backlog().await, 0, "published rows are deleted");
    assert_eq!(relay.publish_burst().await.expect("publish again"), 0, "nothing is published twice");
    let records = kit.read(TopicKind::InventoryEvents, 6).await;
    let published: Vec<String> = records.iter().filter_map(|r| header(r, "message_id")).collect();
    assert_eq!(published, ids(&inventory), "records follow the outbox ids");
    assert_published(&kit, TopicKind::InventoryEvents, &records, &inventory).await;
    let records = kit.read(TopicKind::PaymentEvents, 1).await;
    assert_published(&kit, TopicKind::PaymentEvents, &records, std::slice::from_ref(&voided)).await;
    assert_eq!(header(&records[0], "traceparent").as_deref(), Some("00-abc-def-01"));
}

async fn the_relay_publishes_at_most_a_batch_per_burst(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(5);
    kit.write(&messages, &[]).await;
    let relay = kit.relay(2);

    let mut bursts = Vec::new();
    loop {
        let n = relay.publish_burst().await.expect("publish");
        bursts.push((n, kit.backlog().await));
        if n == 0 {
            break;
        }
    }

    assert_eq!(bursts, vec![(2, 3), (2, 1), (1, 0), (0, 0)], "(published, left) per burst");
    let records = kit.read(TopicKind::InventoryEvents, 5).await;
    assert_published(&kit, TopicKind::InventoryEvents, &records, &messages).await;
}

async fn a_failed_publish_keeps_the_rows(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(3);
    kit.write(&messages, &[]).await;
    let relay = kit.relay(10);
    // Every Produce request is refused until the errors are cleared; the records may travel in
    // one request or several.
    kit.cluster.request_errors(RDKafkaApiKey::Produce, &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 3]);
    let err = relay.publish_burst().await.expect_err("the broker refuses the records");
    assert!(matches!(&err, RelayError::Publish { key, .. } if key == "o0"), "the first failed row is named: {err}");
    assert_eq!(kit.backlog().await, 3, "no row is deleted before the broker acknowledges it");

    kit.cluster.clear_request_errors(RDKafkaApiKey::Produce);
    let mut published = 0;
    for _ in 0..10 {
        match relay.publish_burst().await {
            Ok(n) => {
                published += n;
                if kit.backlog().await == 0 {
                    break;
                }
            }
            Err(e) => eprintln!("retrying after: {e}"),
        }
    }
    assert_eq!((published, kit.backlog().await), (3, 0));
    let records = kit.read(TopicKind::InventoryEvents, 3).await;
    assert_published(&kit, TopicKind::InventoryEvents, &records, &messages).await;
}

async fn handed_over_rows_are_published_and_deleted_by_the_next_transaction(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(3);
    let relay = kit.relay(10);
    let stop = CancellationToken::new();
    let rows = kit.write_as(Some(relay.handoff.owner()), &messages, &[]).await;
    assert_eq!(relay.publish_burst().await.expect("scan"), 0, "a scan leaves this process's own rows to the hand-off");
    relay.handoff.push(rows, &stop).await;

    assert_eq!(relay.publish_handed_over().await.expect("publish"), 3);
    assert_eq!(kit.backlog().await, 3, "published rows wait for a transaction to delete them");
    let records = kit.read(TopicKind::InventoryEvents, 3).await;
    assert_published(&kit, TopicKind::InventoryEvents, &records, &messages).await;

    assert_eq!(kit.delete_published(&relay.handoff, true).await, 3);
    assert_eq!(kit.backlog().await, 0, "the writer's transaction deleted them");
    assert_eq!(kit.delete_published(&relay.handoff, true).await, 0, "nothing is deleted twice");
    assert_eq!(relay.publish_handed_over().await.expect("publish again"), 0, "nothing is published twice");
}

async fn a_rolled_back_transaction_leaves_published_rows_to_the_next(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(2);
    let relay = kit.relay(10);
    let rows = kit.write_as(Some(relay.handoff.owner()), &messages, &[]).await;
    relay.handoff.push(rows, &CancellationToken::new()).await;
    assert_eq!(relay.publish_handed_over().await.expect("publish"), 2);

    assert_eq!(kit.delete_published(&relay.handoff, false).await, 2);
    assert_eq!(kit.backlog().await, 2, "the rollback undid the delete");
    assert_eq!(kit.delete_published(&relay.handoff, true).await, 2, "the next transaction deletes them");
    assert_eq!(kit.backlog().await, 0);
    kit.read(TopicKind::InventoryEvents, 2).await;
}

async fn rows_of_an_earlier_run_go_out_before_this_runs(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    // The same keys in both runs: a key's records must stay in order across the restart.
    let earlier = inventory_events(3);
    let later: Vec<Message> = earlier
        .iter()
        .map(|e| {
            let order_id = e.order_id().to_string();
            let id = format!("{order_id}:release_stock:undo:1/reply");
            StockReleased { envelope: envelope(&id, StockReleased::FULL_NAME, &order_id), order_id, released: true }.into()
        })
        .collect();
    kit.write_as(Some("a-process-that-died"), &earlier, &[]).await;
    let relay = kit.relay(2);
    let handoff = relay.handoff.clone();
    let rows = kit.write_as(Some(handoff.owner()), &later, &[]).await;
    // Handed over before the relay starts: it must still publish the earlier run's rows first.
    handoff.push(rows, &CancellationToken::new()).await;
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));

    let records = kit.read(TopicKind::InventoryEvents, 6).await;
    let published: Vec<String> = records.iter().filter_map(|r| header(r, "message_id")).collect();
    let mut expected = ids(&earlier);
    expected.extend(ids(&later));
    assert_eq!(published, expected, "the earlier run's rows first, each in id order");
    stop.cancel();
    running.await.unwrap();
    assert_eq!(kit.backlog().await, 0, "a stopping relay deletes what it published");
}

async fn rows_of_a_live_instance_are_left_to_it(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let messages = inventory_events(2);
    kit.write_as(Some("another-instance"), &messages, &[]).await;
    let mut relay = kit.relay(10);
    assert_eq!(relay.publish_burst().await.expect("scan"), 0, "younger than orphan_after: its writer publishes them");
    relay.orphan_after = Duration::ZERO;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(relay.publish_burst().await.expect("scan"), 2, "past orphan_after: taken over");
    assert_eq!(kit.backlog().await, 0);
    kit.read(TopicKind::InventoryEvents, 2).await;
}

async fn the_inbox_forgets_ids_past_the_retention_window(test_db: TestDb) {
    let db = migrated(&test_db).await;
    let messages = inventory_events(3);
    let mut conn = db.pool().acquire().await.unwrap();
    for m in &messages {
        assert!(record_in_inbox(&mut Conn::Sqlx(&mut conn), m, "t", 0, 0).await.unwrap());
    }
    // Age the first row by a day.
    sqlx::query("UPDATE inbox SET received_at_ms = received_at_ms - 86400000 WHERE message_id = $1")
        .bind(&messages[0].envelope().message_id)
        .execute(&mut *conn)
        .await
        .unwrap();
    let cutoff = saga_contracts::now_ms() - 3_600_000;
    assert_eq!(prune_inbox(db, cutoff).await.unwrap(), 1, "only the row older than the window goes");
    assert_eq!(prune_inbox(db, cutoff).await.unwrap(), 0);
    // The forgotten id is accepted again; the remembered ones are still duplicates.
    assert!(record_in_inbox(&mut Conn::Sqlx(&mut conn), &messages[0], "t", 0, 0).await.unwrap());
    assert!(!record_in_inbox(&mut Conn::Sqlx(&mut conn), &messages[1], "t", 0, 0).await.unwrap());
}

/// What a consumer's batch does (PostgreSQL: a few statements for the whole batch, cut where the
/// text would pass about 12 KiB; SQLite: one prepared statement each): the inbox says which
/// entries are new, a repeat within the batch included; the outbox rows keep the batch's order,
/// bytes and headers.
async fn a_batch_goes_into_the_inbox_and_the_outbox_at_once_in_order(test_db: TestDb) {
    let kit = Kit::start(test_db).await;
    let mut conn = kit.db().pool().acquire().await.unwrap();
    let mut tx = conn.begin().await.unwrap();
    let messages = a_batch_into_inbox_and_outbox(&kit, &mut Conn::Sqlx(&mut tx)).await;
    tx.commit().await.unwrap();
    drop(conn);
    published_in_the_batch_order(&kit, &messages).await;
}

/// The same batch on a SQLite writer's own connection, the path every batch of the embedded
/// stack takes (the scenarios above run SQLite through sqlx).
#[tokio::test]
async fn a_batch_on_the_sqlite_writers_connection_goes_in_whole_and_in_order() {
    let kit = Kit::start(TestDb::sqlite().await).await;
    let mut raw = saga_store::writer::connect(kit.db().direct_sqlite_file().expect("a SQLite file")).expect("open the writer's connection");
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let messages = a_batch_into_inbox_and_outbox(&kit, &mut Conn::Sqlite(&mut raw)).await;
    raw.execute_batch("COMMIT").unwrap();
    drop(raw);
    published_in_the_batch_order(&kit, &messages).await;
}

/// Records 301 inbox entries (one held before, one repeated 295 entries later) and a batch of
/// three that repeats its first, then writes 120 outbox rows, all on `conn`, checking what each
/// call returns; returns the messages written.
async fn a_batch_into_inbox_and_outbox(kit: &Kit, conn: &mut Conn<'_>) -> Vec<Message> {
    let inbox_ids: Vec<String> = (0..300).map(|i| format!("order-{i:04}:reserve_stock:do:1/reply")).collect();
    fn entry(id: &str) -> InboxEntry<'_> {
        InboxEntry { message_id: id, message_type: StockReserved::FULL_NAME, topic: "t.inventory.events", kafka_partition: 3, kafka_offset: 41 }
    }
    assert_eq!(record_all_in_inbox(conn, &[entry(&inbox_ids[7])]).await.unwrap(), vec![true]);
    let mut batch: Vec<InboxEntry<'_>> = inbox_ids.iter().map(|id| entry(id)).collect();
    batch.push(entry(&inbox_ids[5]));
    let fresh = record_all_in_inbox(conn, &batch).await.unwrap();
    let expected: Vec<bool> = (0..301).map(|i| i != 7 && i != 300).collect();
    assert_eq!(fresh, expected, "new ids are new once; the earlier one and the repeat are not");
    // A repeat within one statement.
    let small = [entry("x-1"), entry("x-2"), entry("x-1")];
    assert_eq!(record_all_in_inbox(conn, &small).await.unwrap(), vec![true, true, false]);

    let messages = inventory_events(120);
    // Long trace headers, so the batch needs several statements on PostgreSQL.
    let trace = vec![("tracestate".to_string(), "vendor=".to_string() + &"x".repeat(300))];
    let mut all = Vec::new();
    for m in &messages {
        all.push(outgoing(&kit.codec, &kit.topics, m, &trace).await.unwrap());
    }
    let rows = write_all_to_outbox(conn, all, None).await.unwrap();
    assert_eq!(rows.len(), 120);
    assert!(rows.windows(2).all(|w| w[0].id < w[1].id), "ids ascend in the batch's order");
    messages
}

/// The relay publishes the batch's outbox rows in their order, whole.
async fn published_in_the_batch_order(kit: &Kit, messages: &[Message]) {
    let relay = kit.relay(1000);
    assert_eq!(relay.publish_burst().await.expect("publish"), 120);
    let records = kit.read(TopicKind::InventoryEvents, 120).await;
    let published: Vec<String> = records.iter().filter_map(|r| header(r, "message_id")).collect();
    assert_eq!(published, ids(messages), "published in the batch's order");
    assert_published(kit, TopicKind::InventoryEvents, &records, messages).await;
    assert!(records.iter().all(|r| header(r, "tracestate").is_some_and(|v| v.len() == 307)), "headers travel whole");
}

/// SQLite's outbox lost AUTOINCREMENT in migration 1003 (one WAL page less per commit): the rows
/// of a database written before it keep their ids and owners, and a row written after it comes
/// after them.
#[tokio::test]
async fn sqlite_outbox_rows_keep_their_ids_and_order_through_the_rowid_migration() {
    let test_db = TestDb::sqlite().await;
    let db = &test_db.db;
    let earlier = saga_runtime::outbox::MIGRATIONS.sqlite.migrations.iter().filter(|m| m.version < 1003).cloned().collect();
    let mut old = sqlx::migrate::Migrator { migrations: std::borrow::Cow::Owned(earlier), ..sqlx::migrate::Migrator::DEFAULT };
    old.set_ignore_missing(true);
    old.run(db.pool()).await.expect("migrate to 1002");
    let insert = "INSERT INTO outbox (id, message_id, message_type, topic, msg_key, payload, headers, created_at_ms, owner) \
                  VALUES ($1, $2, 'T', 'topic', 'k', x'00', '[]', 1, $3)";
    for (id, owner) in [(7_i64, Some("a")), (9, None)] {
        sqlx::query(insert).bind(id).bind(format!("m{id}")).bind(owner).execute(db.pool()).await.expect("an outbox row, before 1003");
    }

    migrated(&test_db).await;
    let schema: String = sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE name = 'outbox'").fetch_one(db.pool()).await.unwrap();
    assert!(!schema.contains("AUTOINCREMENT"), "{schema}");
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO outbox (message_id, message_type, topic, msg_key, payload, headers, created_at_ms) VALUES ('m10', 'T', 'topic', 'k', x'00', '[]', 2) RETURNING id",
    )
    .fetch_one(db.pool())
    .await
    .expect("an outbox row, after 1003");
    assert_eq!(id, 10, "a new row's id is above every row present");
    let rows: Vec<(i64, String, Option<String>)> = sqlx::query_as("SELECT id, message_id, owner FROM outbox ORDER BY id").fetch_all(db.pool()).await.unwrap();
    assert_eq!(rows, vec![(7, "m7".to_string(), Some("a".to_string())), (9, "m9".to_string(), None), (10, "m10".to_string(), None)]);
}
