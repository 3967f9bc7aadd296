//! The simulator's API [ext], served only with `--gateway sim` (404 otherwise):
//! `PUT /v1/sim/gateway` (admin) takes the simulated network down or up, `GET /v1/sim/gateway`
//! shows its state and counters, `POST /v1/sim/inbound` (admin) injects a text message from a
//! user, which becomes an inbound callback.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::routing::{post, put};
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::api::auth::{Admin, Caller};
use crate::api::error::{ApiError, body_bytes, parse_json};
use crate::api::{AppState, meta};
use crate::gateway::sim::Simulator;
use crate::messages::Inbound;

/// Longest inbound text, as for outgoing text messages.
const MAX_TEXT_CHARS: usize = 4096;
const MAX_NAME_CHARS: usize = 256;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/sim/gateway", put(set_link).get(show))
        .route("/v1/sim/inbound", post(inbound))
}

fn simulator(state: &AppState) -> Result<Arc<Simulator>, ApiError> {
    state
        .services()?
        .sim
        .clone()
        .ok_or_else(|| ApiError::NotFound("the sim gateway is not running (--gateway sim)".into()))
}

async fn set_link(State(state): State<AppState>, _admin: Admin, request: Request) -> Result<Json<Value>, ApiError> {
    let sim = simulator(&state)?;
    let body = object(&parse_json(&body_bytes(request, &state).await?)?)?;
    reject_unknown(&body, &["status"])?;
    let connected = match body.get("status") {
        None => return Err(ApiError::Missing("status".into())),
        Some(Value::String(s)) if s == "connected" => true,
        Some(Value::String(s)) if s == "disconnected" => false,
        Some(_) => return Err(ApiError::invalid("status", "must be \"connected\" or \"disconnected\"")),
    };
    sim.set_connected(connected);
    Ok(Json(json!({ "gateway": sim.stats(), "meta": meta() })))
}

async fn show(State(state): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "gateway": simulator(&state)?.stats(), "meta": meta() })))
}

/// `{"from": "<number>", "name": "<profile name>"?, "text": {"body": "…"}, "type": "text"?}`.
async fn inbound(
    State(state): State<AppState>,
    _admin: Admin,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let sim = simulator(&state)?;
    let body = object(&parse_json(&body_bytes(request, &state).await?)?)?;
    let inbound = parse_inbound(&body)?;
    if !sim.is_connected() {
        return Err(ApiError::NotReady("the simulated gateway is disconnected"));
    }
    let id = state.services()?.messages.receive_inbound(inbound).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "messages": [{ "id": id }], "meta": meta() })),
    ))
}

fn parse_inbound(body: &Map<String, Value>) -> Result<Inbound, ApiError> {
    reject_unknown(body, &["from", "name", "text", "type"])?;
    let from = match body.get("from") {
        None => return Err(ApiError::Missing("from".into())),
        Some(Value::String(s)) if is_number(s) => s.clone(),
        Some(_) => {
            return Err(ApiError::invalid(
                "from",
                "a phone number: 5 to 20 digits, optionally after +",
            ));
        }
    };
    let name = match body.get("name") {
        None => None,
        Some(Value::String(s)) if s.chars().count() > MAX_NAME_CHARS => {
            return Err(ApiError::TooLong {
                field: "name".into(),
                max: MAX_NAME_CHARS,
            });
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(ApiError::invalid("name", "must be a string")),
    };
    match body.get("type") {
        None => {}
        Some(Value::String(t)) if t == "text" => {}
        Some(_) => return Err(ApiError::invalid("type", "only \"text\" can be injected")),
    }
    let text = object(body.get("text").ok_or_else(|| ApiError::Missing("text".into()))?)
        .map_err(|_| ApiError::invalid("text", "must be an object"))?;
    if let Some(k) = text.keys().find(|k| *k != "body") {
        return Err(ApiError::Unknown(format!("text.{k}")));
    }
    let text = match text.get("body") {
        None => return Err(ApiError::Missing("text.body".into())),
        Some(Value::String(s)) if s.chars().count() > MAX_TEXT_CHARS => {
            return Err(ApiError::TooLong {
                field: "text.body".into(),
                max: MAX_TEXT_CHARS,
            });
        }
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(_) => return Err(ApiError::invalid("text.body", "must be a non-empty string")),
    };
    Ok(Inbound { from, name, text })
}

fn is_number(s: &str) -> bool {
    let digits = s.strip_prefix('+').unwrap_or(s);
    (5..=20).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
}

fn object(value: &Value) -> Result<Map<String, Value>, ApiError> {
    value
        .as_object()
        .cloned()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))
}

fn reject_unknown(body: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match body.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(ApiError::Unknown(k.clone())),
        None => Ok(()),
    }
}
