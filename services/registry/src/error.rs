//! Errors: [`RegistryError`] for starting and running the server, [`ApiError`] for what one
//! request answers.
//!
//! `ApiError` messages follow Confluent's wording (capitalised, e.g. `Subject 'x' not found`),
//! because clients and people compare them with the real registry; only the codes are contractual.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// The content type of every JSON response, as Confluent sends it.
pub(crate) const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Why the registry could not start or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The database could not be opened or migrated.
    #[error("registry database unavailable")]
    Store(#[from] saga_store::StoreError),
    /// The listen address is taken or not ours.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address from the settings.
        addr: SocketAddr,
        /// What the operating system said.
        #[source]
        source: std::io::Error,
    },
    /// The HTTP server failed while running.
    #[error("registry http server failed")]
    Serve(#[source] std::io::Error),
}

/// A failed request, rendered as `{"error_code": <int>, "message": "<text>"}`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    #[error("Subject '{0}' not found")]
    SubjectNotFound(String),
    #[error("Version {version} not found for subject '{subject}'")]
    VersionNotFound { subject: String, version: String },
    #[error("Schema {0} not found")]
    SchemaIdNotFound(String),
    #[error("Schema not found under subject '{0}'")]
    SchemaNotFound(String),
    #[error("Subject '{0}' was soft deleted; set permanent=true to delete permanently")]
    SubjectSoftDeleted(String),
    #[error("Subject '{0}' was not deleted first before being permanently deleted")]
    SubjectNotSoftDeleted(String),
    #[error("Subject '{subject}' version {version} was not deleted first before being permanently deleted")]
    VersionNotSoftDeleted { subject: String, version: i64 },
    #[error("Subject '{0}' does not have subject-level compatibility configured")]
    SubjectConfigNotFound(String),
    #[error("Schema being registered is incompatible with an earlier schema for subject '{subject}': {}", .details.join("; "))]
    Incompatible { subject: String, details: Vec<String> },
    #[error("Invalid schema: {0}")]
    InvalidSchema(String),
    #[error("The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\"")]
    InvalidVersion(String),
    #[error("Invalid compatibility level '{0}'. Valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL and FULL_TRANSITIVE")]
    InvalidCompatibilityLevel(String),
    /// The body is not JSON at all.
    #[error("Malformed request body: {0}")]
    MalformedBody(String),
    /// The body is JSON of the wrong shape, or the path or query does not decode.
    #[error("Unprocessable request: {0}")]
    Unprocessable(String),
    #[error("Unsupported content type '{0}'; send application/vnd.schemaregistry.v1+json or application/json")]
    UnsupportedMediaType(String),
    #[error("HTTP 404 Not Found")]
    RouteNotFound,
    /// Basic authentication is on and the request's credentials are missing or wrong.
    #[error("Unauthorized")]
    Unauthorized,
    #[error("HTTP 405 Method Not Allowed")]
    MethodNotAllowed,
    #[error("Error in the backend data store: {0}")]
    Storage(#[from] sqlx::Error),
}

impl ApiError {
    /// The HTTP status and Confluent error code.
    pub(crate) fn codes(&self) -> (StatusCode, u32) {
        match self {
            ApiError::SubjectNotFound(_) => (StatusCode::NOT_FOUND, 40401),
            ApiError::VersionNotFound { .. } => (StatusCode::NOT_FOUND, 40402),
            ApiError::SchemaIdNotFound(_) | ApiError::SchemaNotFound(_) => (StatusCode::NOT_FOUND, 40403),
            ApiError::SubjectSoftDeleted(_) => (StatusCode::NOT_FOUND, 40404),
            ApiError::SubjectNotSoftDeleted(_) => (StatusCode::NOT_FOUND, 40405),
            ApiError::VersionNotSoftDeleted { .. } => (StatusCode::NOT_FOUND, 40407),
            ApiError::SubjectConfigNotFound(_) => (StatusCode::NOT_FOUND, 40408),
            ApiError::Incompatible { .. } => (StatusCode::CONFLICT, 409),
            ApiError::InvalidSchema(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42201),
            ApiError::InvalidVersion(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42202),
            ApiError::InvalidCompatibilityLevel(_) => (StatusCode::UNPROCESSABLE_ENTITY, 42203),
            ApiError::MalformedBody(_) => (StatusCode::BAD_REQUEST, 400),
            ApiError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, 422),
            ApiError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, 415),
            ApiError::RouteNotFound => (StatusCode::NOT_FOUND, 404),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, 401),
            ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, 405),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, 50001),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error_code) = self.codes();
        if let ApiError::Storage(e) = &self {
            tracing::error!(error = %e, transient = saga_store::is_transient(e), "registry storage failed");
        }
        json_response(status, &ErrorBody { error_code, message: self.to_string() })
    }
}

/// A JSON response with the registry's content type.
pub(crate) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (status, [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], bytes).into_response(),
        // Only a non-string map key could fail here, and no response type has one.
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode response: {e}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_failures_are_500_not_404() {
        let (status, code) = ApiError::Storage(sqlx::Error::PoolClosed).codes();
        assert_eq!((status, code), (StatusCode::INTERNAL_SERVER_ERROR, 50001));
    }

    #[test]
    fn incompatibility_lists_every_reason() {
        let e = ApiError::Incompatible { subject: "s".into(), details: vec!["a".into(), "b".into()] };
        assert_eq!(e.codes(), (StatusCode::CONFLICT, 409));
        assert!(e.to_string().ends_with("'s': a; b"), "{e}");
    }
}
