//! The one place where errors become HTTP responses in the On-Premises envelope:
//! `{"errors":[{"code","title","details"}],"meta":{…}}` with the status spec §3 gives the code.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::meta;

/// An error a request can end with. The variant fixes the On-Premises code and the HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 1011: the service is starting or recovering.
    #[error("service not ready: {0}")]
    NotReady(&'static str),
    /// 1006: nothing at this path.
    #[error("resource not found: {0}")]
    NotFound(String),
    /// 1014: an internal failure (logged with its cause; the client sees no internals).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn parts(&self) -> (StatusCode, u32, &'static str, String) {
        match self {
            ApiError::NotReady(what) => (StatusCode::SERVICE_UNAVAILABLE, 1011, "Service not ready", (*what).to_owned()),
            ApiError::NotFound(path) => (StatusCode::NOT_FOUND, 1006, "Resource not found", path.clone()),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, 1014, "Internal error", "see the server log".to_owned()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(cause) = &self {
            tracing::error!(cause, "api: internal error");
        }
        let (status, code, title, details) = self.parts();
        let body = json!({ "errors": [{ "code": code, "title": title, "details": details }], "meta": meta() });
        (status, Json(body)).into_response()
    }
}
