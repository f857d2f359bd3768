//! Reading the broker from outside: partitions, high watermarks, a group's committed offsets,
//! and records. Blocking (librdkafka's base consumer); call through `spawn_blocking`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message as _;
use saga_runtime::config::KafkaSettings;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A consumer in `group` that never commits anything.
pub fn consumer(kafka: &KafkaSettings, group: &str) -> anyhow::Result<BaseConsumer> {
    let mut settings = kafka.clone();
    settings.group_id = group.to_string();
    let mut config = saga_runtime::kafka::consumer_config(&settings, "chaos-inspect");
    config.set("enable.auto.commit", "false").set("statistics.interval.ms", "0");
    Ok(config.create()?)
}

/// A consumer in a group of its own, for reading.
pub fn reader(kafka: &KafkaSettings) -> anyhow::Result<BaseConsumer> {
    consumer(kafka, &format!("chaos-reader-{}", uuid::Uuid::new_v4().simple()))
}

/// The partitions of `topic`.
pub fn partitions(c: &BaseConsumer, topic: &str) -> anyhow::Result<Vec<i32>> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT).with_context(|| format!("metadata of {topic}"))?;
    let t = md.topics().first().ok_or_else(|| anyhow!("no metadata for {topic}"))?;
    if let Some(e) = t.error() {
        bail!("metadata of {topic}: {e:?}");
    }
    let mut ps: Vec<i32> = t.partitions().iter().map(|p| p.id()).collect();
    ps.sort_unstable();
    Ok(ps)
}

/// Per partition of `topic`: (low watermark, high watermark, offset committed by `group`, 0 when none).
pub fn offsets(kafka: &KafkaSettings, group: &str, topic: &str) -> anyhow::Result<BTreeMap<i32, (i64, i64, i64)>> {
    let c = consumer(kafka, group)?;
    let ps = partitions(&c, topic)?;
    let mut tpl = TopicPartitionList::new();
    for p in &ps {
        tpl.add_partition(topic, *p);
    }
    let committed = c.committed_offsets(tpl, TIMEOUT).with_context(|| format!("committed offsets of {group} on {topic}"))?;
    let mut out = BTreeMap::new();
    for p in ps {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT).with_context(|| format!("watermarks of {topic}/{p}"))?;
        let done = match committed.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => 0,
        };
        out.insert(p, (low, high, done));
    }
    Ok(out)
}

/// Records of `topic`/`partition` from offset `from` (inclusive) to `to` (exclusive), at most `max`.
pub fn read_range(c: &BaseConsumer, topic: &str, partition: i32, from: i64, to: i64, max: usize) -> anyhow::Result<Vec<OwnedMessage>> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(from))?;
    c.assign(&tpl)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while out.len() < max && Instant::now() < deadline {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) if m.topic() == topic && m.partition() == partition => {
                if m.offset() >= to {
                    break;
                }
                if m.offset() >= from {
                    out.push(m.detach());
                }
                if m.offset() + 1 >= to {
                    break;
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => eprintln!("chaos: reading {topic}/{partition}: {e}"),
            None => {}
        }
    }
    c.unassign()?;
    Ok(out)
}

/// Every record of `topic`, up to its high watermarks when called.
pub fn read_all(kafka: &KafkaSettings, topic: &str) -> anyhow::Result<Vec<OwnedMessage>> {
    let c = reader(kafka)?;
    let mut out = Vec::new();
    for p in partitions(&c, topic)? {
        let (low, high) = c.fetch_watermarks(topic, p, TIMEOUT)?;
        if high > low {
            let got = read_range(&c, topic, p, low, high, usize::MAX)?;
            if got.last().map(|m| m.offset() + 1) != Some(high) {
                bail!("read {} records of {topic}/{p}, which has offsets {low}..{high}", got.len());
            }
            out.extend(got);
        }
    }
    Ok(out)
}
