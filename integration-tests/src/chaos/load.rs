//! The load: sample orders (mostly approved, some out of stock, some declined) placed at a fixed
//! rate by a client that, like any well-behaved application, retries while the registry or the
//! broker is down. A retry repeats the same message id, so the order service sees at most one order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rdkafka::producer::{FutureProducer, FutureRecord};
use saga_cli::sample::{sample_order, Expect};
use saga_contracts::{Message, OrderLine, TopicKind, Topics};
use saga_runtime::codec::Codec;
use saga_runtime::config::KafkaSettings;

/// An order the load placed.
#[derive(Debug, Clone)]
pub struct Placed {
    /// Its id (also its saga's id).
    pub order_id: String,
    /// What it asks for.
    pub lines: Vec<OrderLine>,
    /// The outcome it was built to have.
    pub expect: Expect,
}

/// Places orders the way an application would: Confluent wire format, keyed by order id.
pub struct Client {
    codec: Codec,
    producer: FutureProducer,
    topic: String,
}

impl Client {
    /// A client of the registry at `registry_url` and the broker in `kafka`.
    pub fn new(registry_url: &str, kafka: &KafkaSettings, topics: &Topics) -> anyhow::Result<Client> {
        Ok(Client {
            codec: Codec::new(registry_url)?,
            producer: saga_runtime::kafka::producer(kafka, "chaos-client")?,
            topic: topics.name(TopicKind::OrderCommands),
        })
    }

    /// The registry-backed codec (the poison injector borrows it for real schema ids).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Encodes `message`, retrying for up to `patience` while the registry does not answer.
    pub async fn encode(&self, message: &Message, patience: Duration) -> anyhow::Result<Vec<u8>> {
        let deadline = Instant::now() + patience;
        loop {
            match self.codec.encode(message).await {
                Ok(p) => return Ok(p),
                Err(e) if Instant::now() < deadline => {
                    eprintln!("chaos: encoding {} failed ({e}); retrying", message.order_id());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e).context("encoding an order"),
            }
        }
    }

    /// Publishes one order until the broker acknowledges it (for up to five minutes).
    pub async fn place(&self, message: &Message) -> anyhow::Result<()> {
        let payload = self.encode(message, Duration::from_secs(300)).await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let record = FutureRecord::to(&self.topic).key(message.order_id()).payload(&payload);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return Ok(()),
                Err((e, _)) if Instant::now() < deadline => {
                    eprintln!("chaos: placing order {} failed ({e}); retrying", message.order_id());
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err((e, _)) => bail!("placing order {} failed for five minutes: {e}", message.order_id()),
            }
        }
    }
}

/// The `n` orders of run `run`.
pub fn orders(run: &str, n: usize) -> Vec<(Placed, Message)> {
    (0..n)
        .map(|i| {
            let (order, expect) = sample_order(run, i);
            let placed = Placed { order_id: order.order_id.clone(), lines: order.lines.clone(), expect };
            (placed, order.into())
        })
        .collect()
}

/// Places `orders` at `rate` per second from `start`; returns when every one is acknowledged.
pub async fn drive(client: Arc<Client>, orders: Vec<Message>, rate: f64, start: tokio::time::Instant) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(orders.len());
    for (i, message) in orders.into_iter().enumerate() {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let client = client.clone();
        tasks.push(tokio::spawn(async move { client.place(&message).await }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}
