//! Persistence helpers shared by every service: one connection type for SQLite and PostgreSQL.
//!
//! # Layout
//! - [`Db`]: a pool over either backend, chosen by the URL scheme (`sqlite://` or `postgres://`).
//!   SQLite connections run in WAL mode with `synchronous=FULL`, so every commit is durable.
//! - [`Migrations`]: a pair of embedded migrators, one per dialect; [`Db::migrate`] runs the right one.
//! - [`sql`]: [`Conn`], statements written once and run through sqlx (either backend) or
//!   directly on a SQLite connection; [`Row`] reads columns by name, as an error when absent.
//! - [`writer`]: [`Writer`], a SQLite connection on a thread of its own that runs whole batch
//!   transactions handed to it (one hand-over per batch instead of one per statement).
//!
//! SQL in this workspace is written once, with `$1`-style placeholders that both drivers accept.
//! Where the dialects differ (row locks, identity columns), code asks [`Db::backend`].

pub mod sql;
pub mod writer;

/// The SQLite bindings the writer runs on, for code that takes its connection.
pub use rusqlite;
pub use sql::{Arg, Conn, Row};
pub use writer::Writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, ConnectOptions, Executor};

/// The database dialect behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded, one file per service; the default for `dev` and tests.
    Sqlite,
    /// Shared server; what production and the real-infrastructure suites use.
    Postgres,
}

/// Errors at the persistence boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL is neither `sqlite:` nor `postgres:`.
    #[error("database url has unsupported scheme (expected sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
    /// The database could not be reached or refused the work.
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// A migration failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// True when trying again later may succeed (the database is down, busy or a connection broke).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Sqlx(e) => is_transient(e),
            // A migration cut off by a lost connection runs again (migrations are transactional).
            StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => is_transient(e),
            StoreError::UnsupportedUrl(_) | StoreError::Migrate(_) => false,
        }
    }
}

/// What a database error says about the work that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database could not do it now (a lost connection, a timeout, lock contention, too many
    /// connections): the same work may succeed later, so it is retried.
    Transient,
    /// The work's data does not fit (a constraint violated, a value out of range, a row that does
    /// not decode): the same message fails again however often it is retried, so it goes to its
    /// dead-letter topic.
    Poison,
    /// The database is unusable as it stands (a table or column missing, permission denied, a
    /// read-only database, a full disk, SQL it does not understand): no message caused it and
    /// every message would meet it, so nothing may be dead-lettered for it. The consumer stops
    /// where it is, reports not ready, and tries again until an operator mends the cause.
    Fatal,
}

/// Classifies a sqlx error (see [`Failure`]).
pub fn classify(e: &sqlx::Error) -> Failure {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            let code = code.as_ref();
            // A PostgreSQL SQLSTATE is five characters, often all digits (42501); a SQLite
            // (extended) result code is a number below 10,000.
            let sqlite = if code.len() == 5 { None } else { code.parse::<i64>().ok() };
            match sqlite {
                // SQLite result codes: the primary code is the low byte.
                Some(n) => match n & 0xff {
                    // 19 constraint, 20 type mismatch, 25 bind index out of range.
                    19 | 20 | 25 => Failure::Poison,
                    // 1 SQL error (no such table or column, a syntax error), 8 read-only, 11
                    // corrupt, 13 disk full, 14 cannot open, 23 authorization denied, 26 not a
                    // database.
                    1 | 8 | 11 | 13 | 14 | 23 | 26 => Failure::Fatal,
                    // 5 busy, 6 locked, 10 I/O error, ...
                    _ => Failure::Transient,
                },
                // PostgreSQL SQLSTATE classes.
                None => match code.get(..2).unwrap_or_default() {
                    // 22 data exception, 23 integrity constraint violation.
                    "22" | "23" => Failure::Poison,
                    // 42 syntax error or access rule violation (undefined table or column,
                    // insufficient privilege), 28 invalid authorization, 3D no such database,
                    // 3F no such schema, 0A feature not supported, 25006 read-only transaction,
                    // 53100 disk full.
                    "42" | "28" | "3D" | "3F" | "0A" => Failure::Fatal,
                    _ if code == "25006" || code == "53100" => Failure::Fatal,
                    _ => Failure::Transient,
                },
            }
        }
        // The configuration or the code and the schema disagree: no message's doing.
        sqlx::Error::Configuration(_) | sqlx::Error::TypeNotFound { .. } | sqlx::Error::ColumnIndexOutOfBounds { .. } | sqlx::Error::ColumnNotFound(_) => {
            Failure::Fatal
        }
        sqlx::Error::InvalidArgument(_) | sqlx::Error::RowNotFound | sqlx::Error::ColumnDecode { .. } | sqlx::Error::Encode(_) | sqlx::Error::Decode(_) => {
            Failure::Poison
        }
        _ => Failure::Transient,
    }
}

/// True when [`classify`] says [`Failure::Transient`]: trying again later may succeed.
pub fn is_transient(e: &sqlx::Error) -> bool {
    classify(e) == Failure::Transient
}

/// A pair of embedded migrators, one per dialect, for the same logical schema.
pub struct Migrations {
    /// Migrations for SQLite.
    pub sqlite: &'static Migrator,
    /// Migrations for PostgreSQL.
    pub postgres: &'static Migrator,
}

/// A connection pool over SQLite or PostgreSQL.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// The file of a SQLite database, for [`Db::writer`].
    sqlite_file: Option<std::path::PathBuf>,
    /// Whether transactions of the hot path run directly on SQLite ([`Writer`]) rather than
    /// through the pool; see [`Db::with_direct_sqlite`].
    direct: bool,
}

impl Db {
    /// Connects to `url` (`sqlite://path` creates the file when missing; `postgres://...`).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the single writer; FULL makes each commit
                        // durable; busy_timeout turns writer contention into waiting, not errors.
                        conn.execute(
                            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; \
                             PRAGMA busy_timeout=10000; PRAGMA foreign_keys=ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let sqlite_file = match backend {
            Backend::Sqlite => sqlx::sqlite::SqliteConnectOptions::from_str(&url)?.get_filename().to_path_buf().into(),
            Backend::Postgres => None,
        };
        let sqlite_file = sqlite_file.filter(|f: &std::path::PathBuf| !f.as_os_str().is_empty() && f.as_os_str() != ":memory:");
        Ok(Db { pool, backend, direct: sqlite_file.is_some(), sqlite_file })
    }

    /// Runs the dialect's migrations. Several migrators may share one database: each ignores the
    /// versions it does not own, so give every migrator its own version range.
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StoreError> {
        let migrator = match self.backend {
            Backend::Sqlite => migrations.sqlite,
            Backend::Postgres => migrations.postgres,
        };
        let mut migrator = Migrator { migrations: migrator.migrations.clone(), ..Migrator::DEFAULT };
        migrator.set_ignore_missing(true);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// The pool, for queries.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Whether a SQLite file's hot-path transactions (each consume loop's batches) run on a
    /// direct connection in a thread of their own (the default: one hand-over per batch), or
    /// through the pool (sqlx's worker thread: one hand-over per statement). PostgreSQL and a
    /// database in memory always use the pool.
    pub fn with_direct_sqlite(mut self, on: bool) -> Db {
        self.direct = on && self.sqlite_file.is_some();
        self
    }

    /// The SQLite file that hot-path transactions open directly, when they do
    /// ([`Db::with_direct_sqlite`]).
    pub fn direct_sqlite_file(&self) -> Option<&std::path::Path> {
        self.sqlite_file.as_deref().filter(|_| self.direct)
    }

    /// A [`Writer`] on this database, when its transactions run directly on SQLite
    /// ([`Db::direct_sqlite_file`]); `None` otherwise.
    pub fn writer(&self, name: &str) -> Option<Result<Writer, sqlx::Error>> {
        Some(Writer::open(self.direct_sqlite_file()?, name))
    }

    /// Which dialect this database speaks.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes every connection; waits for those in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl(redact_url(url)))
    }
}

/// Hides the password of a database URL, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.find(':') {
                Some(colon) => format!("{}{}:***{}", &url[..scheme_end + 3], &userinfo[..colon], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password_only() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    /// A database error with only a code, as either driver reports it.
    #[derive(Debug, thiserror::Error)]
    #[error("code {0}")]
    struct Coded(&'static str);

    impl sqlx::error::DatabaseError for Coded {
        fn message(&self) -> &str {
            self.0
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn postgres_sqlstates_and_sqlite_codes_are_told_apart_and_classified() {
        let class = |code: &'static str| classify(&sqlx::Error::Database(Box::new(Coded(code))));
        // PostgreSQL: all-digit SQLSTATEs are not SQLite numbers (42501 & 0xff would be 5, "busy").
        assert_eq!(class("42501"), Failure::Fatal, "insufficient privilege");
        assert_eq!(class("42P01"), Failure::Fatal, "undefined table");
        assert_eq!(class("25006"), Failure::Fatal, "read-only transaction");
        assert_eq!(class("53100"), Failure::Fatal, "disk full");
        assert_eq!(class("23505"), Failure::Poison, "unique violation");
        assert_eq!(class("22P02"), Failure::Poison, "invalid text representation");
        assert_eq!(class("40001"), Failure::Transient, "serialization failure");
        assert_eq!(class("57P01"), Failure::Transient, "admin shutdown");
        assert_eq!(class("53300"), Failure::Transient, "too many connections");
        // SQLite (extended) result codes.
        assert_eq!(class("2067"), Failure::Poison, "unique constraint");
        assert_eq!(class("1"), Failure::Fatal, "no such table");
        assert_eq!(class("8"), Failure::Fatal, "read-only");
        assert_eq!(class("13"), Failure::Fatal, "disk full");
        assert_eq!(class("5"), Failure::Transient, "busy");
        assert_eq!(class("517"), Failure::Transient, "busy snapshot");
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Failure::Transient);
    }

    #[test]
    fn rejects_unknown_scheme() {
        assert!(matches!(backend_of("mysql://x"), Err(StoreError::UnsupportedUrl(_))));
    }
}
