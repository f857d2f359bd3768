//! `sagactl dlt`: list, redrive and purge the records in the dead-letter topics.
//!
//! The runtime ([`saga_runtime::dlt`]) sends a record it can never process from topic `T` to
//! `T.dlt` with its key, value and headers, plus `saga.dlt.*` headers naming its origin and cause.
//!
//! - **list** reads the dead-letter topics (all six, or one) and shows each record with its
//!   origin, cause, consumer group, time and redrive count.
//! - **redrive** produces records back to their original topic with their key, value and original
//!   headers, without the `saga.dlt.*` ones, and with `saga.redrive.count` one higher than the
//!   count the dead letter carries (the runtime copies the original headers into a dead letter, so
//!   a redriven record that fails again comes back with its count). A record whose count reached
//!   `--max-redrives` is refused, so a poison record cannot loop. The dead letter stays where it
//!   is: purge it once the redrive worked. Consumers dedupe by message id, so redriving the same
//!   record twice has no effect beyond the first.
//! - **purge** hides records from `list` and from `redrive` selections. librdkafka's mock cluster
//!   has no DeleteRecords, so purge does not delete: it commits, per dead-letter partition, the
//!   offset below which records are purged, in the operator group `<prefix>.sagactl-dlt`
//!   ([`operator_group`]), and `list` starts there (`--all` starts at the beginning and marks the
//!   purged records). Purge marks only move forward. The records themselves go when the topic's
//!   retention deletes them; Kafka also forgets the marks of a group without members
//!   `offsets.retention.minutes` (7 days by default) after their last commit, after which the
//!   records still retained list again.
//!
//! Connection settings are the services' own ([`saga_runtime::ServiceSettings`]): defaults, the
//! `--config` file, `SAGA_*` variables, then `--bootstrap-servers` and `--prefix`.

mod broker;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

pub use broker::Dlt;
use saga_contracts::{TopicKind, Topics};
pub use saga_runtime::dlt::record::{format_ms, DeadLetterRecord, DeadLetterSummary, Header, Redrive};

/// Redrives allowed per record unless `--max-redrives` says otherwise.
pub const DEFAULT_MAX_REDRIVES: u32 = 3;

/// The consumer group whose committed offsets are the purge marks: `<prefix>.sagactl-dlt`.
pub fn operator_group(prefix: &str) -> String {
    if prefix.is_empty() {
        "sagactl-dlt".into()
    } else {
        format!("{prefix}.sagactl-dlt")
    }
}

/// Where the broker is and what the topics are called.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnectArgs {
    /// TOML configuration file in the services' format; `SAGA_*` environment variables override it.
    #[arg(long, env = "SAGA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Broker bootstrap servers (overrides kafka.bootstrap_servers).
    #[arg(long, env = "SAGA_KAFKA__BOOTSTRAP_SERVERS", global = true)]
    pub bootstrap_servers: Option<String>,
    /// Topic prefix (overrides topics.prefix).
    #[arg(long, env = "SAGA_TOPICS__PREFIX", global = true)]
    pub prefix: Option<String>,
    /// Seconds to wait for the broker before giving up.
    #[arg(long, default_value_t = 5, global = true, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub timeout_secs: u64,
}

impl ConnectArgs {
    /// The services' settings with these overrides applied.
    pub fn settings(&self) -> Result<saga_runtime::ServiceSettings, DltError> {
        let mut settings = saga_runtime::ServiceSettings::load("sagactl", self.config.as_deref())?;
        if let Some(b) = &self.bootstrap_servers {
            settings.kafka.bootstrap_servers = b.clone();
        }
        if let Some(p) = &self.prefix {
            settings.topics.prefix = p.clone();
        }
        settings.validate()?;
        Ok(settings)
    }

    /// How long one broker request may take.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }
}

/// `dlt list`.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only this topic's dead letters (the original topic's name or the .dlt name).
    #[arg(long)]
    pub topic: Option<String>,
    /// Also the records hidden by a purge (marked [purged]).
    #[arg(long)]
    pub all: bool,
    /// Print a JSON array, one object per record.
    #[arg(long)]
    pub json: bool,
    /// At most this many records.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: u64,
}

/// `dlt redrive`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("selection").required(true).multiple(true).args(["topic", "all"])))]
pub struct RedriveArgs {
    /// The dead letters of this topic (original or .dlt name).
    #[arg(long)]
    pub topic: Option<String>,
    /// With --offset: the one record at this partition of the dead-letter topic.
    #[arg(long, requires_all = ["topic", "offset"], value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// With --partition: the one record at this offset of the dead-letter topic (purged or not).
    #[arg(long, requires = "partition", conflicts_with_all = ["class", "key", "all"], value_parser = clap::value_parser!(i64).range(0..))]
    pub offset: Option<i64>,
    /// Only records dead-lettered with this error class (e.g. handler-failed).
    #[arg(long)]
    pub class: Option<String>,
    /// Only records with this key (order id).
    #[arg(long)]
    pub key: Option<String>,
    /// Every listed (not purged) record, of all dead-letter topics unless --topic.
    #[arg(long)]
    pub all: bool,
    /// Refuse records already redriven this many times.
    #[arg(long, default_value_t = DEFAULT_MAX_REDRIVES)]
    pub max_redrives: u32,
    /// Print what would be redriven; produce nothing.
    #[arg(long)]
    pub dry_run: bool,
}

impl Default for RedriveArgs {
    /// No selection, the default limit, for real.
    fn default() -> RedriveArgs {
        RedriveArgs { topic: None, partition: None, offset: None, class: None, key: None, all: false, max_redrives: DEFAULT_MAX_REDRIVES, dry_run: false }
    }
}

/// `dlt purge`.
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("range").required(true).args(["before_offset", "all"])))]
pub struct PurgeArgs {
    /// Only this topic's dead letters (original or .dlt name); all six without it.
    #[arg(long)]
    pub topic: Option<String>,
    /// Only this partition of the dead-letter topic.
    #[arg(long, requires = "topic", value_parser = clap::value_parser!(i32).range(0..))]
    pub partition: Option<i32>,
    /// Purge the records below this offset (in each selected partition).
    #[arg(long, requires = "topic", value_parser = clap::value_parser!(i64).range(0..))]
    pub before_offset: Option<i64>,
    /// Purge every record there is now.
    #[arg(long)]
    pub all: bool,
}

/// Why a `dlt` command could not run.
#[derive(Debug, thiserror::Error)]
pub enum DltError {
    /// The settings could not be loaded.
    #[error(transparent)]
    Config(#[from] saga_runtime::config::ConfigError),
    /// The broker did not answer.
    #[error("cannot reach the broker at {bootstrap} within {timeout_secs} s: {reason}")]
    Unreachable {
        /// The bootstrap servers tried.
        bootstrap: String,
        /// How long it waited.
        timeout_secs: u64,
        /// librdkafka's answer.
        reason: String,
    },
    /// `--topic` names no topic of this system.
    #[error("unknown topic {topic}: expected one of {expected} (or its .dlt name)")]
    UnknownTopic {
        /// The name given.
        topic: String,
        /// The topics with this prefix.
        expected: String,
    },
    /// The topic is one of ours but the broker does not have it.
    #[error("topic {topic} does not exist on {bootstrap}")]
    MissingTopic {
        /// The topic.
        topic: String,
        /// The broker.
        bootstrap: String,
    },
    /// None of the six dead-letter topics exists.
    #[error("no dead-letter topics with prefix {prefix:?} on {bootstrap} (is --prefix right?)")]
    NoDeadLetterTopics {
        /// The topic prefix.
        prefix: String,
        /// The broker.
        bootstrap: String,
    },
    /// No such partition.
    #[error("topic {topic} has no partition {partition} (it has {partitions})")]
    NoPartition {
        /// The dead-letter topic.
        topic: String,
        /// The partition asked for.
        partition: i32,
        /// How many it has.
        partitions: i32,
    },
    /// Nothing at the offset given.
    #[error("no record at {topic}/{partition}@{offset} (the partition holds offsets {low}..{high})")]
    NotFound {
        /// The dead-letter topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The offset asked for.
        offset: i64,
        /// First offset the partition holds.
        low: i64,
        /// One past the last.
        high: i64,
    },
    /// A request to the broker failed.
    #[error("{what} failed: {source}")]
    Kafka {
        /// What was being done, with topic and partition.
        what: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
    /// Records did not arrive.
    #[error("timed out reading {topic}/{partition} at offset {offset}")]
    ReadTimeout {
        /// The dead-letter topic.
        topic: String,
        /// Its partition.
        partition: i32,
        /// The next offset expected.
        offset: i64,
    },
}

/// The dead-letter topic `name` stands for: one of the system's topics or its `.dlt` name.
pub fn resolve_topic(topics: &Topics, name: &str) -> Result<String, DltError> {
    let base = name.strip_suffix(saga_contracts::topics::DLT_SUFFIX).unwrap_or(name);
    match topics.kind_of(base) {
        Some(_) => Ok(Topics::dlt(base)),
        None => {
            Err(DltError::UnknownTopic { topic: name.to_string(), expected: TopicKind::ALL.iter().map(|k| topics.name(*k)).collect::<Vec<_>>().join(", ") })
        }
    }
}

/// What `list` found.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The records, by topic, partition and offset, at most `--limit`.
    pub records: Vec<DeadLetterRecord>,
    /// Records in range, including those past the limit.
    pub available: u64,
    /// Purged records not shown (without `--all`).
    pub hidden_purged: u64,
}

impl Listing {
    /// One record per two lines, then a count.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for r in &self.records {
            r.render(&mut out);
        }
        let _ = write!(out, "{} dead letter(s)", self.records.len());
        if self.available > self.records.len() as u64 {
            let _ = write!(out, "; {} more not shown (--limit)", self.available - self.records.len() as u64);
        }
        if self.hidden_purged > 0 {
            let _ = write!(out, "; {} purged not shown (--all)", self.hidden_purged);
        }
        out.push('\n');
        out
    }

    /// A JSON array of [`DeadLetterSummary`] objects.
    pub fn render_json(&self) -> String {
        let all: Vec<DeadLetterSummary> = self.records.iter().map(DeadLetterRecord::summary).collect();
        serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into()) + "\n"
    }
}

/// What happened to one selected record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedriveOutcome {
    /// Produced back to its original topic.
    Redriven {
        /// The original topic.
        topic: String,
        /// Partition it landed on.
        partition: i32,
        /// Its offset there.
        offset: i64,
        /// The `saga.redrive.count` it carries.
        count: u32,
    },
    /// Would be produced (`--dry-run`).
    WouldRedrive {
        /// The original topic.
        topic: String,
        /// The `saga.redrive.count` it would carry.
        count: u32,
    },
    /// Not produced, and why.
    Refused(String),
    /// Producing failed; records after it were not tried.
    Failed(String),
}

/// What `redrive` did, record by record.
#[derive(Debug, Clone, Default)]
pub struct RedriveReport {
    /// Each selected dead letter and what happened to it.
    pub outcomes: Vec<(DeadLetterRecord, RedriveOutcome)>,
    /// Selected records not tried because producing failed first.
    pub not_attempted: usize,
}

impl RedriveReport {
    /// Records refused (count at the limit, original topic missing).
    pub fn refused(&self) -> usize {
        self.outcomes.iter().filter(|(_, o)| matches!(o, RedriveOutcome::Refused(_))).count()
    }

    /// Whether every selected record was redriven (or would be, with `--dry-run`).
    pub fn all_ok(&self) -> bool {
        self.not_attempted == 0 && self.outcomes.iter().all(|(_, o)| matches!(o, RedriveOutcome::Redriven { .. } | RedriveOutcome::WouldRedrive { .. }))
    }

    /// One line per record, then a summary.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let (mut done, mut would, mut failed) = (0, 0, 0);
        for (r, o) in &self.outcomes {
            let key = r.key_text().unwrap_or_else(|| "-".into());
            let _ = match o {
                RedriveOutcome::Redriven { topic, partition, offset, count } => {
                    done += 1;
                    writeln!(out, "redriven {} -> {topic}/{partition}@{offset}  key {key}  redrive {count}", r.location())
                }
                RedriveOutcome::WouldRedrive { topic, count } => {
                    would += 1;
                    writeln!(out, "would redrive {} -> {topic}  key {key}  redrive {count}", r.location())
                }
                RedriveOutcome::Refused(why) => writeln!(out, "refused {}  key {key}: {why}", r.location()),
                RedriveOutcome::Failed(why) => {
                    failed += 1;
                    writeln!(out, "failed {}  key {key}: {why}", r.location())
                }
            };
        }
        let _ = write!(out, "summary: {done} redriven, {} refused", self.refused());
        if would > 0 || self.outcomes.is_empty() {
            let _ = write!(out, ", {would} would be redriven (dry run: nothing produced)");
        }
        if failed > 0 || self.not_attempted > 0 {
            let _ = write!(out, ", {failed} failed, {} not attempted", self.not_attempted);
        }
        out.push('\n');
        out
    }
}

/// One dead-letter partition's purge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgedPartition {
    /// The dead-letter topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// The purge mark before.
    pub from: i64,
    /// The purge mark now: records below it are purged.
    pub to: i64,
    /// Records at or above the mark.
    pub remaining: i64,
}

/// Renders what `purge` did.
pub fn render_purge(purged: &[PurgedPartition]) -> String {
    let mut out = String::new();
    let mut total = 0;
    for p in purged.iter().filter(|p| p.to > p.from) {
        total += p.to - p.from;
        let _ = writeln!(out, "purged {}/{} offsets {}..{} ({} record(s)); {} remain", p.topic, p.partition, p.from, p.to, p.to - p.from, p.remaining);
    }
    let _ = writeln!(out, "summary: {total} record(s) purged in {} partition(s)", purged.iter().filter(|p| p.to > p.from).count());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_is_named_by_its_own_or_its_dead_letter_name() {
        let t = Topics::new("acme");
        assert_eq!(resolve_topic(&t, "acme.payment.events").unwrap(), "acme.payment.events.dlt");
        assert_eq!(resolve_topic(&t, "acme.payment.events.dlt").unwrap(), "acme.payment.events.dlt");
        let e = resolve_topic(&t, "acme.payment.eventz").unwrap_err().to_string();
        assert!(e.contains("unknown topic acme.payment.eventz") && e.contains("acme.order.commands"), "{e}");
        assert_eq!(operator_group("acme"), "acme.sagactl-dlt");
    }
}
