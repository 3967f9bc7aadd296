//! The HTTP API (axum). Only this module knows HTTP. One file per On-Premises node:
//! `users.rs` (login, logout, user management), `settings.rs` (application settings),
//! `health.rs` (answers during recovery too), `support.rs`, `stats.rs` (stats and `/metrics`),
//! `callbacks.rs` (the callback queue). `/livez` (the process serves HTTP) and `/readyz` (a
//! write would be accepted now) answer without credentials.
//! `error.rs` is the one place errors become responses; `auth.rs` turns credentials into a
//! caller. Two middlewares wrap every route: request metrics and logging (`record_request`),
//! and the free-space guard on writes (`refuse_writes_without_space`).

pub mod auth;
mod callbacks;
pub mod error;
mod gateway;
mod health;
mod messages;
mod services;
mod settings;
mod sim;
mod stats;
mod support;
mod users;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use coreq_storage::Store;
use serde_json::{Value, json};

use crate::auth::{Accounts, ApiKey};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::disk::{LowSpace, SpaceGuard};
use crate::gateway::Link;
use crate::gateway::sim::Simulator;
use crate::messages::Messages;
use crate::messages::gc::Collector;
use crate::settings::Settings;
use crate::telemetry::catalog::{HTTP_REQUEST_SECONDS, HTTP_REQUESTS};
use error::ApiError;

/// What handlers need once start-up recovery has finished.
pub struct Services {
    pub config: Arc<Config>,
    pub store: Store,
    pub accounts: Accounts,
    pub settings: Settings,
    pub space: SpaceGuard,
    pub delivery: Delivery,
    pub messages: Messages,
    /// The gateway's link state (health, support).
    pub link: Link,
    /// The simulator, when `--gateway sim` runs (its API exists only then).
    pub sim: Option<Arc<Simulator>>,
    pub gc: Collector,
    /// The replicator, when a mirror database is configured.
    pub mirror: Option<crate::replicator::Replicator>,
}

/// What handlers share. The API key is known from the start; the services appear once
/// recovery has finished.
#[derive(Clone, Default)]
pub struct AppState {
    api_key: Option<ApiKey>,
    services: Arc<OnceLock<Arc<Services>>>,
    /// Set once shutdown has begun: `/readyz` answers 503 from then on.
    stopping: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(api_key: Option<ApiKey>) -> AppState {
        AppState {
            api_key,
            services: Arc::default(),
            stopping: Arc::default(),
        }
    }

    /// Called when shutdown begins (before the front stops accepting).
    pub fn begin_shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    /// Why a write would not be accepted now, or `None` when it would: recovered, the store
    /// able to write, not shutting down, every volume above its free-space minimum.
    pub fn unready_reason(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Acquire) {
            return Some("shutting down");
        }
        let Some(services) = self.services.get() else {
            return Some("recovering the write-ahead log");
        };
        if services.store.failure().is_some() {
            return Some("the store cannot write (see the log); coreq is stopping");
        }
        if let Err(low) = services.space.check() {
            return Some(match low.volume {
                "logs" => "the log volume is under its free-space minimum",
                _ => "the data volume is under its free-space minimum",
            });
        }
        None
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
        .merge(support::routes())
        .merge(callbacks::routes())
        .merge(messages::routes())
        .merge(services::routes())
        .merge(gateway::routes())
        .merge(sim::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            refuse_writes_without_space,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), require_ready));
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .merge(health::routes())
        .merge(stats::routes())
        .merge(ready_only)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(record_request))
        .layer(axum::extract::DefaultBodyLimit::max(error::BODY_LIMIT_BYTES))
        .with_state(state)
}

/// `GET /livez` [ext]: 200 `ok` once the process serves HTTP; needs no credentials and says
/// nothing else.
async fn livez() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 `ok` only while a write would be accepted, else 503 with a one-line
/// reason; needs no credentials (spec §13). The reason names a condition, never a path or a
/// cause from the log.
async fn readyz(State(state): State<AppState>) -> Response {
    match state.unready_reason() {
        None => "ok".into_response(),
        Some(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::NotFound(request.uri().path().to_owned())
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("{} {}", request.method(), request.uri().path()))
}

/// Every route but `/livez` answers 503/1011 until recovery has finished.
async fn require_ready(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if let Err(e) = state.services() {
        return e.into_response();
    }
    next.run(request).await
}

/// Writes (anything but GET, HEAD and OPTIONS) answer 507/1014 while a data or log volume is
/// under its free-space minimum. Login and logout stay open so an operator can still get a
/// token to read `/v1/support`.
async fn refuse_writes_without_space(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let session = matches!(request.uri().path(), "/v1/users/login" | "/v1/users/logout");
    if !reads
        && !session
        && let Ok(services) = state.services()
        && let Err(LowSpace { volume, min_free }) = services.space.check()
    {
        return ApiError::NoSpace { volume, min_free }.into_response();
    }
    next.run(request).await
}

/// Counts and times every request by route template (never the raw path: user names and ids
/// would make unbounded label sets), and logs it at debug level.
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let elapsed = started.elapsed();
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!(HTTP_REQUEST_SECONDS, "method" => method, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::debug!(method, %route, %status, elapsed_us = elapsed.as_micros() as u64, "request");
    response
}

/// A bounded label: the standard methods by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}
