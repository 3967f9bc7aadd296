//! The settings node (spec §4): `GET/PATCH/DELETE /v1/settings/application`, admin only.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::auth::Admin;
use crate::api::error::{ApiError, ApiJson};
use crate::api::{AppState, meta};
use crate::settings::{AppSettings, PatchError, SettingsError};

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/settings/application", get(read).patch(patch).delete(reset))
}

impl From<SettingsError> for ApiError {
    fn from(e: SettingsError) -> ApiError {
        match e {
            SettingsError::Patch(PatchError::Invalid { field, problem }) => ApiError::Invalid { field, problem },
            SettingsError::Patch(PatchError::Unknown(field)) => ApiError::Unknown(field),
            SettingsError::Storage(e) => e.into(),
            SettingsError::Corrupt(e) => ApiError::Internal(e),
        }
    }
}

async fn read(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    let current = state.services()?.settings.current()?;
    Ok(Json(
        json!({ "settings": { "application": current.to_json() }, "meta": meta() }),
    ))
}

async fn patch(State(state): State<AppState>, _admin: Admin, ApiJson(body): ApiJson) -> Result<Json<Value>, ApiError> {
    let Value::Object(patch) = body else {
        return Err(ApiError::Malformed("body: must be a JSON object".into()));
    };
    let now = state.services()?.settings.patch(&patch).await?;
    applied_live(&now);
    Ok(Json(json!({ "meta": meta() })))
}

async fn reset(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    let now = state.services()?.settings.reset().await?;
    applied_live(&now);
    Ok(Json(json!({ "meta": meta() })))
}

/// Settings that take effect without a restart, applied before the 200 so that the caller can
/// rely on them at once.
fn applied_live(settings: &AppSettings) {
    crate::telemetry::follow_settings(&settings.log_level, settings.verbose_logging);
}
