//! The live saga view: a page for people (`/sagas`) and the JSON it reads, straight from the
//! saga table and log: `/api/sagas` (search by id or its beginning, state, definition version,
//! step, reason and start time; newest first, keyset pages), `/api/sagas/counts` (sagas per
//! state) and `/api/sagas/{id}` (one saga with its timeline and the dead letters that parked it);
//! for holders of the operator token, retry, abort and redrive of a dead letter. The orchestrator serves it on its
//! HTTP port; `sagactl dev` serves it for the embedded stack.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use saga_store::Db;
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use crate::control::OperatorError;
use crate::operator::Operator;
use crate::saga::{Position, Status};
use crate::store::{self, Cursor, LogEntry, SagaRecord, Search};

const PAGE: &str = include_str!("web/sagas.html");

/// Where a saga's order is in the read side: the query API's base URL (`http://host:port`), set
/// with this variable for the orchestrator binary.
pub const QUERY_URL_ENV: &str = "SAGA_ORCHESTRATOR_QUERY_URL";

/// Where a saga's trace is: a URL template with `{trace_id}`, e.g.
/// `http://localhost:16686/trace/{trace_id}` for Jaeger, set with this variable.
pub const TRACE_URL_ENV: &str = "SAGA_ORCHESTRATOR_TRACE_URL";

/// Links from a saga to the rest of the system.
#[derive(Clone, Debug, Default)]
pub struct Links {
    /// Base URL of the query API: each saga links to its order there.
    pub query_url: Option<String>,
    /// URL template of a trace (`{trace_id}` is replaced): each saga links to its trace.
    pub trace_url: Option<String>,
}

impl Links {
    /// From [`QUERY_URL_ENV`] and [`TRACE_URL_ENV`] (unset or empty: no link).
    pub fn from_env() -> Links {
        let var = |name: &str| std::env::var(name).ok().filter(|u| !u.trim().is_empty());
        Links { query_url: var(QUERY_URL_ENV), trace_url: var(TRACE_URL_ENV) }
    }
}

/// Retry and abort from the view: the operator that carries them out, and the bearer token they
/// require.
pub struct Actions {
    /// Carries the actions out (as `sagactl sagas retry|abort` does).
    pub operator: Operator,
    /// `http.operator_token`.
    pub token: String,
}

/// What the view's handlers read.
#[derive(Clone)]
struct View {
    db: Db,
    links: Links,
    /// `None`: the view is read-only.
    actions: Option<Arc<Actions>>,
}

/// The routes of the view over the orchestrator's database, with `links` to each saga's order
/// and trace; with `actions`, retry and abort for holders of its token.
pub fn router(db: Db, links: Links, actions: Option<Actions>) -> Router {
    let links = Links { query_url: links.query_url.map(|u| u.trim_end_matches('/').to_string()), ..links };
    let view = View { db, links, actions: actions.map(Arc::new) };
    Router::new()
        .route("/", get(|| async { axum::response::Redirect::temporary("/sagas") }))
        .route("/sagas", get(|| async { ([(header::CACHE_CONTROL, "no-store")], Html(PAGE)) }))
        .route("/api/sagas", get(list))
        .route("/api/sagas/counts", get(counts))
        .route("/api/definitions", get(definitions))
        .route("/api/overview", get(overview))
        .route("/api/sagas/{id}", get(show))
        .route("/api/actions", get(actions_enabled))
        .route("/api/sagas/{id}/retry", post(retry))
        .route("/api/sagas/{id}/abort", post(abort))
        .route("/api/sagas/{id}/redrive", post(redrive))
        .with_state(view)
}

/// `/api/sagas` parameters; empty values mean "any".
#[derive(Deserialize, Default)]
struct ListQuery {
    /// A saga (order) id, or its beginning.
    q: Option<String>,
    state: Option<String>,
    version: Option<String>,
    /// A step name: sagas waiting at it or compensating it.
    step: Option<String>,
    /// Text in the failure or blocked reason.
    reason: Option<String>,
    /// Started at or after / before, ms since epoch.
    since: Option<String>,
    until: Option<String>,
    /// The `next` of the previous page.
    after: Option<String>,
    limit: Option<i64>,
}

/// A page of sagas.
#[derive(Serialize)]
struct Page {
    sagas: Vec<SagaSummary>,
    /// The `after` of the next page; absent on the last.
    next: Option<String>,
}

/// One saga in the list.
#[derive(Serialize)]
struct SagaSummary {
    saga_id: String,
    saga_type: String,
    definition_version: i64,
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
            definition_version: s.definition_version,
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

/// Reads the search from the query string; a bad value is named.
fn search_of(q: &ListQuery) -> Result<(Search, Option<Cursor>), String> {
    let given = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);
    let number = |name: &str, v: &Option<String>| -> Result<Option<i64>, String> {
        given(v).map(|v| v.parse::<i64>().map_err(|_| format!("{name}: expected an integer, found {v:?}"))).transpose()
    };
    let status = match given(&q.state) {
        None => None,
        Some(s) => Some(Status::parse(&s.to_ascii_uppercase()).ok_or_else(|| format!("state: unknown state {s:?}"))?),
    };
    let mut positions = Vec::new();
    if let Some(step) = given(&q.step) {
        for d in crate::definition::order_saga_versions() {
            if let Some(i) = d.steps.iter().position(|s| s.name == step) {
                positions.push((i64::from(d.version), Position::Step(i).encode()));
                positions.push((i64::from(d.version), Position::Compensation(i).encode()));
            }
        }
        if step == "finalize" {
            for d in crate::definition::order_saga_versions() {
                positions.push((i64::from(d.version), Position::Finalizing.encode()));
            }
        }
        if positions.is_empty() {
            return Err(format!("step: no definition has a step {step:?}"));
        }
    }
    let after = match given(&q.after) {
        None => None,
        Some(a) => Some(Cursor::decode(&a).ok_or_else(|| format!("after: not a page cursor: {a:?}"))?),
    };
    let search = Search {
        id_prefix: given(&q.q),
        status,
        version: number("version", &q.version)?,
        positions,
        reason: given(&q.reason),
        since_ms: number("since", &q.since)?,
        until_ms: number("until", &q.until)?,
    };
    Ok((search, after))
}

async fn list(State(View { db, .. }): State<View>, Query(q): Query<ListQuery>) -> Response {
    let (search, after) = match search_of(&q) {
        Ok(s) => s,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match store::search(&db, &search, after.as_ref(), limit).await {
        Ok((sagas, next)) => Json(Page { sagas: sagas.iter().map(SagaSummary::from).collect(), next: next.map(|c| c.encode()) }).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    }
}

/// The definition versions this build runs, with their steps in order (for the view's filters
/// and timeline).
async fn definitions() -> Json<serde_json::Value> {
    let versions: Vec<serde_json::Value> = crate::definition::order_saga_versions()
        .iter()
        .map(|d| {
            let steps: Vec<_> = d.steps.iter().map(|s| serde_json::json!({ "name": s.name, "kind": s.kind.as_str() })).collect();
            serde_json::json!({ "name": d.name, "version": d.version, "steps": steps })
        })
        .collect();
    Json(serde_json::Value::Array(versions))
}

/// Sagas per state, every state listed (0 when none).
async fn counts(State(View { db, .. }): State<View>) -> Response {
    match store::count_by_status(&db).await {
        Ok(counts) => {
            let by_state: serde_json::Map<String, serde_json::Value> =
                Status::ALL.iter().map(|s| (s.as_str().to_string(), counts.iter().find(|(n, _)| n == s.as_str()).map_or(0, |(_, c)| *c).into())).collect();
            Json(by_state).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    }
}

async fn show(State(View { db, links, .. }): State<View>, Path(id): Path<String>) -> Response {
    let saga = match store::get_saga(&db, &id).await {
        Ok(Some(s)) => s,
        Ok(None) => return error(StatusCode::NOT_FOUND, format!("no saga {id:?}")),
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let log = match store::saga_log(&db, &id).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let kept = match dead_letters_of(&db, &id).await {
        Ok(k) => k,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let parked = saga.state.status == Status::Parked;
    let dead_letters: Vec<DeadLetterView> = kept.iter().map(|k| DeadLetterView::of(k, parked)).collect();
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
    let order_url = links.query_url.map(|q| format!("{q}/orders/{}", saga_runtime::health::path_segment(&saga.saga_id)));
    let trace_url = links.trace_url.zip(saga.trace_id()).map(|(template, id)| template.replace("{trace_id}", id));
    Json(serde_json::json!({
        "saga": SagaSummary::from(&saga),
        "data": saga.data,
        "timeline": timeline,
        "order_url": order_url,
        "trace_url": trace_url,
        "blocked": saga.state.blocked,
        "dead_letters": dead_letters,
    }))
    .into_response()
}

async fn dead_letters_of(db: &Db, id: &str) -> Result<Vec<store::KeptDeadLetter>, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    store::dead_letters(&mut saga_store::Conn::Sqlx(&mut conn), id).await
}

/// A dead letter of the saga, as the view shows it.
#[derive(Serialize)]
struct DeadLetterView {
    /// `topic/partition/offset` in its dead-letter topic.
    reference: String,
    original_topic: String,
    error_class: Option<String>,
    error_message: Option<String>,
    consumer_group: Option<String>,
    failed_at_ms: Option<i64>,
    seen_at_ms: i64,
    /// Redrives before it was dead-lettered.
    redrive_count: Option<u32>,
    /// Every header, in order (values as text; `saga.dlt.*` say where it came from and why).
    headers: Vec<(String, Option<String>)>,
    value_bytes: usize,
    redriven_at_ms: Option<i64>,
    redriven_by: Option<String>,
    /// Why it cannot be redriven now; absent when it can.
    not_redrivable: Option<String>,
}

impl DeadLetterView {
    fn of(k: &store::KeptDeadLetter, saga_parked: bool) -> DeadLetterView {
        let r = &k.record;
        let not_redrivable = if !saga_parked {
            Some("the saga is not parked".to_string())
        } else if k.redriven.is_some() {
            Some("already redriven".to_string())
        } else {
            r.redrive(crate::control::MAX_REDRIVES).err().map(|e| e.to_string())
        };
        DeadLetterView {
            reference: r.reference(),
            original_topic: r.original_topic(),
            error_class: r.error_class().map(str::to_string),
            error_message: r.error_message().map(str::to_string),
            consumer_group: r.consumer_group().map(str::to_string),
            failed_at_ms: r.failed_at_ms(),
            seen_at_ms: k.seen_at_ms,
            redrive_count: r.redrive_count().ok(),
            headers: r.headers.iter().map(|(name, v)| (name.clone(), v.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()))).collect(),
            value_bytes: r.value.as_ref().map_or(0, Vec::len),
            redriven_at_ms: k.redriven.as_ref().map(|(at, _)| *at),
            redriven_by: k.redriven.as_ref().map(|(_, by)| by.clone()),
            not_redrivable,
        }
    }
}

/// Whether the view offers retry and abort (an operator token is configured).
async fn actions_enabled(State(View { actions, .. }): State<View>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "enabled": actions.is_some() }))
}

/// Why an action was not allowed.
enum Denied {
    /// No operator token is configured.
    ReadOnly,
    /// The request's token is missing or wrong.
    Unauthorized,
}

impl Denied {
    fn response(self) -> Response {
        match self {
            Denied::ReadOnly => error(StatusCode::FORBIDDEN, "the saga view is read-only: no operator token is configured (http.operator_token)".into()),
            Denied::Unauthorized => {
                let mut refused = error(StatusCode::UNAUTHORIZED, "an operator token is required (Authorization: Bearer <http.operator_token>)".into());
                refused.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                refused
            }
        }
    }
}

/// The request's bearer token against the configured one, compared in constant time.
fn authorize(actions: &Option<Arc<Actions>>, headers: &HeaderMap) -> Result<Arc<Actions>, Denied> {
    let actions = actions.as_ref().ok_or(Denied::ReadOnly)?;
    let given = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
    if !constant_time_eq(given.as_bytes(), actions.token.as_bytes()) {
        return Err(Denied::Unauthorized);
    }
    Ok(actions.clone())
}

/// Equal bytes, in a time that depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn refused(e: OperatorError) -> Response {
    let status = match &e {
        OperatorError::UnknownSaga(_) => StatusCode::NOT_FOUND,
        OperatorError::Refused { .. } => StatusCode::CONFLICT,
        OperatorError::Handle(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(status, e.to_string())
}

/// Who asked, for the saga log.
fn asker(headers: &HeaderMap) -> String {
    let from = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).map(|v| format!(" for {v}")).unwrap_or_default();
    format!("saga view (operator token){from}")
}

async fn retry(State(View { db, actions, .. }): State<View>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let actions = match authorize(&actions, &headers) {
        Ok(a) => a,
        Err(denied) => return denied.response(),
    };
    match actions.operator.retry(&db, &id, &asker(&headers)).await {
        Ok(acted) => Json(acted).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /api/sagas/{id}/abort` body.
#[derive(Deserialize)]
struct AbortRequest {
    /// Why, recorded in the saga log and sent to the order as its rejection reason.
    reason: Option<String>,
    /// Only list what the abort would send.
    #[serde(default)]
    dry_run: bool,
}

async fn abort(State(View { db, actions, .. }): State<View>, Path(id): Path<String>, headers: HeaderMap, Json(body): Json<AbortRequest>) -> Response {
    let actions = match authorize(&actions, &headers) {
        Ok(a) => a,
        Err(denied) => return denied.response(),
    };
    if body.dry_run {
        return match actions.operator.abort_plan(&db, &id).await {
            Ok(plan) => Json(serde_json::json!({ "saga_id": id, "plan": plan, "dry_run": true })).into_response(),
            Err(e) => refused(e),
        };
    }
    let reason = body.reason.as_deref().map(str::trim).filter(|r| !r.is_empty()).unwrap_or("aborted by an operator");
    match actions.operator.abort(&db, &id, reason, &asker(&headers)).await {
        Ok(acted) => Json(acted).into_response(),
        Err(e) => refused(e),
    }
}

/// `POST /api/sagas/{id}/redrive` body.
#[derive(Deserialize)]
struct RedriveRequest {
    /// Which dead letter of the saga: `topic/partition/offset`.
    dead_letter: String,
    /// Only say what the redrive would send.
    #[serde(default)]
    dry_run: bool,
}

async fn redrive(State(View { db, actions, .. }): State<View>, Path(id): Path<String>, headers: HeaderMap, Json(body): Json<RedriveRequest>) -> Response {
    let actions = match authorize(&actions, &headers) {
        Ok(a) => a,
        Err(denied) => return denied.response(),
    };
    match actions.operator.redrive(&db, &id, body.dead_letter.trim(), &asker(&headers), body.dry_run).await {
        Ok(redriven) => Json(redriven).into_response(),
        Err(e) => refused(e),
    }
}

/// `/api/overview` parameters.
#[derive(Deserialize)]
struct OverviewQuery {
    /// How far back, in minutes (1-1440; 10 by default).
    minutes: Option<i64>,
}

/// The kind of a failure reason: its text up to the first colon, so that "insufficient credit:
/// 500 EUR available, 9998 requested" and "insufficient credit: 0 EUR …" count together.
fn reason_kind(reason: &str) -> &str {
    reason.split_once(':').map_or(reason, |(kind, _)| kind).trim()
}

/// Sagas per second by outcome over the last minutes (in at most 60 buckets), and the most
/// frequent failure reasons over the same time.
async fn overview(State(View { db, .. }): State<View>, Query(q): Query<OverviewQuery>) -> Response {
    let minutes = q.minutes.unwrap_or(10);
    if !(1..=1440).contains(&minutes) {
        return error(StatusCode::BAD_REQUEST, format!("minutes: expected 1 to 1440, found {minutes}"));
    }
    let span_ms = minutes * 60_000;
    let bucket_ms = (span_ms / 60).max(1000);
    let now = saga_contracts::now_ms();
    let since = (now - span_ms) / bucket_ms * bucket_ms;
    let (per_bucket, reasons) = match tokio::try_join!(store::finished_per_bucket(&db, since, bucket_ms), store::failure_reasons(&db, since, 200)) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, format!("saga database: {e}")),
    };
    let mut buckets: Vec<serde_json::Value> = Vec::new();
    let mut start = since;
    while start <= now {
        let count = |status: &str| per_bucket.iter().find(|(b, s, _)| *b == start && s == status).map_or(0, |(_, _, n)| *n);
        let per_sec = |n: i64| n as f64 * 1000.0 / bucket_ms as f64;
        buckets.push(serde_json::json!({
            "start_ms": start,
            "completed_per_sec": per_sec(count("COMPLETED")),
            "compensated_per_sec": per_sec(count("COMPENSATED")),
            "blocked_per_sec": per_sec(count("STUCK") + count("PARKED")),
        }));
        start += bucket_ms;
    }
    let mut kinds: Vec<(String, i64)> = Vec::new();
    for (reason, n) in reasons {
        let kind = reason_kind(&reason).to_string();
        match kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, total)) => *total += n,
            None => kinds.push((kind, n)),
        }
    }
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    kinds.truncate(5);
    Json(serde_json::json!({
        "minutes": minutes,
        "bucket_ms": bucket_ms,
        "buckets": buckets,
        "top_reasons": kinds.into_iter().map(|(reason, sagas)| serde_json::json!({ "reason": reason, "sagas": sagas })).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_count_by_their_kind() {
        assert_eq!(reason_kind("insufficient credit: 500 EUR available, 9998 requested"), "insufficient credit");
        assert_eq!(reason_kind("step reserve_stock timed out"), "step reserve_stock timed out");
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
