//! The HTTP JSON API over the read model, and its OpenAPI 3 document (`/openapi.json`), generated
//! from these handlers and types.
//!
//! Read your writes: a client that has just published `PlaceOrder` asks
//! `GET /orders/{id}?min_position=TOPIC:PARTITION:OFFSET` with where its producer wrote the record
//! (the answer reflects that record, or is a 504 that says how far the model is behind), or
//! `GET /orders/{id}?wait_ms=2000` (long-poll until the order exists), adding `until_not=PENDING`
//! to wait for its outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use saga_store::Db;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::lag::{LagReport, LagWatch, PartitionLag};
use crate::model::{OrderView, PaymentState, Position, Status, StockState};
use crate::store::{self, Cursor, HistoryEntry, ListFilter};
use crate::Progress;

/// The longest `wait_ms` honoured.
pub const MAX_WAIT_MS: u64 = 30_000;
/// How long a `min_position` query waits when it gives no `wait_ms`.
pub const DEFAULT_POSITION_WAIT_MS: u64 = 5_000;
/// Orders per page when `limit` is not given, and the most a page holds.
pub const DEFAULT_LIMIT: i64 = 50;
/// The most orders one page holds.
pub const MAX_LIMIT: i64 = 1000;

/// What the API is configured with.
#[derive(Debug, Clone, Default)]
pub struct ApiSettings {
    /// Base URL of the orchestrator's saga view (`http://host:port`); each order links to its
    /// saga there when set.
    pub saga_view_url: Option<String>,
}

/// What the handlers read: the model, the projection's progress and its lag.
#[derive(Clone)]
pub struct Reader {
    /// The read model's database.
    pub db: Db,
    /// Batches committed, for long polls.
    pub progress: Arc<Progress>,
    /// The lag against the broker.
    pub lag: Arc<LagWatch>,
    /// Links.
    pub settings: ApiSettings,
}

/// The routes: `/orders`, `/orders/{id}`, `/orders/{id}/history`, `/projection`, `/openapi.json`.
pub fn router(reader: Reader) -> Router {
    Router::new()
        .route("/orders", get(list_orders))
        .route("/orders/{id}", get(get_order))
        .route("/orders/{id}/history", get(order_history))
        .route("/projection", get(projection))
        .route("/openapi.json", get(|| async { Json(ApiDoc::openapi()) }))
        .with_state(reader)
}

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    modifiers(&WireEnums),
    info(title = "saga-query", description = "The read side of the order saga system: orders as projected from the event stream."),
    paths(get_order, list_orders, order_history, projection),
    components(schemas(
        OrderDto,
        LineDto,
        StockDto,
        PaymentDto,
        LinksDto,
        OrderPage,
        HistoryDto,
        HistoryEventDto,
        ErrorDto,
        BehindDto,
        LagReport,
        PartitionLag,
        Position,
        Status,
        StockState,
        PaymentState
    ))
)]
pub struct ApiDoc;

/// Puts the wire form of the model's enums (`PENDING`, `pending`, ...) into the document.
/// `#[derive(ToSchema)]` inside `ranked_enum!` does not see the enum's `#[serde(rename_all = $case)]`
/// (utoipa reads it only from a bare string literal, and a `$case:literal` fragment reaches it
/// wrapped in an invisible group), so the derived schemas would list the Rust names (`Pending`);
/// a test fails if this is removed.
struct WireEnums;

impl utoipa::Modify for WireEnums {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{schema::Schema, RefOr};
        let Some(components) = openapi.components.as_mut() else { return };
        let wire: [(&str, Vec<&'static str>); 3] = [
            ("Status", Status::ALL.iter().map(|s| s.as_str()).collect()),
            ("StockState", StockState::ALL.iter().map(|s| s.as_str()).collect()),
            ("PaymentState", PaymentState::ALL.iter().map(|s| s.as_str()).collect()),
        ];
        for (name, values) in wire {
            if let Some(RefOr::T(Schema::Object(object))) = components.schemas.get_mut(name) {
                object.enum_values = Some(values.into_iter().map(serde_json::Value::from).collect());
            }
        }
    }
}

/// One line of an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct LineDto {
    /// Stock keeping unit.
    pub sku: String,
    /// Units.
    pub quantity: i32,
    /// Price of one unit, minor units.
    pub unit_price_minor: i64,
    /// ISO 4217 code.
    pub currency: String,
}

/// The order's stock reservation.
#[derive(Debug, Serialize, ToSchema)]
pub struct StockDto {
    /// State.
    pub state: StockState,
    /// Why inventory could not reserve.
    pub reason: Option<String>,
}

/// The order's payment.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentDto {
    /// State.
    pub state: PaymentState,
    /// Why payment declined.
    pub reason: Option<String>,
    /// The authorization, once authorized.
    pub authorization_id: Option<String>,
}

/// Where to go next.
#[derive(Debug, Serialize, ToSchema)]
pub struct LinksDto {
    /// This order.
    pub order: String,
    /// Its history.
    pub history: String,
    /// Its saga in the orchestrator's saga view, when that is configured and the saga is known.
    pub saga: Option<String>,
}

/// An order as the read model knows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderDto {
    /// The order id.
    pub order_id: String,
    /// The customer (empty until the order's `PlaceOrder` or `OrderCreated` is seen).
    pub customer_id: String,
    /// ISO 4217 code of the amounts.
    pub currency: String,
    /// Total, minor units.
    pub total_minor: i64,
    /// What is ordered.
    pub lines: Vec<LineDto>,
    /// PENDING, APPROVED or REJECTED.
    pub status: Status,
    /// Whether the order passed validation (`OrderCreated` seen).
    pub validated: bool,
    /// Why it was rejected.
    pub rejection_reason: Option<String>,
    /// Stock.
    pub stock: StockDto,
    /// Payment.
    pub payment: PaymentDto,
    /// Its saga.
    pub saga_id: Option<String>,
    /// Time of its earliest event, RFC 3339.
    pub created_at: String,
    /// The same, epoch ms.
    pub created_at_ms: i64,
    /// Time of its latest event, RFC 3339.
    pub updated_at: String,
    /// The same, epoch ms.
    pub updated_at_ms: i64,
    /// The newest record of this order applied per topic partition: the view reflects these.
    pub position: Vec<Position>,
    /// The time the view was computed at (`as_of` queries only), epoch ms.
    pub as_of_ms: Option<i64>,
    /// Links.
    pub links: LinksDto,
}

/// The last millisecond humantime can format (9999-12-31T23:59:59.999Z): past it its `Display`
/// fails, and `to_string()` would panic.
const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_RFC3339_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

impl Reader {
    fn dto(&self, v: OrderView, as_of_ms: Option<i64>) -> OrderDto {
        let id = saga_runtime::health::path_segment(&v.order_id);
        let saga = match (&self.settings.saga_view_url, &v.saga_id) {
            (Some(base), Some(saga)) => Some(format!("{}/sagas?saga={}", base.trim_end_matches('/'), saga_runtime::health::path_segment(saga))),
            _ => None,
        };
        OrderDto {
            links: LinksDto { order: format!("/orders/{id}"), history: format!("/orders/{id}/history"), saga },
            validated: v.validated(),
            customer_id: v.customer_id,
            currency: v.currency,
            total_minor: v.total_minor,
            lines: v
                .lines
                .into_iter()
                .map(|l| LineDto { sku: l.sku, quantity: l.quantity, unit_price_minor: l.unit_price_minor, currency: l.currency })
                .collect(),
            status: v.status,
            rejection_reason: v.rejection_reason,
            stock: StockDto { state: v.stock, reason: v.stock_reason },
            payment: PaymentDto { state: v.payment, reason: v.payment_reason, authorization_id: v.authorization_id },
            saga_id: v.saga_id,
            created_at: rfc3339(v.created_at_ms),
            created_at_ms: v.created_at_ms,
            updated_at: rfc3339(v.updated_at_ms),
            updated_at_ms: v.updated_at_ms,
            position: v.positions,
            as_of_ms,
            order_id: v.order_id,
        }
    }
}

/// An error, for people.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDto {
    /// What is wrong.
    pub error: String,
}

/// A wait that ended before the model reflected what was asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct BehindDto {
    /// What was not reached.
    pub error: String,
    /// How long the request waited, ms.
    pub waited_ms: u64,
    /// The partition asked about (`min_position`), with how far the model is behind in it.
    pub behind: Option<PartitionLag>,
    /// The order as the model knows it now, if it knows it.
    pub order: Option<OrderDto>,
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(ErrorDto { error: message.into() })).into_response()
}

/// Why a request got no answer from the model.
#[derive(Debug)]
enum ApiError {
    /// A parameter is malformed (the message names it): 400.
    Bad(String),
    /// No such order: 404.
    NotFound(String),
    /// The database failed: 500.
    Store(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Bad(m) => error(StatusCode::BAD_REQUEST, m),
            ApiError::NotFound(m) => error(StatusCode::NOT_FOUND, m),
            ApiError::Store(m) => error(StatusCode::INTERNAL_SERVER_ERROR, m),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "read model query failed");
        ApiError::Store(format!("the read model could not be read: {e}"))
    }
}

fn bad(param: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::Bad(format!("{param}: {message}"))
}

/// Reads `as_of`: RFC 3339, or milliseconds since the epoch.
fn parse_time(param: &str, text: &str) -> Result<i64, ApiError> {
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(text)
        .map_err(|e| bad(param, format!("expected RFC 3339 (2026-12-04T10:00:00Z) or epoch milliseconds, found {text:?} ({e})")))?;
    let ms = t.duration_since(std::time::UNIX_EPOCH).map_err(|_| bad(param, "times before 1970 are not supported"))?.as_millis();
    i64::try_from(ms).map_err(|_| bad(param, "time out of range"))
}

fn parse_number<T: std::str::FromStr>(param: &str, text: &str, what: &str) -> Result<T, ApiError> {
    text.parse().map_err(|_| bad(param, format!("expected {what}, found {text:?}")))
}

/// A place in a partition: `TOPIC:PARTITION:OFFSET`.
fn parse_position(text: &str) -> Result<Position, ApiError> {
    let wrong = || bad("min_position", format!("expected TOPIC:PARTITION:OFFSET (saga.order.commands:3:1042), found {text:?}"));
    let mut parts = text.rsplitn(3, ':');
    let (offset, partition, topic) = (parts.next().ok_or_else(wrong)?, parts.next().ok_or_else(wrong)?, parts.next().ok_or_else(wrong)?);
    let position = Position { topic: topic.to_string(), partition: partition.parse().map_err(|_| wrong())?, offset: offset.parse().map_err(|_| wrong())? };
    if position.topic.is_empty() || position.partition < 0 || position.offset < 0 {
        return Err(wrong());
    }
    Ok(position)
}

/// The parameters of `GET /orders/{id}`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the parameters; they are read from the query string by name.
struct GetOrderParams {
    /// The order as it was at this time (RFC 3339 or epoch ms), folded from its stored history.
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z?)$"
    )]
    as_of: Option<String>,
    /// Long-poll: wait up to this many ms (at most 30000) until the order exists (and, with
    /// `until_not`, leaves that status; with `min_position`, until that record is reflected).
    wait_ms: Option<u64>,
    /// With `wait_ms`: wait until the order's status is not this one (e.g. PENDING).
    until_not: Option<Status>,
    /// Read your writes: answer only once the model reflects the record at TOPIC:PARTITION:OFFSET
    /// (where the client's producer wrote its PlaceOrder); waits `wait_ms` (default 5000).
    #[param(pattern = r"^.+:[0-9]{1,9}:[0-9]{1,18}$")]
    min_position: Option<String>,
}

/// An order, as the read model knows it (or knew it `as_of` a time).
#[utoipa::path(
    get,
    path = "/orders/{id}",
    params(("id" = String, Path, description = "The order id."), GetOrderParams),
    responses(
        (status = 200, description = "The order.", body = OrderDto),
        (status = 400, description = "A parameter is malformed; the message names it.", body = ErrorDto),
        (status = 404, description = "The read model knows no such order (at that time).", body = ErrorDto),
        (status = 504, description = "The wait ended before the model reflected what was asked.", body = BehindDto),
        (status = 500, description = "The read model could not be read.", body = ErrorDto),
    )
)]
async fn get_order(State(reader): State<Reader>, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Result<Response, ApiError> {
    let (reader, id) = (&reader, id.as_str());
    if let Some(unknown) = q.keys().find(|k| !["as_of", "wait_ms", "until_not", "min_position"].contains(&k.as_str())) {
        return Err(bad(unknown, "unknown parameter (known: as_of, wait_ms, until_not, min_position)"));
    }
    let min_position = q.get("min_position").map(|p| parse_position(p)).transpose()?;
    let until_not = match q.get("until_not") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| bad("until_not", format!("expected PENDING, APPROVED or REJECTED, found {s:?}")))?),
    };
    // Read as i64 (then refused if negative) so that what is accepted is what the document says:
    // an int64 of at least 0.
    let wait_ms = q
        .get("wait_ms")
        .map(|w| {
            parse_number::<i64>("wait_ms", w, "a whole number of milliseconds")
                .and_then(|ms| u64::try_from(ms).map_err(|_| bad("wait_ms", format!("must not be negative, found {ms}"))))
        })
        .transpose()?;
    if let Some(as_of) = q.get("as_of") {
        if wait_ms.is_some() || until_not.is_some() || min_position.is_some() {
            return Err(bad("as_of", "a temporal query does not wait: drop wait_ms, until_not and min_position"));
        }
        let at = parse_time("as_of", as_of)?;
        return match store::as_of(&reader.db, id, at).await? {
            Some(v) => Ok(Json(reader.dto(v, Some(at))).into_response()),
            None => Err(ApiError::NotFound(format!("no order {id} was known at {}", rfc3339(at)))),
        };
    }
    let waits_for_order = wait_ms.is_some() || until_not.is_some();
    let wait = Duration::from_millis(wait_ms.unwrap_or(if min_position.is_some() { DEFAULT_POSITION_WAIT_MS } else { 0 }).min(MAX_WAIT_MS));
    let started = tokio::time::Instant::now();
    let mut committed = reader.progress.subscribe();
    loop {
        committed.borrow_and_update();
        let reached = match &min_position {
            Some(p) => store::next_offset(&reader.db, &p.topic, p.partition).await? > p.offset,
            None => true,
        };
        let order = if reached { store::get(&reader.db, id).await? } else { None };
        let done = reached && (!waits_for_order || order.as_ref().is_some_and(|o| until_not != Some(o.status)));
        if done {
            return match order {
                Some(v) => Ok(Json(reader.dto(v, None)).into_response()),
                None => Err(ApiError::NotFound(format!("no order {id}"))),
            };
        }
        let left = wait.saturating_sub(started.elapsed());
        if left.is_zero() {
            return behind(reader, id, min_position.as_ref(), reached, until_not, started.elapsed()).await;
        }
        tokio::select! {
            _ = committed.changed() => {}
            _ = tokio::time::sleep(left) => {}
        }
    }
}

/// The 504 answer: what was not reached, and how far behind the model is.
async fn behind(
    reader: &Reader,
    id: &str,
    wanted: Option<&Position>,
    reached: bool,
    until_not: Option<Status>,
    waited: Duration,
) -> Result<Response, ApiError> {
    let order = store::get(&reader.db, id).await?;
    let mut lag = None;
    if let Some(p) = wanted {
        let applied = store::next_offset(&reader.db, &p.topic, p.partition).await.unwrap_or(0);
        let end = reader.lag.end_offset(&p.topic, p.partition).await.unwrap_or(-1);
        lag = Some(PartitionLag {
            topic: p.topic.clone(),
            partition: p.partition,
            applied_next_offset: applied,
            end_offset: end,
            lag: if end < 0 { -1 } else { (end - applied).max(0) },
        });
    }
    let error = match (reached, &order, until_not) {
        (false, _, _) => {
            format!("the read model has not reached {} yet", wanted.map(|p| format!("{}:{}:{}", p.topic, p.partition, p.offset)).unwrap_or_default())
        }
        (true, None, _) => format!("no order {id} appeared within the wait"),
        (true, Some(o), Some(s)) => format!("order {id} is still {} ({s:?} was to be left)", o.status.as_str()),
        (true, Some(_), None) => format!("order {id} did not change within the wait"),
    };
    let body = BehindDto { error, waited_ms: waited.as_millis() as u64, behind: lag, order: order.map(|o| reader.dto(o, None)) };
    Ok((StatusCode::GATEWAY_TIMEOUT, Json(body)).into_response())
}

/// A page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    /// Newest first.
    pub orders: Vec<OrderDto>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// The parameters of `GET /orders`.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documents the parameters; they are read from the query string by name.
struct ListParams {
    /// Only this customer's orders.
    customer: Option<String>,
    /// Only orders in this status.
    status: Option<Status>,
    /// Only orders created at or after this time (RFC 3339 or epoch ms).
    #[param(
        pattern = r"^([+-]?[0-9]{1,18}|(19[7-9][0-9]|[2-9][0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?Z?)$"
    )]
    since: Option<String>,
    /// Orders per page (1 to 1000, default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Where the previous page ended (its `next_cursor`).
    cursor: Option<String>,
}

/// Orders, newest first, filtered and paged.
#[utoipa::path(
    get,
    path = "/orders",
    params(ListParams),
    responses(
        (status = 200, description = "A page of orders.", body = OrderPage),
        (status = 400, description = "A parameter is malformed; the message names it.", body = ErrorDto),
        (status = 500, description = "The read model could not be read.", body = ErrorDto),
    )
)]
async fn list_orders(State(reader): State<Reader>, Query(q): Query<HashMap<String, String>>) -> Result<Json<OrderPage>, ApiError> {
    let filter = || -> Result<ListFilter, ApiError> {
        if let Some(unknown) = q.keys().find(|k| !["customer", "status", "since", "limit", "cursor"].contains(&k.as_str())) {
            return Err(bad(unknown, "unknown parameter (known: customer, status, since, limit, cursor)"));
        }
        let limit = q.get("limit").map(|l| parse_number::<i64>("limit", l, "a whole number")).transpose()?.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(bad("limit", format!("must be between 1 and {MAX_LIMIT}, found {limit}")));
        }
        Ok(ListFilter {
            customer: q.get("customer").cloned(),
            status: match q.get("status") {
                None => None,
                Some(s) => Some(Status::parse(s).ok_or_else(|| bad("status", format!("expected PENDING, APPROVED or REJECTED, found {s:?}")))?),
            },
            since_ms: q.get("since").map(|s| parse_time("since", s)).transpose()?,
            after: q.get("cursor").map(|c| Cursor::decode(c).ok_or_else(|| bad("cursor", "not a cursor this API handed out"))).transpose()?,
            limit,
        })
    };
    let (views, next) = store::list(&reader.db, &filter()?).await?;
    Ok(Json(OrderPage { orders: views.into_iter().map(|v| reader.dto(v, None)).collect(), next_cursor: next.map(|c| c.encode()) }))
}

/// One message that touched an order.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryEventDto {
    /// Its message id.
    pub message_id: String,
    /// Full Avro name of its type.
    pub message_type: String,
    /// Short name of its type (`PaymentDeclined`).
    pub event: String,
    /// What it told the read model.
    #[schema(value_type = Object)]
    pub fact: serde_json::Value,
    /// The reason it carries, if any.
    pub reason: Option<String>,
    /// When it happened, RFC 3339.
    pub occurred_at: String,
    /// The same, epoch ms.
    pub occurred_at_ms: i64,
    /// When the projection applied it, epoch ms.
    pub applied_at_ms: i64,
    /// The message that caused it.
    pub causation_id: Option<String>,
    /// Its saga.
    pub saga_id: Option<String>,
    /// Where it was read.
    pub position: Position,
}

/// An order's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryDto {
    /// The order id.
    pub order_id: String,
    /// Oldest first (by time, then by where it was read).
    pub events: Vec<HistoryEventDto>,
    /// Links.
    pub links: LinksDto,
}

impl From<HistoryEntry> for HistoryEventDto {
    fn from(e: HistoryEntry) -> Self {
        HistoryEventDto {
            event: e.message_type.rsplit('.').next().unwrap_or_default().to_string(),
            reason: e.fact.reason().map(str::to_string),
            fact: serde_json::to_value(&e.fact).expect("facts always serialize"),
            message_id: e.message_id,
            message_type: e.message_type,
            occurred_at: rfc3339(e.occurred_at_ms),
            occurred_at_ms: e.occurred_at_ms,
            applied_at_ms: e.applied_at_ms,
            causation_id: e.causation_id,
            saga_id: e.saga_id,
            position: e.position,
        }
    }
}

/// Every message that touched an order, in order.
#[utoipa::path(
    get,
    path = "/orders/{id}/history",
    params(("id" = String, Path, description = "The order id.")),
    responses(
        (status = 200, description = "The order's history.", body = HistoryDto),
        (status = 404, description = "The read model knows no such order.", body = ErrorDto),
        (status = 500, description = "The read model could not be read.", body = ErrorDto),
    )
)]
async fn order_history(State(reader): State<Reader>, Path(id): Path<String>) -> Result<Json<HistoryDto>, ApiError> {
    let entries = store::history(&reader.db, &id).await?;
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("no order {id}")));
    }
    let saga_id = entries.iter().find_map(|e| e.saga_id.clone());
    let links = reader.dto(OrderView { saga_id, ..OrderView::new(&id) }, None).links;
    Ok(Json(HistoryDto { order_id: id, events: entries.into_iter().map(HistoryEventDto::from).collect(), links }))
}

/// How far the read model is behind its topics, measured now.
#[utoipa::path(
    get,
    path = "/projection",
    responses(
        (status = 200, description = "The lag per partition.", body = LagReport),
        (status = 503, description = "The broker or the database did not answer.", body = ErrorDto),
    )
)]
async fn projection(State(reader): State<Reader>) -> Response {
    match reader.lag.refresh(&reader.db, reader.progress.newest_event_ms()).await {
        Some(report) => Json(report).into_response(),
        None => error(StatusCode::SERVICE_UNAVAILABLE, "the broker or the database did not answer; see the service's log"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_and_name_what_is_wrong() {
        let p = parse_position("saga.order.commands:3:1042").unwrap();
        assert_eq!((p.topic.as_str(), p.partition, p.offset), ("saga.order.commands", 3, 1042));
        for bad in ["", "a:b:c", "t:1", ":1:2", "t:-1:2", "t:1:x"] {
            assert!(parse_position(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_or_epoch_ms() {
        assert_eq!(parse_time("as_of", "1700000000123").ok(), Some(1_700_000_000_123));
        assert_eq!(parse_time("as_of", "2023-11-14T22:13:20.123Z").ok(), Some(1_700_000_000_123));
        assert!(parse_time("as_of", "yesterday").is_err());
        assert_eq!(rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z", "past year 9999 humantime cannot format");
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let c = Cursor { created_at_ms: 42, order_id: "o.1:x".into() };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        assert_eq!(Cursor::decode("zz"), None);
        assert_eq!(Cursor::decode("abc"), None);
    }

    #[test]
    fn the_openapi_document_names_every_route() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in ["/orders", "/orders/{id}", "/orders/{id}/history", "/projection"] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
        assert_eq!(doc["components"]["schemas"]["Status"]["enum"], serde_json::json!(["PENDING", "APPROVED", "REJECTED"]));
        assert_eq!(doc["components"]["schemas"]["StockState"]["enum"], serde_json::json!(["pending", "failed", "reserved", "released"]));
    }

    #[test]
    fn the_openapi_document_names_enum_values_as_they_are_sent() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let schemas = &doc["components"]["schemas"];
        assert_eq!(schemas["Status"]["enum"], serde_json::json!(["PENDING", "APPROVED", "REJECTED"]));
        assert_eq!(schemas["StockState"]["enum"], serde_json::json!(["pending", "failed", "reserved", "released"]));
        assert_eq!(schemas["PaymentState"]["enum"], serde_json::json!(["pending", "declined", "authorized", "voided"]));
    }
}
