//! Health endpoints: `/healthz` answers while the process runs; `/readyz` answers 200 only
//! while the database, the schema registry and the broker are reachable (checked in the
//! background every few seconds, so probes are cheap) and no fatal database error holds the
//! consume loop still ([`Halt`]), 503 with what is wrong otherwise.
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

/// Why the consume loop stands still, while a fatal database error holds it (see
/// [`saga_store::Failure::Fatal`]); shared by the loop, which sets and clears it, and `/readyz`.
#[derive(Default, Debug)]
pub struct Halt(std::sync::Mutex<Option<String>>);

impl Halt {
    /// Records the reason; true when the loop was not halted before.
    pub fn set(&self, reason: &str) -> bool {
        let mut halted = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let first = halted.is_none();
        *halted = Some(reason.to_string());
        first
    }

    /// Clears it; the reason it had, if it was halted.
    pub fn clear(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The reason, while halted.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The last observed state of each dependency, and of the consume loop.
#[derive(Default)]
pub struct Readiness {
    database: AtomicBool,
    registry: AtomicBool,
    broker: AtomicBool,
    halt: Arc<Halt>,
    /// Set once a supervised task failed and the service is stopping; never cleared.
    failed: Arc<Halt>,
    /// What the handler adds to the report ([`crate::Observed::readiness_details`]).
    details: Option<Details>,
}

/// What a handler adds to `/readyz` (the query service's projection lag).
pub type Details = Arc<dyn Fn() -> Option<serde_json::Value> + Send + Sync>;

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
    /// Why the consume loop stands still, when a fatal database error holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halted: Option<String>,
    /// The handler's own state (the query service's projection lag); it does not decide readiness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Readiness {
    /// Readiness that also reports the consume loop's `halt` and a supervised task's `failed`.
    pub fn new(halt: Arc<Halt>, failed: Arc<Halt>) -> Readiness {
        Readiness { halt, failed, ..Readiness::default() }
    }

    /// Adds the handler's details to every report.
    pub fn with_details(mut self, details: Option<Details>) -> Readiness {
        self.details = details;
        self
    }

    /// The current report.
    pub fn report(&self) -> ReadyReport {
        let database = self.database.load(Ordering::Relaxed);
        let registry = self.registry.load(Ordering::Relaxed);
        let broker = self.broker.load(Ordering::Relaxed);
        // A failure outranks a halt: the batch that ends a halt must not make a stopping service
        // look ready again.
        let halted = self.failed.reason().or_else(|| self.halt.reason());
        let details = self.details.as_ref().and_then(|d| d());
        ReadyReport { ready: database && registry && broker && halted.is_none(), database, registry, broker, halted, details }
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

/// Characters a URL path segment keeps as they are (RFC 3986 unreserved); the rest is
/// percent-encoded.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// An id (an order id, a saga id) as one URL path segment or query value: `a/b c` is `a%2Fb%20c`.
pub fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

#[cfg(test)]
mod path_segment_tests {
    #[test]
    fn keeps_unreserved_characters_and_encodes_the_rest() {
        assert_eq!(super::path_segment("dev-00001_a.b~c"), "dev-00001_a.b~c");
        assert_eq!(super::path_segment("a/b c?d#é"), "a%2Fb%20c%3Fd%23%C3%A9");
    }
}
