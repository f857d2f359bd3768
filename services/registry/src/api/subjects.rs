//! `/subjects/...`: registering, looking up, listing and deleting versions.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use super::{incompatibilities, visible, JsonBody, Params, PathParams, SchemaRequest, VersionSelector};
use crate::compat;
use crate::error::{json_response, ApiError, CONTENT_TYPE};
use crate::store::{Registration, Store, VersionRow};

/// One version as Confluent renders it.
#[derive(Serialize)]
struct VersionBody<'a> {
    subject: &'a str,
    version: i64,
    id: i64,
    schema: &'a str,
}

impl<'a> VersionBody<'a> {
    fn new(subject: &'a str, row: &'a VersionRow) -> VersionBody<'a> {
        VersionBody { subject, version: row.version, id: row.schema_id, schema: &row.schema }
    }
}

/// `GET /subjects`.
pub(super) async fn list(State(store): State<Store>, params: Params) -> Result<Response, ApiError> {
    let subjects = store.subjects(params.flag("deleted")).await?;
    Ok(json_response(StatusCode::OK, &subjects))
}

/// `POST /subjects/{subject}/versions`: registers a schema, or returns the id it already has.
pub(super) async fn register(
    State(store): State<Store>,
    PathParams(subject): PathParams<String>,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    let candidate = request.parse()?;
    let level = store.effective_level(&subject).await?;
    let registration = store.register(&subject, &candidate, |live| incompatibilities(level, &candidate.schema, compat::versions_to_check(level, live))).await?;
    match registration {
        Registration::Existing { id, .. } => Ok(json_response(StatusCode::OK, &json!({ "id": id }))),
        Registration::Created { id, version } => {
            tracing::info!(subject, id, version, level = %level, "registered schema");
            Ok(json_response(StatusCode::OK, &json!({ "id": id })))
        }
        Registration::Incompatible(details) => Err(ApiError::Incompatible { subject, details }),
    }
}

/// `POST /subjects/{subject}`: which version of the subject holds this schema.
pub(super) async fn lookup(
    State(store): State<Store>,
    PathParams(subject): PathParams<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    let candidate = request.parse()?;
    let rows = existing(&store, &subject, params.flag("deleted")).await?;
    let row = rows.iter().find(|r| r.fingerprint == candidate.fingerprint).ok_or_else(|| ApiError::SchemaNotFound(subject.clone()))?;
    Ok(json_response(StatusCode::OK, &VersionBody::new(&subject, row)))
}

/// `GET /subjects/{subject}/versions`.
pub(super) async fn versions(State(store): State<Store>, PathParams(subject): PathParams<String>, params: Params) -> Result<Response, ApiError> {
    let rows = existing(&store, &subject, params.flag("deleted")).await?;
    let versions: Vec<i64> = rows.iter().map(|r| r.version).collect();
    Ok(json_response(StatusCode::OK, &versions))
}

/// `GET /subjects/{subject}/versions/{version}`.
pub(super) async fn version(
    State(store): State<Store>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let row = selected(&store, &subject, &version, params.flag("deleted")).await?;
    Ok(json_response(StatusCode::OK, &VersionBody::new(&subject, &row)))
}

/// `GET /subjects/{subject}/versions/{version}/schema`: the schema itself, not wrapped.
pub(super) async fn version_schema(
    State(store): State<Store>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let row = selected(&store, &subject, &version, params.flag("deleted")).await?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], row.schema).into_response())
}

/// `DELETE /subjects/{subject}`: hides every version; with `permanent=true`, removes the hidden ones.
pub(super) async fn delete_subject(State(store): State<Store>, PathParams(subject): PathParams<String>, params: Params) -> Result<Response, ApiError> {
    let rows = store.versions(&subject).await?;
    if rows.is_empty() {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let deleted = if params.flag("permanent") {
        if rows.iter().any(|r| !r.deleted) {
            return Err(ApiError::SubjectNotSoftDeleted(subject));
        }
        store.hard_delete(&subject, None).await?
    } else {
        if rows.iter().all(|r| r.deleted) {
            return Err(ApiError::SubjectSoftDeleted(subject));
        }
        store.soft_delete(&subject, None).await?
    };
    tracing::info!(subject, ?deleted, permanent = params.flag("permanent"), "deleted subject");
    Ok(json_response(StatusCode::OK, &deleted))
}

/// `DELETE /subjects/{subject}/versions/{version}`: hides one version; with `permanent=true`,
/// removes it once hidden.
pub(super) async fn delete_version(
    State(store): State<Store>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
) -> Result<Response, ApiError> {
    let permanent = params.flag("permanent");
    // A permanent delete addresses a hidden version, so it looks among all of them.
    let row = selected(&store, &subject, &version, permanent).await?;
    let deleted = if permanent {
        if !row.deleted {
            return Err(ApiError::VersionNotSoftDeleted { subject, version: row.version });
        }
        store.hard_delete(&subject, Some(row.version)).await?
    } else {
        store.soft_delete(&subject, Some(row.version)).await?
    };
    // Empty when a concurrent request deleted it between our read and our write.
    if deleted.is_empty() {
        return Err(ApiError::VersionNotFound { subject, version: row.version.to_string() });
    }
    tracing::info!(subject, version = row.version, permanent, "deleted version");
    Ok(json_response(StatusCode::OK, &row.version))
}

/// The subject's versions the request may see; `40401` when there are none.
async fn existing(store: &Store, subject: &str, include_deleted: bool) -> Result<Vec<VersionRow>, ApiError> {
    let rows = visible(store.versions(subject).await?, include_deleted);
    if rows.is_empty() {
        return Err(ApiError::SubjectNotFound(subject.to_string()));
    }
    Ok(rows)
}

/// The version a path names: `42202` for a malformed one, `40401`/`40402` when absent.
async fn selected(store: &Store, subject: &str, raw: &str, include_deleted: bool) -> Result<VersionRow, ApiError> {
    let selector = VersionSelector::parse(raw)?;
    let rows = existing(store, subject, include_deleted).await?;
    selector.pick(&rows).cloned().ok_or_else(|| ApiError::VersionNotFound { subject: subject.to_string(), version: selector.describe() })
}
