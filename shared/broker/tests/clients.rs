//! librdkafka clients against the broker: what the services do with it, end to end.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;
use rdkafka::{Offset, TopicPartitionList};
use saga_broker::{Broker, BrokerConfig, Code};

async fn broker() -> Broker {
    Broker::start(BrokerConfig { auto_create_partitions: None, ..BrokerConfig::default() }).await.expect("start broker")
}

fn producer(b: &Broker) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("producer")
}

fn consumer(b: &Broker, group: &str) -> StreamConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap_servers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "500")
        .create()
        .expect("consumer")
}

async fn send(p: &FutureProducer, topic: &str, key: &str, value: &str) -> (i32, i64) {
    let d = p.send(FutureRecord::to(topic).key(key).payload(value), Duration::from_secs(10)).await.map_err(|(e, _)| e).expect("delivered");
    (d.partition, d.offset)
}

async fn next(c: &StreamConsumer) -> (String, i32, i64) {
    let m = tokio::time::timeout(Duration::from_secs(20), c.stream().next()).await.expect("a record within 20 s").expect("stream open").expect("no error");
    (String::from_utf8(m.payload().unwrap().to_vec()).unwrap(), m.partition(), m.offset())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produced_records_are_consumed_in_order_per_partition_and_offsets_resume() {
    let b = broker().await;
    b.create_topic("orders", 3).unwrap();
    assert_eq!(b.create_topic("orders", 3), Err(Code::TopicAlreadyExists));
    let p = producer(&b);
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push((send(&p, "orders", &format!("k{}", i % 5), &format!("v{i}")).await, format!("v{i}")));
    }
    let c = consumer(&b, "g1");
    c.subscribe(&["orders"]).unwrap();
    let mut got = Vec::new();
    for _ in 0..20 {
        got.push(next(&c).await);
    }
    c.commit_consumer_state(CommitMode::Sync).unwrap();
    drop(c);
    // Offsets per partition are dense and in send order.
    for part in 0..3 {
        let offsets: Vec<i64> = sent.iter().filter(|((p, _), _)| *p == part).map(|((_, o), _)| *o).collect();
        assert_eq!(offsets, (0..offsets.len() as i64).collect::<Vec<_>>(), "partition {part}");
    }
    let c = consumer(&b, "g1");
    c.subscribe(&["orders"]).unwrap();
    for _ in 20..30 {
        got.push(next(&c).await);
    }
    let values: BTreeSet<String> = got.iter().map(|(v, _, _)| v.clone()).collect();
    assert_eq!(values.len(), 30, "every record once across the restart: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_fetch_returns_when_a_record_arrives_on_any_of_its_topics() {
    let b = broker().await;
    b.create_topic("t", 1).unwrap();
    b.create_topic("u", 1).unwrap();
    b.create_topic("elsewhere", 1).unwrap();
    let c = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap_servers())
        .set("group.id", "g")
        .set("auto.offset.reset", "earliest")
        // Far longer than the test's timeout: only the wake-up on produce can deliver in time.
        .set("fetch.wait.max.ms", "30000")
        .set("socket.timeout.ms", "60000")
        .create::<StreamConsumer>()
        .unwrap();
    // Both partitions assigned at offset 0, which needs no lookup, so every fetch names both from
    // the start. (As in Kafka, a fetch waits only for the partitions it names: one that became
    // fetchable while a fetch of the other waited would join the next fetch, after 30 s here.)
    let mut both = TopicPartitionList::new();
    both.add_partition_offset("t", 0, Offset::Offset(0)).unwrap();
    both.add_partition_offset("u", 0, Offset::Offset(0)).unwrap();
    c.assign(&both).unwrap();
    let p = producer(&b);
    send(&p, "t", "k", "first").await;
    assert_eq!(next(&c).await.0, "first");
    // The consumer is now parked in a 30 s fetch of both topics; a record on a topic it does not
    // read leaves it there, the next record on either of its own must end it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&p, "elsewhere", "k", "not for it").await;
    send(&p, "u", "k", "second").await;
    let got = tokio::time::timeout(Duration::from_secs(5), next(&c)).await.expect("delivered long before the fetch deadline");
    assert_eq!(got.0, "second");
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&p, "t", "k", "third").await;
    let got = tokio::time::timeout(Duration::from_secs(5), next(&c)).await.expect("delivered long before the fetch deadline");
    assert_eq!(got.0, "third");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_one_takes_over_when_the_other_leaves() {
    let b = broker().await;
    b.create_topic("t", 4).unwrap();
    let a = consumer(&b, "shared");
    a.subscribe(&["t"]).unwrap();
    let p = producer(&b);
    send(&p, "t", "x", "warm-up").await;
    next(&a).await;
    let c2 = consumer(&b, "shared");
    c2.subscribe(&["t"]).unwrap();
    // Both end up with a share of the four partitions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (na, nb) = (a.assignment().unwrap().count(), c2.assignment().unwrap().count());
        if na + nb == 4 && na > 0 && nb > 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no balanced assignment: {na} + {nb}");
        // Keep both polling so they take part in the rebalance.
        let _ = tokio::time::timeout(Duration::from_millis(100), a.stream().next()).await;
        let _ = tokio::time::timeout(Duration::from_millis(100), c2.stream().next()).await;
    }
    drop(c2);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while a.assignment().unwrap().count() != 4 {
        assert!(tokio::time::Instant::now() < deadline, "the remaining member did not take over every partition");
        let _ = tokio::time::timeout(Duration::from_millis(100), a.stream().next()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_client_creates_topics_and_unknown_topics_are_refused() {
    let b = broker().await;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", b.bootstrap_servers()).create().unwrap();
    let results = admin
        .create_topics(&[NewTopic::new("made", 6, TopicReplication::Fixed(1)), NewTopic::new("bad name!", 1, TopicReplication::Fixed(1))], &AdminOptions::new())
        .await
        .unwrap();
    assert!(results[0].is_ok(), "{results:?}");
    assert!(results[1].is_err(), "an invalid name is refused: {results:?}");
    let metadata = admin.inner().fetch_metadata(Some("made"), Duration::from_secs(5)).unwrap();
    assert_eq!(metadata.topics()[0].partitions().len(), 6);
    let p = ClientConfig::new().set("bootstrap.servers", b.bootstrap_servers()).set("message.timeout.ms", "2000").create::<FutureProducer>().unwrap();
    let result = p.send(FutureRecord::to("missing").key("k").payload("v"), Duration::from_secs(5)).await;
    assert!(result.is_err(), "with auto-creation off, a produce to an unknown topic fails");
}
