//! `sagactl dlt` against librdkafka's in-process mock broker, with dead letters written by the
//! runtime's own [`DeadLetters`], so the headers are the ones services write.
//!
//! The library is driven directly, and the `sagactl` binary for what only it does: settings from
//! a file, clap's argument errors, exit codes, an unreachable broker.

use std::process::Output;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers as _, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{Message as _, Offset, Timestamp, TopicPartitionList};
use saga_cli::dlt::{Dlt, ListArgs, PurgeArgs, RedriveArgs, RedriveOutcome};
use saga_contracts::{TopicKind, Topics};
use saga_runtime::config::KafkaSettings;
use saga_runtime::dlt::{headers, DeadLetter, DeadLetters};
use saga_runtime::CancellationToken;

const PARTITIONS: i32 = 2;

/// A mock broker with the system's topics (two partitions each) under a fresh prefix, and the
/// runtime's dead-letter sender for group `saga-order`.
struct Kit {
    // Not Send: the test future owns it on the current-thread runtime.
    _cluster: MockCluster<'static, DefaultProducerContext>,
    prefix: String,
    topics: Topics,
    kafka: KafkaSettings,
    dead_letters: DeadLetters,
}

impl Kit {
    fn start() -> Kit {
        let cluster = MockCluster::new(1).expect("start mock broker");
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let topics = Topics::new(prefix.clone());
        for t in topics.all_with_dlts() {
            cluster.create_topic(&t, PARTITIONS, 1).expect("create topic");
        }
        let kafka = KafkaSettings {
            bootstrap_servers: cluster.bootstrap_servers(),
            fetch_wait_max_ms: 10,
            ..saga_runtime::ServiceSettings::defaults_for("dlt-test").kafka
        };
        let producer = saga_runtime::kafka::producer(&kafka, "dlt-test").expect("producer");
        Kit { _cluster: cluster, prefix, topics, kafka, dead_letters: DeadLetters { producer, group_id: "saga-order".into() } }
    }

    fn topic(&self, kind: TopicKind) -> String {
        self.topics.name(kind)
    }

    fn dlt_topic(&self, kind: TopicKind) -> String {
        Topics::dlt(&self.topic(kind))
    }

    fn dlt(&self) -> Dlt {
        Dlt::connect_with(&self.kafka, &self.prefix, Duration::from_secs(5)).expect("connect")
    }

    /// Dead-letters a record of `kind` (as if read at partition 1, `offset`; its value is
    /// [`value_of`] its key) through the runtime.
    async fn dead_letter(&self, kind: TopicKind, offset: i64, key: &str, extra: &[(&str, &str)], class: &'static str, why: &str) {
        let mut h = OwnedHeaders::new();
        for (k, v) in extra {
            h = h.insert(Header { key: k, value: Some(v.as_bytes()) });
        }
        let record = OwnedMessage::new(
            Some(value_of(key)),
            Some(key.as_bytes().to_vec()),
            self.topic(kind),
            Timestamp::CreateTime(1_700_000_000_000),
            1,
            offset,
            Some(h),
        );
        self.send(&DeadLetter::new(&record, class, why.into())).await;
    }

    async fn send(&self, letter: &DeadLetter) {
        assert!(self.dead_letters.send_until_acked(letter, &CancellationToken::new()).await, "dead letter not acknowledged");
    }

    /// Every record on `topic`, all partitions, checked against the high watermarks.
    async fn read_all(&self, topic: &str) -> Vec<OwnedMessage> {
        let consumer: StreamConsumer = saga_runtime::kafka::reader_config(&self.kafka, "dlt-test-reader", "dlt-test-reader").create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        let mut expected = 0;
        for p in 0..PARTITIONS {
            let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(5)).expect("watermarks");
            expected += high - low;
            tpl.add_partition_offset(topic, p, Offset::Beginning).unwrap();
        }
        consumer.assign(&tpl).expect("assign");
        let mut out = Vec::new();
        while (out.len() as i64) < expected {
            let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await.expect("records arrive").expect("consume");
            out.push(m.detach());
        }
        out
    }

    /// Where the dead letter with `key` is: (partition, offset) on its dead-letter topic.
    async fn locate(&self, kind: TopicKind, key: &str) -> (i32, i64) {
        let listing = self.dlt().list(&list(Some(&self.topic(kind)), true)).await.expect("list");
        let r = listing.records.iter().find(|r| r.key_text().as_deref() == Some(key)).unwrap_or_else(|| panic!("no dead letter with key {key}"));
        (r.partition, r.offset)
    }
}

/// A dead letter's value: not Avro, which is why it was dead-lettered.
fn value_of(key: &str) -> Vec<u8> {
    format!("\0value-{key}").into_bytes()
}

fn list(topic: Option<&str>, all: bool) -> ListArgs {
    ListArgs { topic: topic.map(str::to_string), all, json: false, limit: 100 }
}

fn header<'a>(m: &'a OwnedMessage, name: &str) -> Option<&'a str> {
    m.headers()?.iter().find(|h| h.key == name).and_then(|h| h.value).map(|v| std::str::from_utf8(v).unwrap())
}

fn header_names(m: &OwnedMessage) -> Vec<String> {
    m.headers().map(|h| h.iter().map(|h| h.key.to_string()).collect()).unwrap_or_default()
}

#[tokio::test]
async fn list_shows_each_dead_letter_with_its_origin_and_cause() {
    let kit = Kit::start();
    let before = saga_contracts::now_ms();
    kit.dead_letter(TopicKind::OrderCommands, 41, "o-1", &[("traceparent", "00-aa-bb-01")], "malformed-avro", "avro body ended early").await;
    kit.dead_letter(TopicKind::PaymentEvents, 7, "o-2", &[], "handler-failed", "no saga o-2").await;

    let listing = kit.dlt().list(&list(None, false)).await.expect("list");
    assert_eq!(listing.records.len(), 2, "{listing:?}");
    let o1 = listing.records.iter().find(|r| r.key_text().as_deref() == Some("o-1")).expect("o-1 listed").summary();
    assert_eq!(o1.dlt_topic, kit.dlt_topic(TopicKind::OrderCommands));
    assert_eq!((o1.original_topic.as_str(), o1.original_partition, o1.original_offset), (kit.topic(TopicKind::OrderCommands).as_str(), Some(1), Some(41)));
    assert_eq!((o1.error_class.as_deref(), o1.error_message.as_deref()), (Some("malformed-avro"), Some("avro body ended early")));
    assert_eq!(o1.consumer_group.as_deref(), Some("saga-order"));
    assert!(o1.failed_at_ms.is_some_and(|t| t >= before), "failed-at {:?} is when it was dead-lettered", o1.failed_at_ms);
    assert_eq!(o1.redrive_count, Some(0));
    assert_eq!(o1.headers.get("traceparent"), Some(&Some("00-aa-bb-01".to_string())));

    let text = listing.render_text();
    assert!(text.contains(&format!("key o-1  from {}/1@41  group saga-order", kit.topic(TopicKind::OrderCommands))), "{text}");
    assert!(text.contains("    handler-failed: no saga o-2\n") && text.ends_with("2 dead letter(s)\n"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&listing.render_json()).expect("json");
    assert_eq!(json.as_array().map(Vec::len), Some(2), "{json}");

    // One topic, by either name; and a limit.
    for name in [kit.topic(TopicKind::PaymentEvents), kit.dlt_topic(TopicKind::PaymentEvents)] {
        let one = kit.dlt().list(&list(Some(&name), false)).await.expect("list one topic");
        assert_eq!(one.records.iter().map(|r| r.key_text().unwrap()).collect::<Vec<_>>(), vec!["o-2"], "{name}");
    }
    let limited = kit.dlt().list(&ListArgs { limit: 1, ..list(None, false) }).await.expect("list");
    assert_eq!((limited.records.len(), limited.available), (1, 2));
    assert!(limited.render_text().contains("1 more not shown (--limit)"), "{}", limited.render_text());
}

#[tokio::test]
async fn a_redriven_record_lands_on_its_original_topic_and_counts_its_redrives() {
    let kit = Kit::start();
    let kind = TopicKind::InventoryCommands;
    kit.dead_letter(kind, 3, "o-7", &[("traceparent", "00-cc-dd-01"), ("saga.message.id", "m-7")], "handler-failed", "database said no").await;
    let (partition, offset) = kit.locate(kind, "o-7").await;

    let args = RedriveArgs { topic: Some(kit.dlt_topic(kind)), partition: Some(partition), offset: Some(offset), ..RedriveArgs::default() };
    let report = kit.dlt().redrive(&args).await.expect("redrive");
    assert!(report.all_ok(), "{}", report.render_text());
    let RedriveOutcome::Redriven { topic, count, .. } = &report.outcomes[0].1 else { panic!("{:?}", report.outcomes) };
    assert_eq!((topic.as_str(), *count), (kit.topic(kind).as_str(), 1));
    assert!(
        report.render_text().starts_with(&format!("redriven {}/{partition}@{offset} -> {}/", kit.dlt_topic(kind), kit.topic(kind))),
        "{}",
        report.render_text()
    );

    let landed = kit.read_all(&kit.topic(kind)).await;
    assert_eq!(landed.len(), 1);
    let r = &landed[0];
    assert_eq!((r.key(), r.payload()), (Some(&b"o-7"[..]), Some(value_of("o-7").as_slice())));
    assert_eq!(header_names(r), vec!["traceparent", "saga.message.id", headers::REDRIVE_COUNT]);
    assert_eq!((header(r, "traceparent"), header(r, "saga.message.id"), header(r, headers::REDRIVE_COUNT)), (Some("00-cc-dd-01"), Some("m-7"), Some("1")));

    // It fails again: the runtime dead-letters it with its count, and the next redrive is the 2nd.
    kit.send(&DeadLetter::new(r, "handler-failed", "database still says no".into())).await;
    let listing = kit.dlt().list(&list(Some(&kit.topic(kind)), false)).await.expect("list");
    let again = listing.records.iter().find(|d| d.offset != offset || d.partition != partition).expect("the second dead letter");
    assert_eq!(again.summary().redrive_count, Some(1));
    let args = RedriveArgs { topic: Some(kit.topic(kind)), partition: Some(again.partition), offset: Some(again.offset), ..RedriveArgs::default() };
    let report = kit.dlt().redrive(&args).await.expect("redrive");
    assert!(matches!(report.outcomes[0].1, RedriveOutcome::Redriven { count: 2, .. }), "{:?}", report.outcomes);
    let landed = kit.read_all(&kit.topic(kind)).await;
    assert_eq!(landed.iter().filter_map(|m| header(m, headers::REDRIVE_COUNT)).collect::<Vec<_>>(), vec!["1", "2"]);
    assert!(landed.iter().all(|m| header_names(m).iter().all(|h| !h.starts_with("saga.dlt."))), "no saga.dlt.* header on a redriven record");
}

#[tokio::test]
async fn a_record_at_its_redrive_limit_is_refused_and_the_others_go() {
    let kit = Kit::start();
    let kind = TopicKind::OrderEvents;
    kit.dead_letter(kind, 1, "o-loop", &[(headers::REDRIVE_COUNT, "3")], "handler-failed", "still broken").await;
    kit.dead_letter(kind, 2, "o-fine", &[], "handler-failed", "was broken").await;

    let report = kit.dlt().redrive(&RedriveArgs { topic: Some(kit.topic(kind)), ..RedriveArgs::default() }).await.expect("redrive");
    assert_eq!(report.refused(), 1, "{}", report.render_text());
    assert!(!report.all_ok());
    let text = report.render_text();
    assert!(text.contains("key o-loop: redriven 3 time(s) already, the limit is 3 (--max-redrives)"), "{text}");
    assert!(text.contains("summary: 1 redriven, 1 refused"), "{text}");
    let landed = kit.read_all(&kit.topic(kind)).await;
    assert_eq!(landed.iter().map(|m| m.key().unwrap()).collect::<Vec<_>>(), vec![&b"o-fine"[..]], "only the record under its limit went");

    // A higher limit lets it go once more.
    let args = RedriveArgs { topic: Some(kit.topic(kind)), key: Some("o-loop".into()), max_redrives: 4, ..RedriveArgs::default() };
    let report = kit.dlt().redrive(&args).await.expect("redrive");
    assert!(matches!(report.outcomes.as_slice(), [(_, RedriveOutcome::Redriven { count: 4, .. })]), "{:?}", report.outcomes);
}

#[tokio::test]
async fn a_dry_run_selects_but_produces_nothing() {
    let kit = Kit::start();
    let kind = TopicKind::PaymentCommands;
    kit.dead_letter(kind, 1, "o-a", &[], "handler-failed", "a").await;
    kit.dead_letter(kind, 2, "o-b", &[], "malformed-avro", "b").await;
    kit.dead_letter(TopicKind::OrderCommands, 3, "o-c", &[], "handler-failed", "c").await;

    let by_class = RedriveArgs { topic: Some(kit.topic(kind)), class: Some("handler-failed".into()), dry_run: true, ..RedriveArgs::default() };
    let report = kit.dlt().redrive(&by_class).await.expect("dry run");
    assert!(
        matches!(report.outcomes.as_slice(), [(r, RedriveOutcome::WouldRedrive { count: 1, .. })] if r.key_text().as_deref() == Some("o-a")),
        "{:?}",
        report.outcomes
    );
    assert!(report.render_text().contains("would redrive"), "{}", report.render_text());
    let everything = RedriveArgs { all: true, dry_run: true, ..RedriveArgs::default() };
    let report = kit.dlt().redrive(&everything).await.expect("dry run");
    assert_eq!(report.outcomes.len(), 3, "--all selects every dead letter of every topic");

    for k in [kind, TopicKind::OrderCommands] {
        assert!(kit.read_all(&kit.topic(k)).await.is_empty(), "a dry run produced to {}", kit.topic(k));
    }
}

#[tokio::test]
async fn purge_hides_records_from_list_and_redrive_and_all_shows_them() {
    let kit = Kit::start();
    let kind = TopicKind::InventoryEvents;
    // One key, so one partition with offsets 0, 1, 2.
    for (offset, why) in [(10, "first"), (11, "second"), (12, "third")] {
        kit.dead_letter(kind, offset, "o-p", &[], "handler-failed", why).await;
    }
    let (partition, _) = kit.locate(kind, "o-p").await;

    let purge = PurgeArgs { topic: Some(kit.topic(kind)), partition: None, before_offset: Some(1), all: false };
    let purged = kit.dlt().purge(&purge).expect("purge");
    let text = saga_cli::dlt::render_purge(&purged);
    assert!(text.contains(&format!("purged {}/{partition} offsets 0..1 (1 record(s)); 2 remain", kit.dlt_topic(kind))), "{text}");

    // A new connection: the mark is at the broker, not in this process.
    let listing = kit.dlt().list(&list(None, false)).await.expect("list");
    assert_eq!(listing.records.iter().map(|r| r.error_message().unwrap()).collect::<Vec<_>>(), vec!["second", "third"]);
    assert_eq!(listing.hidden_purged, 1);
    assert!(listing.render_text().contains("1 purged not shown (--all)"), "{}", listing.render_text());
    let report = kit.dlt().redrive(&RedriveArgs { topic: Some(kit.topic(kind)), dry_run: true, ..RedriveArgs::default() }).await.expect("dry run");
    assert_eq!(report.outcomes.len(), 2, "a purged record is not selected");

    let all = kit.dlt().list(&list(None, true)).await.expect("list --all");
    assert_eq!(all.records.iter().map(|r| (r.offset, r.purged)).collect::<Vec<_>>(), vec![(0, true), (1, false), (2, false)]);
    assert!(all.render_text().contains("[purged]"));

    kit.dlt().purge(&PurgeArgs { all: true, before_offset: None, ..purge.clone() }).expect("purge all");
    assert!(kit.dlt().list(&list(None, false)).await.expect("list").records.is_empty());
    // Marks never move back.
    let back = kit.dlt().purge(&PurgeArgs { before_offset: Some(0), ..purge }).expect("purge");
    assert!(back.iter().all(|p| p.to == p.from), "{back:?}");
    let all = kit.dlt().list(&list(None, true)).await.expect("list --all");
    assert_eq!(all.records.iter().filter(|r| r.purged).count(), 3);
}

#[tokio::test]
async fn errors_name_the_topic_the_partition_and_the_offset() {
    let kit = Kit::start();
    kit.dead_letter(TopicKind::OrderCommands, 1, "o-e", &[], "handler-failed", "e").await;
    let dlt = kit.dlt();

    let e = dlt.list(&list(Some("saga.nope"), false)).await.unwrap_err().to_string();
    assert!(e.contains("unknown topic saga.nope") && e.contains(&kit.topic(TopicKind::OrderCommands)), "{e}");

    let one = |partition, offset| RedriveArgs {
        topic: Some(kit.topic(TopicKind::OrderCommands)),
        partition: Some(partition),
        offset: Some(offset),
        ..RedriveArgs::default()
    };
    let (partition, _) = kit.locate(TopicKind::OrderCommands, "o-e").await;
    let e = dlt.redrive(&one(partition, 99)).await.unwrap_err().to_string();
    assert_eq!(e, format!("no record at {}/{partition}@99 (the partition holds offsets 0..1)", kit.dlt_topic(TopicKind::OrderCommands)));
    let e = dlt.redrive(&one(7, 0)).await.unwrap_err().to_string();
    assert!(e.contains("has no partition 7 (it has 2)"), "{e}");

    let elsewhere = Dlt::connect_with(&kit.kafka, "other", Duration::from_secs(5)).expect("connect");
    let e = elsewhere.list(&list(None, false)).await.unwrap_err().to_string();
    assert!(e.contains("no dead-letter topics with prefix \"other\"") && e.contains(&kit.kafka.bootstrap_servers), "{e}");
}

// ---------------------------------------------------------------------------------------------
// The binary

/// Runs `sagactl` without the caller's `SAGA_*` variables; prints the command and what it
/// printed (shown with `--nocapture`).
fn sagactl(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sagactl"));
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("SAGA_")) {
        cmd.env_remove(k);
    }
    let out = cmd.args(args).envs(env.iter().copied()).output().expect("run sagactl");
    let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    println!("$ {}sagactl {}\n{}{}[exit {:?}]\n", env.concat(), args.join(" "), text(&out.stdout), text(&out.stderr), out.status.code());
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn the_command_reads_the_settings_file_lists_redrives_and_exits_non_zero_on_a_refusal() {
    let kit = Kit::start();
    kit.dead_letter(TopicKind::OrderCommands, 5, "o-cli", &[], "unknown-schema-id", "schema id 99 is not registered").await;
    kit.dead_letter(TopicKind::OrderCommands, 6, "o-max", &[(headers::REDRIVE_COUNT, "3")], "handler-failed", "x").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sagactl.toml");
    std::fs::write(
        &config,
        format!("[kafka]\nbootstrap_servers = \"{}\"\nfetch_wait_max_ms = 10\n[topics]\nprefix = \"{}\"\n", kit.kafka.bootstrap_servers, kit.prefix),
    )
    .unwrap();
    let config = config.to_str().unwrap();

    let out = sagactl(&["dlt", "list", "--config", config, "--json"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let cli = json.as_array().unwrap().iter().find(|r| r["key"] == "o-cli").expect("o-cli listed");
    assert_eq!((cli["error_class"].as_str(), cli["original_offset"].as_i64()), (Some("unknown-schema-id"), Some(5)));

    let out = sagactl(&["dlt", "redrive", "--topic", &kit.topic(TopicKind::OrderCommands), "--key", "o-cli"], &[("SAGA_CONFIG", config)]);
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("-> {}/", kit.topic(TopicKind::OrderCommands))), "{}", text(&out.stdout));

    let out = sagactl(&["dlt", "redrive", "--all", "--dry-run"], &[("SAGA_CONFIG", config)]);
    assert_eq!(out.status.code(), Some(2), "a refusal is a failure: {}", text(&out.stdout));
    assert!(text(&out.stdout).contains("refused") && text(&out.stdout).contains("key o-max"), "{}", text(&out.stdout));

    let out = sagactl(&["dlt", "purge", "--topic", &kit.dlt_topic(TopicKind::OrderCommands), "--all"], &[("SAGA_CONFIG", config)]);
    assert!(out.status.success() && text(&out.stdout).contains("summary: 2 record(s) purged in 2 partition(s)"), "{}", text(&out.stdout));
    let out = sagactl(&["dlt", "list"], &[("SAGA_CONFIG", config)]);
    assert_eq!(text(&out.stdout), "0 dead letter(s); 2 purged not shown (--all)\n");
    let out = sagactl(&["dlt", "list", "--all"], &[("SAGA_CONFIG", config)]);
    assert_eq!(text(&out.stdout).matches("[purged]").count(), 2, "{}", text(&out.stdout));

    // --prefix overrides the file.
    let out = sagactl(&["dlt", "list", "--config", config, "--prefix", "other"], &[]);
    assert!(!out.status.success() && text(&out.stderr).contains("prefix \"other\""), "{}", text(&out.stderr));

    let landed = kit.read_all(&kit.topic(TopicKind::OrderCommands)).await;
    assert_eq!(landed.iter().map(|m| m.key().unwrap()).collect::<Vec<_>>(), vec![&b"o-cli"[..]]);
}

#[test]
fn an_unreachable_broker_is_named_within_seconds() {
    let started = Instant::now();
    let out = sagactl(&["dlt", "list", "--bootstrap-servers", "127.0.0.1:1", "--timeout-secs", "2"], &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("error: cannot reach the broker at 127.0.0.1:1"), "{stderr}");
    // Generous: this is about not hanging, not about speed.
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}

#[test]
fn a_bad_argument_names_itself() {
    let out = sagactl(&["dlt", "redrive", "--topic", "saga.order.commands", "--partition", "0", "--offset", "soon"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--offset"), "{}", text(&out.stderr));
    let out = sagactl(&["dlt", "purge", "--topic", "saga.order.commands"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--before-offset") && text(&out.stderr).contains("--all"), "{}", text(&out.stderr));
    let out = sagactl(&["dlt", "redrive"], &[]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("--topic") && text(&out.stderr).contains("--all"), "{}", text(&out.stderr));
}
