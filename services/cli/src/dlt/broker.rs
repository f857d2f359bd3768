//! The broker side of `sagactl dlt`: reading dead-letter partitions, the purge marks, producing
//! redriven records.
//!
//! The Kafka calls that block (metadata, watermarks, committed offsets, commit) run on the
//! calling task: this is a command-line tool doing one thing at a time, and each call has the
//! `--timeout-secs` deadline.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header as KafkaHeader, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use saga_contracts::{TopicKind, Topics};
use saga_runtime::config::KafkaSettings;
use saga_runtime::dlt::record::Refusal;
use saga_runtime::kafka;

use super::{
    operator_group, resolve_topic, ConnectArgs, DeadLetterRecord, DltError, ListArgs, Listing, PurgeArgs, PurgedPartition, Redrive, RedriveArgs,
    RedriveOutcome, RedriveReport,
};

const CLIENT_ID: &str = "sagactl-dlt";

/// A connection to the broker for the `dlt` commands.
pub struct Dlt {
    kafka: KafkaSettings,
    prefix: String,
    topics: Topics,
    group: String,
    /// Reads the partitions it assigns itself; commits the purge marks for `group`.
    consumer: StreamConsumer<Quiet>,
    /// Partition count of every topic the broker has, from one metadata request at connect:
    /// which dead-letter topics exist, and whether an original topic is there to redrive to.
    partitions: BTreeMap<String, i32>,
    timeout: Duration,
}

impl Dlt {
    /// Loads the settings `args` name and connects; an unreachable broker is an error naming the
    /// bootstrap servers after `--timeout-secs`.
    pub fn connect(args: &ConnectArgs) -> Result<Dlt, DltError> {
        let settings = args.settings()?;
        Dlt::connect_with(&settings.kafka, &settings.topics.prefix, args.timeout())
    }

    /// Connects with settings already loaded.
    pub fn connect_with(kafka: &KafkaSettings, prefix: &str, timeout: Duration) -> Result<Dlt, DltError> {
        let group = operator_group(prefix);
        let consumer: StreamConsumer<Quiet> = kafka::reader_config(kafka, CLIENT_ID, &group)
            .create_with_context(Quiet)
            .map_err(|source| DltError::Kafka { what: "creating the kafka client".into(), source })?;
        let metadata = consumer.fetch_metadata(None, timeout).map_err(|e| DltError::Unreachable {
            bootstrap: kafka.bootstrap_servers.clone(),
            timeout_secs: timeout.as_secs(),
            reason: e.to_string(),
        })?;
        let partitions = metadata.topics().iter().filter(|t| t.error().is_none()).map(|t| (t.name().to_string(), t.partitions().len() as i32)).collect();
        Ok(Dlt { kafka: kafka.clone(), prefix: prefix.into(), topics: Topics::new(prefix), group, consumer, partitions, timeout })
    }

    /// The consumer group holding the purge marks.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The records in the dead-letter topics, from the purge marks (or, with `--all`, from the
    /// beginning), by topic, partition and offset.
    pub async fn list(&self, args: &ListArgs) -> Result<Listing, DltError> {
        self.scan(args.topic.as_deref(), args.all, args.limit).await
    }

    /// Sends the selected records back to their original topics (or, with `--dry-run`, says it
    /// would). A refused record does not stop the others; a failed produce stops the run.
    pub async fn redrive(&self, args: &RedriveArgs) -> Result<RedriveReport, DltError> {
        let selected = match (args.partition, args.offset) {
            (Some(partition), Some(offset)) => vec![self.one(args.topic.as_deref().unwrap_or_default(), partition, offset).await?],
            _ => {
                let listing = self.scan(args.topic.as_deref(), false, u64::MAX).await?;
                listing
                    .records
                    .into_iter()
                    .filter(|r| args.class.as_deref().is_none_or(|c| r.error_class() == Some(c)))
                    .filter(|r| args.key.as_deref().is_none_or(|k| r.key_text().as_deref() == Some(k)))
                    .collect()
            }
        };
        let producer = match args.dry_run {
            true => None,
            false => Some(kafka::producer(&self.kafka, CLIENT_ID).map_err(|source| DltError::Kafka { what: "creating the producer".into(), source })?),
        };
        let mut report = RedriveReport::default();
        let mut rest = selected.into_iter();
        while let Some(record) = rest.next() {
            let outcome = match record.redrive(args.max_redrives) {
                Err(why @ Refusal::AtLimit { .. }) => RedriveOutcome::Refused(format!("{why} (--max-redrives)")),
                Err(why) => RedriveOutcome::Refused(why.to_string()),
                Ok(plan) if !self.partitions.contains_key(&plan.topic) => {
                    RedriveOutcome::Refused(format!("original topic {} does not exist on {}", plan.topic, self.kafka.bootstrap_servers))
                }
                Ok(plan) => match &producer {
                    None => RedriveOutcome::WouldRedrive { topic: plan.topic, count: plan.count },
                    Some(producer) => match send(producer, &plan).await {
                        Ok((partition, offset)) => RedriveOutcome::Redriven { topic: plan.topic, partition, offset, count: plan.count },
                        Err(e) => RedriveOutcome::Failed(format!("producing to {} failed: {e}", plan.topic)),
                    },
                },
            };
            let failed = matches!(outcome, RedriveOutcome::Failed(_));
            report.outcomes.push((record, outcome));
            if failed {
                report.not_attempted = rest.count();
                break;
            }
        }
        Ok(report)
    }

    /// Moves the purge marks forward: to `--before-offset` (capped at the end of the partition)
    /// or, with `--all`, to the end. A mark never moves back.
    pub fn purge(&self, args: &PurgeArgs) -> Result<Vec<PurgedPartition>, DltError> {
        let mut purged = Vec::new();
        let mut commit = TopicPartitionList::new();
        for dlt in self.dlt_topics(args.topic.as_deref())? {
            let count = self.partitions[&dlt];
            let selected: Vec<i32> = match args.partition {
                Some(p) if (0..count).contains(&p) => vec![p],
                Some(p) => return Err(DltError::NoPartition { topic: dlt, partition: p, partitions: count }),
                None => (0..count).collect(),
            };
            let marks = self.marks(&dlt, count)?;
            for p in selected {
                let (low, high) = self.bounds(&dlt, p)?;
                let from = marks[p as usize].clamp(low, high);
                let to = args.before_offset.map_or(high, |o| o.min(high)).max(from);
                if to > 0 {
                    // Committing an unchanged mark again restarts the broker's offset retention.
                    commit
                        .add_partition_offset(&dlt, p, Offset::Offset(to))
                        .map_err(|source| DltError::Kafka { what: format!("marking {dlt}/{p}"), source })?;
                }
                purged.push(PurgedPartition { topic: dlt.clone(), partition: p, from, to, remaining: high - to });
            }
        }
        if commit.count() > 0 {
            self.consumer
                .commit(&commit, CommitMode::Sync)
                .map_err(|source| DltError::Kafka { what: format!("committing the purge marks of group {}", self.group), source })?;
        }
        Ok(purged)
    }

    /// The dead-letter topics `topic` selects: one (which must exist), or those of the six that
    /// exist.
    fn dlt_topics(&self, topic: Option<&str>) -> Result<Vec<String>, DltError> {
        if let Some(name) = topic {
            let dlt = resolve_topic(&self.topics, name)?;
            if !self.partitions.contains_key(&dlt) {
                return Err(DltError::MissingTopic { topic: dlt, bootstrap: self.kafka.bootstrap_servers.clone() });
            }
            return Ok(vec![dlt]);
        }
        let existing: Vec<String> = TopicKind::ALL.iter().map(|k| Topics::dlt(&self.topics.name(*k))).filter(|t| self.partitions.contains_key(t)).collect();
        if existing.is_empty() {
            return Err(DltError::NoDeadLetterTopics { prefix: self.prefix.clone(), bootstrap: self.kafka.bootstrap_servers.clone() });
        }
        Ok(existing)
    }

    /// The one record at `offset`, purged or not.
    async fn one(&self, topic: &str, partition: i32, offset: i64) -> Result<DeadLetterRecord, DltError> {
        let dlt = self.dlt_topics(Some(topic))?.remove(0);
        let count = self.partitions[&dlt];
        if !(0..count).contains(&partition) {
            return Err(DltError::NoPartition { topic: dlt, partition, partitions: count });
        }
        let (low, high) = self.bounds(&dlt, partition)?;
        let not_found = || DltError::NotFound { topic: dlt.clone(), partition, offset, low, high };
        if offset < low || offset >= high {
            return Err(not_found());
        }
        let mark = self.marks(&dlt, count)?[partition as usize];
        match self.read(&dlt, partition, offset, high, 1).await?.first() {
            Some(m) if m.offset() == offset => Ok(DeadLetterRecord::from_message(m, offset < mark)),
            _ => Err(not_found()),
        }
    }

    /// Reads the records from each selected partition's start (its purge mark, or its beginning
    /// with `include_purged`) to its end, at most `limit` of them.
    async fn scan(&self, topic: Option<&str>, include_purged: bool, limit: u64) -> Result<Listing, DltError> {
        let mut listing = Listing { records: Vec::new(), available: 0, hidden_purged: 0 };
        for dlt in self.dlt_topics(topic)? {
            let count = self.partitions[&dlt];
            let marks = self.marks(&dlt, count)?;
            for p in 0..count {
                let (low, high) = self.bounds(&dlt, p)?;
                let mark = marks[p as usize].clamp(low, high);
                let start = if include_purged { low } else { mark };
                listing.available += (high - start) as u64;
                if !include_purged {
                    listing.hidden_purged += (mark - low) as u64;
                }
                let room = limit.saturating_sub(listing.records.len() as u64);
                if room > 0 && start < high {
                    let read = self.read(&dlt, p, start, high, room).await?;
                    listing.records.extend(read.iter().map(|m| DeadLetterRecord::from_message(m, m.offset() < mark)));
                }
            }
        }
        Ok(listing)
    }

    /// First and one-past-last offset of a partition.
    fn bounds(&self, topic: &str, partition: i32) -> Result<(i64, i64), DltError> {
        self.consumer
            .fetch_watermarks(topic, partition, self.timeout)
            .map_err(|source| DltError::Kafka { what: format!("reading the offsets of {topic}/{partition}"), source })
    }

    /// The purge mark of each partition of `topic`: 0 where there is none.
    fn marks(&self, topic: &str, partitions: i32) -> Result<Vec<i64>, DltError> {
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let committed = self
            .consumer
            .committed_offsets(tpl, self.timeout)
            .map_err(|source| DltError::Kafka { what: format!("reading the purge marks of {topic} (group {})", self.group), source })?;
        Ok((0..partitions)
            .map(|p| match committed.find_partition(topic, p).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => 0,
            })
            .collect())
    }

    /// Records `from..to` of one partition, at most `limit`.
    async fn read(&self, topic: &str, partition: i32, from: i64, to: i64, limit: u64) -> Result<Vec<OwnedMessage>, DltError> {
        let kafka_error = |source| DltError::Kafka { what: format!("reading {topic}/{partition}"), source };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(from)).map_err(kafka_error)?;
        self.consumer.assign(&tpl).map_err(kafka_error)?;
        let mut records = Vec::new();
        let mut next = from;
        while next < to && (records.len() as u64) < limit {
            let m = match tokio::time::timeout(self.timeout * 2, self.consumer.recv()).await {
                Err(_) => return Err(DltError::ReadTimeout { topic: topic.into(), partition, offset: next }),
                Ok(Err(source)) => return Err(kafka_error(source)),
                Ok(Ok(m)) => m,
            };
            // A fetch of an earlier assignment may still be in flight; it is not ours.
            if m.topic() != topic || m.partition() != partition || m.offset() < next {
                continue;
            }
            if m.offset() >= to {
                break;
            }
            next = m.offset() + 1;
            records.push(m.detach());
        }
        Ok(records)
    }
}

/// librdkafka's logs and errors at debug level: a command that fails says why in its own error,
/// and an unreachable broker would otherwise print dozens of retry warnings first.
/// `RUST_LOG=librdkafka=debug` shows them.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(target: "librdkafka", ?level, facility = fac, "{log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "librdkafka", %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for Quiet {}

/// Produces a redrive and waits for the broker's acknowledgement: where it landed.
async fn send(producer: &FutureProducer, plan: &Redrive) -> Result<(i32, i64), KafkaError> {
    let mut headers = OwnedHeaders::new_with_capacity(plan.headers.len());
    for (key, value) in &plan.headers {
        headers = headers.insert(KafkaHeader { key, value: value.as_deref() });
    }
    // Keyed by the original key, so the producer's partitioner puts it where every producer of the
    // system puts that key: behind the key's earlier records, ahead of its later ones.
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&plan.topic).headers(headers);
    if let Some(k) = &plan.key {
        record = record.key(k.as_slice());
    }
    if let Some(v) = &plan.value {
        record = record.payload(v.as_slice());
    }
    let delivery = producer.send(record, Duration::from_secs(5)).await.map_err(|(e, _)| e)?;
    Ok((delivery.partition, delivery.offset))
}
