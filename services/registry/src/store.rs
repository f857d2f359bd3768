//! The registry's tables and every SQL statement that touches them.
//!
//! Schemas are global (`registry_schemas`, one row per fingerprint); a subject is a list of
//! versions pointing at them (`registry_versions`); `registry_config` holds compatibility levels,
//! the global one under the empty subject name, which no URL can address.
//!
//! Ids and versions are `MAX + 1` inside the registering transaction. Two registry processes
//! sharing one PostgreSQL database may pick the same number; the primary and unique keys turn the
//! loser's insert into a unique violation, and [`Store::register`] runs the whole registration
//! again, compatibility check included, against what the winner committed.

use std::time::Duration;

use saga_contracts::now_ms;
use saga_store::{Backend, Db};
use sqlx::{Any, Executor};

use crate::compat::CompatibilityLevel;
use crate::schema::ParsedSchema;

/// Key of the global compatibility level in `registry_config`.
const GLOBAL: &str = "";

/// How often a registration is attempted when it races another writer.
const REGISTER_ATTEMPTS: u32 = 10;

/// One version of a subject, soft-deleted or not.
#[derive(Debug, Clone)]
pub(crate) struct VersionRow {
    pub version: i64,
    pub schema_id: i64,
    pub schema: String,
    pub fingerprint: String,
    pub deleted: bool,
}

/// Where a schema id is used.
#[derive(Debug, Clone)]
pub(crate) struct Usage {
    pub subject: String,
    pub version: i64,
    pub deleted: bool,
}

/// What [`Store::register`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Registration {
    /// The subject already has this schema as a live version.
    Existing { id: i64, version: i64 },
    /// A new version was committed.
    Created { id: i64, version: i64 },
    /// The check refused it, with its reasons; nothing was written.
    Incompatible(Vec<String>),
}

/// The registry's persistence, over a shared [`Db`].
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: Db,
}

type VersionTuple = (i64, i64, String, String, Option<i64>);

impl Store {
    pub(crate) fn new(db: Db) -> Store {
        Store { db }
    }

    /// Answers when the database does.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(self.db.pool()).await.map(|_| ())
    }

    /// Every version of `subject`, oldest first, soft-deleted ones included.
    pub(crate) async fn versions(&self, subject: &str) -> Result<Vec<VersionRow>, sqlx::Error> {
        load_versions(self.db.pool(), subject).await
    }

    /// Subject names, sorted; those whose versions are all soft-deleted only when asked.
    pub(crate) async fn subjects(&self, include_deleted: bool) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT DISTINCT subject FROM registry_versions \
             WHERE $1 OR deleted_at_ms IS NULL ORDER BY subject",
        )
        .bind(include_deleted)
        .fetch_all(self.db.pool())
        .await
    }

    /// The schema text registered under `id`. Ids outlive the versions that use them, so old
    /// messages stay decodable after a subject is deleted.
    pub(crate) async fn schema_by_id(&self, id: i64) -> Result<Option<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT schema_text FROM registry_schemas WHERE id = $1").bind(id).fetch_optional(self.db.pool()).await
    }

    /// The subject versions that use schema `id`, by subject then version.
    pub(crate) async fn usages(&self, id: i64) -> Result<Vec<Usage>, sqlx::Error> {
        let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(
            "SELECT subject, version, deleted_at_ms FROM registry_versions \
             WHERE schema_id = $1 ORDER BY subject, version",
        )
        .bind(id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows.into_iter().map(|(subject, version, deleted_at)| Usage { subject, version, deleted: deleted_at.is_some() }).collect())
    }

    /// Registers `schema` under `subject` unless the subject already has it or `check` objects.
    ///
    /// `check` sees the subject's live versions, oldest first, and returns why the schema is
    /// incompatible (empty: go ahead). It may run more than once when writers race.
    pub(crate) async fn register(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        mut check: impl FnMut(&[VersionRow]) -> Vec<String>,
    ) -> Result<Registration, sqlx::Error> {
        let mut attempt = 1;
        loop {
            match self.try_register(subject, schema, &mut check).await {
                Err(e) if attempt < REGISTER_ATTEMPTS && is_race(&e) => {
                    tracing::debug!(subject, attempt, error = %e, "registration raced another writer, retrying");
                    tokio::time::sleep(Duration::from_millis(5 * u64::from(attempt))).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    async fn try_register(
        &self,
        subject: &str,
        schema: &ParsedSchema,
        check: &mut impl FnMut(&[VersionRow]) -> Vec<String>,
    ) -> Result<Registration, sqlx::Error> {
        // SQLite: take the write lock up front, so concurrent registrations queue behind
        // busy_timeout instead of failing to upgrade a read snapshot that went stale.
        let mut tx = match self.db.backend() {
            Backend::Sqlite => self.db.pool().begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.db.pool().begin().await?,
        };
        let live: Vec<VersionRow> = load_versions(&mut *tx, subject).await?.into_iter().filter(|v| !v.deleted).collect();
        if let Some(found) = live.iter().find(|v| v.fingerprint == schema.fingerprint) {
            return Ok(Registration::Existing { id: found.schema_id, version: found.version });
        }
        let problems = check(&live);
        if !problems.is_empty() {
            return Ok(Registration::Incompatible(problems));
        }
        let now = now_ms();
        let existing_id: Option<i64> =
            sqlx::query_scalar("SELECT id FROM registry_schemas WHERE fingerprint = $1").bind(&schema.fingerprint).fetch_optional(&mut *tx).await?;
        let id = match existing_id {
            Some(id) => id,
            None => {
                sqlx::query_scalar(
                    "INSERT INTO registry_schemas (id, fingerprint, schema_text, created_at_ms) \
                     VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM registry_schemas), $1, $2, $3) \
                     RETURNING id",
                )
                .bind(&schema.fingerprint)
                .bind(&schema.text)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        let version: i64 = sqlx::query_scalar(
            "INSERT INTO registry_versions (subject, version, schema_id, created_at_ms) \
             VALUES ($1, (SELECT COALESCE(MAX(version), 0) + 1 FROM registry_versions WHERE subject = $1), $2, $3) \
             RETURNING version",
        )
        .bind(subject)
        .bind(id)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Registration::Created { id, version })
    }

    /// Soft-deletes the live versions of `subject` (all, or just `version`); returns those it hid.
    pub(crate) async fn soft_delete(&self, subject: &str, version: Option<i64>) -> Result<Vec<i64>, sqlx::Error> {
        let mut versions: Vec<i64> = sqlx::query_scalar(
            "UPDATE registry_versions SET deleted_at_ms = $1 \
             WHERE subject = $2 AND deleted_at_ms IS NULL AND ($3 OR version = $4) RETURNING version",
        )
        .bind(now_ms())
        .bind(subject)
        .bind(version.is_none())
        .bind(version.unwrap_or(0))
        .fetch_all(self.db.pool())
        .await?;
        versions.sort_unstable();
        Ok(versions)
    }

    /// Removes soft-deleted versions of `subject` for good (all, or just `version`); returns them.
    /// The schemas stay, so their ids keep resolving.
    pub(crate) async fn hard_delete(&self, subject: &str, version: Option<i64>) -> Result<Vec<i64>, sqlx::Error> {
        let mut versions: Vec<i64> = sqlx::query_scalar(
            "DELETE FROM registry_versions \
             WHERE subject = $1 AND deleted_at_ms IS NOT NULL AND ($2 OR version = $3) RETURNING version",
        )
        .bind(subject)
        .bind(version.is_none())
        .bind(version.unwrap_or(0))
        .fetch_all(self.db.pool())
        .await?;
        versions.sort_unstable();
        Ok(versions)
    }

    /// The level configured for `subject`, or the global one when `subject` is `None`.
    pub(crate) async fn config(&self, subject: Option<&str>) -> Result<Option<CompatibilityLevel>, sqlx::Error> {
        let level: Option<String> = sqlx::query_scalar("SELECT compatibility FROM registry_config WHERE subject = $1")
            .bind(subject.unwrap_or(GLOBAL))
            .fetch_optional(self.db.pool())
            .await?;
        level.map(|l| parse_stored_level(&l)).transpose()
    }

    /// The level that applies to `subject`: its own, else the global one, else the default.
    pub(crate) async fn effective_level(&self, subject: &str) -> Result<CompatibilityLevel, sqlx::Error> {
        match self.config(Some(subject)).await? {
            Some(level) => Ok(level),
            None => Ok(self.config(None).await?.unwrap_or(CompatibilityLevel::DEFAULT)),
        }
    }

    /// Sets the level of `subject`, or the global one when `subject` is `None`.
    pub(crate) async fn set_config(&self, subject: Option<&str>, level: CompatibilityLevel) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO registry_config (subject, compatibility, updated_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (subject) DO UPDATE \
             SET compatibility = excluded.compatibility, updated_at_ms = excluded.updated_at_ms",
        )
        .bind(subject.unwrap_or(GLOBAL))
        .bind(level.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await
        .map(|_| ())
    }

    /// Removes the subject's own level; returns it, if there was one.
    pub(crate) async fn delete_config(&self, subject: &str) -> Result<Option<CompatibilityLevel>, sqlx::Error> {
        let level: Option<String> =
            sqlx::query_scalar("DELETE FROM registry_config WHERE subject = $1 RETURNING compatibility").bind(subject).fetch_optional(self.db.pool()).await?;
        level.map(|l| parse_stored_level(&l)).transpose()
    }
}

async fn load_versions<'c, E>(executor: E, subject: &str) -> Result<Vec<VersionRow>, sqlx::Error>
where
    E: Executor<'c, Database = Any>,
{
    let rows: Vec<VersionTuple> = sqlx::query_as(
        "SELECT v.version, v.schema_id, s.schema_text, s.fingerprint, v.deleted_at_ms \
         FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id \
         WHERE v.subject = $1 ORDER BY v.version",
    )
    .bind(subject)
    .fetch_all(executor)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(version, schema_id, schema, fingerprint, deleted_at)| VersionRow { version, schema_id, schema, fingerprint, deleted: deleted_at.is_some() })
        .collect())
}

/// Only levels this code wrote are stored; anything else means the table was edited by hand.
fn parse_stored_level(stored: &str) -> Result<CompatibilityLevel, sqlx::Error> {
    stored.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

/// A registration that lost a race: another writer took the id or version first, or SQLite
/// refused to upgrade a stale read snapshot. Running it again sees the winner's rows.
fn is_race(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db.is_unique_violation() || saga_store::is_transient(e),
        _ => false,
    }
}
