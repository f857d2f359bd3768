//! A dead letter as read back from its topic, and everything that can be said about it without
//! I/O: where it came from, why it failed, how often it was redriven, the record a redrive
//! produces, and how it is printed.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::headers;
use rdkafka::Message;
use saga_contracts::topics::DLT_SUFFIX;
use serde::{Deserialize, Serialize};

/// A record header: name and value (Kafka allows a null value).
pub type Header = (String, Option<Vec<u8>>);

/// A record read from a dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// The dead-letter topic it was read from.
    pub dlt_topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value.
    pub value: Option<Vec<u8>>,
    /// All its headers, in order: the original ones, then the `saga.dlt.*` ones.
    pub headers: Vec<Header>,
    /// Below the operator's purge mark: hidden from `list` unless `--all`.
    pub purged: bool,
}

/// What a redrive sends: the original record, back to its original topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The original topic.
    pub topic: String,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original value.
    pub value: Option<Vec<u8>>,
    /// The original headers without `saga.dlt.*`, with `saga.redrive.count` set to [`Redrive::count`].
    pub headers: Vec<Header>,
    /// This redrive's number: 1 for the first.
    pub count: u32,
}

impl DeadLetterRecord {
    /// Copies a consumed record.
    pub fn from_message(m: &impl Message, purged: bool) -> DeadLetterRecord {
        let headers = super::headers_of(m);
        DeadLetterRecord {
            dlt_topic: m.topic().to_string(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().map(<[u8]>::to_vec),
            headers,
            purged,
        }
    }

    /// `topic/partition/offset` of the dead letter: how a saga's log and the saga view name it
    /// (as [`crate::handler::DeadLetterSeen::reference`]).
    pub fn reference(&self) -> String {
        format!("{}/{}/{}", self.dlt_topic, self.partition, self.offset)
    }

    /// `topic/partition@offset` of the dead letter.
    pub fn location(&self) -> String {
        format!("{}/{}@{}", self.dlt_topic, self.partition, self.offset)
    }

    /// The last value of header `name`, when it is UTF-8.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref()).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The topic it was read from: its header, or the dead-letter topic's name without `.dlt`.
    pub fn original_topic(&self) -> String {
        match self.header(headers::ORIGINAL_TOPIC) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => self.dlt_topic.strip_suffix(DLT_SUFFIX).unwrap_or(&self.dlt_topic).to_string(),
        }
    }

    /// The partition it was read from.
    pub fn original_partition(&self) -> Option<i32> {
        self.header(headers::ORIGINAL_PARTITION)?.parse().ok()
    }

    /// Its offset there.
    pub fn original_offset(&self) -> Option<i64> {
        self.header(headers::ORIGINAL_OFFSET)?.parse().ok()
    }

    /// Class of the error that dead-lettered it (`malformed-avro`, `handler-failed`, …).
    pub fn error_class(&self) -> Option<&str> {
        self.header(headers::ERROR_CLASS)
    }

    /// What exactly was wrong.
    pub fn error_message(&self) -> Option<&str> {
        self.header(headers::ERROR_MESSAGE)
    }

    /// The consumer group that gave up on it.
    pub fn consumer_group(&self) -> Option<&str> {
        self.header(headers::CONSUMER_GROUP)
    }

    /// When it was dead-lettered, ms since the epoch.
    pub fn failed_at_ms(&self) -> Option<i64> {
        self.header(headers::FAILED_AT)?.parse().ok()
    }

    /// How many times it was redriven before it was dead-lettered (again): 0 when the header is
    /// absent; an error naming the value when it is not a number.
    pub fn redrive_count(&self) -> Result<u32, Refusal> {
        match self.headers.iter().rev().find(|(k, _)| k == headers::REDRIVE_COUNT) {
            None => Ok(0),
            Some((_, v)) => {
                let text = v.as_deref().map(String::from_utf8_lossy).unwrap_or_default();
                text.trim().parse().map_err(|_| Refusal::UnreadableCount(text.into_owned()))
            }
        }
    }

    /// The key as text (keys are order ids).
    pub fn key_text(&self) -> Option<String> {
        self.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned())
    }

    /// The record a redrive sends, or why it must not be redriven: its count reached
    /// `max_redrives`, so a record that keeps failing cannot loop.
    pub fn redrive(&self, max_redrives: u32) -> Result<Redrive, Refusal> {
        // The runtime dead-letters `T` to `T.dlt`; a record claiming another origin did not come
        // from it, and is not sent to a topic it names.
        let expected = self.dlt_topic.strip_suffix(DLT_SUFFIX).unwrap_or(&self.dlt_topic);
        if self.original_topic() != expected {
            return Err(Refusal::ForeignOrigin { named: self.original_topic(), expected: expected.to_string() });
        }
        let previous = self.redrive_count()?;
        if previous >= max_redrives {
            return Err(Refusal::AtLimit { previous, limit: max_redrives });
        }
        let count = previous + 1;
        let mut out: Vec<Header> = self.headers.iter().filter(|(k, _)| !k.starts_with(headers::PREFIX) && k != headers::REDRIVE_COUNT).cloned().collect();
        out.push((headers::REDRIVE_COUNT.to_string(), Some(count.to_string().into_bytes())));
        Ok(Redrive { topic: self.original_topic(), key: self.key.clone(), value: self.value.clone(), headers: out, count })
    }

    /// The record as `list --json` prints it.
    pub fn summary(&self) -> DeadLetterSummary {
        let original_headers = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with(headers::PREFIX))
            .map(|(k, v)| (k.clone(), v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned())))
            .collect();
        DeadLetterSummary {
            dlt_topic: self.dlt_topic.clone(),
            partition: self.partition,
            offset: self.offset,
            key: self.key_text(),
            original_topic: self.original_topic(),
            original_partition: self.original_partition(),
            original_offset: self.original_offset(),
            error_class: self.error_class().map(str::to_string),
            error_message: self.error_message().map(str::to_string),
            consumer_group: self.consumer_group().map(str::to_string),
            failed_at_ms: self.failed_at_ms(),
            failed_at: self.failed_at_ms().map(format_ms),
            redrive_count: self.redrive_count().ok(),
            value_bytes: self.value.as_ref().map_or(0, Vec::len),
            headers: original_headers,
            purged: self.purged,
        }
    }

    /// Two lines: where it is, where it came from and when; then its cause.
    pub fn render(&self, out: &mut String) {
        let s = self.summary();
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{}  key {}  from {}/{}@{}  group {}  failed {}  redrives {}{}",
            self.location(),
            or_dash(s.key),
            s.original_topic,
            or_dash(s.original_partition.map(|p| p.to_string())),
            or_dash(s.original_offset.map(|o| o.to_string())),
            or_dash(s.consumer_group),
            or_dash(s.failed_at),
            or_dash(s.redrive_count.map(|c| c.to_string())),
            if self.purged { "  [purged]" } else { "" },
        );
        let _ = writeln!(out, "    {}: {}", or_dash(s.error_class), s.error_message.unwrap_or_default());
    }
}

/// Why a dead letter must not be redriven.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Its `saga.dlt.original.topic` names another topic than the one its dead-letter topic
    /// belongs to: it did not come from the runtime, and is not sent where it says.
    #[error("its {header} header names {named}, not {expected}", header = headers::ORIGINAL_TOPIC)]
    ForeignOrigin {
        /// The topic the header names.
        named: String,
        /// The topic of its dead-letter topic.
        expected: String,
    },
    /// It was redriven as often as allowed, so a record that keeps failing cannot loop.
    #[error("redriven {previous} time(s) already, the limit is {limit}")]
    AtLimit {
        /// Redrives so far.
        previous: u32,
        /// The limit.
        limit: u32,
    },
    /// Its `saga.redrive.count` header is not a number.
    #[error("unreadable {name} header {0:?}", name = headers::REDRIVE_COUNT)]
    UnreadableCount(String),
}

/// A dead letter as `list --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterSummary {
    /// Dead-letter topic.
    pub dlt_topic: String,
    /// Partition there.
    pub partition: i32,
    /// Offset there.
    pub offset: i64,
    /// The key as text.
    pub key: Option<String>,
    /// The topic it was read from.
    pub original_topic: String,
    /// The partition it was read from.
    pub original_partition: Option<i32>,
    /// Its offset there.
    pub original_offset: Option<i64>,
    /// Error class.
    pub error_class: Option<String>,
    /// Error message.
    pub error_message: Option<String>,
    /// The consumer group that dead-lettered it.
    pub consumer_group: Option<String>,
    /// When, ms since the epoch.
    pub failed_at_ms: Option<i64>,
    /// When, RFC 3339 in UTC.
    pub failed_at: Option<String>,
    /// Redrives before it was dead-lettered; absent when the header is unreadable.
    pub redrive_count: Option<u32>,
    /// Size of the value.
    pub value_bytes: usize,
    /// The original headers (not `saga.dlt.*`), values as text.
    pub headers: BTreeMap<String, Option<String>>,
    /// Hidden by a purge (only listed with `--all`).
    pub purged: bool,
}

/// Milliseconds since the epoch as RFC 3339 in UTC, e.g. `2024-05-01T12:00:00.250Z`.
pub fn format_ms(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil: proleptic Gregorian calendar, valid for any i64 day count
    // this can see.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> Header {
        (k.into(), Some(v.as_bytes().to_vec()))
    }

    fn letter(extra: Vec<Header>) -> DeadLetterRecord {
        let mut headers = vec![h("traceparent", "00-abc-def-01"), (String::from("empty"), None)];
        headers.extend(extra);
        headers.extend([
            h(headers::ORIGINAL_TOPIC, "acme.order.commands"),
            h(headers::ORIGINAL_PARTITION, "2"),
            h(headers::ORIGINAL_OFFSET, "41"),
            h(headers::CONSUMER_GROUP, "saga-order"),
            h(headers::ERROR_CLASS, "malformed-avro"),
            h(headers::ERROR_MESSAGE, "bad body"),
            h(headers::FAILED_AT, "1714564800250"),
        ]);
        DeadLetterRecord {
            dlt_topic: "acme.order.commands.dlt".into(),
            partition: 0,
            offset: 7,
            key: Some(b"o-1".to_vec()),
            value: Some(vec![0, 1, 2]),
            headers,
            purged: false,
        }
    }

    #[test]
    fn reads_origin_and_cause_from_the_headers() {
        let l = letter(vec![]);
        assert_eq!(l.original_topic(), "acme.order.commands");
        assert_eq!((l.original_partition(), l.original_offset()), (Some(2), Some(41)));
        assert_eq!((l.error_class(), l.error_message(), l.consumer_group()), (Some("malformed-avro"), Some("bad body"), Some("saga-order")));
        assert_eq!(l.redrive_count(), Ok(0));
        let mut text = String::new();
        l.render(&mut text);
        assert!(
            text.starts_with(
                "acme.order.commands.dlt/0@7  key o-1  from acme.order.commands/2@41  group saga-order  failed 2024-05-01T12:00:00.250Z  redrives 0\n"
            ),
            "{text}"
        );
        assert!(text.ends_with("    malformed-avro: bad body\n"), "{text}");
    }

    #[test]
    fn without_an_origin_header_the_topic_comes_from_the_dead_letter_topic() {
        let mut l = letter(vec![]);
        l.headers.retain(|(k, _)| k != headers::ORIGINAL_TOPIC);
        assert_eq!(l.original_topic(), "acme.order.commands");
    }

    #[test]
    fn a_redrive_keeps_the_original_headers_drops_the_dlt_ones_and_counts() {
        let r = letter(vec![h(headers::REDRIVE_COUNT, "1")]).redrive(3).unwrap();
        assert_eq!(r.topic, "acme.order.commands");
        assert_eq!((r.key.as_deref(), r.value.as_deref()), (Some(&b"o-1"[..]), Some(&[0u8, 1, 2][..])));
        assert_eq!(r.count, 2);
        assert_eq!(r.headers, vec![h("traceparent", "00-abc-def-01"), (String::from("empty"), None), h(headers::REDRIVE_COUNT, "2")]);
    }

    #[test]
    fn a_record_at_the_limit_is_refused_and_an_unreadable_count_too() {
        let e = letter(vec![h(headers::REDRIVE_COUNT, "3")]).redrive(3).unwrap_err().to_string();
        assert!(e.contains("redriven 3 time(s) already, the limit is 3"), "{e}");
        assert_eq!(letter(vec![h(headers::REDRIVE_COUNT, "3")]).redrive(4).unwrap().count, 4);
        let e = letter(vec![h(headers::REDRIVE_COUNT, "many")]).redrive(3).unwrap_err().to_string();
        assert!(e.contains("saga.redrive.count") && e.contains("many"), "{e}");
        let mut elsewhere = letter(vec![]);
        elsewhere.dlt_topic = "acme.payment.events.dlt".into();
        let e = elsewhere.redrive(3).unwrap_err().to_string();
        assert!(e.contains("acme.order.commands") && e.contains("not acme.payment.events"), "{e}");
    }

    #[test]
    fn the_summary_shows_only_original_headers() {
        let s = letter(vec![]).summary();
        assert_eq!(s.headers.keys().collect::<Vec<_>>(), vec!["empty", "traceparent"]);
        assert_eq!(s.failed_at.as_deref(), Some("2024-05-01T12:00:00.250Z"));
    }

    #[test]
    fn formats_epoch_milliseconds_as_utc() {
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(format_ms(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }
}
