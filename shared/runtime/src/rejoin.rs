//! The group watch: an instance that sees partitions of its topics that it does not own, with
//! records waiting and the group's committed offset not moving, leaves and rejoins its consumer
//! group.
//!
//! A group coordinator can lose track of a member: after a broker restart, or when a member
//! restarts within the session timeout, tansu 0.6 has been seen to revoke an instance's
//! partitions and never assign them again, or keep them assigned to a member that died. The
//! instance then idles while those partitions fill up, and every saga that needs them runs into
//! its deadline. librdkafka does not notice (the heartbeats succeed), so the consume loop checks,
//! every few seconds, and only while it owns fewer than all the partitions: are there partitions
//! it does not own with records past the group's committed offset, whose committed offset has not
//! moved for `rejoin_after`? Then no live member consumes them, and rejoining (a new JoinGroup)
//! makes the coordinator run a rebalance.
//!
//! Partitions that other live members consume move (or are drained), so an instance of a healthy
//! group stays put and costs the brokers only the check. The partitions it owns itself are not
//! judged: when those stall (its database is down), rejoining would not help.
//!
//! Not every coordinator fault can be mended from the client: tansu 0.6 can also keep a group
//! forming under a leader that no longer exists (seen with static membership, `group.instance.id`),
//! and then no JoinGroup of any member completes until the broker restarts.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::time::Instant;

use crate::kafka::LoggingContext;

/// How often the watch looks.
pub const CHECK_EVERY: Duration = Duration::from_secs(3);

/// How long each broker request of a check may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// A partition, its group's committed offset and its high watermark.
type Position = ((String, i32), i64, i64);

/// What the watch remembers between checks.
pub struct GroupWatch {
    topics: Vec<String>,
    rejoin_after: Duration,
    /// How many partitions the topics have, once known.
    partitions: Option<usize>,
    /// Partitions of other members with waiting records: the group's committed offset, and
    /// since when it has not moved.
    waiting: HashMap<(String, i32), (i64, Instant)>,
}

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// This instance owns every partition, or nothing of the others waits unconsumed for long.
    Fine,
    /// These partitions, owned by no live member, have had records waiting, with no committed
    /// offset moving, for `rejoin_after`: this instance should rejoin.
    Rejoin(Vec<(String, i32)>),
}

impl GroupWatch {
    /// A watch over the group's partitions of `topics`.
    pub fn new(topics: Vec<String>, rejoin_after: Duration) -> GroupWatch {
        GroupWatch { topics, rejoin_after, partitions: None, waiting: HashMap::new() }
    }

    fn check(&mut self, consumer: &StreamConsumer<LoggingContext>) -> KafkaResult<Verdict> {
        let mine: HashSet<(String, i32)> = consumer.assignment()?.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        if self.partitions.is_some_and(|all| mine.len() >= all) {
            self.waiting.clear();
            return Ok(Verdict::Fine);
        }
        let positions = self.positions(consumer)?;
        self.partitions = Some(positions.len());
        let others = positions.into_iter().filter(|(p, _, _)| !mine.contains(p)).collect();
        Ok(self.judge(others, Instant::now()))
    }

    /// Looks once and, when partitions stalled, rejoins the group; true when it did. Blocking
    /// broker requests are made only while the consumer owns fewer than all the partitions (and
    /// once, to learn how many there are); on a multi-threaded runtime they run in place of the
    /// calling task. Code that may not block (a consume loop) calls [`GroupWatch::look_blocking`]
    /// from a blocking thread instead.
    pub fn look(&mut self, consumer: &StreamConsumer<LoggingContext>, service: &'static str) -> bool {
        match tokio::runtime::Handle::current().runtime_flavor() {
            tokio::runtime::RuntimeFlavor::CurrentThread => self.look_blocking(consumer, service),
            _ => tokio::task::block_in_place(|| self.look_blocking(consumer, service)),
        }
    }

    /// [`GroupWatch::look`] on the calling thread, which it may block for broker round trips.
    pub fn look_blocking(&mut self, consumer: &StreamConsumer<LoggingContext>, service: &'static str) -> bool {
        let verdict = self.check(consumer);
        match verdict {
            Ok(Verdict::Fine) => false,
            Ok(Verdict::Rejoin(stalled)) => {
                let partitions = stalled.iter().map(|(t, p)| format!("{t}/{p}")).collect::<Vec<_>>().join(",");
                tracing::warn!(
                    service,
                    partitions,
                    waited_ms = self.rejoin_after.as_millis() as u64,
                    "partitions of this group have records that no live member consumes; rejoining the group"
                );
                // After a rejoin, the clock starts again.
                self.waiting.clear();
                let refs: Vec<&str> = self.topics.iter().map(String::as_str).collect();
                consumer.unsubscribe();
                if let Err(e) = consumer.subscribe(&refs) {
                    tracing::error!(service, error = %e, "subscribing again failed; the next check tries again");
                }
                true
            }
            Err(e) => {
                tracing::warn!(service, error = %e, "could not read the group's positions; the next check tries again");
                false
            }
        }
    }

    /// Decides from `(partition, committed, high watermark)` seen at `now`.
    fn judge(&mut self, positions: Vec<Position>, now: Instant) -> Verdict {
        let mut seen = HashMap::with_capacity(positions.len());
        for (partition, committed, high) in positions {
            if high <= committed {
                continue;
            }
            let since = match self.waiting.get(&partition) {
                Some(&(before, since)) if before == committed => since,
                _ => now,
            };
            seen.insert(partition, (committed, since));
        }
        self.waiting = seen;
        let mut stalled: Vec<(String, i32)> =
            self.waiting.iter().filter(|(_, (_, since))| now.duration_since(*since) >= self.rejoin_after).map(|(p, _)| p.clone()).collect();
        if stalled.is_empty() {
            return Verdict::Fine;
        }
        stalled.sort();
        Verdict::Rejoin(stalled)
    }

    /// Every partition of the topics, with the group's committed offset (the low watermark when it
    /// has none) and the high watermark.
    fn positions(&self, consumer: &StreamConsumer<LoggingContext>) -> KafkaResult<Vec<Position>> {
        let mut list = TopicPartitionList::new();
        for topic in &self.topics {
            let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
            for t in metadata.topics() {
                for p in t.partitions() {
                    list.add_partition(t.name(), p.id());
                }
            }
        }
        let committed = consumer.committed_offsets(list, REQUEST_TIMEOUT)?;
        let mut positions = Vec::with_capacity(committed.count());
        for e in committed.elements() {
            let (low, high) = consumer.fetch_watermarks(e.topic(), e.partition(), REQUEST_TIMEOUT)?;
            let at = match e.offset() {
                Offset::Offset(o) => o.max(low),
                _ => low,
            };
            positions.push(((e.topic().to_string(), e.partition()), at, high));
        }
        Ok(positions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(partition: i32) -> (String, i32) {
        ("saga.inventory.commands".to_string(), partition)
    }

    #[test]
    fn rejoins_only_when_waiting_records_sit_unconsumed_for_the_whole_interval() {
        let mut watch = GroupWatch::new(vec![], Duration::from_secs(30));
        let t0 = Instant::now();
        // Partition 0 waits at 10; partition 1 is drained.
        assert_eq!(watch.judge(vec![(p(0), 10, 15), (p(1), 7, 7)], t0), Verdict::Fine);
        assert_eq!(watch.judge(vec![(p(0), 10, 18), (p(1), 7, 7)], t0 + Duration::from_secs(29)), Verdict::Fine);
        assert_eq!(watch.judge(vec![(p(0), 10, 20), (p(1), 7, 7)], t0 + Duration::from_secs(30)), Verdict::Rejoin(vec![p(0)]));
    }

    #[test]
    fn a_partition_that_another_member_consumes_restarts_its_clock() {
        let mut watch = GroupWatch::new(vec![], Duration::from_secs(30));
        let t0 = Instant::now();
        watch.judge(vec![(p(0), 10, 15)], t0);
        // Someone committed 12 meanwhile: it is owned and moving.
        assert_eq!(watch.judge(vec![(p(0), 12, 30)], t0 + Duration::from_secs(25)), Verdict::Fine);
        assert_eq!(watch.judge(vec![(p(0), 12, 40)], t0 + Duration::from_secs(50)), Verdict::Fine);
        assert_eq!(watch.judge(vec![(p(0), 12, 40)], t0 + Duration::from_secs(55)), Verdict::Rejoin(vec![p(0)]));
    }

    #[test]
    fn a_partition_drained_in_between_is_forgotten() {
        let mut watch = GroupWatch::new(vec![], Duration::from_secs(30));
        let t0 = Instant::now();
        watch.judge(vec![(p(0), 10, 15)], t0);
        watch.judge(vec![(p(0), 15, 15)], t0 + Duration::from_secs(10));
        assert_eq!(watch.judge(vec![(p(0), 15, 16)], t0 + Duration::from_secs(35)), Verdict::Fine);
    }
}
