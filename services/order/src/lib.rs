//! The order service: owns orders. Validates `PlaceOrder`, keeps the order PENDING while its saga
//! runs, and executes `ApproveOrder` / `RejectOrder` from the orchestrator.
//!
//! # Layout
//! - [`domain`]: validation and lifecycle rules (pure).
//! - this file: the [`OrderHandler`] that applies messages to the `orders` table.
//!
//! Delivery: see `saga-runtime`; every message is applied once, its events leave through the outbox.

pub mod domain;

use saga_contracts::{Envelope, Message, OrderApproved, OrderCreated, OrderLine, OrderRejected, PlaceOrder, TopicKind};
use saga_runtime::{HandleError, Handler, Incoming};
use saga_store::{args, Conn};
use sqlx::Row;

use crate::domain::{decide, validate, Decision, OrderStatus};

/// Migrations of the `orders` table (versions 2000–2999).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations"), postgres: &sqlx::migrate!("./migrations") };

/// Applies order commands.
pub struct OrderHandler;

impl Handler for OrderHandler {
    const SERVICE: &'static str = "order";

    type Note = ();

    fn consumes(&self) -> &'static [TopicKind] {
        &[TopicKind::OrderCommands]
    }

    fn produces(&self) -> &'static [&'static str] {
        &[OrderCreated::FULL_NAME, OrderApproved::FULL_NAME, OrderRejected::FULL_NAME]
    }

    async fn handle(&self, conn: &mut Conn<'_>, incoming: &Incoming, _notes: &mut Vec<()>) -> Result<Vec<Message>, HandleError> {
        match &incoming.message {
            Message::PlaceOrder(m) => place(conn, m).await,
            Message::ApproveOrder(m) => finish(conn, &m.envelope, &m.order_id, OrderStatus::Approved, None).await,
            Message::RejectOrder(m) => finish(conn, &m.envelope, &m.order_id, OrderStatus::Rejected, Some(&m.reason)).await,
            other => Err(HandleError::Reject(format!("{} is not an order command", other.short_name()))),
        }
    }
}

async fn place(conn: &mut Conn<'_>, m: &PlaceOrder) -> Result<Vec<Message>, HandleError> {
    if load_status(conn, &m.order_id).await?.is_some() {
        // The order exists: this is the same order placed again under a new message id.
        tracing::info!(order_id = %m.order_id, "order already placed; ignoring repeated PlaceOrder");
        return Ok(vec![]);
    }
    // The saga of an order is identified by the order id.
    let mut cause = m.envelope.clone();
    cause.saga_id = Some(m.order_id.clone());
    let now = saga_contracts::now_ms();
    let lines = serde_json::to_string(&m.lines).expect("order lines always serialize");
    match validate(&m.order_id, &m.customer_id, &m.currency, &m.lines) {
        Ok(total) => {
            insert(conn, m, total, OrderStatus::Pending, None, &lines, now).await?;
            Ok(vec![OrderCreated {
                envelope: Envelope::reply_to(&cause, OrderCreated::FULL_NAME),
                order_id: m.order_id.clone(),
                customer_id: m.customer_id.clone(),
                currency: m.currency.clone(),
                total_minor: total,
                lines: m.lines.clone(),
            }
            .into()])
        }
        Err(reason) => {
            tracing::info!(order_id = %m.order_id, %reason, "order refused by validation");
            insert(conn, m, 0, OrderStatus::Rejected, Some(&reason), &lines, now).await?;
            Ok(vec![OrderRejected { envelope: Envelope::reply_to(&cause, OrderRejected::FULL_NAME), order_id: m.order_id.clone(), reason }.into()])
        }
    }
}

async fn insert(conn: &mut Conn<'_>, m: &PlaceOrder, total: i64, status: OrderStatus, reason: Option<&str>, lines: &str, now: i64) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO orders (order_id, customer_id, currency, total_minor, status, reason, lines, created_at_ms, updated_at_ms, promotion_code) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)",
        args![&m.order_id, &m.customer_id, &m.currency, total, status.as_str(), reason, lines, now, m.promotion_code.as_deref()],
    )
    .await?;
    Ok(())
}

async fn finish(conn: &mut Conn<'_>, cause: &Envelope, order_id: &str, target: OrderStatus, reason: Option<&str>) -> Result<Vec<Message>, HandleError> {
    let Some(status) = load_status(conn, order_id).await? else {
        return Err(HandleError::Reject(format!("order {order_id} does not exist")));
    };
    match decide(status, target) {
        Decision::Apply(new) => {
            conn.execute(
                "UPDATE orders SET status = $1, reason = $2, updated_at_ms = $3 WHERE order_id = $4",
                args![new.as_str(), reason, saga_contracts::now_ms(), order_id],
            )
            .await?;
        }
        Decision::Repeat(_) => {}
        Decision::Contradicts(current) => {
            return Err(HandleError::Reject(format!("order {order_id} is {}, it cannot become {}", current.as_str(), target.as_str())))
        }
    }
    let reply: Message = match target {
        OrderStatus::Approved => OrderApproved { envelope: Envelope::reply_to(cause, OrderApproved::FULL_NAME), order_id: order_id.to_string() }.into(),
        _ => OrderRejected {
            envelope: Envelope::reply_to(cause, OrderRejected::FULL_NAME),
            order_id: order_id.to_string(),
            reason: reason.unwrap_or("rejected").to_string(),
        }
        .into(),
    };
    Ok(vec![reply])
}

async fn load_status(conn: &mut Conn<'_>, order_id: &str) -> Result<Option<OrderStatus>, sqlx::Error> {
    let Some(row) = conn.fetch_optional("SELECT status FROM orders WHERE order_id = $1", args![order_id]).await? else { return Ok(None) };
    let status: String = row.at(0)?;
    // A status this code does not know is an error, never read as some other status.
    OrderStatus::parse(&status).map(Some).ok_or_else(|| sqlx::Error::Decode(format!("order {order_id} has unknown status {status:?}").into()))
}

/// An order as stored, for operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderView {
    /// The order id.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// Current status.
    pub status: OrderStatus,
    /// Sum of the lines in minor units (0 when refused by validation).
    pub total_minor: i64,
    /// Why it was rejected.
    pub reason: Option<String>,
    /// Its lines.
    pub lines: Vec<OrderLine>,
    /// The promotion code it was placed with (`PlaceOrder` v2), if any.
    pub promotion_code: Option<String>,
}

/// Reads one order.
pub async fn get_order(db: &saga_store::Db, order_id: &str) -> Result<Option<OrderView>, sqlx::Error> {
    let row = sqlx::query("SELECT order_id, customer_id, status, total_minor, reason, lines, promotion_code FROM orders WHERE order_id = $1")
        .bind(order_id)
        .fetch_optional(db.pool())
        .await?;
    let Some(r) = row else { return Ok(None) };
    // A row this build cannot read is an error, never a default.
    let corrupt = |what: String| sqlx::Error::Decode(format!("order {order_id}: {what}").into());
    let status: String = r.try_get("status")?;
    Ok(Some(OrderView {
        order_id: r.try_get("order_id")?,
        customer_id: r.try_get("customer_id")?,
        status: OrderStatus::parse(&status).ok_or_else(|| corrupt(format!("unknown status {status:?}")))?,
        total_minor: r.try_get("total_minor")?,
        reason: r.try_get("reason")?,
        lines: serde_json::from_str(&r.try_get::<String, _>("lines")?).map_err(|e| corrupt(format!("unreadable lines: {e}")))?,
        promotion_code: r.try_get("promotion_code")?,
    }))
}

/// Counts orders by status: (pending, approved, rejected).
pub async fn count_by_status(db: &saga_store::Db) -> Result<(i64, i64, i64), sqlx::Error> {
    let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM orders GROUP BY status").fetch_all(db.pool()).await?;
    let mut counts = (0, 0, 0);
    for r in rows {
        let n: i64 = r.try_get("n")?;
        let status: String = r.try_get("status")?;
        match OrderStatus::parse(&status) {
            Some(OrderStatus::Pending) => counts.0 = n,
            Some(OrderStatus::Approved) => counts.1 = n,
            Some(OrderStatus::Rejected) => counts.2 = n,
            None => return Err(sqlx::Error::Decode(format!("{n} orders have an unknown status {status:?}").into())),
        }
    }
    Ok(counts)
}
