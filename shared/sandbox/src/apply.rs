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
