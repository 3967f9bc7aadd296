//! `PUT /v1/services/message/gc` (admin, spec §9): starts a collection of the message store
//! now and answers at once; the end of the run is reported by a callback (see
//! `messages::gc`).

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::auth::Admin;
use crate::api::error::ApiError;
use crate::api::{AppState, meta};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/services/message/gc", put(collect_messages))
}

async fn collect_messages(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    state.services()?.gc.start();
    Ok(Json(json!({
        "services": { "message": { "gc": { "status": "processing" } } },
        "meta": meta(),
    })))
}
