//! The inventory service: owns stock. Reserves an order's lines all or nothing, and releases a
//! reservation as the saga's compensation.
//!
//! # Layout
//! - [`domain`]: reservation rules (pure).
//! - this file: [`InventoryHandler`], the `stock` and `reservations` tables, seeding.
//!
//! Idempotency beyond the inbox: the reservation row is keyed by order, so a repeated
//! `ReserveStock` (a retry with a new message id) answers from the row instead of reserving
//! twice, and a `ReleaseStock` that arrives before its `ReserveStock` leaves a RELEASED row that
//! makes the late reservation a refusal.

pub mod domain;

pub use domain::ReservationStatus;

use std::collections::BTreeMap;

use saga_contracts::{Envelope, Message, ReserveStock, StockLine, StockReleased, StockReservationFailed, StockReserved, TopicKind};
use saga_runtime::{HandleError, Handler, Incoming};
use saga_store::{args, Backend, Conn};
use sqlx::Row;

use crate::domain::{decide_reservation, merge_lines};

/// Migrations of the inventory tables (versions 2100–2199).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations"), postgres: &sqlx::migrate!("./migrations") };

/// Applies inventory commands.
pub struct InventoryHandler;

impl Handler for InventoryHandler {
    const SERVICE: &'static str = "inventory";

    type Note = ();

    fn consumes(&self) -> &'static [TopicKind] {
        &[TopicKind::InventoryCommands]
    }

    fn produces(&self) -> &'static [&'static str] {
        &[StockReserved::FULL_NAME, StockReservationFailed::FULL_NAME, StockReleased::FULL_NAME]
    }

    async fn handle(&self, conn: &mut Conn<'_>, incoming: &Incoming, _notes: &mut Vec<()>) -> Result<Vec<Message>, HandleError> {
        match &incoming.message {
            Message::ReserveStock(m) => reserve(conn, m).await.map(|r| vec![r]),
            Message::ReleaseStock(m) => release(conn, &m.envelope, &m.order_id).await.map(|r| vec![r]),
            other => Err(HandleError::Reject(format!("{} is not an inventory command", other.short_name()))),
        }
    }
}

fn reserved(cause: &Envelope, order_id: &str) -> Message {
    StockReserved { envelope: Envelope::reply_to(cause, StockReserved::FULL_NAME), order_id: order_id.into() }.into()
}

fn failed(cause: &Envelope, order_id: &str, reason: String) -> Message {
    StockReservationFailed { envelope: Envelope::reply_to(cause, StockReservationFailed::FULL_NAME), order_id: order_id.into(), reason }.into()
}

async fn reserve(conn: &mut Conn<'_>, m: &ReserveStock) -> Result<Message, HandleError> {
    if let Some((status, reason)) = load_reservation(conn, &m.order_id).await? {
        return Ok(match status {
            ReservationStatus::Reserved => reserved(&m.envelope, &m.order_id),
            ReservationStatus::Released => failed(&m.envelope, &m.order_id, "reservation was already released by compensation".into()),
            ReservationStatus::Failed => failed(&m.envelope, &m.order_id, reason.unwrap_or_else(|| "reservation failed".into())),
        });
    }
    let now = saga_contracts::now_ms();
    let lines: Vec<(String, i32)> = m.lines.iter().map(|l| (l.sku.clone(), l.quantity)).collect();
    let decision = match merge_lines(&lines) {
        Err(reason) => Err(reason),
        Ok(wanted) => {
            let on_hand = lock_stock(conn, &wanted).await?;
            decide_reservation(&wanted, &on_hand).map(|()| wanted)
        }
    };
    let lines_json = serde_json::to_string(&m.lines).expect("lines always serialize");
    match decision {
        Ok(wanted) => {
            for (sku, quantity) in &wanted {
                let done = conn
                    .execute(
                        "UPDATE stock SET on_hand = on_hand - $1, reserved = reserved + $1, updated_at_ms = $2 \
                         WHERE sku = $3 AND on_hand >= $1",
                        args![*quantity, now, sku],
                    )
                    .await?;
                if done != 1 {
                    // Another instance took the units between our read and this write.
                    return Err(HandleError::Conflict(format!("stock of sku {sku} changed during reservation")));
                }
            }
            save_reservation(conn, &m.order_id, ReservationStatus::Reserved, &lines_json, None, now).await?;
            Ok(reserved(&m.envelope, &m.order_id))
        }
        Err(reason) => {
            tracing::info!(order_id = %m.order_id, %reason, "stock reservation refused");
            save_reservation(conn, &m.order_id, ReservationStatus::Failed, &lines_json, Some(&reason), now).await?;
            Ok(failed(&m.envelope, &m.order_id, reason))
        }
    }
}

async fn release(conn: &mut Conn<'_>, cause: &Envelope, order_id: &str) -> Result<Message, HandleError> {
    let now = saga_contracts::now_ms();
    let released = match load_reservation(conn, order_id).await? {
        Some((ReservationStatus::Reserved, _)) => {
            let row = conn.fetch_one("SELECT lines FROM reservations WHERE order_id = $1", args![order_id]).await?;
            let lines = read_lines(order_id, &row.get::<String>("lines")?)?;
            let pairs: Vec<(String, i32)> = lines.into_iter().map(|l| (l.sku, l.quantity)).collect();
            let merged = merge_lines(&pairs).map_err(HandleError::Reject)?;
            for (sku, quantity) in merged {
                conn.execute(
                    "UPDATE stock SET on_hand = on_hand + $1, reserved = reserved - $1, updated_at_ms = $2 WHERE sku = $3",
                    args![quantity, now, &sku],
                )
                .await?;
            }
            conn.execute(
                "UPDATE reservations SET status = $1, updated_at_ms = $2 WHERE order_id = $3",
                args![ReservationStatus::Released.as_str(), now, order_id],
            )
            .await?;
            true
        }
        Some(_) => false,
        None => {
            // Released before it was ever reserved: remember, so a late ReserveStock refuses.
            save_reservation(conn, order_id, ReservationStatus::Released, "[]", Some("released before reservation"), now).await?;
            false
        }
    };
    Ok(StockReleased { envelope: Envelope::reply_to(cause, StockReleased::FULL_NAME), order_id: order_id.into(), released }.into())
}

async fn load_reservation(conn: &mut Conn<'_>, order_id: &str) -> Result<Option<(ReservationStatus, Option<String>)>, sqlx::Error> {
    let Some(row) = conn.fetch_optional("SELECT status, reason FROM reservations WHERE order_id = $1", args![order_id]).await? else { return Ok(None) };
    Ok(Some((read_status(order_id, &row.get::<String>("status")?)?, row.get("reason")?)))
}

/// A stored status this build does not know is an error, never a guess.
fn read_status(order_id: &str, stored: &str) -> Result<ReservationStatus, sqlx::Error> {
    ReservationStatus::parse(stored).ok_or_else(|| sqlx::Error::Decode(format!("the reservation of order {order_id} has an unknown status {stored:?}").into()))
}

/// The stored lines of a reservation; unreadable ones are an error, never an empty list.
fn read_lines(order_id: &str, stored: &str) -> Result<Vec<StockLine>, sqlx::Error> {
    serde_json::from_str(stored).map_err(|e| sqlx::Error::Decode(format!("the reservation of order {order_id} has unreadable lines: {e}").into()))
}

async fn save_reservation(
    conn: &mut Conn<'_>,
    order_id: &str,
    status: ReservationStatus,
    lines: &str,
    reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO reservations (order_id, status, lines, reason, updated_at_ms) VALUES ($1, $2, $3, $4, $5)",
        args![order_id, status.as_str(), lines, reason, now],
    )
    .await?;
    Ok(())
}

/// Reads (and on PostgreSQL row-locks, in sku order) the stock of the wanted skus.
async fn lock_stock(conn: &mut Conn<'_>, wanted: &BTreeMap<String, i64>) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let sql = match conn.backend() {
        Backend::Postgres => "SELECT on_hand FROM stock WHERE sku = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT on_hand FROM stock WHERE sku = $1",
    };
    let mut on_hand = BTreeMap::new();
    for sku in wanted.keys() {
        if let Some(r) = conn.fetch_optional(sql, args![sku]).await? {
            on_hand.insert(sku.clone(), r.get::<i64>("on_hand")?);
        }
    }
    Ok(on_hand)
}

/// Sets the units on hand of each sku (creating it when missing). Used by seeding and operators.
pub async fn set_stock(db: &saga_store::Db, items: &[(String, i64)]) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let now = saga_contracts::now_ms();
    for (sku, on_hand) in items {
        sqlx::query(
            "INSERT INTO stock (sku, on_hand, reserved, updated_at_ms) VALUES ($1, $2, 0, $3) \
             ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(sku)
        .bind(on_hand)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// Stock of one sku: (on hand, reserved).
pub async fn stock_of(db: &saga_store::Db, sku: &str) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT on_hand, reserved FROM stock WHERE sku = $1").bind(sku).fetch_optional(db.pool()).await?;
    row.map(|r| Ok((r.try_get("on_hand")?, r.try_get("reserved")?))).transpose()
}

/// Where an order's reservation stands, if it ever asked.
pub async fn reservation_status(db: &saga_store::Db, order_id: &str) -> Result<Option<ReservationStatus>, sqlx::Error> {
    let row = sqlx::query("SELECT status FROM reservations WHERE order_id = $1").bind(order_id).fetch_optional(db.pool()).await?;
    row.map(|r| read_status(order_id, &r.try_get::<String, _>("status")?)).transpose()
}

/// Units reserved for orders whose reservation is RESERVED, per sku, computed from the rows.
pub async fn reserved_by_reservations(db: &saga_store::Db) -> Result<BTreeMap<String, i64>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT order_id, lines FROM reservations WHERE status = $1").bind(ReservationStatus::Reserved.as_str()).fetch_all(db.pool()).await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let lines = read_lines(&r.try_get::<String, _>("order_id")?, &r.try_get::<String, _>("lines")?)?;
        for l in lines {
            *out.entry(l.sku).or_insert(0) += i64::from(l.quantity);
        }
    }
    Ok(out)
}
