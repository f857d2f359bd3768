//! Kafka clients: configuration, topic creation, and the consumer context that routes librdkafka's
//! events into `tracing`.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::producer::FutureProducer;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::ClientContext;

use crate::config::KafkaSettings;
use crate::metrics::Metrics;
use crate::read_through::ReadThrough;

/// Errors at the broker boundary.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    /// librdkafka refused the configuration or the request.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic could not be created.
    #[error("creating topic {topic} failed: {reason}")]
    CreateTopic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
}

fn base_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set_log_level(RDKafkaLogLevel::Info);
    for (k, v) in settings.librdkafka_properties() {
        config.set(k, v);
    }
    for (k, v) in &settings.client {
        config.set(k, v);
    }
    config
}

/// An idempotent producer: retries never duplicate or reorder records of a partition.
/// Settings validation refuses `kafka.client` overrides of the keys set last here (see
/// [`crate::config::GUARANTEE_KEYS`]); applying them after the passthrough keeps them even so.
pub fn producer(settings: &KafkaSettings, client_id: &str) -> KafkaResult<FutureProducer> {
    let mut config = ClientConfig::new();
    config
        .set("client.id", client_id)
        // No wait for a batch to fill: the relay hands a whole burst over at once, and librdkafka
        // batches what queues up while a request is in flight. A 2 ms linger cost every hop 2 ms.
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000");
    for (k, v) in base_config(settings).config_map() {
        config.set(k, v);
    }
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The Java client's partitioner, so every client puts a key on the same partition.
        .set("partitioner", "murmur2_random");
    config.create()
}

/// Consumer configuration: offsets are stored by the application only after its work is durable,
/// and committed in the background from there.
pub fn consumer_config(settings: &KafkaSettings, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", client_id)
        // A member killed without leaving holds its partitions until the coordinator gives up on
        // it: 6 s (Kafka's least by default), heartbeating every 1.5 s.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1500")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string());
    for (k, v) in base_config(settings).config_map() {
        config.set(k, v);
    }
    // Last, over any passthrough (which validation refuses for these keys anyway).
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed")
        // The eager range assignor hands an instance the same partition numbers of every topic,
        // and the whole assignment at each rebalance; deadlines rely on both, and on the
        // consumer's statistics every second (how far each partition's end is; also /metrics'
        // lag), whatever a passthrough asks for other clients (`read_through`).
        .set("partition.assignment.strategy", "range")
        .set("statistics.interval.ms", crate::read_through::STATISTICS_INTERVAL.as_millis().to_string());
    config
}

/// A consumer for operator tools (`sagactl dlt`): it reads the partitions it assigns itself, joins
/// no group and never commits on its own; `group_id` is only where it commits when told to.
pub fn reader_config(settings: &KafkaSettings, client_id: &str, group_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("client.id", client_id)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", settings.fetch_wait_max_ms.to_string());
    for (k, v) in base_config(settings).config_map() {
        config.set(k, v);
    }
    config
}

/// Creates the topics that are missing, with the given partition count. Topics that exist are
/// left as they are.
pub async fn create_topics(settings: &KafkaSettings, topics: &[String]) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(settings).create()?;
    let new: Vec<NewTopic<'_>> = topics.iter().map(|t| NewTopic::new(t, settings.partitions, TopicReplication::Fixed(settings.replication_factor))).collect();
    let results = admin.create_topics(&new, &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)))).await?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(KafkaSetupError::CreateTopic { topic, reason: code.to_string() });
            }
        }
    }
    Ok(())
}

/// The consumer context: logs rebalances and librdkafka errors through `tracing`, and feeds
/// librdkafka's statistics and the partition assignment into the service's metrics.
pub struct LoggingContext {
    /// Which service this consumer belongs to, for log lines.
    pub service: &'static str,
    /// Where statistics and assignments go.
    pub metrics: Option<Metrics>,
    /// What the deadlines wait for: how far each owned partition was read (the main consumer's).
    pub read_through: Option<Arc<ReadThrough>>,
}

impl LoggingContext {
    /// A context that only logs.
    pub fn logging(service: &'static str) -> LoggingContext {
        LoggingContext { service, metrics: None, read_through: None }
    }
}

impl ClientContext for LoggingContext {
    fn stats(&self, statistics: Statistics) {
        if let Some(m) = &self.metrics {
            m.observe_kafka(&statistics);
        }
        if let Some(r) = &self.read_through {
            r.observe(&statistics);
        }
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", service = self.service, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", service = self.service, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", service = self.service, facility = fac, "{log_message}")
            }
            RDKafkaLogLevel::Debug => {
                tracing::debug!(target: "librdkafka", service = self.service, facility = fac, "{log_message}")
            }
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", service = self.service, %error, "kafka client error: {reason}");
    }
}

impl ConsumerContext for LoggingContext {
    fn pre_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            tracing::info!(service = self.service, partitions = %describe(tpl), "partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &rdkafka::consumer::BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        // The eager protocol (librdkafka's default) hands over the whole assignment, or takes all
        // of it back. Asking the consumer for its assignment here would deadlock while it closes.
        if let Some(r) = &self.read_through {
            match rebalance {
                Rebalance::Assign(tpl) => {
                    r.assigned(&tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect::<Vec<_>>(), saga_contracts::now_ms())
                }
                Rebalance::Revoke(_) => r.assigned(&[], saga_contracts::now_ms()),
                Rebalance::Error(_) => {}
            }
        }
        if let Some(m) = &self.metrics {
            match rebalance {
                Rebalance::Assign(tpl) => {
                    let owned: Vec<(String, i32)> = tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
                    m.set_assignment(&owned);
                }
                Rebalance::Revoke(_) => m.set_assignment(&[]),
                Rebalance::Error(_) => {}
            }
        }
        match rebalance {
            Rebalance::Assign(tpl) => tracing::info!(service = self.service, partitions = %describe(tpl), "partitions assigned"),
            Rebalance::Error(e) => tracing::warn!(service = self.service, error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(service = self.service, error = %e, "offset commit failed");
        }
    }
}

fn describe(tpl: &TopicPartitionList) -> String {
    tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>().join(",")
}
