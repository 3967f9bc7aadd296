//! The HTTP API (axum). Only this module knows HTTP. One file per On-Premises node as they
//! arrive; for now: `/livez` and the not-ready answer every other route gives during recovery.

pub mod error;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coreq_storage::Store;
use serde_json::{Value, json};

use error::ApiError;

/// What handlers share. The store appears once recovery has finished.
#[derive(Clone, Default)]
pub struct AppState {
    store: Arc<OnceLock<Store>>,
}

impl AppState {
    pub fn new() -> AppState {
        AppState::default()
    }

    /// Called once, when start-up recovery is complete.
    pub fn set_ready(&self, store: Store) {
        // A second call would be a bug in `run`; keep the first store.
        let _ = self.store.set(store);
    }

    pub fn is_ready(&self) -> bool {
        self.store.get().is_some()
    }
}

/// `"meta"` of every JSON response.
pub fn meta() -> Value {
    json!({ "api_status": "stable", "version": env!("CARGO_PKG_VERSION") })
}

pub fn router(state: AppState) -> Router {
    let ready_only = Router::new()
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_ready));
    Router::new().route("/livez", get(livez)).merge(ready_only).with_state(state)
}

/// `GET /livez` [ext]: 200 `ok` once the process serves HTTP; needs no credentials and says
/// nothing else.
async fn livez() -> &'static str {
    "ok"
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().to_owned())
}

/// Every route but `/livez` answers 503/1011 until recovery has finished.
async fn require_ready(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if !state.is_ready() {
        return ApiError::NotReady("recovering the write-ahead log").into_response();
    }
    next.run(request).await
}
