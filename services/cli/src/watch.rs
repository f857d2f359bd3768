//! Watches the order event topic for orders reaching a final state, as any consumer would.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message as _;
use saga_contracts::{Message, TopicKind};
use saga_runtime::codec::Codec;
use saga_runtime::config::KafkaSettings;
use saga_runtime::CancellationToken;
use tokio::sync::mpsc;

/// An order that reached a final state.
#[derive(Debug, Clone)]
pub struct Settled {
    /// The order.
    pub order_id: String,
    /// True for approved, false for rejected.
    pub approved: bool,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// When the watcher saw it.
    pub seen_at: Instant,
}

/// A running watcher: outcomes arrive on `outcomes`; [`Watch::close`] stops its consumer.
pub struct Watch {
    /// Orders reaching a final state, in the order they were read.
    pub outcomes: mpsc::UnboundedReceiver<Settled>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Watch {
    /// Stops the consumer and waits for it to leave its group.
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts a consumer of the order event topic (its own group, from the beginning) and sends
/// every `OrderApproved` and `OrderRejected` it reads.
pub fn watch_outcomes(kafka: &KafkaSettings, topic: String, codec: Arc<Codec>) -> anyhow::Result<Watch> {
    let stop = CancellationToken::new();
    let mut settings = kafka.clone();
    settings.group_id = format!("sagactl-watch-{}", uuid::Uuid::new_v4().simple());
    let consumer: StreamConsumer = saga_runtime::kafka::consumer_config(&settings, "sagactl-watch").set("enable.auto.offset.store", "true").create()?;
    consumer.subscribe(&[&topic])?;
    let (tx, rx) = mpsc::unbounded_channel();
    let stopped = stop.clone();
    let task = tokio::spawn(async move {
        let stop = stopped;
        let mut stream = consumer.stream();
        loop {
            let record = tokio::select! {
                _ = stop.cancelled() => break,
                r = stream.next() => match r { Some(Ok(r)) => r, Some(Err(e)) => { tracing::warn!(error = %e, "watch consumer error"); continue } None => break },
            };
            let outcome = match codec.decode(TopicKind::OrderEvents, record.payload()).await {
                Ok(Message::OrderApproved(m)) => Settled { order_id: m.order_id, approved: true, reason: None, seen_at: Instant::now() },
                Ok(Message::OrderRejected(m)) => Settled { order_id: m.order_id, approved: false, reason: Some(m.reason), seen_at: Instant::now() },
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "watch consumer could not decode an order event");
                    continue;
                }
            };
            if tx.send(outcome).is_err() {
                break;
            }
        }
    });
    Ok(Watch { outcomes: rx, stop, task })
}
