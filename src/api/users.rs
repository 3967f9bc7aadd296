//! The users node (spec §2): login, logout, create, read and delete users.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use coreq_storage::Role;
use serde_json::{Value, json};

use crate::api::auth::{Admin, Caller, credentials};
use crate::api::error::{ApiError, ApiPath, body_bytes, parse_json};
use crate::api::{AppState, meta};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/users/login", post(login))
        .route("/v1/users/logout", post(logout))
        .route("/v1/users", post(create))
        .route("/v1/users/{name}", get(read).delete(remove))
}

/// `user:password` from `Authorization: Basic …`.
fn basic_credentials(parts: &Parts) -> Result<(String, String), ApiError> {
    let encoded = credentials(parts, "Basic").ok_or(ApiError::Unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| ApiError::Unauthorized)?;
    let text = String::from_utf8(decoded).map_err(|_| ApiError::Unauthorized)?;
    let (user, password) = text.split_once(':').ok_or(ApiError::Unauthorized)?;
    Ok((user.to_owned(), password.to_owned()))
}

/// An object body with only the fields in `allowed`; an empty body is `{}`.
async fn object_body(
    request: Request,
    state: &AppState,
    allowed: &[&str],
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let bytes = body_bytes(request, state).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    let Value::Object(map) = parse_json(&bytes)? else {
        return Err(ApiError::Malformed("body: must be a JSON object".into()));
    };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::Unknown(unknown.clone()));
    }
    Ok(map)
}

fn string_field(map: &serde_json::Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match map.get(field) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::invalid(field, "must be a string")),
    }
}

/// `expires_after` as the On-Premises API writes it: `YYYY-MM-DD HH:MM:SS+00:00`.
fn expires_after(unix_ms: u64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]+00:00");
    time::OffsetDateTime::from_unix_timestamp((unix_ms / 1000) as i64)
        .ok()
        .and_then(|t| t.format(format).ok())
        .unwrap_or_default()
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let (parts, body) = request.into_parts();
    let (user, password) = basic_credentials(&parts)?;
    let body = object_body(Request::from_parts(parts, body), &state, &["new_password"]).await?;
    let new_password = string_field(&body, "new_password")?;
    let accounts = &state.services()?.accounts;
    let issued = accounts
        .login(&user, &password, new_password.as_deref(), client.ip())
        .await?;
    Ok(Json(
        json!({ "users": [{ "token": issued.token, "expires_after": expires_after(issued.expires_at) }], "meta": meta() }),
    ))
}

async fn logout(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    state.services()?.accounts.logout(&caller.token).await?;
    Ok(Json(json!({ "meta": meta() })))
}

async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body = object_body(request, &state, &["username", "password"]).await?;
    let username = string_field(&body, "username")?.ok_or_else(|| ApiError::Missing("username".into()))?;
    let password = string_field(&body, "password")?.ok_or_else(|| ApiError::Missing("password".into()))?;
    state.services()?.accounts.create_user(&username, &password).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "users": [{ "username": username }], "meta": meta() })),
    ))
}

/// Admins read anyone; a user reads only themself.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    if caller.principal.role != Role::Admin && caller.principal.user != name {
        return Err(ApiError::Forbidden);
    }
    let user = state
        .services()?
        .accounts
        .user(&name)?
        .ok_or_else(|| ApiError::NotFound("user".into()))?;
    let role = match user.role {
        Role::Admin => "ROLE_ADMIN",
        Role::User => "ROLE_USER",
    };
    Ok(Json(
        json!({ "users": [{ "ROLES": role, "username": user.name }], "meta": meta() }),
    ))
}

async fn remove(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    state.services()?.accounts.delete_user(&name).await?;
    Ok(Json(json!({ "meta": meta() })))
}
