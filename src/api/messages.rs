//! Outgoing messages (spec §7): `POST /v1/messages` (Bearer) validates the On-Premises body and
//! answers 201 with an opaque id once the message is durable; `GET /v1/messages/{id}` [ext]
//! shows its current status and status history.

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use coreq_storage::Message;
use serde_json::{Value, json};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiPath, body_bytes, parse_json};
use crate::api::{AppState, meta};
use crate::messages::validate::{Refusal, validate};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(send))
        .route("/v1/messages/{id}", get(read))
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        match refusal {
            Refusal::Missing(field) => ApiError::Missing(field),
            Refusal::Invalid { path, problem } => ApiError::Invalid { field: path, problem },
            Refusal::TooLong { path, max } => ApiError::TooLong { field: path, max },
            Refusal::Unknown(field) => ApiError::Unknown(field),
        }
    }
}

async fn send(
    State(state): State<AppState>,
    _caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bytes = body_bytes(request, &state).await?;
    let outgoing = validate(&parse_json(&bytes)?)?;
    let id = state.services()?.messages.accept(outgoing.to, bytes.to_vec()).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "messages": [{ "id": id }], "meta": meta() })),
    ))
}

async fn read(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let message = state
        .services()?
        .messages
        .get(&id)?
        .ok_or_else(|| ApiError::NotFound(format!("message {id}")))?;
    Ok(Json(json!({ "messages": [view(&message)], "meta": meta() })))
}

/// A message as `GET /v1/messages/{id}` shows it. Timestamps are Unix seconds as strings, as
/// in On-Premises status callbacks.
fn view(message: &Message) -> Value {
    let kind = serde_json::from_slice::<Value>(&message.body)
        .ok()
        .and_then(|body| body.get("type").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "text".into());
    let statuses: Vec<Value> = message
        .statuses
        .iter()
        .map(|s| {
            let mut entry = json!({ "status": s.status, "timestamp": unix_seconds(s.at) });
            if let Some(errors) = s
                .errors
                .as_deref()
                .and_then(|e| serde_json::from_slice::<Value>(e).ok())
            {
                entry["errors"] = errors;
            }
            entry
        })
        .collect();
    let status = match message.statuses.last() {
        Some(last) => last.status.clone(),
        None if message.handed_to_gateway => "accepted_by_gateway".into(),
        None => "pending".into(),
    };
    json!({
        "id": message.id,
        "to": message.recipient,
        "type": kind,
        "status": status,
        "accepted_at": unix_seconds(message.accepted_at),
        "statuses": statuses,
    })
}

fn unix_seconds(ms: u64) -> String {
    (ms / 1000).to_string()
}
