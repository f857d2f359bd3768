//! Operators acting on a saga: retry the command it waits on, or abort it. One implementation for
//! `sagactl sagas retry|abort` and the saga view's buttons.
//!
//! Each action changes the saga in the orchestrator's database and writes its commands to the
//! orchestrator's outbox in one transaction, exactly as a reply would; the orchestrator's relay
//! publishes them. The commands carry the saga's stored trace context, so they join its trace,
//! and the saga log records who asked (the entry's cause: `operator`, with the asker).

use saga_contracts::Topics;
use saga_runtime::codec::Codec;
use saga_runtime::HandleError;
use saga_store::Db;
use sqlx::Acquire;

use crate::control::{self, OperatorError, OperatorResult};
use crate::saga::Command;
use crate::store;
use crate::Orchestrator;

/// What retry and abort need besides the database: the registry to encode commands, the topic
/// names, and the orchestrator's definitions and deadlines.
pub struct Operator {
    orchestrator: Orchestrator,
    codec: Codec,
    topics: Topics,
}

/// A command an action sent.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sent {
    /// Its type, e.g. `ReleaseStock`.
    pub command: &'static str,
    /// Its message id (the idempotency key).
    pub message_id: String,
    /// The topic it goes to.
    pub topic: String,
}

/// What an action did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Acted {
    /// The saga.
    pub saga_id: String,
    /// `retried` or `aborted`.
    pub action: &'static str,
    /// Its status before.
    pub from: &'static str,
    /// Its status after.
    pub to: &'static str,
    /// What it waits for now (`step:1`, `compensation:0`, …).
    pub position: String,
    /// The commands sent.
    pub sent: Vec<Sent>,
}

/// A command an abort would send, with its key (a dry run).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Planned {
    /// The command, e.g. `ReleaseStock`.
    pub command: String,
    /// `do`, `undo` or `finalize`.
    pub phase: &'static str,
    /// The step it belongs to.
    pub step: &'static str,
    /// The idempotency key it would carry.
    pub key: String,
}

impl Operator {
    /// An operator with `orchestrator`'s definitions and deadlines, encoding with `codec` onto
    /// `topics`.
    pub fn new(orchestrator: Orchestrator, codec: Codec, topics: Topics) -> Operator {
        Operator { orchestrator, codec, topics }
    }

    /// Sends the awaited command of `saga_id` again; `who` asked (recorded in the saga log).
    pub async fn retry(&self, db: &Db, saga_id: &str, who: &str) -> Result<Acted, OperatorError> {
        self.act(db, saga_id, None, who).await
    }

    /// Compensates `saga_id` from where it stands; `who` asked, for `reason`.
    pub async fn abort(&self, db: &Db, saga_id: &str, reason: &str, who: &str) -> Result<Acted, OperatorError> {
        self.act(db, saga_id, Some(reason), who).await
    }

    /// The commands an abort of `saga_id` would send, in order; changes nothing.
    pub async fn abort_plan(&self, db: &Db, saga_id: &str) -> Result<Vec<Planned>, OperatorError> {
        plan(&self.orchestrator, db, saga_id).await
    }

    /// Retry (`abort_reason` none) or abort, and the outbox rows, in one transaction.
    async fn act(&self, db: &Db, saga_id: &str, abort_reason: Option<&str>, who: &str) -> Result<Acted, OperatorError> {
        retrying(|| self.act_once(db, saga_id, abort_reason, who)).await
    }

    /// Sends dead letter `reference` (`topic/partition/offset`) of `saga_id` back to its original
    /// topic through the orchestrator's outbox, by `sagactl dlt redrive`'s rules (see
    /// [`control::redrive`]); `who` asked. With `dry_run`, says what it would send and changes
    /// nothing.
    pub async fn redrive(&self, db: &Db, saga_id: &str, reference: &str, who: &str, dry_run: bool) -> Result<Redriven, OperatorError> {
        if dry_run {
            let mut conn = db.pool().acquire().await?;
            let plan = control::redrive(&self.orchestrator, &mut saga_store::Conn::Sqlx(&mut conn), saga_id, reference, None).await?;
            return Ok(Redriven::of(saga_id, plan, true));
        }
        retrying(|| async {
            let mut conn = db.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            let mut db_tx = saga_store::Conn::Sqlx(&mut tx);
            let plan = control::redrive(&self.orchestrator, &mut db_tx, saga_id, reference, Some(who)).await?;
            saga_runtime::outbox::write_record_to_outbox(&mut db_tx, plan.record.clone(), &plan.message_id, "redrive", None).await?;
            tx.commit().await?;
            Ok(Redriven::of(saga_id, plan, false))
        })
        .await
    }

    async fn act_once(&self, db: &Db, saga_id: &str, abort_reason: Option<&str>, who: &str) -> Result<Acted, OperatorError> {
        let mut conn = db.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let mut db_tx = saga_store::Conn::Sqlx(&mut tx);
        // What the action did is not counted in the saga metrics: an operator's process keeps none.
        let mut notes = Vec::new();
        let result: OperatorResult = match abort_reason {
            None => control::retry(&self.orchestrator, &mut db_tx, saga_id, who, &mut notes).await?,
            Some(reason) => control::abort(&self.orchestrator, &mut db_tx, saga_id, reason, who, &mut notes).await?,
        };
        let trace: Vec<(String, String)> = result.before.trace_parent.iter().map(|tp| ("traceparent".to_string(), tp.clone())).collect();
        let mut sent = Vec::new();
        for command in &result.commands {
            saga_runtime::outbox::write_to_outbox(&mut db_tx, &self.codec, &self.topics, command, &trace, None)
                .await
                .map_err(|e| OperatorError::Refused { saga_id: saga_id.into(), reason: format!("writing {} to the outbox: {e}", command.short_name()) })?;
            sent.push(Sent { command: command.short_name(), message_id: command.envelope().message_id.clone(), topic: self.topics.name(command.topic_kind()) });
        }
        tx.commit().await?;
        let after = store::get_saga(db, saga_id).await?.ok_or_else(|| OperatorError::UnknownSaga(saga_id.into()))?;
        Ok(Acted {
            saga_id: saga_id.into(),
            action: if abort_reason.is_some() { "aborted" } else { "retried" },
            from: result.before.state.status.as_str(),
            to: after.state.status.as_str(),
            position: after.state.position.encode(),
            sent,
        })
    }
}

/// What a redrive sent (or would send).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Redriven {
    /// The saga.
    pub saga_id: String,
    /// The dead letter (`topic/partition/offset`).
    pub dead_letter: String,
    /// The topic it goes back to.
    pub topic: String,
    /// Its `saga.redrive.count`.
    pub count: u32,
    /// Its `message_id` header (the reference when it has none).
    pub message_id: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Nothing was sent.
    pub dry_run: bool,
}

impl Redriven {
    fn of(saga_id: &str, plan: control::RedrivePlan, dry_run: bool) -> Redriven {
        Redriven {
            saga_id: saga_id.into(),
            dead_letter: plan.reference,
            topic: plan.record.topic,
            count: plan.count,
            message_id: plan.message_id,
            headers: plan.record.headers,
            dry_run,
        }
    }
}

/// The commands an abort of `saga_id` would send, in order, as `orchestrator` would run it.
pub async fn plan(orchestrator: &Orchestrator, db: &Db, saga_id: &str) -> Result<Vec<Planned>, OperatorError> {
    let mut conn = db.pool().acquire().await?;
    let plan = control::abort_plan(orchestrator, &mut saga_store::Conn::Sqlx(&mut conn), saga_id).await?;
    Ok(plan.into_iter().map(|(c, key): (Command, String)| Planned { command: format!("{:?}", c.action), phase: c.phase.as_str(), step: c.step, key }).collect())
}

/// Runs `once` (an operator's transaction), again up to four times when the database was busy or
/// another writer moved the saga first, since the orchestrator keeps writing while an operator acts.
async fn retrying<T, F, Fut>(mut once: F) -> Result<T, OperatorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, OperatorError>>,
{
    let mut attempt = 1;
    loop {
        match once().await {
            Err(e) if attempt < 5 && is_contention(&e) => {
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// True when `e` says the database was busy or another writer won a conflict: the same action
/// may go through a moment later.
fn is_contention(e: &OperatorError) -> bool {
    match e {
        OperatorError::Handle(HandleError::Conflict(_)) => true,
        OperatorError::Handle(HandleError::Store(e)) => saga_store::is_transient(e),
        _ => false,
    }
}
