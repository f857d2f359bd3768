//! A SQLite connection on a thread of its own, that runs whole transactions handed to it.
//!
//! A consume loop hands over each batch as one job: every statement of the batch then runs in
//! that thread ([`crate::sql::Conn::Sqlite`]), and the loop waits for one answer per batch instead
//! of one per statement. The connection is set up as [`crate::Db`]'s are (WAL, `synchronous=FULL`,
//! a busy timeout, foreign keys), so every commit is durable, and other connections to the same
//! file (sqlx's pool, `sagactl`) may write beside it.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::sql::from_sqlite;

type Job = Box<dyn FnOnce(&mut rusqlite::Connection) + Send>;

/// One SQLite connection, used by one thread; see the module docs.
pub struct Writer {
    jobs: mpsc::Sender<Job>,
    path: PathBuf,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").field("path", &self.path).finish()
    }
}

/// How many prepared statements the connection keeps (every statement of the hot path fits).
const STATEMENT_CACHE: usize = 128;

/// A direct SQLite connection to the file at `path`, set up as the pool's are: WAL, every
/// commit durable (`synchronous=FULL`), a 10 s busy timeout, foreign keys enforced.
pub fn connect(path: &Path) -> Result<rusqlite::Connection, sqlx::Error> {
    let conn = rusqlite::Connection::open(path).map_err(from_sqlite)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(from_sqlite)?;
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;").map_err(from_sqlite)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl Writer {
    /// Opens the database file at `path` (it must exist: [`crate::Db::connect`] creates it) on a
    /// new thread named after `name`.
    pub fn open(path: &Path, name: &str) -> Result<Writer, sqlx::Error> {
        let conn = connect(path)?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(format!("sqlite-{name}"))
            .spawn(move || {
                let mut conn = conn;
                // Ends when the last sender is dropped.
                while let Ok(job) = queue.recv() {
                    // A job that panics answers nothing (its caller sees the writer as failed);
                    // whatever transaction it left open is rolled back and the next job runs.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&mut conn))).is_err() && !conn.is_autocommit() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                }
            })
            .map_err(sqlx::Error::Io)?;
        Ok(Writer { jobs, path: path.to_path_buf() })
    }

    /// Runs `job` on the writer's thread with its connection and returns what it returned.
    /// Jobs run one at a time, in the order they were handed over.
    pub async fn run<R: Send + 'static>(&self, job: impl FnOnce(&mut rusqlite::Connection) -> R + Send + 'static) -> Result<R, sqlx::Error> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let _ = done.send(job(conn));
        });
        self.jobs.send(job).map_err(|_| sqlx::Error::WorkerCrashed)?;
        answer.await.map_err(|_| sqlx::Error::WorkerCrashed)
    }
}
