//! The payment service: owns customer credit. Authorizes an order's amount (the saga's pivot)
//! and voids an authorization as compensation; assesses an order's fraud risk (the order saga's
//! v2 step before the authorization).
//!
//! # Layout
//! - [`domain`]: credit rules (pure).
//! - this file: [`PaymentHandler`], the `accounts` and `authorizations` tables, seeding.
//!
//! Idempotency beyond the inbox: the authorization row is keyed by order, so a repeated
//! `AuthorizePayment` answers from the row; a void before the authorization leaves a VOIDED row
//! that makes the late authorization a decline. A risk assessment is kept per order, so a check
//! sent again (a retry after a timeout, with a new message id) answers as the first did.

pub mod domain;

pub use domain::AuthorizationStatus;

use saga_contracts::{
    AuthorizePayment, CheckRisk, Envelope, Message, PaymentAuthorized, PaymentDeclined, PaymentVoided, RiskAccepted, RiskRejected, TopicKind,
};
use saga_runtime::{HandleError, Handler, Incoming};
use saga_store::{args, Backend, Conn};
use sqlx::Row;

use crate::domain::{assess_risk, decide_authorization, Account};

/// Migrations of the payment tables (versions 2200–2299).
pub static MIGRATIONS: saga_store::Migrations = saga_store::Migrations { sqlite: &sqlx::migrate!("./migrations"), postgres: &sqlx::migrate!("./migrations") };

/// Applies payment commands.
pub struct PaymentHandler;

impl Handler for PaymentHandler {
    const SERVICE: &'static str = "payment";

    type Note = ();

    fn consumes(&self) -> &'static [TopicKind] {
        &[TopicKind::PaymentCommands]
    }

    fn produces(&self) -> &'static [&'static str] {
        &[PaymentAuthorized::FULL_NAME, PaymentDeclined::FULL_NAME, PaymentVoided::FULL_NAME, RiskAccepted::FULL_NAME, RiskRejected::FULL_NAME]
    }

    async fn handle(&self, conn: &mut Conn<'_>, incoming: &Incoming, _notes: &mut Vec<()>) -> Result<Vec<Message>, HandleError> {
        match &incoming.message {
            Message::AuthorizePayment(m) => authorize(conn, m).await.map(|r| vec![r]),
            Message::VoidPayment(m) => void(conn, &m.envelope, &m.order_id).await.map(|r| vec![r]),
            Message::CheckRisk(m) => check_risk(conn, m).await.map(|r| vec![r]),
            other => Err(HandleError::Reject(format!("{} is not a payment command", other.short_name()))),
        }
    }
}

fn declined(cause: &Envelope, order_id: &str, reason: String) -> Message {
    PaymentDeclined { envelope: Envelope::reply_to(cause, PaymentDeclined::FULL_NAME), order_id: order_id.into(), reason }.into()
}

fn authorized(cause: &Envelope, order_id: &str, authorization_id: String, amount_minor: i64, currency: &str) -> Message {
    PaymentAuthorized {
        envelope: Envelope::reply_to(cause, PaymentAuthorized::FULL_NAME),
        order_id: order_id.into(),
        authorization_id,
        amount_minor,
        currency: currency.into(),
    }
    .into()
}

async fn authorize(conn: &mut Conn<'_>, m: &AuthorizePayment) -> Result<Message, HandleError> {
    let existing = conn
        .fetch_optional("SELECT status, reason, authorization_id, amount_minor, currency FROM authorizations WHERE order_id = $1", args![&m.order_id])
        .await?;
    if let Some(r) = existing {
        return Ok(match read_status(&m.order_id, &r.get::<String>("status")?)? {
            AuthorizationStatus::Authorized => {
                authorized(&m.envelope, &m.order_id, r.get("authorization_id")?, r.get("amount_minor")?, &r.get::<String>("currency")?)
            }
            AuthorizationStatus::Voided => declined(&m.envelope, &m.order_id, "authorization was already voided by compensation".into()),
            AuthorizationStatus::Declined => declined(&m.envelope, &m.order_id, r.get::<Option<String>>("reason")?.unwrap_or_else(|| "declined".into())),
        });
    }
    let sql = match conn.backend() {
        Backend::Postgres => "SELECT currency, credit_limit_minor, authorized_minor FROM accounts WHERE customer_id = $1 FOR UPDATE",
        Backend::Sqlite => "SELECT currency, credit_limit_minor, authorized_minor FROM accounts WHERE customer_id = $1",
    };
    let account = match conn.fetch_optional(sql, args![&m.customer_id]).await? {
        Some(r) => {
            Some(Account { currency: r.get("currency")?, credit_limit_minor: r.get("credit_limit_minor")?, authorized_minor: r.get("authorized_minor")? })
        }
        None => None,
    };
    let now = saga_contracts::now_ms();
    let authorization_id = format!("auth-{}", m.order_id);
    match decide_authorization(account.as_ref(), &m.customer_id, m.amount_minor, &m.currency) {
        Ok(()) => {
            let done = conn
                .execute(
                    "UPDATE accounts SET authorized_minor = authorized_minor + $1, updated_at_ms = $2 \
                     WHERE customer_id = $3 AND authorized_minor + $1 <= credit_limit_minor",
                    args![m.amount_minor, now, &m.customer_id],
                )
                .await?;
            if done != 1 {
                return Err(HandleError::Conflict(format!("credit of customer {} changed during authorization", m.customer_id)));
            }
            save(conn, m, &authorization_id, AuthorizationStatus::Authorized, None, now).await?;
            Ok(authorized(&m.envelope, &m.order_id, authorization_id, m.amount_minor, &m.currency))
        }
        Err(reason) => {
            tracing::info!(order_id = %m.order_id, %reason, "payment declined");
            save(conn, m, &authorization_id, AuthorizationStatus::Declined, Some(&reason), now).await?;
            Ok(declined(&m.envelope, &m.order_id, reason))
        }
    }
}

async fn check_risk(conn: &mut Conn<'_>, m: &CheckRisk) -> Result<Message, HandleError> {
    let existing = conn.fetch_optional("SELECT score, reason FROM risk_assessments WHERE order_id = $1", args![&m.order_id]).await?;
    let (score, rejected) = match existing {
        Some(r) => (r.get::<i32>("score")?, r.get::<Option<String>>("reason")?),
        None => {
            let assessment = assess_risk(m.amount_minor, &m.currency);
            conn.execute(
                "INSERT INTO risk_assessments (order_id, customer_id, amount_minor, currency, score, reason, assessed_at_ms) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                args![&m.order_id, &m.customer_id, m.amount_minor, &m.currency, assessment.score, assessment.rejected.as_deref(), saga_contracts::now_ms()],
            )
            .await?;
            (assessment.score, assessment.rejected)
        }
    };
    let order_id = m.order_id.clone();
    Ok(match rejected {
        None => RiskAccepted { envelope: Envelope::reply_to(&m.envelope, RiskAccepted::FULL_NAME), order_id, score }.into(),
        Some(reason) => {
            tracing::info!(order_id = %m.order_id, %reason, "order rejected by the risk check");
            RiskRejected { envelope: Envelope::reply_to(&m.envelope, RiskRejected::FULL_NAME), order_id, score, reason }.into()
        }
    })
}

/// A stored status this build does not know is an error, never a guess.
fn read_status(order_id: &str, stored: &str) -> Result<AuthorizationStatus, sqlx::Error> {
    AuthorizationStatus::parse(stored)
        .ok_or_else(|| sqlx::Error::Decode(format!("the authorization of order {order_id} has an unknown status {stored:?}").into()))
}

async fn save(
    conn: &mut Conn<'_>,
    m: &AuthorizePayment,
    authorization_id: &str,
    status: AuthorizationStatus,
    reason: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    conn.execute(
        "INSERT INTO authorizations (order_id, authorization_id, customer_id, amount_minor, currency, status, reason, updated_at_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        args![&m.order_id, authorization_id, &m.customer_id, m.amount_minor, &m.currency, status.as_str(), reason, now],
    )
    .await?;
    Ok(())
}

async fn void(conn: &mut Conn<'_>, cause: &Envelope, order_id: &str) -> Result<Message, HandleError> {
    let now = saga_contracts::now_ms();
    let row = conn.fetch_optional("SELECT status, customer_id, amount_minor FROM authorizations WHERE order_id = $1", args![order_id]).await?;
    let status = row.as_ref().map(|r| read_status(order_id, &r.get::<String>("status")?)).transpose()?;
    let voided = match (row, status) {
        (Some(r), Some(AuthorizationStatus::Authorized)) => {
            let customer: String = r.get("customer_id")?;
            let amount: i64 = r.get("amount_minor")?;
            conn.execute(
                "UPDATE accounts SET authorized_minor = authorized_minor - $1, updated_at_ms = $2 WHERE customer_id = $3",
                args![amount, now, &customer],
            )
            .await?;
            conn.execute(
                "UPDATE authorizations SET status = $1, updated_at_ms = $2 WHERE order_id = $3",
                args![AuthorizationStatus::Voided.as_str(), now, order_id],
            )
            .await?;
            true
        }
        (Some(_), _) => false,
        (None, _) => {
            conn.execute(
                "INSERT INTO authorizations (order_id, authorization_id, customer_id, amount_minor, currency, status, reason, updated_at_ms) \
                 VALUES ($1, $2, '', 0, '', $3, 'voided before authorization', $4)",
                args![order_id, &format!("auth-{order_id}"), AuthorizationStatus::Voided.as_str(), now],
            )
            .await?;
            false
        }
    };
    Ok(PaymentVoided { envelope: Envelope::reply_to(cause, PaymentVoided::FULL_NAME), order_id: order_id.into(), voided }.into())
}

/// Creates or updates customer accounts: (customer id, currency, credit limit in minor units).
pub async fn set_accounts(db: &saga_store::Db, accounts: &[(String, String, i64)]) -> Result<(), sqlx::Error> {
    let mut tx = db.pool().begin().await?;
    let now = saga_contracts::now_ms();
    for (customer, currency, limit) in accounts {
        sqlx::query(
            "INSERT INTO accounts (customer_id, currency, credit_limit_minor, authorized_minor, updated_at_ms) VALUES ($1, $2, $3, 0, $4) \
             ON CONFLICT (customer_id) DO UPDATE SET currency = excluded.currency, credit_limit_minor = excluded.credit_limit_minor, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(customer)
        .bind(currency)
        .bind(limit)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// An order's authorization: (status, amount in minor units), if it ever asked.
pub async fn authorization_of(db: &saga_store::Db, order_id: &str) -> Result<Option<(AuthorizationStatus, i64)>, sqlx::Error> {
    let row = sqlx::query("SELECT status, amount_minor FROM authorizations WHERE order_id = $1").bind(order_id).fetch_optional(db.pool()).await?;
    row.map(|r| Ok((read_status(order_id, &r.try_get::<String, _>("status")?)?, r.try_get("amount_minor")?))).transpose()
}

/// Sum of AUTHORIZED amounts, and how many authorizations that is.
pub async fn authorized_total(db: &saga_store::Db) -> Result<(i64, i64), sqlx::Error> {
    let (sum, n): (Option<i64>, i64) = sqlx::query_as("SELECT CAST(SUM(amount_minor) AS BIGINT), COUNT(*) FROM authorizations WHERE status = $1")
        .bind(AuthorizationStatus::Authorized.as_str())
        .fetch_one(db.pool())
        .await?;
    Ok((sum.unwrap_or(0), n))
}
