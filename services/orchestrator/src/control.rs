//! Inputs that are not replies: a deadline that passed, a saga's message that reached a
//! dead-letter topic, and operators' commands (`sagactl sagas retry|abort`).
//!
//! Each runs in the caller's transaction and moves the saga through the same interpreter and the
//! same optimistic update as a reply, so a deadline, a reply and an operator racing for one saga
//! cannot both act: the loser's transaction fails with a conflict and re-reads.

use saga_contracts::Message;
use saga_runtime::timers::DeadLetterSeen;
use saga_runtime::HandleError;
use saga_store::Conn;

use crate::saga::{self, Command, Outcome};
use crate::store::{self, SagaRecord};
use crate::{Cause, Observation, Orchestrator};

/// The awaited reply of saga `id` is late: time the step out (see [`saga::on_timeout`]). Does
/// nothing when the saga moved since the deadline was read.
pub async fn on_deadline(orch: &Orchestrator, conn: &mut Conn<'_>, id: &str, now_ms: i64, notes: &mut Vec<Observation>) -> Result<Vec<Message>, HandleError> {
    let Some(saga) = store::load(conn, id).await? else { return Ok(vec![]) };
    if saga.deadline_at_ms.is_none_or(|d| d > now_ms) {
        return Ok(vec![]);
    }
    let Ok(definition) = orch.definition_of(&saga) else {
        // Started by a newer orchestrator (a rolling upgrade in progress): its deadline is that
        // orchestrator's to keep.
        tracing::warn!(saga_id = id, definition_version = saga.definition_version, "deadline of a saga of an unknown definition version left alone");
        return Ok(vec![]);
    };
    let cause = Cause { id: None, kind: "deadline" };
    match saga::on_timeout(definition, &saga.state, orch.timing()) {
        Outcome::Applied(transition) => orch.record(conn, &saga, &transition, &cause, None, notes).await,
        Outcome::Ignored(why) => {
            // Nothing is awaited on a deadline: clear it, so it is not looked at again. The log
            // says so, as for an ignored reply: its last seq stays the saga's version.
            tracing::debug!(saga_id = id, reason = %why, "deadline of a saga that awaits none cleared");
            let cleared = SagaRecord { deadline_at_ms: None, ..saga };
            orch.record_note(conn, &cleared, &cause, "deadline-cleared", &why).await?;
            Ok(vec![])
        }
    }
}

/// A record keyed by a saga's id was dead-lettered: PARK the saga with a reference to it, so it
/// waits for an operator instead of for a reply that cannot come. A dead letter of no saga is
/// recorded as a stray message.
pub async fn on_dead_letter(orch: &Orchestrator, conn: &mut Conn<'_>, letter: &DeadLetterSeen, notes: &mut Vec<Observation>) -> Result<(), HandleError> {
    let reference = letter.reference();
    let reason = format!(
        "{} from {} dead-lettered as {} ({}): {}",
        letter.message_id.as_deref().unwrap_or("a record"),
        letter.original_topic.as_deref().unwrap_or("?"),
        reference,
        letter.class.as_deref().unwrap_or("unknown class"),
        letter.message.as_deref().unwrap_or("no message"),
    );
    let Some(key) = letter.key.as_deref() else {
        tracing::info!(dead_letter = %reference, "dead letter without a text key belongs to no saga");
        return Ok(());
    };
    let Some(saga) = store::load(conn, key).await? else {
        store::record_stray(conn, &format!("dead-letter:{reference}"), key, "dead-letter", &reason).await?;
        return Ok(());
    };
    // Kept whole with its saga: the saga view shows it with its headers, and can redrive it.
    store::keep_dead_letter(conn, key, &letter.record).await?;
    let cause = Cause { id: Some(&reference), kind: "dead-letter" };
    match saga::park(&saga.state, &reason) {
        Outcome::Applied(transition) => {
            orch.record(conn, &saga, &transition, &cause, None, notes).await?;
            tracing::warn!(saga_id = key, dead_letter = %reference, "saga parked: one of its messages was dead-lettered");
        }
        Outcome::Ignored(why) => orch.record_ignored(conn, &saga, &cause, &why).await?,
    }
    Ok(())
}

/// Why an operator command was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// No saga has this id.
    #[error("no saga {0:?} in this orchestrator database")]
    UnknownSaga(String),
    /// The saga is not in a state the command applies to.
    #[error("saga {saga_id}: {reason}")]
    Refused {
        /// The saga.
        saga_id: String,
        /// Why.
        reason: String,
    },
    /// The database failed, or another writer moved the saga first.
    #[error(transparent)]
    Handle(#[from] HandleError),
}

impl From<sqlx::Error> for OperatorError {
    fn from(e: sqlx::Error) -> Self {
        OperatorError::Handle(HandleError::Store(e))
    }
}

/// What an operator command did: the saga before it, and the commands to publish (the caller
/// writes them to the orchestrator's outbox in the same transaction).
#[derive(Debug)]
pub struct OperatorResult {
    /// The saga as it was.
    pub before: SagaRecord,
    /// Commands sent, in order.
    pub commands: Vec<Message>,
}

async fn load_for_operator(conn: &mut Conn<'_>, saga_id: &str) -> Result<SagaRecord, OperatorError> {
    store::load(conn, saga_id).await?.ok_or_else(|| OperatorError::UnknownSaga(saga_id.into()))
}

/// An operator's retry (`sagactl sagas retry`, the saga view): send the awaited command again
/// (see [`saga::retry`]). `who` asked; the saga log records it as the entry's cause. What it did
/// is pushed to `notes`, for the caller to count once its transaction commits.
pub async fn retry(orch: &Orchestrator, conn: &mut Conn<'_>, saga_id: &str, who: &str, notes: &mut Vec<Observation>) -> Result<OperatorResult, OperatorError> {
    let before = load_for_operator(conn, saga_id).await?;
    let transition = saga::retry(orch.definition_of(&before)?, &before.state).map_err(|reason| OperatorError::Refused { saga_id: saga_id.into(), reason })?;
    let commands = orch.record(conn, &before, &transition, &Cause { id: Some(who), kind: "operator" }, None, notes).await?;
    Ok(OperatorResult { before, commands })
}

/// An operator's abort: compensate from where the saga stands (see [`saga::abort`]); `who` and
/// notes as [`retry`].
pub async fn abort(
    orch: &Orchestrator,
    conn: &mut Conn<'_>,
    saga_id: &str,
    reason: &str,
    who: &str,
    notes: &mut Vec<Observation>,
) -> Result<OperatorResult, OperatorError> {
    let before = load_for_operator(conn, saga_id).await?;
    let transition =
        saga::abort(orch.definition_of(&before)?, &before.state, reason).map_err(|reason| OperatorError::Refused { saga_id: saga_id.into(), reason })?;
    let commands = orch.record(conn, &before, &transition, &Cause { id: Some(who), kind: "operator" }, Some(reason), notes).await?;
    Ok(OperatorResult { before, commands })
}

/// `sagactl sagas abort --dry-run`: the commands an abort would lead to, in order, each with the
/// idempotency key (message id) it would carry.
pub async fn abort_plan(orch: &Orchestrator, conn: &mut Conn<'_>, saga_id: &str) -> Result<Vec<(Command, String)>, OperatorError> {
    let saga = load_for_operator(conn, saga_id).await?;
    let plan = saga::abort_plan(orch.definition_of(&saga)?, &saga.state).map_err(|reason| OperatorError::Refused { saga_id: saga_id.into(), reason })?;
    Ok(plan
        .into_iter()
        .map(|c| {
            let key = c.key(saga_id);
            (c, key)
        })
        .collect())
}

/// Redrives allowed per dead letter, as `sagactl dlt redrive`'s default `--max-redrives`.
pub const MAX_REDRIVES: u32 = 3;

/// What an operator's redrive of a saga's dead letter sends.
#[derive(Debug)]
pub struct RedrivePlan {
    /// The saga as it was.
    pub before: SagaRecord,
    /// The dead letter's `topic/partition/offset`.
    pub reference: String,
    /// The record to publish: the original key, value and headers (without `saga.dlt.*`, with
    /// `saga.redrive.count` raised by one; header values as text).
    pub record: saga_runtime::outbox::Record,
    /// Its `saga.redrive.count`.
    pub count: u32,
    /// Its `message_id` header, or the reference when it has none.
    pub message_id: String,
}

/// An operator's redrive of dead letter `reference` (`topic/partition/offset`) of `saga_id`, by
/// the same rules as `sagactl dlt redrive` ([`saga_runtime::dlt::record::DeadLetterRecord::redrive`]):
/// the plan, or why not (the saga is not PARKED, no such dead letter kept, already redriven, at
/// the limit). With `who`, the dead letter is marked redriven and the saga log records who asked, in
/// the caller's transaction; the caller writes [`RedrivePlan::record`] to the outbox in it.
pub async fn redrive(orch: &Orchestrator, conn: &mut Conn<'_>, saga_id: &str, reference: &str, who: Option<&str>) -> Result<RedrivePlan, OperatorError> {
    let refused = |reason: String| OperatorError::Refused { saga_id: saga_id.into(), reason };
    let before = load_for_operator(conn, saga_id).await?;
    if before.state.status != saga::Status::Parked {
        return Err(refused(format!("the saga is {}, not PARKED: only a parked saga's dead letters are redriven from here", before.state.status.as_str())));
    }
    let kept = store::dead_letters(conn, saga_id).await?;
    let letter =
        kept.into_iter().find(|k| k.record.reference() == reference).ok_or_else(|| refused(format!("no dead letter {reference} is kept for this saga")))?;
    if let Some((at, by)) = &letter.redriven {
        return Err(refused(format!("dead letter {reference} was already redriven at {} by {by}", saga_runtime::dlt::record::format_ms(*at))));
    }
    let plan = letter.record.redrive(MAX_REDRIVES).map_err(|e| refused(format!("dead letter {reference}: {e}")))?;
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let key = plan.key.as_deref().map(text).ok_or_else(|| refused(format!("dead letter {reference} has no key")))?;
    let payload = plan.value.ok_or_else(|| refused(format!("dead letter {reference} has no value")))?;
    let headers: Vec<(String, String)> = plan.headers.into_iter().map(|(k, v)| (k, v.as_deref().map(text).unwrap_or_default())).collect();
    let message_id = headers.iter().find(|(k, _)| k == "message_id").map_or_else(|| reference.to_string(), |(_, v)| v.clone());
    if let Some(who) = who {
        if !store::mark_redriven(conn, &letter.record.dlt_topic, letter.record.partition, letter.record.offset, who).await? {
            return Err(HandleError::Conflict(format!("dead letter {reference} was redriven concurrently")).into());
        }
        let detail = format!("dead letter {reference} redriven to {} (redrive {}) by an operator", plan.topic, plan.count);
        orch.record_note(conn, &before, &Cause { id: Some(who), kind: "operator" }, "operator-redrove", &detail).await?;
    }
    let record = saga_runtime::outbox::Record { topic: plan.topic, key, payload, headers };
    Ok(RedrivePlan { before, reference: reference.to_string(), record, count: plan.count, message_id })
}
