//! The HTTP surface: Confluent's REST paths, request extractors that answer in Confluent's error
//! format, and the helpers the handlers share.
//!
//! Handlers live in [`schemas`] (`/`, `/healthz`, `/schemas/...`), [`subjects`]
//! (`/subjects/...`) and [`config`] (`/config/...`, `/compatibility/...`).

mod config;
mod schemas;
mod subjects;

use std::collections::HashMap;

use apache_avro::Schema;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::compat::{self, CompatibilityLevel};
use crate::error::ApiError;
use crate::schema::{self as avro_schema, ParsedSchema};
use crate::store::{Store, VersionRow};

/// Request bodies the registry reads. Confluent clients send the first; people with curl the others.
const ACCEPTED_CONTENT_TYPES: [&str; 4] =
    ["application/vnd.schemaregistry.v1+json", "application/vnd.schemaregistry+json", "application/json", "application/octet-stream"];

/// Requires HTTP basic authentication with `expected` (the whole `Authorization` header value) on
/// every route but `/healthz`, which probes call without credentials.
pub(crate) fn require_basic_auth(router: Router, expected: String) -> Router {
    let expected = std::sync::Arc::new(expected.into_bytes());
    router.layer(axum::middleware::from_fn(move |request: Request, next: axum::middleware::Next| {
        let expected = expected.clone();
        async move {
            let given = request.headers().get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
            if request.uri().path() == "/healthz" || constant_time_eq(given, &expected) {
                next.run(request).await
            } else {
                axum::response::IntoResponse::into_response(ApiError::Unauthorized)
            }
        }
    }))
}

/// Compares without stopping at the first difference, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every route of the registry, over `store`.
pub(crate) fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(schemas::root))
        .route("/healthz", get(schemas::health))
        .route("/schemas/types", get(schemas::types))
        .route("/schemas/ids/{id}", get(schemas::by_id))
        .route("/schemas/ids/{id}/versions", get(schemas::versions_of_id))
        .route("/schemas/ids/{id}/subjects", get(schemas::subjects_of_id))
        .route("/subjects", get(subjects::list))
        .route("/subjects/{subject}", post(subjects::lookup).delete(subjects::delete_subject))
        .route("/subjects/{subject}/versions", get(subjects::versions).post(subjects::register))
        .route("/subjects/{subject}/versions/{version}", get(subjects::version).delete(subjects::delete_version))
        .route("/subjects/{subject}/versions/{version}/schema", get(subjects::version_schema))
        .route("/compatibility/subjects/{subject}/versions", post(config::check_all))
        .route("/compatibility/subjects/{subject}/versions/{version}", post(config::check_version))
        .route("/config", get(config::global).put(config::set_global))
        .route("/config/{subject}", get(config::subject).put(config::set_subject).delete(config::delete_subject))
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .with_state(store)
}

/// The body of register, lookup and compatibility requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SchemaRequest {
    schema: Option<String>,
    schema_type: Option<String>,
    references: Option<Vec<serde_json::Value>>,
}

impl SchemaRequest {
    /// The Avro schema in the request, or why the registry cannot take it.
    fn parse(&self) -> Result<ParsedSchema, ApiError> {
        if let Some(kind) = self.schema_type.as_deref().filter(|k| !k.eq_ignore_ascii_case("AVRO")) {
            return Err(ApiError::InvalidSchema(format!("schemaType '{kind}' is not supported: this registry only supports AVRO")));
        }
        if self.references.as_ref().is_some_and(|r| !r.is_empty()) {
            return Err(ApiError::InvalidSchema("schema references are not supported by this registry".to_string()));
        }
        match self.schema.as_deref() {
            None | Some("") => Err(ApiError::InvalidSchema("Empty schema".to_string())),
            Some(text) => avro_schema::parse(text).map_err(ApiError::InvalidSchema),
        }
    }
}

/// A version in a path: a positive number, or `latest` (also spelled `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VersionSelector {
    Latest,
    Number(i64),
}

impl VersionSelector {
    fn parse(raw: &str) -> Result<VersionSelector, ApiError> {
        match raw {
            "latest" | "-1" => Ok(VersionSelector::Latest),
            _ => match raw.parse::<i32>() {
                Ok(n) if n > 0 => Ok(VersionSelector::Number(i64::from(n))),
                _ => Err(ApiError::InvalidVersion(raw.to_string())),
            },
        }
    }

    /// The selected version among `rows` (oldest first).
    fn pick(self, rows: &[VersionRow]) -> Option<&VersionRow> {
        match self {
            VersionSelector::Latest => rows.last(),
            VersionSelector::Number(n) => rows.iter().find(|r| r.version == n),
        }
    }

    fn describe(self) -> String {
        match self {
            VersionSelector::Latest => "latest".to_string(),
            VersionSelector::Number(n) => n.to_string(),
        }
    }
}

/// The rows a request may see: live ones, plus soft-deleted ones when it asked for `deleted=true`.
fn visible(rows: Vec<VersionRow>, include_deleted: bool) -> Vec<VersionRow> {
    rows.into_iter().filter(|r| include_deleted || !r.deleted).collect()
}

/// Why `candidate` is incompatible with `targets` under `level`; empty when it is compatible.
fn incompatibilities(level: CompatibilityLevel, candidate: &Schema, targets: &[VersionRow]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut parsed = Vec::with_capacity(targets.len());
    for row in targets {
        match Schema::parse_str(&row.schema) {
            Ok(schema) => parsed.push((row.version, schema)),
            // Only parsed schemas are stored, so this means the table was edited by hand.
            Err(e) => problems.push(format!("stored version {} no longer parses: {e}", row.version)),
        }
    }
    problems.extend(compat::check(level, candidate, &parsed));
    problems
}

/// A JSON body, whatever Confluent-accepted content type announced it; errors in Confluent's format.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(value) = req.headers().get(header::CONTENT_TYPE) {
            let raw = String::from_utf8_lossy(value.as_bytes()).into_owned();
            let mime = raw.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
            if !ACCEPTED_CONTENT_TYPES.contains(&mime.as_str()) {
                return Err(ApiError::UnsupportedMediaType(raw));
            }
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| ApiError::MalformedBody(e.body_text()))?;
        serde_json::from_slice(&bytes).map(JsonBody).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Unprocessable(e.to_string()),
            _ => ApiError::MalformedBody(e.to_string()),
        })
    }
}

/// Path parameters, percent-decoded (clients send `/` in subjects as `%2F`).
pub(crate) struct PathParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for PathParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state).await.map(|Path(t)| PathParams(t)).map_err(|e| ApiError::Unprocessable(e.body_text()))
    }
}

/// Query parameters. Unknown ones (`normalize`, `fetchMaxId`, `subject`, ...) are ignored.
pub(crate) struct Params(HashMap<String, String>);

impl Params {
    /// True when the query says `name=true`.
    fn flag(&self, name: &str) -> bool {
        self.0.get(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|Query(map)| Params(map))
            .map_err(|e| ApiError::Unprocessable(e.body_text()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_like_confluent() {
        assert_eq!(VersionSelector::parse("latest").unwrap(), VersionSelector::Latest);
        assert_eq!(VersionSelector::parse("-1").unwrap(), VersionSelector::Latest);
        assert_eq!(VersionSelector::parse("7").unwrap(), VersionSelector::Number(7));
        for bad in ["0", "-2", "x", "", "2147483648", "1.5"] {
            assert!(matches!(VersionSelector::parse(bad), Err(ApiError::InvalidVersion(v)) if v == bad), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn only_avro_without_references_is_accepted() {
        let request = |body: &str| serde_json::from_str::<SchemaRequest>(body).unwrap().parse();
        assert!(request(r#"{"schema":"\"string\""}"#).is_ok());
        assert!(request(r#"{"schema":"\"string\"","schemaType":"AVRO","references":[]}"#).is_ok());
        let Err(ApiError::InvalidSchema(why)) = request(r#"{"schema":"{}","schemaType":"PROTOBUF"}"#) else {
            panic!("protobuf must be refused");
        };
        assert!(why.contains("only supports AVRO"), "{why}");
        assert!(matches!(request(r#"{"schema":"\"string\"","references":[{"name":"a","subject":"b","version":1}]}"#), Err(ApiError::InvalidSchema(_))));
        assert!(matches!(request("{}"), Err(ApiError::InvalidSchema(_))));
    }
}
