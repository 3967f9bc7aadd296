//! Credentials to callers. `Caller` accepts only a Bearer token (an `Apikey` is refused there:
//! spec §2 allows it only on health, stats and metrics); `Admin` additionally requires
//! `ROLE_ADMIN`; `Monitor` (health, stats, metrics) accepts a Bearer token or the `Apikey`. Missing or bad credentials are 401/1005; the wrong role is 403/1005.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use coreq_storage::Role;

use crate::api::AppState;
use crate::api::error::ApiError;
use crate::auth::{AuthError, Principal};

/// The scheme and credentials of the `Authorization` header.
pub(crate) fn credentials<'a>(parts: &'a Parts, scheme: &str) -> Option<&'a str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given.eq_ignore_ascii_case(scheme).then(|| rest.trim())
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        match e {
            AuthError::BadCredentials => ApiError::Unauthorized,
            AuthError::PasswordChangeRequired => ApiError::PasswordChangeRequired,
            AuthError::Throttled => ApiError::TooManyRequests,
            AuthError::Rejected { field, problem } => ApiError::invalid(field, problem),
            AuthError::UserExists => ApiError::invalid("username", "already exists"),
            AuthError::NoSuchUser => ApiError::NotFound("user".into()),
            AuthError::Storage(e) => e.into(),
            AuthError::Hashing(e) => ApiError::Internal(e),
        }
    }
}

/// A caller authenticated by a Bearer token, with the token (for logout).
pub struct Caller {
    pub principal: Principal,
    pub token: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = credentials(parts, "Bearer").ok_or(ApiError::Unauthorized)?;
        let services = state.services()?;
        let principal = services.accounts.authenticate(token)?.ok_or(ApiError::Unauthorized)?;
        Ok(Caller {
            principal,
            token: token.to_owned(),
        })
    }
}

/// A caller with `ROLE_ADMIN`.
pub struct Admin(pub Principal);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        match caller.principal.role {
            Role::Admin => Ok(Admin(caller.principal)),
            Role::User => Err(ApiError::Forbidden),
        }
    }
}

/// A caller of the monitoring nodes: any valid Bearer token, or the API key. The API key is
/// checked without the store, so it works while recovery is still running.
pub struct Monitor;

impl FromRequestParts<AppState> for Monitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(key) = credentials(parts, "Apikey") {
            return if state.api_key_matches(key) {
                Ok(Monitor)
            } else {
                Err(ApiError::Unauthorized)
            };
        }
        Caller::from_request_parts(parts, state).await.map(|_| Monitor)
    }
}
