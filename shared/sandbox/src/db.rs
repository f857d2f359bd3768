//! Fresh databases for tests: write a scenario once, run it on SQLite and on PostgreSQL.
//!
//! PostgreSQL tests read `SAGA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! create a database with a random name there and drop it when the [`TestDb`] is dropped. When the server cannot be
//! reached they fail with a message that says how to start it; they never pass silently.

use saga_store::{Db, StoreError};

/// Runs `update`, which writes what the CHECK constraint on `table`'s `status` refuses, as a
/// newer schema would allow (SQLite: the connection ignores CHECK constraints; PostgreSQL: the
/// constraint `<table>_status_check` is dropped). Each of the two steps fails harmlessly on the
/// other backend; the update itself must succeed.
pub async fn write_past_status_check(db: &Db, table: &str, update: &str) {
    let mut conn = db.pool().acquire().await.expect("a connection");
    let _ = sqlx::query("PRAGMA ignore_check_constraints = ON").execute(&mut *conn).await;
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {table}_status_check"))).execute(&mut *conn).await;
    sqlx::query(sqlx::AssertSqlSafe(update.to_string())).execute(&mut *conn).await.expect("the update past the CHECK constraint");
}

/// The server the PostgreSQL test runs use.
pub fn postgres_admin_url() -> String {
    std::env::var("SAGA_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// The PostgreSQL test server did not do what a test asked: where it was looked for, why, and how
/// to start it (the usual cause is a server that is not running).
#[derive(Debug, thiserror::Error)]
#[error(
    "the PostgreSQL test server at {server} failed: {source}; if it is not running, start it with \
     `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start`, or point SAGA_TEST_POSTGRES_URL at one"
)]
pub struct TestServerError {
    /// The server's URL, its password redacted.
    pub server: String,
    /// What failed.
    #[source]
    pub source: StoreError,
}

impl TestServerError {
    fn new(source: StoreError) -> TestServerError {
        TestServerError { server: saga_store::redact_url(&postgres_admin_url()), source }
    }
}

/// A connection to the test server's administrative database.
pub async fn postgres_admin() -> Result<Db, TestServerError> {
    Db::connect(&postgres_admin_url(), 1).await.map_err(TestServerError::new)
}

/// A database that lives as long as the test; a PostgreSQL one is dropped with it.
pub struct TestDb {
    /// The database under test.
    pub db: Db,
    /// Its URL, for code under test that connects by itself.
    pub url: String,
    // Keeps the SQLite file alive; dropped with the test.
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A new SQLite database in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("create temp dir for test database");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        let db = Db::connect(&url, 4).await.expect("open sqlite test database");
        TestDb { db, url, _dir: Some(dir) }
    }

    /// A new SQLite database whose handler transactions run through sqlx's pool rather than on a
    /// direct connection (see [`Db::with_direct_sqlite`]).
    pub async fn sqlite_pooled() -> TestDb {
        let mut test = TestDb::sqlite().await;
        test.db = test.db.clone().with_direct_sqlite(false);
        test
    }

    /// A new, empty PostgreSQL database on the test server.
    pub async fn postgres() -> TestDb {
        let url = create_postgres_database().await.unwrap_or_else(|e| panic!("{e}"));
        let db = Db::connect(&url, 4).await.expect("open postgres test database");
        TestDb { db, url, _dir: None }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self._dir.is_none() {
            let url = self.url.clone();
            // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    if let Err(e) = rt.block_on(drop_postgres_database(&url)) {
                        eprintln!("could not drop test database: {e}");
                    }
                }
            })
            .join();
        }
    }
}

/// Drops a database made by [`create_postgres_database`], closing its remaining connections.
pub async fn drop_postgres_database(url: &str) -> Result<(), TestServerError> {
    let Some(name) = url.rsplit('/').next().filter(|n| n.starts_with("saga_test_") && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')) else {
        return Ok(());
    };
    let admin = postgres_admin().await?;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).execute(admin.pool()).await;
    admin.close().await;
    dropped.map(drop).map_err(|e| TestServerError::new(e.into()))
}

/// Drops each of `urls` ([`drop_postgres_database`]); one that cannot be dropped is reported on
/// stderr and the rest are still dropped.
pub async fn drop_postgres_databases(urls: &[String]) {
    for url in urls {
        if let Err(e) = drop_postgres_database(url).await {
            eprintln!("could not drop test database {}: {e}", saga_store::redact_url(url));
        }
    }
}

/// Creates a database with a random name on the test server and returns its URL.
pub async fn create_postgres_database() -> Result<String, TestServerError> {
    let admin_url = postgres_admin_url();
    let admin = postgres_admin().await?;
    let name = format!("saga_test_{}", uuid::Uuid::new_v4().simple());
    let created = sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(admin.pool()).await;
    admin.close().await;
    created.map_err(|e| TestServerError::new(e.into()))?;
    let base = match admin_url.rfind('/') {
        Some(i) if i > "postgres://".len() => &admin_url[..i],
        _ => admin_url.as_str(),
    };
    Ok(format!("{base}/{name}"))
}

/// Runs each named `async fn(TestDb)` scenario three times: on SQLite with transactions on a
/// direct connection (as services run them), on SQLite through sqlx's pool, and on PostgreSQL.
///
/// The PostgreSQL variants are `#[ignore]`d so that `cargo test` passes on a machine with only the
/// Rust toolchain; `.ci/run` runs them with `-- --ignored` against a live server, where an
/// unreachable server fails the test with instructions.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestDb::sqlite().await).await
                }
            )*
        }
        mod on_sqlite_pooled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::TestDb::sqlite_pooled().await).await
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL (SAGA_TEST_POSTGRES_URL); .ci/run runs it with --ignored"]
                async fn $name() {
                    super::$name($crate::TestDb::postgres().await).await
                }
            )*
        }
    };
}
