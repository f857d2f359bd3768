//! Prometheus metrics of one service instance, served at `/metrics` beside the health endpoints.
//!
//! Every series carries a `service` label (the registry's constant label), so the four services
//! of `sagactl dev`, which share one process, stay apart. Counters count work that committed:
//! a record is consumed once its transaction committed, produced once the broker acknowledged it.

use std::time::Duration;

use prometheus::{Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use rdkafka::statistics::Statistics;

/// The runtime's metrics; handlers register their own into [`Metrics::registry`].
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `saga_records_consumed_total{topic}`: records whose transaction committed (duplicates included).
    pub consumed: IntCounterVec,
    /// `saga_records_produced_total{topic}`: outbox records the broker acknowledged.
    pub produced: IntCounterVec,
    /// `saga_records_dead_lettered_total{topic,class}`: records sent to `<topic>.dlt`, by error class.
    pub dead_lettered: IntCounterVec,
    /// `saga_inbox_duplicates_total{topic}`: records skipped because their message id was in the inbox.
    pub inbox_duplicates: IntCounterVec,
    /// `saga_retries_total{reason}`: backoff waits, by what failed (`database` (conflicts
    /// included), `registry`, `publish`).
    pub retries: IntCounterVec,
    /// `saga_outbox_backlog`: rows waiting in the outbox.
    pub outbox_backlog: IntGauge,
    /// `saga_outbox_oldest_age_seconds`: age of the oldest unpublished row (0 when empty).
    pub outbox_oldest_age: Gauge,
    /// `saga_consumer_lag{topic,partition}`: records behind the partition's end, from librdkafka.
    pub consumer_lag: IntGaugeVec,
    /// `saga_consumer_assigned_partitions{topic}`: partitions this instance owns now.
    pub assigned_partitions: IntGaugeVec,
    /// `saga_consumer_rejoins_total`: times this instance left and rejoined its group because
    /// partitions it did not own had records that no live member consumed (see `rejoin`).
    pub rejoins: IntCounter,
    /// `saga_kafka_broker_rtt_seconds{broker}`: average request round trip, from librdkafka.
    pub broker_rtt: GaugeVec,
    /// `saga_kafka_queued_messages`: messages in the client's queues (librdkafka `msg_cnt`).
    pub queued_messages: IntGauge,
    /// `saga_consume_halted`: 1 while a fatal database error (a missing table, a revoked grant,
    /// a read-only database) holds the consume loop still, else 0.
    pub halted: IntGauge,
    /// `saga_stage_seconds{stage}`: where a message's time goes in this service, stage by stage
    /// (see [`Stage`]).
    pub stage: HistogramVec,
}

/// The stages of a message's way through a service, in order: the labels of `saga_stage_seconds`.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// From the record's timestamp (set by the producer, in milliseconds) to the consumer taking
    /// it: time in the broker and the fetch. Millisecond resolution; one clock only when the
    /// producer runs on the same host.
    Deliver,
    /// Decoding one batch (the registry's schemas are cached after the first).
    Decode,
    /// One batch's transaction: inbox, handler, outbox, commit; retries included.
    Apply,
    /// The commit of that transaction alone (part of `apply`): on SQLite, the WAL's fsync.
    Commit,
    /// From a row's commit to its relay taking it (queued behind earlier rows).
    Handoff,
    /// From sending one burst to the broker acknowledging all of it.
    Publish,
}

impl Stage {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Stage::Deliver => "deliver",
            Stage::Decode => "decode",
            Stage::Apply => "apply",
            Stage::Commit => "commit",
            Stage::Handoff => "handoff",
            Stage::Publish => "publish",
        }
    }

    /// Every stage, in order.
    pub const ALL: [Stage; 6] = [Stage::Deliver, Stage::Decode, Stage::Apply, Stage::Commit, Stage::Handoff, Stage::Publish];
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn int_gauges(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("metric registered once");
    g
}

impl Metrics {
    /// Metrics for one instance of `service`.
    pub fn new(service: &str) -> Metrics {
        let labels = std::iter::once(("service".to_string(), service.to_string())).collect();
        let registry = Registry::new_custom(None, Some(labels)).expect("valid constant labels");
        let outbox_backlog = IntGauge::new("saga_outbox_backlog", "Rows waiting in the outbox.").expect("valid metric");
        let outbox_oldest_age = Gauge::new("saga_outbox_oldest_age_seconds", "Age of the oldest unpublished outbox row.").expect("valid metric");
        let rejoins = IntCounter::new("saga_consumer_rejoins_total", "Rejoins of the group because partitions had records no live member consumed.")
            .expect("valid metric");
        let queued_messages = IntGauge::new("saga_kafka_queued_messages", "Messages in the Kafka client's queues.").expect("valid metric");
        let halted = IntGauge::new("saga_consume_halted", "1 while a fatal database error holds the consume loop still (nothing is dead-lettered for it).")
            .expect("valid metric");
        let broker_rtt =
            GaugeVec::new(Opts::new("saga_kafka_broker_rtt_seconds", "Average request round trip to each broker."), &["broker"]).expect("valid metric");
        for m in [
            Box::new(outbox_backlog.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(outbox_oldest_age.clone()),
            Box::new(queued_messages.clone()),
            Box::new(halted.clone()),
            Box::new(rejoins.clone()),
            Box::new(broker_rtt.clone()),
        ] {
            registry.register(m).expect("metric registered once");
        }
        // 50 µs to about 13 s, doubling.
        let stage = HistogramVec::new(
            HistogramOpts::new("saga_stage_seconds", "Time a message spends in each stage of this service.")
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 19).expect("valid buckets")),
            &["stage"],
        )
        .expect("valid metric");
        registry.register(Box::new(stage.clone())).expect("metric registered once");
        for s in Stage::ALL {
            stage.with_label_values(&[s.label()]);
        }
        let retries = counter(&registry, "saga_retries_total", "Waits before retrying after a transient failure.", &["reason"]);
        // Known reasons start at 0, so `rate()` sees the first retry.
        for reason in ["database", "registry", "publish"] {
            retries.with_label_values(&[reason]);
        }
        Metrics {
            consumed: counter(&registry, "saga_records_consumed_total", "Records applied (their transaction committed).", &["topic"]),
            produced: counter(&registry, "saga_records_produced_total", "Records published from the outbox and acknowledged.", &["topic"]),
            dead_lettered: counter(&registry, "saga_records_dead_lettered_total", "Records sent to a dead-letter topic.", &["topic", "class"]),
            inbox_duplicates: counter(&registry, "saga_inbox_duplicates_total", "Records skipped as duplicates by the inbox.", &["topic"]),
            retries,
            consumer_lag: int_gauges(&registry, "saga_consumer_lag", "Records between the committed position and the partition end.", &["topic", "partition"]),
            assigned_partitions: int_gauges(&registry, "saga_consumer_assigned_partitions", "Partitions this instance owns.", &["topic"]),
            rejoins,
            outbox_backlog,
            outbox_oldest_age,
            queued_messages,
            halted,
            broker_rtt,
            stage,
            registry,
        }
    }

    /// Records that something spent `took` in `stage`.
    pub fn observe(&self, stage: Stage, took: Duration) {
        self.stage.with_label_values(&[stage.label()]).observe(took.as_secs_f64());
    }

    /// Where handlers register their own metrics.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding of gathered metrics");
        String::from_utf8(out).expect("Prometheus text is UTF-8")
    }

    /// Takes what matters from librdkafka's statistics (emitted every `statistics.interval.ms`).
    pub fn observe_kafka(&self, stats: &Statistics) {
        self.queued_messages.set(stats.msg_cnt as i64);
        for (name, broker) in &stats.brokers {
            if let Some(rtt) = &broker.rtt {
                self.broker_rtt.with_label_values(&[name]).set(rtt.avg as f64 / 1_000_000.0);
            }
        }
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // librdkafka reports -1 for partitions this consumer does not fetch, and the
                // internal partition -1 (unassigned messages); neither is lag.
                if *partition < 0 || p.consumer_lag < 0 || p.fetch_state == "none" {
                    continue;
                }
                self.consumer_lag.with_label_values(&[topic, &partition.to_string()]).set(p.consumer_lag);
            }
        }
    }

    /// A partition assignment changed: `owned` is the new count per topic, and lag series of
    /// partitions given up are removed so they do not report a stale figure.
    pub fn set_assignment(&self, owned: &[(String, i32)]) {
        self.assigned_partitions.reset();
        self.consumer_lag.reset();
        for (topic, _) in owned {
            self.assigned_partitions.with_label_values(&[topic]).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_carry_the_service_label_and_follow_prometheus_naming() {
        let m = Metrics::new("payment");
        m.consumed.with_label_values(&["saga.payment.commands"]).inc_by(3);
        m.dead_lettered.with_label_values(&["saga.payment.commands", "malformed-avro"]).inc();
        m.set_assignment(&[("saga.payment.commands".into(), 0), ("saga.payment.commands".into(), 3)]);
        let text = m.render();
        let sample = |name: &str, labels: &[&str]| -> Option<String> {
            text.lines()
                .find(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|p| l.contains(p)))
                .and_then(|l| l.rsplit(' ').next().map(str::to_string))
        };
        let payment = r#"service="payment""#;
        let topic = r#"topic="saga.payment.commands""#;
        assert_eq!(sample("saga_records_consumed_total", &[payment, topic]).as_deref(), Some("3"), "{text}");
        assert_eq!(sample("saga_records_dead_lettered_total", &[payment, topic, r#"class="malformed-avro""#]).as_deref(), Some("1"), "{text}");
        assert_eq!(sample("saga_consumer_assigned_partitions", &[payment, topic]).as_deref(), Some("2"), "{text}");
        assert_eq!(sample("saga_retries_total", &[payment, r#"reason="database""#]).as_deref(), Some("0"), "known reasons start at 0: {text}");
        assert!(text.contains("# TYPE saga_records_consumed_total counter"), "{text}");
    }
}
