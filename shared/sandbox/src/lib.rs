//! What tests, `sagactl dev` and `sagactl bench` stand on, so the shipped crates carry no
//! test-only code or dependencies.
//!
//! # Layout
//! - [`db`]: fresh databases for tests (SQLite in a temporary directory, or a database of its own
//!   on the PostgreSQL test server, dropped afterwards) and [`backend_tests!`], which runs a
//!   scenario on each backend.
//! - [`apply`]: apply messages to a handler without a broker, exactly as the consume loop does.

pub mod apply;
pub mod db;

pub use apply::{apply, envelope, migrate};
pub use db::{create_postgres_database, drop_postgres_database, postgres_admin_url, write_past_status_check, TestDb};
