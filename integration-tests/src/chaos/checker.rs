//! The end-of-run checks. [`gather`] reads a [`Snapshot`] of every service's database and of the
//! broker; [`check`] is pure and lists every way the snapshot contradicts the sagas' outcomes.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use rdkafka::Message as _;
use saga_contracts::{TopicKind, Topics};
use saga_runtime::config::KafkaSettings;
use sqlx::Row;

use super::faults::{group_of, PoisonRecord};
use super::inspect;
use super::load::Placed;

/// The four service databases.
pub struct Dbs {
    /// Orders.
    pub order: saga_store::Db,
    /// Stock and reservations.
    pub inventory: saga_store::Db,
    /// Accounts and authorizations.
    pub payment: saga_store::Db,
    /// Sagas.
    pub orchestrator: saga_store::Db,
}

/// A saga row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saga {
    /// `COMPLETED`, `COMPENSATED`, `STUCK`, `PARKED`, …
    pub status: String,
    /// Its failure reason, or the detail of its last log entry.
    pub reason: Option<String>,
}

/// A dead letter, as much of it as the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The dead-letter topic.
    pub dlt: String,
    /// Its key.
    pub key: String,
    /// `saga.dlt.original.topic`.
    pub original_topic: Option<String>,
    /// `saga.dlt.error.class`.
    pub class: Option<String>,
}

/// Everything the checks look at.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Saga id → saga.
    pub sagas: BTreeMap<String, Saga>,
    /// Order id → status.
    pub orders: BTreeMap<String, String>,
    /// Order id → reservation status.
    pub reservations: BTreeMap<String, String>,
    /// Order id → (authorization status, customer, amount).
    pub authorizations: BTreeMap<String, (String, String, i64)>,
    /// Customer → authorized amount on the account.
    pub accounts: BTreeMap<String, i64>,
    /// Sku → (on hand, reserved).
    pub stock: BTreeMap<String, (i64, i64)>,
    /// Service → rows left in its outbox.
    pub outbox: BTreeMap<&'static str, i64>,
    /// (group, topic, partition) → (committed, high watermark).
    pub offsets: BTreeMap<(String, String, i32), (i64, i64)>,
    /// Every record of every dead-letter topic.
    pub dead_letters: Vec<DeadLetter>,
}

/// Totals for the last line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Sagas COMPLETED.
    pub completed: usize,
    /// Sagas COMPENSATED.
    pub compensated: usize,
    /// Sagas STUCK (with a reason).
    pub stuck: usize,
    /// Sagas PARKED (with a reason).
    pub parked: usize,
    /// Orders whose outcome differs from what the sample was built for (not a violation: a
    /// step deadline may legitimately compensate a slow saga), with the reason.
    pub unexpected_outcomes: Vec<String>,
    /// Everything that is wrong.
    pub violations: Vec<String>,
}

/// Checks `snap` against the orders placed, the initial stock and the poison injected.
pub fn check(snap: &Snapshot, placed: &[Placed], initial_stock: &BTreeMap<String, i64>, poison: &[PoisonRecord]) -> Verdict {
    let mut v = Verdict::default();
    let mut bad = |s: String| v.violations.push(s);
    let mut reserved_by_approved: BTreeMap<String, i64> = BTreeMap::new();
    let mut unexpected = Vec::new();
    let (mut completed, mut compensated, mut stuck, mut parked) = (0, 0, 0, 0);
    for p in placed {
        let id = &p.order_id;
        let order = snap.orders.get(id).map(String::as_str);
        let reservation = snap.reservations.get(id).map(String::as_str);
        let authorization = snap.authorizations.get(id).map(|a| a.0.as_str());
        let Some(saga) = snap.sagas.get(id) else {
            bad(format!("order {id}: no saga (order {order:?})"));
            continue;
        };
        let state = format!("saga {}, order {order:?}, reservation {reservation:?}, authorization {authorization:?}", saga.status);
        match saga.status.as_str() {
            "COMPLETED" => {
                completed += 1;
                if order != Some("APPROVED") || reservation != Some("RESERVED") || authorization != Some("AUTHORIZED") {
                    bad(format!("order {id}: completed saga disagrees: {state}"));
                }
                for l in &p.lines {
                    *reserved_by_approved.entry(l.sku.clone()).or_default() += i64::from(l.quantity);
                }
            }
            "COMPENSATED" => {
                compensated += 1;
                if order != Some("REJECTED") || reservation == Some("RESERVED") || authorization == Some("AUTHORIZED") {
                    bad(format!("order {id}: compensated saga disagrees: {state}"));
                }
            }
            "STUCK" | "PARKED" => {
                if saga.status == "STUCK" {
                    stuck += 1
                } else {
                    parked += 1
                }
                if saga.reason.as_deref().is_none_or(|r| r.trim().is_empty()) {
                    bad(format!("order {id}: saga {} without a recorded reason", saga.status));
                }
            }
            other => bad(format!("order {id}: saga not terminal: {other} ({state})")),
        }
        if order == Some("APPROVED") && saga.status != "COMPLETED" {
            bad(format!("order {id}: approved but {state}"));
        }
        let expected = match p.expect {
            saga_cli::sample::Expect::Approved => "COMPLETED",
            _ => "COMPENSATED",
        };
        if matches!(saga.status.as_str(), "COMPLETED" | "COMPENSATED") && saga.status != expected {
            unexpected.push(format!("order {id} ({:?}): {} ({})", p.expect, saga.status, saga.reason.as_deref().unwrap_or("-")));
        }
    }
    let placed_ids: BTreeSet<&str> = placed.iter().map(|p| p.order_id.as_str()).collect();
    for id in snap.sagas.keys().filter(|id| !placed_ids.contains(id.as_str())) {
        bad(format!("saga {id} was never placed"));
    }
    for (id, status) in snap.reservations.iter().filter(|(id, s)| *s == "RESERVED" && !placed_ids.contains(id.as_str())) {
        bad(format!("reservation {id} ({status}) belongs to no placed order"));
    }

    // Stock is conserved, and what is reserved is exactly what the approved orders took.
    let skus: BTreeSet<&String> = initial_stock.keys().chain(snap.stock.keys()).chain(reserved_by_approved.keys()).collect();
    for sku in skus {
        let initial = initial_stock.get(sku).copied().unwrap_or(0);
        let (on_hand, reserved) = snap.stock.get(sku).copied().unwrap_or((0, 0));
        let want = reserved_by_approved.get(sku).copied().unwrap_or(0);
        if on_hand + reserved != initial {
            bad(format!("sku {sku}: stock not conserved: {on_hand} on hand + {reserved} reserved != {initial} seeded"));
        }
        if reserved != want {
            bad(format!("sku {sku}: {reserved} reserved, but the approved orders hold {want}"));
        }
    }

    // Credit: each account's authorized amount is the sum of its AUTHORIZED authorizations (a
    // double authorization or a lost void shows here; the table holds at most one row per order).
    let mut authorized: BTreeMap<&str, i64> = BTreeMap::new();
    for (status, customer, amount) in snap.authorizations.values() {
        if status == "AUTHORIZED" {
            *authorized.entry(customer).or_default() += amount;
        }
    }
    for (customer, on_account) in &snap.accounts {
        let sum = authorized.get(customer.as_str()).copied().unwrap_or(0);
        if *on_account != sum {
            bad(format!("account {customer}: {on_account} authorized on the account, {sum} in AUTHORIZED authorizations"));
        }
    }

    for (service, rows) in &snap.outbox {
        if *rows != 0 {
            bad(format!("{service}: {rows} rows left in the outbox"));
        }
    }
    for ((group, topic, p), (committed, high)) in &snap.offsets {
        if committed != high {
            bad(format!("group {group} on {topic}/{p}: committed {committed}, high watermark {high} (lag {})", high - committed));
        }
    }

    // Dead letters: every poison record exactly where it belongs, and nothing else.
    let injected: BTreeSet<(String, &str)> = poison.iter().map(|p| (Topics::dlt(&p.topic), p.key.as_str())).collect();
    let mut found: BTreeSet<(String, &str)> = BTreeSet::new();
    for d in &snap.dead_letters {
        let entry = (d.dlt.clone(), d.key.as_str());
        if !injected.contains(&entry) {
            bad(format!("{} holds a record that is no injected poison: key {}, class {:?}", d.dlt, d.key, d.class));
        } else if d.original_topic.as_deref().map(Topics::dlt).as_deref() != Some(d.dlt.as_str()) {
            bad(format!("{}: poison {} names original topic {:?}", d.dlt, d.key, d.original_topic));
        }
        found.insert(entry);
    }
    for p in poison {
        if !found.contains(&(Topics::dlt(&p.topic), p.key.as_str())) {
            bad(format!("poison {} ({:?}) on {} is not in {}", p.key, p.kind, p.topic, Topics::dlt(&p.topic)));
        }
    }
    v.completed = completed;
    v.compensated = compensated;
    v.stuck = stuck;
    v.parked = parked;
    v.unexpected_outcomes = unexpected;
    v
}

async fn pairs(db: &saga_store::Db, sql: &'static str) -> Result<BTreeMap<String, String>, sqlx::Error> {
    Ok(sqlx::query(sql).fetch_all(db.pool()).await?.into_iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn count(db: &saga_store::Db, sql: &'static str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(sql).fetch_one(db.pool()).await
}

/// Reads the databases' side of the snapshot.
pub async fn gather_databases(dbs: &Dbs, snap: &mut Snapshot) -> Result<(), sqlx::Error> {
    snap.orders = pairs(&dbs.order, "SELECT order_id, status FROM orders").await?;
    snap.reservations = pairs(&dbs.inventory, "SELECT order_id, status FROM reservations").await?;
    snap.sagas.clear();
    // STUCK and PARKED sagas say why in `blocked_reason`.
    let rows = sqlx::query("SELECT saga_id, status, COALESCE(blocked_reason, failure_reason) FROM sagas").fetch_all(dbs.orchestrator.pool()).await?;
    for r in rows {
        snap.sagas.insert(r.get(0), Saga { status: r.get(1), reason: r.get(2) });
    }
    // Otherwise the reason is in the saga log.
    let without_reason: Vec<String> =
        snap.sagas.iter().filter(|(_, s)| !matches!(s.status.as_str(), "COMPLETED" | "COMPENSATED") && s.reason.is_none()).map(|(id, _)| id.clone()).collect();
    for id in without_reason {
        let detail: Option<Option<String>> = sqlx::query_scalar("SELECT detail FROM saga_log WHERE saga_id = $1 ORDER BY seq DESC LIMIT 1")
            .bind(&id)
            .fetch_optional(dbs.orchestrator.pool())
            .await?;
        snap.sagas.get_mut(&id).expect("listed above").reason = detail.flatten();
    }
    snap.authorizations = sqlx::query("SELECT order_id, status, customer_id, amount_minor FROM authorizations")
        .fetch_all(dbs.payment.pool())
        .await?
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    snap.accounts = sqlx::query("SELECT customer_id, authorized_minor FROM accounts")
        .fetch_all(dbs.payment.pool())
        .await?
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    snap.stock = sqlx::query("SELECT sku, on_hand, reserved FROM stock")
        .fetch_all(dbs.inventory.pool())
        .await?
        .into_iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    for (service, db) in [("order", &dbs.order), ("inventory", &dbs.inventory), ("payment", &dbs.payment), ("orchestrator", &dbs.orchestrator)] {
        snap.outbox.insert(service, count(db, "SELECT COUNT(*) FROM outbox").await?);
    }
    Ok(())
}

/// Reads the whole snapshot: the databases, then (off the runtime's threads) the broker's offsets
/// and dead letters. `group_suffix` ends every consumer group id (see `StackOptions`).
pub async fn gather(dbs: &Dbs, kafka: &KafkaSettings, topics: &Topics, group_suffix: &str, snap: &mut Snapshot) -> anyhow::Result<()> {
    gather_databases(dbs, snap).await?;
    let (kafka, topics, suffix, mut s) = (kafka.clone(), topics.clone(), group_suffix.to_string(), std::mem::take(snap));
    let (s, result) = tokio::task::spawn_blocking(move || {
        let r = gather_offsets(&kafka, &topics, &suffix, &mut s).and_then(|()| gather_dead_letters(&kafka, &topics, &mut s));
        (s, r)
    })
    .await?;
    *snap = s;
    result
}

/// Reads each consumer group's committed offsets against the high watermarks: the services' groups
/// on the topics they consume, and the orchestrator's dead-letter group (it parks the saga of a
/// dead-lettered message) on every dead-letter topic.
pub fn gather_offsets(kafka: &KafkaSettings, topics: &Topics, group_suffix: &str, snap: &mut Snapshot) -> anyhow::Result<()> {
    snap.offsets.clear();
    let dead_letter_group = format!("saga-orchestrator{group_suffix}.dead-letters");
    for kind in TopicKind::ALL {
        let topic = topics.name(kind);
        let dlt = Topics::dlt(&topic);
        for (group, topic) in [(format!("{}{group_suffix}", group_of(kind)), topic), (dead_letter_group.clone(), dlt)] {
            for (p, (_low, high, committed)) in inspect::offsets(kafka, &group, &topic)? {
                snap.offsets.insert((group.clone(), topic.clone(), p), (committed, high));
            }
        }
    }
    Ok(())
}

/// Reads every dead-letter topic.
pub fn gather_dead_letters(kafka: &KafkaSettings, topics: &Topics, snap: &mut Snapshot) -> anyhow::Result<()> {
    snap.dead_letters.clear();
    for kind in TopicKind::ALL {
        let dlt = Topics::dlt(&topics.name(kind));
        for m in inspect::read_all(kafka, &dlt).with_context(|| format!("reading {dlt}"))? {
            let header = |name: &str| crate::header(&m, name);
            snap.dead_letters.push(DeadLetter {
                dlt: dlt.clone(),
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default(),
                original_topic: header(saga_runtime::dlt::headers::ORIGINAL_TOPIC),
                class: header(saga_runtime::dlt::headers::ERROR_CLASS),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
