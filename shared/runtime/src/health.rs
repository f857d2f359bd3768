//! Health endpoints: `/healthz` answers while the process runs; `/readyz` answers 200 only
//! while the database, the schema registry and the broker are reachable (checked in the
//! background every few seconds, so probes are cheap), 503 with what is down otherwise.
//! `/metrics` serves the instance's Prometheus metrics.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rdkafka::producer::{FutureProducer, Producer};
use saga_store::Db;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::codec::registry_http_client;
use crate::config::RegistrySettings;
use crate::metrics::Metrics;

/// The last observed state of each dependency.
#[derive(Default)]
pub struct Readiness {
    database: AtomicBool,
    registry: AtomicBool,
    broker: AtomicBool,
}

/// `/readyz` body.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ReadyReport {
    /// All dependencies reachable.
    pub ready: bool,
    /// The database answered `SELECT 1`.
    pub database: bool,
    /// The registry answered `GET /subjects`.
    pub registry: bool,
    /// The broker returned cluster metadata.
    pub broker: bool,
}

impl Readiness {
    /// The current report.
    pub fn report(&self) -> ReadyReport {
        let database = self.database.load(Ordering::Relaxed);
        let registry = self.registry.load(Ordering::Relaxed);
        let broker = self.broker.load(Ordering::Relaxed);
        ReadyReport { ready: database && registry && broker, database, registry, broker }
    }
}

/// Binds the endpoints' listener (so a taken port fails startup, naming the address).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves the endpoints until `stop`.
pub async fn serve(listener: TcpListener, readiness: Arc<Readiness>, metrics: Metrics, extra: Option<Router>, stop: CancellationToken) {
    let mut app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(readiness)
        .route("/metrics", get(move || async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics.render()) }));
    if let Some(extra) = extra {
        app = app.merge(extra);
    }
    if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(async move { stop.cancelled().await }).await {
        tracing::warn!(error = %e, "health endpoint stopped");
    }
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, Json<ReadyReport>) {
    let report = readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report))
}

/// Checks the dependencies every `every` until `stop`.
pub async fn check_until(readiness: Arc<Readiness>, db: Db, registry: RegistrySettings, producer: FutureProducer, every: Duration, stop: CancellationToken) {
    // The settings were validated at startup (the CA file was readable then); a CA that became
    // unreadable since leaves the system roots, and readiness says the registry is unreachable.
    let http = registry_http_client(&registry)
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "registry client for readiness checks falls back to the system's roots");
            reqwest::Client::builder()
        })
        .timeout(Duration::from_secs(2))
        .build()
        .expect("http client builds");
    loop {
        let database = tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(db.pool())).await.is_ok_and(|r| r.is_ok());
        let registry = registry_answers(&http, &registry).await;
        let p = producer.clone();
        let broker = tokio::task::spawn_blocking(move || p.client().fetch_metadata(None, Duration::from_secs(2)).is_ok()).await.unwrap_or(false);
        readiness.database.store(database, Ordering::Relaxed);
        readiness.registry.store(registry, Ordering::Relaxed);
        readiness.broker.store(broker, Ordering::Relaxed);
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// True when the registry answers `GET /subjects` with success, with the configured credentials.
pub async fn registry_answers(http: &reqwest::Client, registry: &RegistrySettings) -> bool {
    let mut request = http.get(format!("{}/subjects", registry.url.trim_end_matches('/')));
    if !registry.username.is_empty() {
        request = request.basic_auth(&registry.username, Some(&registry.password));
    }
    request.send().await.is_ok_and(|r| r.status().is_success())
}

/// The address a bound listener got (for port 0).
pub fn local_addr(listener: &TcpListener) -> Option<SocketAddr> {
    listener.local_addr().ok()
}
