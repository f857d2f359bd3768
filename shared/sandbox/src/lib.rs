//! What tests, `sagactl dev` and `sagactl bench` stand on, so the shipped crates carry no
//! test-only code or dependencies.
//!
//! # Layout
//! - [`db`]: fresh databases for tests (SQLite in a temporary directory, or a database of its own
//!   on the PostgreSQL test server, dropped afterwards) and [`backend_tests!`], which runs a
//!   scenario on each backend.
//! - [`apply`]: apply messages to a handler without a broker, exactly as the consume loop does.
//! - [`stack`]: the whole system (broker, registry, the services) in this process or as the
//!   shipped binaries' processes, on SQLite or PostgreSQL: `sagactl dev`, `sagactl bench` and the
//!   end-to-end tests.
//! - [`seed`]: stock and accounts from a TOML file (`deploy/seed/dev.toml` by default).
//! - [`procs`]: the binaries as OS processes for tests that need process boundaries (SIGTERM,
//!   kill -9, separate instances), on librdkafka's mock cluster, and the HTTP and Kafka clients
//!   those tests drive them with.
//!
//! The chaos harness keeps its own process supervisor (`saga-integration-tests`' `chaos::cluster`):
//! it kills and restarts children from a dedicated thread, inside network namespaces, which none
//! of the users here needs.

pub mod apply;
pub mod db;
pub mod procs;
pub mod seed;
pub mod stack;

pub use apply::{applied, applied_retrying, apply, envelope, migrate, reply};
pub use db::{
    create_postgres_database, drop_postgres_database, drop_postgres_databases, postgres_admin, postgres_admin_url, write_past_status_check, TestDb,
    TestServerError,
};
