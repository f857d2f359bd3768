//! How far the read model is behind its topics: per partition, the broker's end offset minus the
//! next offset the projection will apply; and the age of the newest event applied.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use saga_runtime::config::KafkaSettings;
use saga_runtime::prometheus::{IntGauge, IntGaugeVec, Opts, Registry};
use saga_store::Db;
use serde::Serialize;

/// One partition's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// The next offset the projection will apply: it reflects every record before it.
    pub applied_next_offset: i64,
    /// The broker's end offset (high watermark).
    pub end_offset: i64,
    /// Records not yet applied.
    pub lag: i64,
}

/// The whole model's lag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct LagReport {
    /// Every partition of every topic read.
    pub partitions: Vec<PartitionLag>,
    /// Sum over the partitions.
    pub total_lag: i64,
    /// Milliseconds since the newest applied event happened (`None` before any).
    pub newest_event_age_ms: Option<i64>,
    /// When this was measured (epoch ms).
    pub measured_at_ms: i64,
}

/// Measures the lag against the broker and keeps the gauges and the last report.
pub struct LagWatch {
    client: Arc<BaseConsumer>,
    topics: Vec<String>,
    lag: IntGaugeVec,
    total: IntGauge,
    age: IntGauge,
    last: Mutex<Option<LagReport>>,
}

/// How long one broker request of the lag watch may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

impl LagWatch {
    /// A watch over `topics` on the broker of `kafka`; it joins no consumer group.
    pub fn new(kafka: &KafkaSettings, topics: Vec<String>) -> Result<LagWatch, rdkafka::error::KafkaError> {
        let client: BaseConsumer = saga_runtime::kafka::reader_config(kafka, "saga-query-lag", &format!("{}.lag", kafka.group_id)).create()?;
        let lag = IntGaugeVec::new(Opts::new("saga_projection_lag", "Records of the partition the read model has not applied yet."), &["topic", "partition"])
            .expect("valid metric");
        let total = IntGauge::new("saga_projection_lag_total", "Records of every partition the read model has not applied yet.").expect("valid metric");
        let age =
            IntGauge::new("saga_projection_newest_event_age_ms", "Milliseconds since the newest event the read model applied happened.").expect("valid metric");
        Ok(LagWatch { client: Arc::new(client), topics, lag, total, age, last: Mutex::new(None) })
    }

    /// Registers the gauges.
    pub fn register(&self, registry: &Registry) {
        for m in [Box::new(self.lag.clone()) as Box<dyn saga_runtime::prometheus::core::Collector>, Box::new(self.total.clone()), Box::new(self.age.clone())] {
            if let Err(e) = registry.register(m) {
                tracing::warn!(error = %e, "projection gauge not registered");
            }
        }
    }

    /// The last report measured.
    pub fn last(&self) -> Option<LagReport> {
        self.last.lock().expect("lag report lock").clone()
    }

    /// The broker's end offset of one partition, `None` when the broker does not answer in time.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Option<i64> {
        let (client, topic) = (self.client.clone(), topic.to_string());
        tokio::task::spawn_blocking(move || client.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT).ok().map(|(_, high)| high)).await.ok().flatten()
    }

    /// Measures every partition now; updates the gauges and the last report. A broker or
    /// database that does not answer leaves the last report as it was.
    pub async fn refresh(&self, db: &Db, newest_event_ms: Option<i64>) -> Option<LagReport> {
        let applied = match crate::store::positions(db).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "reading the projection's positions failed");
                return None;
            }
        };
        let (client, topics) = (self.client.clone(), self.topics.clone());
        let ends = tokio::task::spawn_blocking(move || -> Result<Vec<(String, i32, i64)>, rdkafka::error::KafkaError> {
            let mut ends = Vec::new();
            for topic in topics {
                let metadata = client.fetch_metadata(Some(&topic), REQUEST_TIMEOUT)?;
                let partitions = metadata.topics().first().map(|t| t.partitions().len() as i32).unwrap_or(0);
                for partition in 0..partitions {
                    let (_, high) = client.fetch_watermarks(&topic, partition, REQUEST_TIMEOUT)?;
                    ends.push((topic.clone(), partition, high));
                }
            }
            Ok(ends)
        })
        .await;
        let ends = match ends {
            Ok(Ok(ends)) => ends,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "reading the topics' end offsets failed");
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the end-offset reader panicked");
                return None;
            }
        };
        let now = saga_contracts::now_ms();
        let partitions: Vec<PartitionLag> = ends
            .into_iter()
            .map(|(topic, partition, end_offset)| {
                let applied_next_offset = applied.iter().find(|(t, p, _)| *t == topic && *p == partition).map_or(0, |(_, _, n)| *n);
                PartitionLag { lag: (end_offset - applied_next_offset).max(0), topic, partition, applied_next_offset, end_offset }
            })
            .collect();
        self.lag.reset();
        for p in &partitions {
            self.lag.with_label_values(&[&p.topic, &p.partition.to_string()]).set(p.lag);
        }
        let total_lag = partitions.iter().map(|p| p.lag).sum();
        self.total.set(total_lag);
        let newest_event_age_ms = newest_event_ms.map(|t| (now - t).max(0));
        self.age.set(newest_event_age_ms.unwrap_or(0));
        let report = LagReport { partitions, total_lag, newest_event_age_ms, measured_at_ms: now };
        *self.last.lock().expect("lag report lock") = Some(report.clone());
        Some(report)
    }
}
