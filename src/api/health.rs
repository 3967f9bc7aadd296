//! The health node (spec §5): `GET /v1/health`, Bearer or Apikey. It answers during recovery
//! too (`uninitialized`), so it sits outside the readiness gate.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::auth::Monitor;
use crate::api::error::ApiError;
use crate::api::{AppState, meta};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/health", get(health))
}

async fn health(State(state): State<AppState>, _caller: Monitor) -> Result<Json<Value>, ApiError> {
    let gateway_status = match state.services() {
        Ok(services) => services.link.get().gateway_status(),
        Err(_) => "uninitialized",
    };
    Ok(Json(
        json!({ "health": { "gateway_status": gateway_status }, "meta": meta() }),
    ))
}
