//! `/config/...` (compatibility levels) and `/compatibility/...` (dry-run checks).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{incompatibilities, visible, JsonBody, Params, PathParams, SchemaRequest, VersionSelector};
use crate::compat::{self, CompatibilityLevel};
use crate::error::{json_response, ApiError};
use crate::store::{Store, VersionRow};

/// The body of `PUT /config` and `PUT /config/{subject}`.
#[derive(Deserialize)]
pub(super) struct ConfigRequest {
    compatibility: Option<String>,
}

impl ConfigRequest {
    fn level(&self) -> Result<CompatibilityLevel, ApiError> {
        let raw = self.compatibility.as_deref().unwrap_or_default();
        raw.parse().map_err(|_| ApiError::InvalidCompatibilityLevel(raw.to_string()))
    }
}

#[derive(Serialize)]
struct CompatibilityBody {
    is_compatible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<String>>,
}

/// `GET /config`.
pub(super) async fn global(State(store): State<Store>) -> Result<Response, ApiError> {
    let level = store.config(None).await?.unwrap_or(CompatibilityLevel::DEFAULT);
    Ok(level_body(level))
}

/// `PUT /config`.
pub(super) async fn set_global(State(store): State<Store>, JsonBody(request): JsonBody<ConfigRequest>) -> Result<Response, ApiError> {
    let level = request.level()?;
    store.set_config(None, level).await?;
    tracing::info!(%level, "set global compatibility level");
    Ok(json_response(StatusCode::OK, &json!({ "compatibility": level.as_str() })))
}

/// `GET /config/{subject}`; `defaultToGlobal=true` falls back to the global level.
pub(super) async fn subject(State(store): State<Store>, PathParams(subject): PathParams<String>, params: Params) -> Result<Response, ApiError> {
    let level = match store.config(Some(&subject)).await? {
        Some(level) => level,
        None if params.flag("defaultToGlobal") => store.config(None).await?.unwrap_or(CompatibilityLevel::DEFAULT),
        None => return Err(ApiError::SubjectConfigNotFound(subject)),
    };
    Ok(level_body(level))
}

/// `PUT /config/{subject}`; the subject need not exist yet.
pub(super) async fn set_subject(
    State(store): State<Store>,
    PathParams(subject): PathParams<String>,
    JsonBody(request): JsonBody<ConfigRequest>,
) -> Result<Response, ApiError> {
    let level = request.level()?;
    store.set_config(Some(&subject), level).await?;
    tracing::info!(subject, %level, "set subject compatibility level");
    Ok(json_response(StatusCode::OK, &json!({ "compatibility": level.as_str() })))
}

/// `DELETE /config/{subject}`: back to the global level; answers the level it removed.
pub(super) async fn delete_subject(State(store): State<Store>, PathParams(subject): PathParams<String>) -> Result<Response, ApiError> {
    let removed = store.delete_config(&subject).await?.ok_or(ApiError::SubjectConfigNotFound(subject))?;
    Ok(level_body(removed))
}

/// `POST /compatibility/subjects/{subject}/versions/{version}`: would registering this schema
/// pass? `latest` checks what a registration would (every version for transitive levels); a
/// number checks that version alone.
pub(super) async fn check_version(
    State(store): State<Store>,
    PathParams((subject, version)): PathParams<(String, String)>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    let selector = VersionSelector::parse(&version)?;
    check(&store, subject, Some(selector), &params, &request).await
}

/// `POST /compatibility/subjects/{subject}/versions`: checks against every live version.
pub(super) async fn check_all(
    State(store): State<Store>,
    PathParams(subject): PathParams<String>,
    params: Params,
    JsonBody(request): JsonBody<SchemaRequest>,
) -> Result<Response, ApiError> {
    check(&store, subject, None, &params, &request).await
}

async fn check(store: &Store, subject: String, selector: Option<VersionSelector>, params: &Params, request: &SchemaRequest) -> Result<Response, ApiError> {
    let candidate = request.parse()?;
    let live = visible(store.versions(&subject).await?, false);
    if live.is_empty() {
        return Err(ApiError::SubjectNotFound(subject));
    }
    let level = store.effective_level(&subject).await?;
    let targets: &[VersionRow] = match selector {
        Some(VersionSelector::Latest) => compat::versions_to_check(level, &live),
        Some(VersionSelector::Number(n)) => match live.iter().position(|r| r.version == n) {
            Some(i) => &live[i..=i],
            None => return Err(ApiError::VersionNotFound { subject, version: n.to_string() }),
        },
        None => &live,
    };
    let messages = incompatibilities(level, &candidate.schema, targets);
    let body = CompatibilityBody { is_compatible: messages.is_empty(), messages: params.flag("verbose").then_some(messages) };
    Ok(json_response(StatusCode::OK, &body))
}

fn level_body(level: CompatibilityLevel) -> Response {
    json_response(StatusCode::OK, &json!({ "compatibilityLevel": level.as_str() }))
}
