//! Test support: apply messages to a handler without a broker, exactly as the consume loop does.

use saga_contracts::{Envelope, Message, Topics};
use saga_store::{Db, Migrations};
use sqlx::Acquire;

use saga_runtime::handler::{apply_once, HandleError, Handler, Incoming};

/// Runs the inbox/outbox migrations and the service's own on `db`.
pub async fn migrate(db: &Db, service: &Migrations) {
    db.migrate(&saga_runtime::outbox::MIGRATIONS).await.expect("migrate inbox and outbox");
    db.migrate(service).await.expect("migrate the service's tables");
}

/// Applies one message in its own transaction, as the consume loop applies a batch of one (the
/// outbox write aside): inbox row, handler, commit; a handler error rolls everything back.
/// `Ok(None)`: the inbox already held the message id.
pub async fn apply<H: Handler>(db: &Db, handler: &H, message: impl Into<Message>) -> Result<Option<Vec<Message>>, HandleError> {
    let message = message.into();
    let incoming = Incoming::new(&Topics::default(), message);
    if let Some(file) = db.direct_sqlite_file() {
        // As the consume loop's writer runs it: one direct connection, BEGIN IMMEDIATE.
        let mut conn = saga_store::writer::connect(file)?;
        conn.execute_batch("BEGIN IMMEDIATE").map_err(saga_store::sql::from_sqlite)?;
        let mut notes = Vec::new();
        let out = apply_once(&mut saga_store::Conn::Sqlite(&mut conn), handler, &incoming, &mut notes).await;
        let end = if out.is_ok() { "COMMIT" } else { "ROLLBACK" };
        conn.execute_batch(end).map_err(saga_store::sql::from_sqlite)?;
        if out.is_ok() {
            handler.committed(notes);
        }
        return out;
    }
    let mut conn = db.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    let mut notes = Vec::new();
    let out = apply_once(&mut saga_store::Conn::Sqlx(&mut tx), handler, &incoming, &mut notes).await?;
    tx.commit().await?;
    handler.committed(notes);
    Ok(out)
}

/// Applies a message the inbox has not seen and that the handler accepts; returns what it emitted.
///
/// # Panics
/// When the handler fails or the inbox takes the message for a duplicate.
pub async fn applied<H: Handler>(db: &Db, handler: &H, message: impl Into<Message>) -> Vec<Message> {
    let message = message.into();
    let id = message.envelope().message_id.clone();
    apply(db, handler, message).await.unwrap_or_else(|e| panic!("{id} failed: {e}")).unwrap_or_else(|| panic!("{id} was taken for a duplicate"))
}

/// Applies a new command the handler accepts and returns its one reply, checking that the reply's
/// id and causation derive from the command (what makes a redelivered command answer alike).
///
/// # Panics
/// As [`applied`], and when the command gave no reply, several, or one whose ids do not derive.
pub async fn reply<H: Handler>(db: &Db, handler: &H, message: impl Into<Message>) -> Message {
    let message = message.into();
    let id = message.envelope().message_id.clone();
    let mut out = applied(db, handler, message).await;
    assert_eq!(out.len(), 1, "{id}: one reply per command, got {out:?}");
    let reply = out.remove(0);
    let short = reply.short_name();
    assert_eq!(reply.envelope().message_id, format!("{id}/{short}"), "the reply's id derives from its cause");
    assert_eq!(reply.envelope().causation_id.as_deref(), Some(id.as_str()));
    reply
}

/// Applies a new message as the consume loop does under contention: a conflict or a transient
/// database failure rolls back and is tried again with the same message (up to 50 times, 5 ms
/// apart). Returns what the handler emitted.
///
/// # Panics
/// When the handler refuses the message, the inbox takes it for a duplicate, or it still conflicts
/// after the last try.
pub async fn applied_retrying<H: Handler>(db: &Db, handler: &H, message: impl Into<Message>) -> Vec<Message> {
    let message = message.into();
    let id = message.envelope().message_id.clone();
    for _ in 0..50 {
        match apply(db, handler, message.clone()).await {
            Ok(Some(out)) => return out,
            Ok(None) => panic!("{id} was taken for a duplicate"),
            Err(HandleError::Conflict(_)) => {}
            Err(HandleError::Store(e)) if saga_store::is_transient(&e) => {}
            Err(e) => panic!("{id} failed: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    panic!("{id} kept conflicting")
}

/// An envelope for a test message in the saga of `order_id`.
pub fn envelope(message_id: &str, full_name: &str, order_id: &str) -> Envelope {
    Envelope {
        message_id: message_id.into(),
        message_type: full_name.into(),
        saga_id: Some(order_id.into()),
        correlation_id: format!("corr-{order_id}"),
        causation_id: Some("from-a-test".into()),
        occurred_at_ms: 1,
    }
}
