//! `sagactl sagas`: read the orchestrator's saga log — what happened to an order, when, and why.

use std::fmt::Write as _;

use saga_orchestrator::saga::Status;
use saga_orchestrator::store::{self, LogEntry, SagaRecord};
use saga_store::Db;

/// Parses a saga status given on the command line (`running`, `COMPENSATED`, …).
pub fn parse_status(s: &str) -> Result<Status, String> {
    Status::parse(&s.to_ascii_uppercase())
        .ok_or_else(|| format!("unknown saga status {s:?} (expected RUNNING, COMPENSATING, COMPLETED or COMPENSATED)"))
}

/// One line per saga: id, status, position, last change.
pub async fn list(db: &Db, status: Option<Status>, limit: i64) -> anyhow::Result<String> {
    let sagas = store::list_sagas(db, status, limit).await?;
    let mut out = String::new();
    for s in &sagas {
        writeln!(
            out,
            "{:<28} {:<13} {:<16} attempt {}  updated {}  {}",
            s.saga_id,
            s.state.status.as_str(),
            s.state.position.encode(),
            s.state.attempt,
            s.updated_at_ms,
            s.state.failure.as_deref().unwrap_or("")
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
    let _ = writeln!(out, "order: customer {}, {} {} minor units, {} line(s)", saga.data.customer_id, saga.data.total_minor, saga.data.currency, saga.data.lines.len());
    for e in log {
        let _ = writeln!(
            out,
            "{:>3} {} {:<16} {:<18} {} -> {}  cause {} ({}){}{}",
            e.seq,
            e.at_ms,
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
        assert!(parse_status("stuk").unwrap_err().contains("\"stuk\""));
    }
}
