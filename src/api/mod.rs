//! The HTTP API (axum). Only this module knows HTTP. One file per On-Premises node:
//! `users.rs` (login, logout, user management), `settings.rs` (application settings),
//! `health.rs` (answers during recovery too); more arrive with the settings, health, support,
//! stats and metrics nodes. `error.rs` is the one place errors become responses; `auth.rs`
//! turns credentials into a caller.

pub mod auth;
pub mod error;
mod health;
mod settings;
mod users;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coreq_storage::Store;
use serde_json::{Value, json};

use crate::auth::{Accounts, ApiKey};
use crate::settings::Settings;
use error::ApiError;

/// What handlers need once start-up recovery has finished.
pub struct Services {
    pub store: Store,
    pub accounts: Accounts,
    pub settings: Settings,
}

/// What handlers share. The API key is known from the start; the services appear once
/// recovery has finished.
#[derive(Clone, Default)]
pub struct AppState {
    api_key: Option<ApiKey>,
    services: Arc<OnceLock<Arc<Services>>>,
}

impl AppState {
    pub fn new(api_key: Option<ApiKey>) -> AppState {
        AppState {
            api_key,
            services: Arc::default(),
        }
    }

    /// True when `given` is the configured monitoring API key.
    pub fn api_key_matches(&self, given: &str) -> bool {
        self.api_key.as_ref().is_some_and(|key| key.matches(given))
    }

    /// Called once, when start-up recovery is complete.
    pub fn set_ready(&self, services: Services) {
        // A second call would be a bug in `run`; keep the first.
        let _ = self.services.set(Arc::new(services));
    }

    pub fn is_ready(&self) -> bool {
        self.services.get().is_some()
    }

    /// The services, or 503/1011 while recovering.
    pub fn services(&self) -> Result<&Arc<Services>, ApiError> {
        self.services
            .get()
            .ok_or(ApiError::NotReady("recovering the write-ahead log"))
    }
}

/// `"meta"` of every JSON response.
pub fn meta() -> Value {
    json!({ "api_status": "stable", "version": env!("CARGO_PKG_VERSION") })
}

pub fn router(state: AppState) -> Router {
    let ready_only = users::routes()
        .merge(settings::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_ready));
    Router::new()
        .route("/livez", get(livez))
        .merge(health::routes())
        .merge(ready_only)
        .layer(axum::extract::DefaultBodyLimit::max(error::BODY_LIMIT_BYTES))
        .with_state(state)
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
    if let Err(e) = state.services() {
        return e.into_response();
    }
    next.run(request).await
}
