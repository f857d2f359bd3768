//! A small Confluent Schema Registry compatible server, Avro only, for development and tests.
//!
//! Production points its clients at Confluent or Karapace by URL; this crate gives `dev` setups
//! and test suites the same wire API without a JVM. It serves what `schema_registry_converter`
//! and `confluent-kafka`'s `SchemaRegistryClient` call: register and look up schemas, fetch them
//! by global id, list and soft-delete versions, compatibility levels and dry-run checks.
//!
//! # Layout
//! - [`Registry`] / [`RegistrySettings`]: build (connect, migrate, bind; port 0 works), then
//!   [`Registry::run_until_stopped`]. `src/main.rs` is the `saga-registry` binary around them.
//! - `api`: the HTTP routes and handlers, with Confluent's error bodies and codes.
//! - `store`: the three tables (`registry_schemas`, `registry_versions`, `registry_config`) and
//!   all SQL, for SQLite and PostgreSQL through [`saga_store::Db`].
//! - `compat`: compatibility levels and the reader/writer checks, pure.
//! - `schema`: parsing a submitted schema and the fingerprint that deduplicates it.
//! - [`RegistryError`]: why the server could not start or stopped.
//!
//! # Guarantees
//! A registration answers only after its transaction committed. Schema ids are global and never
//! reused: the same schema gets the same id under every subject, and ids keep resolving after
//! their versions are deleted, so old messages stay decodable. Several registry processes may
//! share one PostgreSQL database: a registration that races another one is retried, compatibility
//! check included, so ids and versions are never handed out twice.

mod api;
mod compat;
mod error;
mod schema;
mod store;

use std::future::Future;
use std::net::SocketAddr;

use saga_store::{Db, Migrations};
use sqlx::migrate::Migrator;

pub use error::RegistryError;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The registry's tables, versions 3000 to 3999; [`Registry::build_with_db`] runs them.
pub static MIGRATIONS: Migrations = Migrations { sqlite: &SQLITE_MIGRATIONS, postgres: &POSTGRES_MIGRATIONS };

/// Connections the registry opens when it owns its database; a dev registry is lightly used.
const MAX_CONNECTIONS: u32 = 8;

/// Where the registry listens and what it stores into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Listen address; port 0 picks a free port (see [`Registry::local_addr`]).
    pub bind: SocketAddr,
    /// `sqlite://path` (created when missing) or `postgres://...`.
    pub database_url: String,
}

impl Default for RegistrySettings {
    /// Confluent's port on loopback, and a SQLite file in the working directory.
    fn default() -> Self {
        RegistrySettings { bind: SocketAddr::from(([127, 0, 0, 1], 8081)), database_url: "sqlite://registry.db".to_string() }
    }
}

/// A registry whose database is migrated and whose listener is bound, ready to run.
pub struct Registry {
    // Bound in `build` so the port is known (and taken) before the server runs.
    listener: tokio::net::TcpListener,
    // Read once from the listener: with port 0 this is the only place the real port shows up.
    local_addr: SocketAddr,
    // Shared with an embedding process when built with `build_with_db`.
    db: Db,
    // The `Authorization` header every request must carry, when basic authentication is on.
    authorization: Option<String>,
}

impl Registry {
    /// Connects to `settings.database_url`, migrates, and binds `settings.bind`.
    pub async fn build(settings: &RegistrySettings) -> Result<Registry, RegistryError> {
        let db = Db::connect(&settings.database_url, MAX_CONNECTIONS).await?;
        Registry::build_with_db(db, settings.bind).await
    }

    /// Migrates `db` (other migrators may share it) and binds `bind`; for processes that embed
    /// the registry next to their own tables.
    pub async fn build_with_db(db: Db, bind: SocketAddr) -> Result<Registry, RegistryError> {
        db.migrate(&MIGRATIONS).await?;
        let listener = tokio::net::TcpListener::bind(bind).await.map_err(|source| RegistryError::Bind { addr: bind, source })?;
        let local_addr = listener.local_addr().map_err(|source| RegistryError::Bind { addr: bind, source })?;
        Ok(Registry { listener, local_addr, db, authorization: None })
    }

    /// Requires HTTP basic authentication as `username`/`password` on every route but `/healthz`.
    /// Run it behind TLS (an ingress or a sidecar) anywhere but on loopback.
    pub fn with_basic_auth(mut self, username: &str, password: &str) -> Registry {
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        self.authorization = Some(format!("Basic {token}"));
        self
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `http://` and the bound address: what clients take as their registry URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), RegistryError> {
        let mut app = api::router(store::Store::new(self.db));
        if let Some(expected) = self.authorization {
            app = api::require_basic_auth(app, expected);
        }
        tracing::info!(addr = %self.local_addr, "schema registry serving");
        axum::serve(self.listener, app).with_graceful_shutdown(shutdown).await.map_err(RegistryError::Serve)
    }
}
