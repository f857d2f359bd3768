//! `/`, `/healthz` and the `/schemas/...` lookups by global id.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::{Params, PathParams};
use crate::error::{json_response, ApiError};
use crate::store::{Store, Usage};

#[derive(Serialize)]
struct SubjectVersion {
    subject: String,
    version: i64,
}

/// `GET /`: Confluent answers an empty object; clients use it as a liveness probe.
pub(super) async fn root() -> Response {
    json_response(StatusCode::OK, &json!({}))
}

/// `GET /healthz`: `ok` when the database answers.
pub(super) async fn health(State(store): State<Store>) -> Result<Response, ApiError> {
    store.ping().await?;
    Ok((StatusCode::OK, "ok").into_response())
}

/// `GET /schemas/types`.
pub(super) async fn types() -> Response {
    json_response(StatusCode::OK, &["AVRO"])
}

/// `GET /schemas/ids/{id}`: what a deserializer calls with the id from the message header.
pub(super) async fn by_id(State(store): State<Store>, PathParams(id): PathParams<String>) -> Result<Response, ApiError> {
    let schema = store.schema_by_id(parse_id(&id)?).await?.ok_or(ApiError::SchemaIdNotFound(id))?;
    Ok(json_response(StatusCode::OK, &json!({ "schema": schema })))
}

/// `GET /schemas/ids/{id}/versions`: the subject versions that use the schema.
pub(super) async fn versions_of_id(State(store): State<Store>, PathParams(id): PathParams<String>, params: Params) -> Result<Response, ApiError> {
    let usages = usages(&store, &id, params.flag("deleted")).await?;
    let body: Vec<SubjectVersion> = usages.into_iter().map(|u| SubjectVersion { subject: u.subject, version: u.version }).collect();
    Ok(json_response(StatusCode::OK, &body))
}

/// `GET /schemas/ids/{id}/subjects`: the subjects that use the schema.
pub(super) async fn subjects_of_id(State(store): State<Store>, PathParams(id): PathParams<String>, params: Params) -> Result<Response, ApiError> {
    let mut subjects: Vec<String> = usages(&store, &id, params.flag("deleted")).await?.into_iter().map(|u| u.subject).collect();
    subjects.dedup();
    Ok(json_response(StatusCode::OK, &subjects))
}

async fn usages(store: &Store, raw_id: &str, include_deleted: bool) -> Result<Vec<Usage>, ApiError> {
    let id = parse_id(raw_id)?;
    if store.schema_by_id(id).await?.is_none() {
        return Err(ApiError::SchemaIdNotFound(raw_id.to_string()));
    }
    let mut usages = store.usages(id).await?;
    usages.retain(|u| include_deleted || !u.deleted);
    Ok(usages)
}

/// Ids are positive; anything else names no schema.
fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| ApiError::SchemaIdNotFound(raw.to_string()))
}
