//! The orchestrator: drives each order's saga from a persisted saga log.
//!
//! # Layout
//! - [`definition`]: saga definitions as data (steps, kinds, compensations), every version.
//! - [`saga`]: the interpreter, a pure state machine over a definition.
//! - [`store`]: the `sagas` table, the append-only `saga_log`, and stray replies.
//! - `cache`: the running sagas as last committed, so a reply need not read its saga back.
//! - [`control`]: inputs that are not replies: deadlines, dead letters, operator commands.
//! - [`operator`]: operators' retry and abort with their commands through the outbox (the CLI's
//!   and the saga view's).
//! - this file: [`Orchestrator`], the handler that turns events into transitions and commands.
//!
//! Every transition (saga row update, log entry, commands in the outbox) commits in the
//! transaction of the reply that caused it, so a crash can neither lose a step nor send it twice
//! in effect: commands carry idempotency keys derived from saga id, step, phase and attempt.
//!
//! Every instance runs to its end on the definition version it started with: the orchestrator
//! holds every version it knows ([`definition::Versions`]), starts new sagas on one
//! (`saga.order_version`, default the newest), refuses to start while an unfinished saga runs a
//! version it does not know ([`Orchestrator::check_in_flight`]), and holds still rather than
//! guess when a reply of such a saga reaches it ([`saga_runtime::HandleError::Unsupported`]).

mod cache;
pub mod control;
pub mod definition;
mod metrics;
pub mod operator;
pub mod saga;
pub mod settings;
pub mod store;
pub mod web;

use saga_contracts::{
    ApproveOrder, AuthorizePayment, CheckRisk, Envelope, Message, OrderCreated, RejectOrder, ReleaseStock, ReserveStock, StockLine, TopicKind, VoidPayment,
};
use saga_runtime::{Deadlines, HandleError, Handler, Incoming, Observed, WatchesDeadLetters};
use saga_store::Conn;
use std::sync::{Arc, OnceLock};

pub use crate::metrics::Observation;
use crate::metrics::SagaMetrics;

use crate::definition::{order_saga_versions, Action, Reply, SagaDefinition, Versions};
use crate::saga::{Command, Outcome, Timing, Transition};
pub use crate::settings::SagaSettings;
use crate::store::{LogEntry, SagaData, SagaRecord};

/// Migrations of the saga tables (versions 2300–2399).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations"), postgres: &sqlx::migrate!("./migrations") };

/// Drives order sagas.
pub struct Orchestrator {
    /// Every definition version this binary runs, and the one new sagas start on.
    versions: Versions,
    /// Deadlines and retry limits (from `saga.*` settings).
    timing: Timing,
    /// How often due deadlines are looked for.
    timer_interval: std::time::Duration,
    metrics: OnceLock<SagaMetrics>,
    /// The settings it was configured with (the saga view's actions are built from them).
    settings: Option<(saga_runtime::ServiceSettings, SagaSettings)>,
    /// Running sagas as last committed: a reply's saga without a read.
    cache: cache::SagaCache,
}

impl Default for Orchestrator {
    fn default() -> Self {
        let versions = Versions::new(order_saga_versions(), None).expect("the built-in saga definitions are well formed");
        Orchestrator {
            versions,
            timing: Timing::default(),
            timer_interval: std::time::Duration::from_millis(500),
            metrics: OnceLock::new(),
            settings: None,
            cache: cache::SagaCache::default(),
        }
    }
}

impl Handler for Orchestrator {
    const SERVICE: &'static str = "orchestrator";

    type Note = Observation;

    fn consumes(&self) -> &'static [TopicKind] {
        &[TopicKind::OrderEvents, TopicKind::InventoryEvents, TopicKind::PaymentEvents]
    }

    fn produces(&self) -> &'static [&'static str] {
        &[
            ReserveStock::FULL_NAME,
            ReleaseStock::FULL_NAME,
            AuthorizePayment::FULL_NAME,
            VoidPayment::FULL_NAME,
            ApproveOrder::FULL_NAME,
            RejectOrder::FULL_NAME,
            CheckRisk::FULL_NAME,
        ]
    }

    async fn handle(&self, conn: &mut Conn<'_>, incoming: &Incoming, notes: &mut Vec<Observation>) -> Result<Vec<Message>, HandleError> {
        let message = &incoming.message;
        if let Message::OrderCreated(created) = message {
            return self.start(conn, created, incoming.partition, notes).await;
        }
        let Some((reply, reason)) = reply_of(message) else {
            return Err(HandleError::Reject(format!("{} is not an event the orchestrator handles", message.short_name())));
        };
        self.on_reply(conn, message, reply, reason, notes).await
    }

    fn committed(&self, notes: Vec<Observation>) {
        for o in &notes {
            if let Observation::Saved(saga) = o {
                self.cache.committed(saga);
            }
        }
        if let Some(m) = self.metrics.get() {
            for o in &notes {
                m.count(self.versions.starting().name, o);
            }
        }
    }
}

impl Deadlines for Orchestrator {
    fn deadline_interval(&self) -> std::time::Duration {
        self.timer_interval
    }

    async fn due(&self, db: &saga_store::Db, cutoffs: &saga_runtime::timers::Cutoffs, limit: i64) -> Result<Vec<saga_runtime::timers::Due>, sqlx::Error> {
        let due = store::due(db, cutoffs, limit).await?;
        Ok(due.into_iter().map(|(id, trace_parent)| saga_runtime::timers::Due { id, trace_parent }).collect())
    }

    async fn fire(&self, conn: &mut Conn<'_>, id: &str, now_ms: i64, notes: &mut Vec<Observation>) -> Result<Vec<Message>, HandleError> {
        control::on_deadline(self, conn, id, now_ms, notes).await
    }
}

impl WatchesDeadLetters for Orchestrator {
    async fn on_dead_letter(
        &self,
        conn: &mut Conn<'_>,
        letter: &saga_runtime::timers::DeadLetterSeen,
        notes: &mut Vec<Observation>,
    ) -> Result<(), HandleError> {
        control::on_dead_letter(self, conn, letter, notes).await
    }
}

impl Observed for Orchestrator {
    fn register_metrics(&self, registry: &saga_runtime::prometheus::Registry) {
        let _ = self.metrics.set(SagaMetrics::register(registry));
    }

    async fn refresh_gauges(&self, db: &saga_store::Db) {
        let Some(m) = self.metrics.get() else { return };
        match store::count_by_status(db).await {
            Ok(counts) => {
                for state in ["RUNNING", "COMPENSATING", "STUCK", "PARKED"] {
                    let n = counts.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
                    m.in_state.with_label_values(&[self.versions.starting().name, state]).set(n);
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not count sagas by state"),
        }
    }

    fn http_routes(&self, db: &saga_store::Db) -> Option<axum::Router> {
        let actions = match self.settings.as_ref().map(|(settings, saga)| web_actions(settings, saga)).transpose() {
            Ok(actions) => actions.flatten(),
            Err(e) => {
                tracing::error!(error = %e, "the saga view's actions are off: they could not be set up");
                None
            }
        };
        Some(web::router(db.clone(), web::Links::from_env(), actions))
    }
}

impl Orchestrator {
    /// An orchestrator with the definition version, deadlines and retry limits of `saga`; the
    /// saga view's actions use `settings` (registry, topics, operator token). Fails, naming the
    /// key, when `saga.order_version` names a version this binary does not know.
    pub fn configured(settings: &saga_runtime::ServiceSettings, saga: &SagaSettings) -> Result<Orchestrator, saga_runtime::ServiceError> {
        let start = i32::try_from(saga.order_version).ok().filter(|v| *v > 0);
        let versions = Versions::new(order_saga_versions(), start)
            .map_err(|why| saga_runtime::ServiceError::Refused(format!("saga.order_version (from SAGA_SAGA__ORDER_VERSION or the config file): {why}")))?;
        Ok(Orchestrator {
            versions,
            timing: saga.timing(),
            timer_interval: std::time::Duration::from_millis(saga.timer_interval_ms),
            settings: Some((settings.clone(), saga.clone())),
            ..Orchestrator::default()
        })
    }

    /// Refuses to run beside unfinished sagas of a definition version this binary does not know
    /// (started by a newer orchestrator): it names them, and nothing is reinterpreted with
    /// another definition. Called at startup, before anything is consumed.
    pub async fn check_in_flight(&self, db: &saga_store::Db) -> Result<(), saga_runtime::ServiceError> {
        let refused = |e: sqlx::Error| saga_runtime::ServiceError::Refused(format!("reading the sagas in flight: {e}"));
        let mut unknown = Vec::new();
        for (version, count) in store::in_flight_by_version(db).await.map_err(refused)? {
            if self.versions.get(version).is_none() {
                let ids = store::in_flight_ids(db, version, 5).await.map_err(refused)?;
                unknown.push(format!("version {version}: {count} saga(s), e.g. {}", ids.join(", ")));
            }
        }
        if unknown.is_empty() {
            return Ok(());
        }
        let known: Vec<String> = self.versions.all().iter().map(|d| d.version.to_string()).collect();
        Err(saga_runtime::ServiceError::Refused(format!(
            "unfinished sagas run definition versions this orchestrator does not know (it knows {}): {}; run a binary that knows them",
            known.join(", "),
            unknown.join("; ")
        )))
    }

    /// Builds the orchestrator's service capabilities onto a built service: its metrics, gauges
    /// and saga view, deadlines, and the dead-letter watch that parks sagas.
    pub fn capabilities(service: saga_runtime::Service<Orchestrator>) -> Result<saga_runtime::Service<Orchestrator>, saga_runtime::ServiceError> {
        service.observed().with_deadlines().with_dead_letter_watch()
    }
}

impl Orchestrator {
    async fn start(&self, conn: &mut Conn<'_>, created: &OrderCreated, partition: i32, notes: &mut Vec<Observation>) -> Result<Vec<Message>, HandleError> {
        let saga_id = created.order_id.clone();
        let definition = self.versions.starting();
        let transition = saga::start(definition);
        let now = saga_contracts::now_ms();
        let record = SagaRecord {
            saga_id: saga_id.clone(),
            saga_type: definition.name.to_string(),
            definition_version: i64::from(definition.version),
            state: transition.state.clone(),
            data: SagaData {
                order_id: created.order_id.clone(),
                customer_id: created.customer_id.clone(),
                currency: created.currency.clone(),
                total_minor: created.total_minor,
                lines: created.lines.clone(),
            },
            correlation_id: created.envelope.correlation_id.clone(),
            created_at_ms: now,
            updated_at_ms: now,
            version: 1,
            trace_parent: saga_runtime::telemetry::current_traceparent(),
            deadline_at_ms: None,
            kafka_partition: Some(partition),
        };
        let record = SagaRecord { deadline_at_ms: self.deadline_at(definition, &record.saga_id, &transition.state), ..record };
        let cause = Cause::message(&created.envelope.message_id, OrderCreated::FULL_NAME);
        let commands = self.commands(&record, &transition, &cause);
        let entry = log_entry(1, None, definition.version, &transition, &cause, &commands, None);
        if !store::insert_logged(conn, &record, &entry).await? {
            let why = "a saga for this order already exists";
            store::record_stray(conn, &created.envelope.message_id, &saga_id, OrderCreated::FULL_NAME, why).await?;
            return Ok(vec![]);
        }
        notes.push(Observation::Started);
        notes.push(Observation::Saved(Arc::new(record)));
        tracing::info!(saga_id = %saga_id, order_id = %saga_id, definition_version = definition.version, "saga started");
        Ok(commands)
    }

    async fn on_reply(
        &self,
        conn: &mut Conn<'_>,
        message: &Message,
        reply: Reply,
        reason: Option<&str>,
        notes: &mut Vec<Observation>,
    ) -> Result<Vec<Message>, HandleError> {
        let saga_id = message.order_id();
        if let Some(saga) = cache::SagaCache::pending(notes, saga_id).or_else(|| self.cache.get(saga_id)) {
            match self.apply_reply(conn, &saga, message, reply, reason, notes).await {
                // Moved by someone else since it was kept: read it again. Nothing was written.
                Err(HandleError::Conflict(_)) => self.cache.forget(saga_id),
                done => return done,
            }
        }
        let Some(saga) = store::load(conn, saga_id).await? else {
            let why = "no saga with this id";
            tracing::info!(saga_id, message_type = message.short_name(), "reply for an unknown saga recorded and ignored");
            store::record_stray(conn, &message.envelope().message_id, saga_id, message.full_name(), why).await?;
            return Ok(vec![]);
        };
        self.apply_reply(conn, &saga, message, reply, reason, notes).await
    }

    async fn apply_reply(
        &self,
        conn: &mut Conn<'_>,
        saga: &SagaRecord,
        message: &Message,
        reply: Reply,
        reason: Option<&str>,
        notes: &mut Vec<Observation>,
    ) -> Result<Vec<Message>, HandleError> {
        let definition = self.definition_of(saga)?;
        let cause = Cause::message(&message.envelope().message_id, message.full_name());
        match saga::on_reply(definition, &saga.state, reply, reason) {
            Outcome::Applied(transition) => self.record(conn, saga, &transition, &cause, reason, notes).await,
            Outcome::Ignored(why) => {
                self.record_ignored(conn, saga, &cause, &why).await?;
                tracing::info!(saga_id = %saga.saga_id, message_type = message.short_name(), reason = %why, "reply ignored");
                Ok(vec![])
            }
        }
    }

    /// The saga definition new sagas start on.
    pub fn definition(&self) -> &SagaDefinition {
        self.versions.starting()
    }

    /// Every definition version this orchestrator runs.
    pub fn versions(&self) -> &Versions {
        &self.versions
    }

    /// The definition `saga` started on; [`HandleError::Unsupported`] when this binary does not
    /// know it (a newer orchestrator started the saga).
    pub fn definition_of(&self, saga: &SagaRecord) -> Result<&SagaDefinition, HandleError> {
        self.versions.get(saga.definition_version).ok_or_else(|| {
            HandleError::Unsupported(format!(
                "saga {} runs definition version {} of {}, which this orchestrator does not know (it knows {}); \
                 an orchestrator that knows it must take over",
                saga.saga_id,
                saga.definition_version,
                saga.saga_type,
                self.versions.all().iter().map(|d| d.version.to_string()).collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// Deadlines and retry limits.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// This orchestrator with these deadlines and retry limits.
    pub fn with_timing(self, timing: Timing) -> Orchestrator {
        Orchestrator { timing, ..self }
    }

    /// An orchestrator that knows only `versions` and starts new sagas on `start` (the newest of
    /// them when `None`): what an older or newer build would run, for tests of upgrades.
    pub fn with_versions(versions: Vec<SagaDefinition>, start: Option<i32>) -> Result<Orchestrator, String> {
        Ok(Orchestrator { versions: Versions::new(versions, start)?, ..Orchestrator::default() })
    }

    /// When the wait of `state` times out: its deadline plus up to 20% jitter, so sagas that
    /// timed out together do not retry together.
    fn deadline_at(&self, definition: &SagaDefinition, saga_id: &str, state: &saga::SagaState) -> Option<i64> {
        use std::hash::BuildHasher;
        let base = saga::deadline_in_ms(definition, state, &self.timing)?;
        let spread = base / 5;
        let jitter = if spread == 0 { 0 } else { std::collections::hash_map::RandomState::new().hash_one((saga_id, state.attempt)) % spread };
        Some(saga_contracts::now_ms() + (base + jitter) as i64)
    }

    /// Stores `transition` of `saga` (optimistically: a concurrent change is a conflict, retried
    /// by the caller), logs it with its cause, notes it down for the metrics, and returns the
    /// commands it sends.
    pub async fn record(
        &self,
        conn: &mut Conn<'_>,
        saga: &SagaRecord,
        transition: &Transition,
        cause: &Cause<'_>,
        reason: Option<&str>,
        notes: &mut Vec<Observation>,
    ) -> Result<Vec<Message>, HandleError> {
        let saga_id = saga.saga_id.as_str();
        let definition = self.definition_of(saga)?;
        let deadline = self.deadline_at(definition, saga_id, &transition.state);
        let now = saga_contracts::now_ms();
        let commands = self.commands(saga, transition, cause);
        let detail = reason.or(transition.detail.as_deref());
        let entry = log_entry(saga.version + 1, Some(saga), definition.version, transition, cause, &commands, detail);
        if !store::update_logged(conn, &saga.move_to(&transition.state, deadline, now), &entry).await? {
            return Err(HandleError::Conflict(format!("saga {saga_id} changed concurrently")));
        }
        let seconds = |since_ms: i64| (now - since_ms).max(0) as f64 / 1000.0;
        notes.push(Observation::Step { step: transition.step.into(), outcome: transition.event.into(), seconds: seconds(saga.updated_at_ms) });
        if transition.state.status.is_terminal() {
            let outcome = transition.state.status.as_str().to_ascii_lowercase();
            notes.push(Observation::Finished { outcome, seconds: seconds(saga.created_at_ms) });
        }
        notes.push(Observation::Saved(Arc::new(SagaRecord {
            state: transition.state.clone(),
            version: saga.version + 1,
            updated_at_ms: now,
            deadline_at_ms: deadline,
            ..saga.clone()
        })));
        tracing::info!(saga_id, event = transition.event, step = transition.step, status = transition.state.status.as_str(), "saga moved");
        Ok(commands)
    }

    /// Logs an input the saga did not act on, with why; the saga itself does not change (its
    /// version moves so the entry has its own seq).
    pub async fn record_ignored(&self, conn: &mut Conn<'_>, saga: &SagaRecord, cause: &Cause<'_>, why: &str) -> Result<(), HandleError> {
        self.record_note(conn, saga, cause, "ignored", why).await
    }

    /// Logs `event` with `detail` for `saga`, which itself does not change (an input it did not
    /// act on, an operator's redrive).
    pub async fn record_note(&self, conn: &mut Conn<'_>, saga: &SagaRecord, cause: &Cause<'_>, event: &str, detail: &str) -> Result<(), HandleError> {
        let now = saga_contracts::now_ms();
        let entry = LogEntry {
            seq: saga.version + 1,
            at_ms: now,
            definition_version: saga.definition_version,
            event: event.into(),
            step: None,
            from_status: Some(saga.state.status.as_str().into()),
            to_status: saga.state.status.as_str().into(),
            cause_message_id: cause.id.map(str::to_string),
            cause_message_type: Some(cause.kind.into()),
            sent: vec![],
            detail: Some(detail.to_string()),
            trace_parent: saga_runtime::telemetry::current_traceparent(),
        };
        if !store::update_logged(conn, &saga.move_to(&saga.state, saga.deadline_at_ms, now), &entry).await? {
            return Err(HandleError::Conflict(format!("saga {} changed concurrently", saga.saga_id)));
        }
        Ok(())
    }

    fn commands(&self, saga: &SagaRecord, transition: &Transition, cause: &Cause<'_>) -> Vec<Message> {
        transition.commands.iter().map(|c| build_command(c, saga, transition.state.failure.as_deref(), cause.id)).collect()
    }
}

/// What made a saga move: a message (its id and type), or a deadline, a dead letter or an
/// operator (a kind, and a reference when there is one).
#[derive(Debug, Clone, Copy)]
pub struct Cause<'a> {
    /// Message id or reference, when there is one.
    pub id: Option<&'a str>,
    /// Message type, or `deadline`, `dead-letter`, `operator`.
    pub kind: &'a str,
}

impl<'a> Cause<'a> {
    /// A consumed message.
    pub fn message(id: &'a str, full_name: &'a str) -> Cause<'a> {
        Cause { id: Some(id), kind: full_name }
    }
}

fn log_entry(
    seq: i64,
    before: Option<&SagaRecord>,
    definition_version: i32,
    transition: &Transition,
    cause: &Cause<'_>,
    sent: &[Message],
    detail: Option<&str>,
) -> LogEntry {
    LogEntry {
        seq,
        at_ms: saga_contracts::now_ms(),
        definition_version: i64::from(definition_version),
        event: transition.event.into(),
        step: Some(transition.step.into()),
        from_status: before.map(|s| s.state.status.as_str().to_string()),
        to_status: transition.state.status.as_str().into(),
        cause_message_id: cause.id.map(str::to_string),
        cause_message_type: Some(cause.kind.into()),
        sent: sent.iter().map(|m| m.envelope().message_id.clone()).collect(),
        detail: detail.map(str::to_string),
        trace_parent: saga_runtime::telemetry::current_traceparent(),
    }
}

/// The reply kind of an event, and the failure reason it carries.
fn reply_of(message: &Message) -> Option<(Reply, Option<&str>)> {
    Some(match message {
        Message::StockReserved(_) => (Reply::StockReserved, None),
        Message::StockReservationFailed(m) => (Reply::StockReservationFailed, Some(m.reason.as_str())),
        Message::StockReleased(_) => (Reply::StockReleased, None),
        Message::PaymentAuthorized(_) => (Reply::PaymentAuthorized, None),
        Message::PaymentDeclined(m) => (Reply::PaymentDeclined, Some(m.reason.as_str())),
        Message::PaymentVoided(_) => (Reply::PaymentVoided, None),
        Message::OrderApproved(_) => (Reply::OrderApproved, None),
        Message::OrderRejected(m) => (Reply::OrderRejected, Some(m.reason.as_str())),
        Message::RiskAccepted(_) => (Reply::RiskAccepted, None),
        Message::RiskRejected(m) => (Reply::RiskRejected, Some(m.reason.as_str())),
        _ => return None,
    })
}

/// Builds the wire command for a decision. Its message id is the command's idempotency key.
pub fn build_command(command: &Command, saga: &SagaRecord, failure: Option<&str>, causation_id: Option<&str>) -> Message {
    let full_name = match command.action {
        Action::ReserveStock => ReserveStock::FULL_NAME,
        Action::ReleaseStock => ReleaseStock::FULL_NAME,
        Action::AuthorizePayment => AuthorizePayment::FULL_NAME,
        Action::VoidPayment => VoidPayment::FULL_NAME,
        Action::ApproveOrder => ApproveOrder::FULL_NAME,
        Action::RejectOrder => RejectOrder::FULL_NAME,
        Action::CheckRisk => CheckRisk::FULL_NAME,
    };
    let envelope = Envelope {
        message_id: command.key(&saga.saga_id),
        message_type: full_name.to_string(),
        saga_id: Some(saga.saga_id.clone()),
        correlation_id: saga.correlation_id.clone(),
        causation_id: causation_id.map(str::to_string),
        occurred_at_ms: saga_contracts::now_ms(),
    };
    let order_id = saga.data.order_id.clone();
    let reason = failure.unwrap_or("saga compensation").to_string();
    match command.action {
        Action::ReserveStock => {
            ReserveStock { envelope, order_id, lines: saga.data.lines.iter().map(|l| StockLine { sku: l.sku.clone(), quantity: l.quantity }).collect() }.into()
        }
        Action::ReleaseStock => ReleaseStock { envelope, order_id, reason }.into(),
        Action::AuthorizePayment => AuthorizePayment {
            envelope,
            order_id,
            customer_id: saga.data.customer_id.clone(),
            amount_minor: saga.data.total_minor,
            currency: saga.data.currency.clone(),
        }
        .into(),
        Action::VoidPayment => VoidPayment { envelope, order_id, reason }.into(),
        Action::ApproveOrder => ApproveOrder { envelope, order_id }.into(),
        Action::RejectOrder => RejectOrder { envelope, order_id, reason }.into(),
        Action::CheckRisk => CheckRisk {
            envelope,
            order_id,
            customer_id: saga.data.customer_id.clone(),
            amount_minor: saga.data.total_minor,
            currency: saga.data.currency.clone(),
        }
        .into(),
    }
}

/// The saga view's retry and abort for `settings`: `None` when no operator token is configured
/// (the view is read-only).
pub fn web_actions(settings: &saga_runtime::ServiceSettings, saga: &SagaSettings) -> Result<Option<web::Actions>, String> {
    if settings.http.operator_token.is_empty() {
        return Ok(None);
    }
    let orchestrator = Orchestrator::configured(settings, saga).map_err(|e| e.to_string())?;
    let codec = saga_runtime::codec::Codec::connect(&settings.registry).map_err(|e| format!("schema registry {}: {e}", settings.registry.url))?;
    let operator = operator::Operator::new(orchestrator, codec, saga_contracts::Topics::new(settings.topics.prefix.clone()));
    Ok(Some(web::Actions { operator, token: settings.http.operator_token.clone() }))
}
