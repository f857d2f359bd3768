//! `sagactl sagas`: read the orchestrator's saga log — what happened to an order, when, and why —
//! and act on a saga: retry the command it waits on, or abort it.
//!
//! Retry and abort change the saga in the orchestrator's database and write their commands to
//! the orchestrator's outbox in one transaction, exactly as a reply would; the orchestrator's
//! relay publishes them (within `relay.poll_interval_ms`). They carry the saga's stored trace
//! context, so they join its trace.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use saga_contracts::Topics;
use saga_orchestrator::control::{self, OperatorError, OperatorResult};
use saga_orchestrator::saga::Status;
use saga_orchestrator::store::{self, LogEntry, SagaRecord};
use saga_orchestrator::Orchestrator;
use saga_runtime::codec::Codec;
use saga_runtime::HandleError;
use saga_store::Db;
use sqlx::Acquire;

/// Parses a saga status given on the command line (`running`, `COMPENSATED`, …).
pub fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(&s.to_ascii_uppercase()).ok_or_else(|| {
        let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown saga status {s:?} (expected one of {})", all.join(", "))
    })
}

/// What retry and abort need besides the database: the registry to encode commands, the topic
/// names, and the orchestrator's deadlines, all from the orchestrator's configuration.
pub struct Operator {
    orchestrator: Orchestrator,
    codec: Codec,
    topics: Topics,
}

impl Operator {
    /// Reads the orchestrator's settings (file, then `SAGA_*` variables).
    pub fn from_config(file: Option<&Path>) -> anyhow::Result<Operator> {
        let settings = saga_runtime::ServiceSettings::load("orchestrator", file)?;
        let codec = Codec::connect(&settings.registry).with_context(|| format!("schema registry {}", settings.registry.url))?;
        let mut orchestrator = Orchestrator::default();
        orchestrator.configure(&settings)?;
        Ok(Operator { orchestrator, codec, topics: Topics::new(settings.topics.prefix.clone()) })
    }

    /// Sends the awaited command of `saga_id` again.
    pub async fn retry(&self, db: &Db, saga_id: &str) -> anyhow::Result<String> {
        self.act(db, saga_id, None).await
    }

    /// Compensates `saga_id` from where it stands.
    pub async fn abort(&self, db: &Db, saga_id: &str, reason: &str) -> anyhow::Result<String> {
        self.act(db, saga_id, Some(reason)).await
    }

    /// Retry (`abort_reason` none) or abort, and the outbox rows, in one transaction; tried again
    /// (up to five times) when the database was busy or another writer moved the saga first,
    /// since the orchestrator keeps writing while an operator acts.
    async fn act(&self, db: &Db, saga_id: &str, abort_reason: Option<&str>) -> anyhow::Result<String> {
        let mut attempt = 1;
        loop {
            match self.act_once(db, saga_id, abort_reason).await {
                Err(e) if attempt < 5 && is_contention(&e) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn act_once(&self, db: &Db, saga_id: &str, abort_reason: Option<&str>) -> anyhow::Result<String> {
        let mut conn = db.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let mut db_tx = saga_store::Conn::Sqlx(&mut tx);
        // This process keeps no saga metrics: what the command did is not counted here.
        let mut notes = Vec::new();
        let result: OperatorResult = match abort_reason {
            None => control::retry(&self.orchestrator, &mut db_tx, saga_id, &mut notes).await?,
            Some(reason) => control::abort(&self.orchestrator, &mut db_tx, saga_id, reason, &mut notes).await?,
        };
        let done = if abort_reason.is_some() { "aborted" } else { "retried" };
        let trace: Vec<(String, String)> = result.before.trace_parent.iter().map(|tp| ("traceparent".to_string(), tp.clone())).collect();
        let mut out = String::new();
        for command in &result.commands {
            saga_runtime::outbox::write_to_outbox(&mut db_tx, &self.codec, &self.topics, command, &trace, None)
                .await
                .with_context(|| format!("writing {} to the outbox", command.short_name()))?;
            writeln!(out, "sent {} {} to {}", command.short_name(), command.envelope().message_id, self.topics.name(command.topic_kind()))?;
        }
        tx.commit().await?;
        let after = store::get_saga(db, saga_id).await?.context("the saga vanished")?;
        writeln!(
            out,
            "saga {saga_id} {done}: {} -> {} at {}",
            result.before.state.status.as_str(),
            after.state.status.as_str(),
            after.state.position.encode()
        )?;
        Ok(out)
    }
}

/// True when `e` says the database was busy or another writer won a conflict: the same command
/// may go through a moment later.
fn is_contention(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        let store = cause.downcast_ref::<sqlx::Error>().or(match cause.downcast_ref::<OperatorError>() {
            Some(OperatorError::Handle(HandleError::Store(e))) => Some(e),
            _ => None,
        });
        let conflict = matches!(cause.downcast_ref::<OperatorError>(), Some(OperatorError::Handle(HandleError::Conflict(_))))
            || matches!(cause.downcast_ref::<HandleError>(), Some(HandleError::Conflict(_)));
        conflict || store.is_some_and(saga_store::is_transient)
    })
}

/// `abort --dry-run`: the compensations an abort would send, in order, with their keys.
pub async fn abort_plan(db: &Db, saga_id: &str) -> anyhow::Result<String> {
    let mut conn = db.pool().acquire().await?;
    let plan = control::abort_plan(&Orchestrator::default(), &mut saga_store::Conn::Sqlx(&mut conn), saga_id).await?;
    let mut out = format!("abort of saga {saga_id} would send, one at a time as each is confirmed:\n");
    for (i, (command, key)) in plan.iter().enumerate() {
        writeln!(out, "{}. {:?} ({} of step {}) key {key}", i + 1, command.action, command.phase.as_str(), command.step)?;
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
