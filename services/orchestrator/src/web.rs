//! The live saga view: a page for people (`/sagas`) and the JSON it reads (`/api/sagas`,
//! `/api/sagas/{id}`), straight from the saga table and log. The orchestrator serves it on its
//! HTTP port; `sagactl dev` serves it for the embedded stack.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use saga_store::Db;
use serde::{Deserialize, Serialize};

use crate::saga::Status;
use crate::store::{self, LogEntry, SagaRecord};

const PAGE: &str = include_str!("web/sagas.html");

/// Where a saga's order is in the read side: the query API's base URL (`http://host:port`), set
/// with this variable for the orchestrator binary.
pub const QUERY_URL_ENV: &str = "SAGA_ORCHESTRATOR_QUERY_URL";

/// What the view's handlers read.
#[derive(Clone)]
struct View {
    db: Db,
    /// Base URL of the query API, when there is one: each saga links to its order there.
    query_url: Option<String>,
}

/// The routes of the view over the orchestrator's database; with `query_url`, each saga links to
/// its order in the query API.
pub fn router(db: Db, query_url: Option<String>) -> Router {
    let view = View { db, query_url: query_url.map(|u| u.trim_end_matches('/').to_string()) };
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::temporary("/sagas") }))
        .route("/sagas", get(|| async { ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)) }))
        .route("/api/sagas", get(list))
        .route("/api/sagas/{id}", get(show))
        .with_state(view)
}

#[derive(Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<i64>,
}

/// One saga in the list.
#[derive(Serialize)]
struct SagaSummary {
    saga_id: String,
    saga_type: String,
    status: &'static str,
    position: String,
    attempt: u32,
    failure: Option<String>,
    created_at_ms: i64,
    updated_at_ms: i64,
    trace_id: Option<String>,
}

impl From<&SagaRecord> for SagaSummary {
    fn from(s: &SagaRecord) -> Self {
        SagaSummary {
            saga_id: s.saga_id.clone(),
            saga_type: s.saga_type.clone(),
            status: s.state.status.as_str(),
            position: s.state.position.encode(),
            attempt: s.state.attempt,
            failure: s.state.failure.clone(),
            created_at_ms: s.created_at_ms,
            updated_at_ms: s.updated_at_ms,
            trace_id: s.trace_id().map(str::to_string),
        }
    }
}

/// A log entry with how long the saga spent before it.
#[derive(Serialize)]
struct TimelineEntry {
    #[serde(flatten)]
    entry: LogEntry,
    /// Milliseconds since the previous entry (the step's duration), 0 for the first.
    duration_ms: i64,
    trace_id: Option<String>,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

async fn list(State(View { db, .. }): State<View>, Query(q): Query<ListQuery>) -> Response {
    let status = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => match Status::parse(&s.to_ascii_uppercase()) {
            Some(s) => Some(s),
            None => return error(StatusCode::BAD_REQUEST, format!("unknown state {s:?}")),
        },
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    match store::list_sagas(&db, status, limit).await {
        Ok(sagas) => Json(sagas.iter().map(SagaSummary::from).collect::<Vec<_>>()).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    }
}

async fn show(State(View { db, query_url }): State<View>, Path(id): Path<String>) -> Response {
    let saga = match store::get_saga(&db, &id).await {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no saga {id:?}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let log = match store::saga_log(&db, &id).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let mut previous = None;
    let timeline: Vec<TimelineEntry> = log
        .into_iter()
        .map(|entry| {
            let duration_ms = previous.map_or(0, |p| entry.at_ms - p);
            previous = Some(entry.at_ms);
            let trace_id = entry.trace_parent.as_deref().and_then(store::trace_id_of).map(str::to_string);
            TimelineEntry { entry, duration_ms, trace_id }
        })
        .collect();
    // The saga of an order is identified by the order id.
    let order_url = query_url.map(|q| format!("{q}/orders/{}", saga_runtime::health::path_segment(&saga.saga_id)));
    Json(serde_json::json!({ "saga": SagaSummary::from(&saga), "data": saga.data, "timeline": timeline, "order_url": order_url })).into_response()
}
