//! The one place where errors become HTTP responses in the On-Premises envelope:
//! `{"errors":[{"code","title","details"}],"meta":{…}}`, with the HTTP status spec §3 gives each
//! code. Handlers return `ApiError`; nothing else in the crate picks a status for an error.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::meta;
use crate::listener::body::BodyTimedOut;

/// Everything a request can end with, other than success. `details` always names the field.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 1001: a text longer than its limit (`field` names it).
    #[error("{field}: too long")]
    TooLong { field: String, max: usize },
    /// 1005 with 401: no, invalid, expired or revoked credentials.
    #[error("unauthorized")]
    Unauthorized,
    /// 1005 with 403: authenticated, but this role may not do this.
    #[error("forbidden")]
    Forbidden,
    /// 1006: nothing at this path (or no such resource).
    #[error("not found: {0}")]
    NotFound(String),
    /// 1006 with 405: the path exists, the method does not (`details` names both).
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 1008: a required parameter is missing.
    #[error("{0}: missing")]
    Missing(String),
    /// 1009: a parameter has a wrong type or value.
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    /// 1010: a parameter that does not exist.
    #[error("{0}: unknown parameter")]
    Unknown(String),
    /// 1011: starting or recovering.
    #[error("service not ready: {0}")]
    NotReady(&'static str),
    /// 1014 with 507: a data or log volume has less than the minimum free (10 MiB by
    /// default); writes are refused.
    #[error("no space left on {volume}")]
    NoSpace { volume: &'static str, min_free: u64 },
    /// 1014 with 507: a write failed for want of space (ENOSPC, EDQUOT), wherever it surfaced.
    #[error("a write found no space left: {0}")]
    StorageFull(String),
    /// 1011 with 503 and `Retry-After`: a shared limit (the request-body budget) has no room
    /// now; the same request may succeed in a moment.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// 1025 with 408: the body did not arrive in full within the body timeout.
    #[error("request body not received within {} ms", .0.as_millis())]
    BodyTimedOut(std::time::Duration),
    /// 1014 with 500: an internal failure (logged with its cause; the client sees no internals).
    #[error("internal error: {0}")]
    Internal(String),
    /// 1015: too many requests (failed logins).
    #[error("too many requests")]
    TooManyRequests,
    /// 1016: the backlog is over its high-water mark.
    #[error("overloaded: {0}")]
    Overloaded(&'static str),
    /// 1023: the database (mirror) failed.
    #[error("database error: {0}")]
    Database(String),
    /// 1024: the default password must be changed at this login.
    #[error("password change required")]
    PasswordChangeRequired,
    /// 1025 with 400: the request cannot be parsed (`details` says where).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 1025 with 413: the body is over the limit.
    #[error("request body over {limit} bytes")]
    TooLarge { limit: usize },
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ApiError {
        ApiError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    /// HTTP status, On-Premises code, title and details.
    fn parts(&self) -> (StatusCode, u32, &'static str, String) {
        use ApiError::*;
        use StatusCode as S;
        match self {
            TooLong { field, max } => (
                S::BAD_REQUEST,
                1001,
                "Message too long",
                format!("{field}: more than {max} characters"),
            ),
            Unauthorized => (
                S::UNAUTHORIZED,
                1005,
                "Access denied",
                "invalid or missing credentials".into(),
            ),
            Forbidden => (
                S::FORBIDDEN,
                1005,
                "Access denied",
                "not allowed for this user's role".into(),
            ),
            NotFound(what) => (S::NOT_FOUND, 1006, "Resource not found", what.clone()),
            MethodNotAllowed(what) => (
                S::METHOD_NOT_ALLOWED,
                1006,
                "Resource not found",
                format!("{what}: method not allowed on this path"),
            ),
            Missing(field) => (
                S::BAD_REQUEST,
                1008,
                "Required parameter is missing",
                format!("{field}: missing"),
            ),
            Invalid { field, problem } => (
                S::BAD_REQUEST,
                1009,
                "Parameter value is not valid",
                format!("{field}: {problem}"),
            ),
            Unknown(field) => (
                S::BAD_REQUEST,
                1010,
                "Unknown parameter",
                format!("{field}: unknown parameter"),
            ),
            NotReady(what) => (S::SERVICE_UNAVAILABLE, 1011, "Service not ready", (*what).to_owned()),
            NoSpace { volume, min_free } => (
                S::INSUFFICIENT_STORAGE,
                1014,
                "Internal error",
                format!(
                    "{volume}: volume has under {} MiB free; writes are refused",
                    min_free >> 20
                ),
            ),
            StorageFull(_) => (
                S::INSUFFICIENT_STORAGE,
                1014,
                "Internal error",
                "data: no space left on the volume; the write was not made".into(),
            ),
            Busy(what) => (S::SERVICE_UNAVAILABLE, 1011, "Service not ready", (*what).to_owned()),
            BodyTimedOut(after) => (
                S::REQUEST_TIMEOUT,
                1025,
                "Invalid request",
                format!("body: not received in full within {} ms", after.as_millis()),
            ),
            Internal(_) => (
                S::INTERNAL_SERVER_ERROR,
                1014,
                "Internal error",
                "see the server log".into(),
            ),
            TooManyRequests => (
                S::TOO_MANY_REQUESTS,
                1015,
                "Too many requests",
                "too many failed attempts; retry later".into(),
            ),
            Overloaded(what) => (S::SERVICE_UNAVAILABLE, 1016, "System overloaded", (*what).to_owned()),
            Database(_) => (
                S::INTERNAL_SERVER_ERROR,
                1023,
                "Generic database error",
                "see the server log".into(),
            ),
            PasswordChangeRequired => (
                S::UNAUTHORIZED,
                1024,
                "Password Change Required",
                "new_password: required while the default password is in use".into(),
            ),
            Malformed(details) => (S::BAD_REQUEST, 1025, "Invalid request", details.clone()),
            TooLarge { limit } => (
                S::PAYLOAD_TOO_LARGE,
                1025,
                "Invalid request",
                format!("body: over {limit} bytes"),
            ),
        }
    }
}

impl From<coreq_storage::StorageError> for ApiError {
    fn from(e: coreq_storage::StorageError) -> ApiError {
        if is_out_of_space(&e) {
            ApiError::StorageFull(e.to_string())
        } else {
            ApiError::Internal(e.to_string())
        }
    }
}

/// True when a storage error is, or was caused by, a write that found no space (ENOSPC) or
/// no quota (EDQUOT): in an I/O error anywhere in its chain, or in the text of a poisoning
/// (the WAL and the store keep the failure that poisoned them only as its message, which
/// ends in the OS error's number, as does sled's).
fn is_out_of_space(e: &coreq_storage::StorageError) -> bool {
    use coreq_storage::StorageError;
    use coreq_wal::WalError;
    let io_full = |io: &std::io::Error| {
        io.kind() == std::io::ErrorKind::StorageFull
            || io.kind() == std::io::ErrorKind::QuotaExceeded
            || matches!(io.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
    };
    let text_full = |why: &str| {
        [libc::ENOSPC, libc::EDQUOT]
            .iter()
            .any(|code| why.contains(&format!("(os error {code})")))
    };
    match e {
        StorageError::Poisoned(why) | StorageError::Wal(WalError::Poisoned(why)) => return text_full(why),
        // sled's I/O error does not expose its cause as a source.
        StorageError::Sled(sled) => return text_full(&sled.to_string()),
        _ => {}
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = source {
        if error.downcast_ref::<std::io::Error>().is_some_and(io_full) {
            return true;
        }
        source = error.source();
    }
    false
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(cause) | ApiError::Database(cause) => tracing::error!(cause, "api: internal error"),
            ApiError::StorageFull(cause) => tracing::error!(cause, "api: a write found no space"),
            _ => {}
        }
        let retry = matches!(self, ApiError::Busy(_));
        let (status, code, title, details) = self.parts();
        let body = json!({ "errors": [{ "code": code, "title": title, "details": details }], "meta": meta() });
        let mut response = (status, Json(body)).into_response();
        if retry {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

/// The largest request body accepted. The router enforces it (`DefaultBodyLimit`), so the
/// number in a 413's details is the limit actually in force.
pub const BODY_LIMIT_BYTES: usize = 1 << 20;

/// Reads a request body: over the limit is 413/1025, any other failure 400/1025.
pub async fn body_bytes<S: Send + Sync>(req: axum::extract::Request, state: &S) -> Result<axum::body::Bytes, ApiError> {
    use axum::extract::FromRequest;
    axum::body::Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::TooLarge {
                limit: BODY_LIMIT_BYTES,
            }
        } else if let Some(timed_out) = find_in_chain::<BodyTimedOut>(&rejection) {
            ApiError::BodyTimedOut(timed_out.0)
        } else {
            ApiError::Malformed(format!("body: {rejection}"))
        }
    })
}

/// The first error of type `T` in `error`'s chain of sources.
fn find_in_chain<'a, T: std::error::Error + 'static>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// A JSON body, parsed with errors in the envelope: a syntax error is 1025 with its line and
/// column; a body over the limit is 413.
pub struct ApiJson(pub serde_json::Value);

impl<S: Send + Sync> axum::extract::FromRequest<S> for ApiJson {
    type Rejection = ApiError;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&body_bytes(req, state).await?).map(ApiJson)
    }
}

/// A path parameter, with a bad one (say, percent-encoded bytes that are not UTF-8) refused
/// as 400/1025 in the envelope instead of axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|rejection| ApiError::Malformed(format!("path: {}", rejection.body_text())))
    }
}

/// Parses JSON, reporting a syntax error with its line and column.
pub fn parse_json(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::Malformed(format!(
            "body: invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_status_the_spec_gives_it() {
        let cases = [
            (
                ApiError::TooLong {
                    field: "text.body".into(),
                    max: 4096,
                },
                400,
                1001,
            ),
            (ApiError::Unauthorized, 401, 1005),
            (ApiError::Forbidden, 403, 1005),
            (ApiError::NotFound("/x".into()), 404, 1006),
            (ApiError::MethodNotAllowed("PUT /x".into()), 405, 1006),
            (ApiError::Missing("to".into()), 400, 1008),
            (ApiError::invalid("to", "bad"), 400, 1009),
            (ApiError::Unknown("zzz".into()), 400, 1010),
            (ApiError::NotReady("recovering"), 503, 1011),
            (
                ApiError::NoSpace {
                    volume: "data",
                    min_free: 10 << 20,
                },
                507,
                1014,
            ),
            (ApiError::Internal("x".into()), 500, 1014),
            (ApiError::StorageFull("x".into()), 507, 1014),
            (ApiError::Busy("body"), 503, 1011),
            (ApiError::BodyTimedOut(std::time::Duration::from_secs(1)), 408, 1025),
            (ApiError::TooManyRequests, 429, 1015),
            (ApiError::Overloaded("backlog"), 503, 1016),
            (ApiError::Database("x".into()), 500, 1023),
            (ApiError::Malformed("body".into()), 400, 1025),
            (ApiError::TooLarge { limit: 10 }, 413, 1025),
        ];
        for (error, status, code) in cases {
            let (s, c, _, _) = error.parts();
            assert_eq!((s.as_u16(), c), (status, code), "{error:?}");
        }
    }

    #[test]
    fn a_write_without_space_is_507_wherever_the_error_carries_it() {
        use coreq_storage::StorageError;
        use coreq_wal::WalError;
        let os = std::io::Error::from_raw_os_error;
        let full = [
            StorageError::Io {
                path: "state/db".into(),
                source: os(libc::ENOSPC),
            },
            StorageError::Wal(WalError::Io {
                path: "wal/1.wal".into(),
                source: os(libc::EDQUOT),
            }),
            StorageError::Wal(WalError::Poisoned(format!(
                "wal i/o on wal/1.wal: {}",
                os(libc::ENOSPC)
            ))),
            StorageError::Poisoned(format!("apply: {}", os(libc::EDQUOT))),
        ];
        for error in full {
            let (status, code, _, _) = ApiError::from(error).parts();
            assert_eq!((status.as_u16(), code), (507, 1014));
        }
        let other = StorageError::Poisoned(format!("wal i/o on wal/1.wal: {}", os(libc::EIO)));
        let (status, _, _, _) = ApiError::from(other).parts();
        assert_eq!(status.as_u16(), 500);
    }

    #[test]
    fn internal_errors_do_not_reveal_their_cause() {
        let (_, _, _, details) = ApiError::Internal("sled: /secret/path".into()).parts();
        assert!(!details.contains("secret"));
    }

    #[test]
    fn json_syntax_error_names_line_and_column() {
        let Err(ApiError::Malformed(details)) = parse_json(b"{\n  \"a\": 1,\n  oops\n}") else {
            panic!("not malformed")
        };
        assert!(details.contains("line 3 column 3"), "{details}");
    }
}
