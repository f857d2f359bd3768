//! `sagactl sagas`: read the orchestrator's saga log — what happened to an order, when, and why —
//! and act on a saga: retry the command it waits on, or abort it.
//!
//! Retry and abort are [`saga_orchestrator::operator`]'s, as the saga view's buttons: they change
//! the saga in the orchestrator's database and write their commands to the orchestrator's outbox
//! in one transaction, exactly as a reply would; the orchestrator's relay publishes them (within
//! `relay.poll_interval_ms`). They carry the saga's stored trace context, so they join its trace,
//! and the saga log records who asked.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use saga_contracts::Topics;
use saga_orchestrator::operator::Acted;
use saga_orchestrator::saga::Status;
use saga_orchestrator::store::{self, LogEntry, SagaRecord};
use saga_orchestrator::Orchestrator;
use saga_runtime::codec::Codec;
use saga_store::Db;

/// Parses a saga status given on the command line (`running`, `COMPENSATED`, …).
pub fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown saga status {s:?} (expected one of {})", all.join(", "))
    })
}

/// `sagactl sagas retry|abort`: the orchestrator's [`Operator`], configured from the
/// orchestrator's settings (registry, topic prefix, definitions and deadlines).
pub struct Operator(saga_orchestrator::operator::Operator);

impl Operator {
    /// Reads the orchestrator's settings (file, then `SAGA_*` variables).
    pub fn from_config(file: Option<&Path>) -> anyhow::Result<Operator> {
        let (settings, saga) = saga_runtime::ServiceSettings::load_with::<saga_orchestrator::SagaSettings>("orchestrator", file)?;
        let codec = Codec::connect(&settings.registry).with_context(|| format!("schema registry {}", settings.registry.url))?;
        let orchestrator = Orchestrator::configured(&settings, &saga)?;
        Ok(Operator(saga_orchestrator::operator::Operator::new(orchestrator, codec, Topics::new(settings.topics.prefix.clone()))))
    }

    /// Sends the awaited command of `saga_id` again.
    pub async fn retry(&self, db: &Db, saga_id: &str) -> anyhow::Result<String> {
        render_acted(&self.0.retry(db, saga_id, &asker()).await?)
    }

    /// Compensates `saga_id` from where it stands.
    pub async fn abort(&self, db: &Db, saga_id: &str, reason: &str) -> anyhow::Result<String> {
        render_acted(&self.0.abort(db, saga_id, reason, &asker()).await?)
    }
}

/// Who asked, for the saga log: `sagactl (user U on H)`.
fn asker() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "unknown host".into());
    format!("sagactl (user {user} on {host})")
}

fn render_acted(a: &Acted) -> anyhow::Result<String> {
    let mut out = String::new();
    for s in &a.sent {
        writeln!(out, "sent {} {} to {}", s.command, s.message_id, s.topic)?;
    }
    writeln!(out, "saga {} {}: {} -> {} at {}", a.saga_id, a.action, a.from, a.to, a.position)?;
    Ok(out)
}

/// `abort --dry-run`: the compensations an abort would send, in order, with their keys.
pub async fn abort_plan(db: &Db, saga_id: &str) -> anyhow::Result<String> {
    let plan = saga_orchestrator::operator::plan(&Orchestrator::default(), db, saga_id).await?;
    let mut out = format!("abort of saga {saga_id} would send, one at a time as each is confirmed:\n");
    for (i, p) in plan.iter().enumerate() {
        writeln!(out, "{}. {} ({} of step {}) key {}", i + 1, p.command, p.phase, p.step, p.key)?;
    }
    out.push_str("nothing was changed (dry run)\n");
    Ok(out)
}

/// One line per saga: id, definition version, status, position, last change.
pub async fn list(db: &Db, status: Option<Status>, limit: i64) -> anyhow::Result<String> {
    let sagas = store::list_sagas(db, status, limit).await?;
    let mut out = String::new();
    for s in &sagas {
        writeln!(
            out,
            "{:<28} v{:<3} {:<13} {:<16} attempt {}  updated {}  {}",
            s.saga_id,
            s.definition_version,
            s.state.status.as_str(),
            s.state.position.encode(),
            s.state.attempt,
            s.updated_at_ms,
            s.state.blocked.as_deref().or(s.state.failure.as_deref()).unwrap_or("")
        )?;
    }
    writeln!(out, "{} saga(s)", sagas.len())?;
    Ok(out)
}

/// The saga and its whole log, oldest entry first.
pub async fn show(db: &Db, saga_id: &str) -> anyhow::Result<String> {
    let Some(saga) = store::get_saga(db, saga_id).await? else {
        anyhow::bail!("no saga {saga_id:?} in this orchestrator database");
    };
    let log = store::saga_log(db, saga_id).await?;
    Ok(render(&saga, &log))
}

fn render(saga: &SagaRecord, log: &[LogEntry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "saga {} ({} v{}): {} at {}, correlation {}",
        saga.saga_id,
        saga.saga_type,
        saga.definition_version,
        saga.state.status.as_str(),
        saga.state.position.encode(),
        saga.correlation_id
    );
    if let Some(f) = &saga.state.failure {
        let _ = writeln!(out, "failure: {f}");
    }
    if let Some(b) = &saga.state.blocked {
        let _ = writeln!(out, "{}: {b}", saga.state.status.as_str().to_ascii_lowercase());
    }
    if let Some(d) = saga.deadline_at_ms {
        let _ = writeln!(out, "deadline: {d} (attempt {})", saga.state.attempt);
    }
    let _ = writeln!(
        out,
        "order: customer {}, {} {} minor units, {} line(s)",
        saga.data.customer_id,
        saga.data.total_minor,
        saga.data.currency,
        saga.data.lines.len()
    );
    for e in log {
        let _ = writeln!(
            out,
            "{:>3} {} v{} {:<16} {:<18} {} -> {}  cause {} ({}){}{}",
            e.seq,
            e.at_ms,
            e.definition_version,
            e.event,
            e.step.as_deref().unwrap_or("-"),
            e.from_status.as_deref().unwrap_or("-"),
            e.to_status,
            e.cause_message_id.as_deref().unwrap_or("-"),
            e.cause_message_type.as_deref().unwrap_or("-"),
            if e.sent.is_empty() { String::new() } else { format!("  sent {}", e.sent.join(", ")) },
            e.detail.as_deref().map(|d| format!("  why: {d}")).unwrap_or_default(),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_parse_in_any_case_and_bad_ones_name_themselves() {
        assert_eq!(parse_status("running"), Ok(Status::Running));
        assert_eq!(parse_status("COMPENSATED"), Ok(Status::Compensated));
        assert_eq!(parse_status("stuck"), Ok(Status::Stuck));
        assert_eq!(parse_status("Parked"), Ok(Status::Parked));
        assert!(parse_status("stuk").unwrap_err().contains("\"stuk\""));
    }
}
