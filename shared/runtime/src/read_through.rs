//! How far this instance has read its partitions, in time: deadlines are judged by it.
//!
//! A deadline says "no reply came in time". That is only true once everything written to the
//! service's topics before the deadline has been handled. An orchestrator that has just restarted,
//! or whose partitions were handed to it by a rebalance, or that could not reach the broker for a
//! while, has replies waiting for it in Kafka; firing the deadlines it finds in its database then
//! compensates sagas whose replies came in time (a chaos run lost a tenth of its sagas this way:
//! the orchestrator took 30 s to get its partitions back after a kill, and every step deadline
//! that passed meanwhile fired before the replies were read).
//!
//! So each assigned partition has a *read-through* time: everything written to it before that time
//! has been handled (its transaction committed). librdkafka's statistics (every second) give each
//! partition's high watermark, the offset the next record written gets:
//! - a report taken at `t` that finds the partition handled up to its watermark reads it through
//!   `t` less the age that watermark may have (one fetch wait and a margin: with nothing of the
//!   partition queued, librdkafka keeps fetching it);
//! - under a load the loop is always a little behind the watermark, and then the watermark may be
//!   older (librdkafka stops fetching while its queue is full and shows the last one it saw). A
//!   watermark that moved since the previous report came in a fetch answered after that report,
//!   so it is kept as a mark dated by the previous report (less the margin) and counts once the
//!   consume loop gets past it. A watermark that stands still while the loop is behind counts for
//!   nothing.
//!
//! Only this instance's own clock takes part. Record timestamps (the producers' clocks) do not: a
//! participant whose clock ran ahead would make deadlines fire early by as much.
//!
//! A saga's deadline fires only once the read-through time of its partition (the least over this
//! instance's topics with that partition number: the saga's replies, keyed by its order id, land
//! on the same partition number of every topic, which the range assignor gives to one member)
//! has passed it. A partition this instance does not own fires none of its deadlines: its owner
//! does, and if nobody owns it, nobody reads its replies either. After an assignment every
//! partition starts unread.
//!
//! A statistics report counts only when it can be trusted: it is dated by its own emission time
//! (reports wait in the consumer's queue while a batch is in hand), it comes at least one fetch
//! wait after the assignment (so its high watermark is from a fetch of this assignment, not an
//! old one), and the partition's leader was up and had sent something within that wait (a leader
//! that cannot be reached leaves its high watermark frozen).
//!
//! An orchestrator clock that is off moves every deadline by as much (keep it synchronized).
//!
//! The cost: on an idle instance a deadline fires up to about 2.5 s later than its time (a
//! statistics interval, the report's whole-second date, the margin); under a load, its
//! consumer's lag plus up to about 3.5 s (one more interval); step deadlines are tens of seconds.
//!
//! Not covered: a partition written by a transactional producer (its commit markers keep the
//! watermark past the last record the loop sees, so it is read through only by its committed
//! offset; the services' producers are idempotent, not transactional), and a topic deleted and
//! made anew under a running consumer (the offsets handled of the old one count against the new
//! one until the next assignment).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::statistics::Statistics;

/// How often librdkafka reports its statistics, which say how far each partition's end is.
pub const STATISTICS_INTERVAL: Duration = Duration::from_secs(1);

/// Marks kept per partition at most: with one report a second this is a minute of backlog; a
/// report finding the list full is skipped (a later one marks again once the loop catches up).
const MAX_MARKS: usize = 64;

/// What this instance read of one partition.
#[derive(Debug, Default, Clone)]
struct Partition {
    /// When the group gave it to this instance, ms since epoch.
    assigned_ms: i64,
    /// The offset after the last record handled (its transaction committed).
    handled_next: Option<i64>,
    /// Everything written before this time, ms since epoch, has been handled.
    through_ms: Option<i64>,
    /// Reports not yet caught up with: (high watermark, the time it was seen), both increasing.
    marks: std::collections::VecDeque<(i64, i64)>,
    /// The previous report's high watermark and time.
    last_report: Option<(i64, i64)>,
}

impl Partition {
    /// Everything up to `next` is handled: the marks it reached count.
    fn reached(&mut self, next: i64) {
        while let Some(&(high, seen_at)) = self.marks.front() {
            if high > next {
                break;
            }
            self.through_ms = Some(self.through_ms.map_or(seen_at, |t| t.max(seen_at)));
            self.marks.pop_front();
        }
    }
}

/// The read-through times of the partitions this instance owns; shared by the consume loop (which
/// reports what it handled), the consumer's context (assignments and statistics) and the timers.
#[derive(Debug)]
pub struct ReadThrough {
    /// How old a high watermark in the statistics may be: the fetch wait and a margin.
    staleness: Duration,
    owned: Mutex<HashMap<(String, i32), Partition>>,
}

/// Up to when each owned partition number has been read: deadlines at or before its time may fire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cutoffs {
    /// Per partition number this instance owns on every topic it consumes, its read-through time
    /// (never later than now).
    pub by_partition: Vec<(i32, i64)>,
    /// The earliest of them, for work whose partition is not known; `i64::MIN` (nothing) while
    /// some owned partition has not been read through.
    pub floor: i64,
}

/// Where a partition stands in the statistics (librdkafka gives -1001 for what it does not know).
#[derive(Debug, Clone, Copy)]
struct End {
    /// The group's committed offset.
    committed: i64,
    /// The first offset still in the log.
    low: i64,
    /// The high watermark: the offset the next record written gets.
    high: i64,
}

impl ReadThrough {
    /// A tracker for a consumer whose fetches wait at most `fetch_wait`.
    pub fn new(fetch_wait: Duration) -> ReadThrough {
        ReadThrough { staleness: fetch_wait + Duration::from_millis(500), owned: Mutex::default() }
    }

    /// The group gave this instance `partitions` at `now_ms` (all it owns now; none after a
    /// revocation): each starts unread.
    pub fn assigned(&self, partitions: &[(String, i32)], now_ms: i64) {
        let mut owned = self.owned.lock().expect("read-through lock");
        owned.clear();
        for tp in partitions {
            owned.insert(tp.clone(), Partition { assigned_ms: now_ms, ..Partition::default() });
        }
    }

    /// The consume loop handled records of `topic`/`partition` up to `offset`.
    pub fn handled(&self, topic: &str, partition: i32, offset: i64) {
        let mut owned = self.owned.lock().expect("read-through lock");
        // A record of a partition revoked meanwhile: its new owner reads it again.
        let Some(p) = owned.get_mut(&(topic.to_string(), partition)) else { return };
        let next = p.handled_next.map_or(offset + 1, |n| n.max(offset + 1));
        p.handled_next = Some(next);
        p.reached(next);
    }

    /// librdkafka's statistics: a partition handled up to its high watermark (or whose committed
    /// offset is there) was read through the time that watermark was seen; one not there yet will
    /// be once handled that far. Only partitions whose leader is up and sent something within the
    /// staleness count.
    pub fn observe(&self, statistics: &Statistics) {
        // `time` is the report's wall clock in whole seconds (rounded down: never later than the
        // report).
        let taken_ms = statistics.time * 1000;
        let staleness_us = self.staleness.as_micros() as i64;
        let live: Vec<i32> = statistics.brokers.values().filter(|b| b.state == "UP" && (0..staleness_us).contains(&b.rxidle)).map(|b| b.nodeid).collect();
        for (name, topic) in &statistics.topics {
            for (number, p) in &topic.partitions {
                if *number >= 0 && p.fetch_state == "active" && live.contains(&p.leader) {
                    self.observe_partition(name, *number, End { committed: p.committed_offset, low: p.lo_offset, high: p.hi_offset }, taken_ms);
                }
            }
        }
    }

    /// One partition of a statistics report taken at `taken_ms` (see [`ReadThrough::observe`]).
    fn observe_partition(&self, topic: &str, number: i32, end: End, taken_ms: i64) {
        if end.high < 0 {
            return;
        }
        let staleness = self.staleness.as_millis() as i64;
        let seen_at = taken_ms - staleness;
        let mut owned = self.owned.lock().expect("read-through lock");
        let Some(p) = owned.get_mut(&(topic.to_string(), number)) else { return };
        // A report from before a fetch of this assignment could carry an old high watermark.
        if seen_at < p.assigned_ms {
            return;
        }
        let next = p.handled_next.unwrap_or(-1).max(end.committed);
        let empty = end.low >= 0 && end.high <= end.low;
        let previous = p.last_report.replace((end.high, taken_ms));
        if empty || next >= end.high {
            // Handled to the end: librdkafka has nothing of this partition queued, so it fetches
            // it, and the watermark is at most one fetch wait old.
            p.reached(next);
            p.through_ms = Some(p.through_ms.map_or(seen_at, |t| t.max(seen_at)));
            return;
        }
        // Behind the end. The watermark may be older than a fetch wait: librdkafka stops fetching
        // while its queue is full (and then keeps the last watermark it saw). One that moved since
        // the previous report came in a fetch answered after that report, so everything written
        // before that report's time, less the margin, is below it.
        if let Some((_, previous_ms)) = previous.filter(|(high, _)| *high != end.high) {
            let mark_at = previous_ms - staleness;
            match p.marks.back() {
                _ if mark_at < p.assigned_ms => {}
                // A watermark that went back (the topic was made anew): the old marks could
                // never be reached.
                Some(&(high, _)) if end.high < high => {
                    p.marks.clear();
                    p.marks.push_back((end.high, mark_at));
                }
                Some(&(_, at)) if mark_at <= at => {}
                _ if p.marks.len() >= MAX_MARKS => {}
                _ => p.marks.push_back((end.high, mark_at)),
            }
        }
        p.reached(next);
    }

    /// Up to when each owned partition number was read, at `now_ms`; `None` while this instance
    /// owns nothing or has read nothing through yet (then no deadline may fire here).
    pub fn cutoffs(&self, now_ms: i64) -> Option<Cutoffs> {
        let owned = self.owned.lock().expect("read-through lock");
        let mut by_number: HashMap<i32, Option<i64>> = HashMap::new();
        for ((_, number), p) in owned.iter() {
            let entry = by_number.entry(*number).or_insert(Some(i64::MAX));
            *entry = match (*entry, p.through_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                _ => None,
            };
        }
        // Work of unknown partition waits for every partition this instance owns.
        let floor = if by_number.values().all(Option::is_some) { by_number.values().flatten().min().map(|t| (*t).min(now_ms)) } else { None };
        let mut by_partition: Vec<(i32, i64)> = by_number.into_iter().filter_map(|(n, t)| t.map(|t| (n, t.min(now_ms)))).collect();
        by_partition.sort_unstable();
        if by_partition.is_empty() {
            return None;
        }
        Some(Cutoffs { by_partition, floor: floor.unwrap_or(i64::MIN) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(committed: i64, low: i64, high: i64) -> End {
        End { committed, low, high }
    }

    fn owning(parts: &[(&str, i32)]) -> ReadThrough {
        let r = ReadThrough::new(Duration::from_millis(100));
        r.assigned(&parts.iter().map(|(t, p)| (t.to_string(), *p)).collect::<Vec<_>>(), 0);
        r
    }

    #[test]
    fn nothing_is_read_through_until_every_topic_of_a_partition_number_was_read() {
        let r = owning(&[("a", 0), ("b", 0), ("a", 1), ("b", 1)]);
        assert_eq!(r.cutoffs(10_000), None, "freshly assigned partitions are unread");
        r.handled("a", 0, 5);
        r.observe_partition("a", 0, end(-1001, 0, 6), 7_600);
        assert_eq!(r.cutoffs(10_000), None, "b/0 is still unread");
        r.handled("b", 0, 2);
        r.observe_partition("b", 0, end(-1001, 0, 3), 8_600);
        assert_eq!(
            r.cutoffs(10_000),
            Some(Cutoffs { by_partition: vec![(0, 7_000)], floor: i64::MIN }),
            "the least over the topics; partition 1 unread, so nothing of unknown partition fires"
        );
        r.handled("a", 1, 0);
        r.handled("b", 1, 0);
        r.observe_partition("a", 1, end(-1001, 0, 1), 9_600);
        r.observe_partition("b", 1, end(-1001, 0, 1), 9_100);
        assert_eq!(r.cutoffs(10_000), Some(Cutoffs { by_partition: vec![(0, 7_000), (1, 8_500)], floor: 7_000 }));
    }

    #[test]
    fn under_a_steady_load_a_moving_watermark_counts_from_the_report_before_once_the_loop_gets_past_it() {
        let r = owning(&[("a", 0)]);
        r.handled("a", 0, 99);
        // Always a little behind the end when a report comes.
        r.observe_partition("a", 0, end(-1001, 0, 110), 10_000);
        r.observe_partition("a", 0, end(-1001, 0, 220), 11_000);
        r.handled("a", 0, 150);
        assert_eq!(r.cutoffs(20_000), None, "the first report has no earlier one to date its watermark by");
        r.observe_partition("a", 0, end(-1001, 0, 330), 12_000);
        r.handled("a", 0, 250);
        assert_eq!(r.cutoffs(20_000).unwrap().floor, 9_400, "past 220, seen after the report of 10 s");
        r.handled("a", 0, 400);
        assert_eq!(r.cutoffs(20_000).unwrap().floor, 10_400, "past 330 too");
    }

    #[test]
    fn a_watermark_that_stands_still_while_behind_counts_for_nothing() {
        // librdkafka stopped fetching (its queue is full): the watermark it shows grows old.
        let r = owning(&[("a", 0)]);
        r.handled("a", 0, 99);
        for at in [10_000, 11_000, 12_000, 13_000] {
            r.observe_partition("a", 0, end(-1001, 0, 500), at);
        }
        r.handled("a", 0, 600);
        assert_eq!(r.cutoffs(20_000), None, "nothing dates the watermark 500");
        // Fetching again: the watermark moves, and counts from the report before.
        r.observe_partition("a", 0, end(-1001, 0, 900), 14_000);
        r.handled("a", 0, 700);
        assert_eq!(r.cutoffs(20_000), None);
        r.handled("a", 0, 899);
        assert_eq!(r.cutoffs(20_000).unwrap().floor, 12_400);
    }

    #[test]
    fn a_watermark_that_went_back_drops_the_marks_it_left_unreachable() {
        let r = owning(&[("a", 0)]);
        r.handled("a", 0, 4);
        r.observe_partition("a", 0, end(-1001, 0, 400), 9_000);
        r.observe_partition("a", 0, end(-1001, 0, 500), 10_000);
        // The topic was made anew: its end is 7 now.
        r.observe_partition("a", 0, end(-1001, 0, 7), 11_000);
        r.handled("a", 0, 6);
        assert_eq!(r.cutoffs(20_000).unwrap().floor, 9_400);
    }

    #[test]
    fn statistics_showing_the_end_handled_read_a_partition_through_their_time_less_the_staleness() {
        let r = owning(&[("a", 0), ("b", 0)]);
        r.handled("a", 0, 9);
        // a/0: handled up to 10 = its end; b/0: committed at its end, nothing handled since the assignment.
        r.observe_partition("a", 0, end(-1001, 0, 10), 20_000);
        r.observe_partition("b", 0, end(4, 0, 4), 20_000);
        assert_eq!(r.cutoffs(30_000), Some(Cutoffs { by_partition: vec![(0, 19_400)], floor: 19_400 }));
        // New records on b/0 not handled yet: its time stays where it was.
        r.observe_partition("a", 0, end(10, 0, 10), 25_000);
        r.observe_partition("b", 0, end(4, 0, 6), 25_000);
        assert_eq!(r.cutoffs(30_000).unwrap().floor, 19_400);
    }

    #[test]
    fn a_report_from_before_a_fetch_of_this_assignment_is_not_trusted() {
        let r = owning(&[]);
        r.assigned(&[("a".into(), 0)], 20_000);
        // Committed at 8 and an old high watermark of 8: taken too soon after the assignment.
        r.observe_partition("a", 0, end(8, 0, 8), 20_300);
        assert_eq!(r.cutoffs(30_000), None);
        r.observe_partition("a", 0, end(8, 0, 8), 21_000);
        assert_eq!(r.cutoffs(30_000).unwrap().floor, 20_400);
    }

    #[test]
    fn an_empty_partition_is_read_through() {
        let r = owning(&[("a", 3)]);
        r.observe_partition("a", 3, end(-1001, 0, 0), 5_000);
        assert_eq!(r.cutoffs(5_000).unwrap().by_partition, vec![(3, 4_400)]);
    }

    #[test]
    fn a_cutoff_is_never_later_than_now_and_record_timestamps_play_no_part() {
        let r = owning(&[("a", 0)]);
        // However far ahead a producer's clock runs, only this instance's reports move the time.
        r.handled("a", 0, 0);
        assert_eq!(r.cutoffs(10_000), None);
        r.observe_partition("a", 0, end(-1001, 0, 1), 50_000);
        assert_eq!(r.cutoffs(10_000).unwrap().floor, 10_000);
    }

    #[test]
    fn a_new_assignment_starts_unread_and_records_of_revoked_partitions_are_ignored() {
        let r = owning(&[("a", 0)]);
        r.handled("a", 0, 0);
        r.observe_partition("a", 0, end(-1001, 0, 1), 1_600);
        assert!(r.cutoffs(2_000).is_some());
        r.assigned(&[("a".into(), 1)], 1_800);
        r.handled("a", 0, 1);
        assert_eq!(r.cutoffs(2_000), None);
        r.assigned(&[], 1_900);
        assert_eq!(r.cutoffs(2_000), None, "an instance that owns nothing fires nothing");
    }
}
