//! `POST /v1/gateway/statuses` [ext] (admin, `--gateway http` only): the http gateway's upstream
//! reports what became of the messages it accepted, in the On-Premises status shape
//! `{"statuses":[{"id","status","timestamp"?,"errors"?}]}`. Each status is recorded once with
//! its callback, exactly as the simulator's are; repeating a report is harmless.

use axum::extract::{Request, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::api::auth::Admin;
use crate::api::error::{ApiError, body_bytes, parse_json};
use crate::api::{AppState, meta};
use crate::config::GatewayKind;
use crate::messages::{Status, StatusEvent};

/// Most statuses in one report.
const MAX_STATUSES: usize = 1000;

pub fn routes() -> Router<AppState> {
    Router::new().route("/v1/gateway/statuses", post(report))
}

async fn report(State(state): State<AppState>, _admin: Admin, request: Request) -> Result<Json<Value>, ApiError> {
    let services = state.services()?;
    if services.config.gateway != GatewayKind::Http {
        return Err(ApiError::NotFound(
            "statuses are reported here only with --gateway http".into(),
        ));
    }
    let body = parse_json(&body_bytes(request, &state).await?)?;
    let now = services.messages.now_ms();
    let events = parse_statuses(&body, now)?;
    let received = events.len();
    let recorded = services.messages.report_statuses(events).await?;
    Ok(Json(json!({
        "statuses": { "received": received, "recorded": recorded },
        "meta": meta(),
    })))
}

fn parse_statuses(body: &Value, now: u64) -> Result<Vec<StatusEvent>, ApiError> {
    let object = body
        .as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))?;
    if let Some(k) = object.keys().find(|k| *k != "statuses") {
        return Err(ApiError::Unknown(k.clone()));
    }
    let list = match object.get("statuses") {
        None => return Err(ApiError::Missing("statuses".into())),
        Some(Value::Array(list)) if (1..=MAX_STATUSES).contains(&list.len()) => list,
        Some(_) => return Err(ApiError::invalid("statuses", "an array of 1 to 1000 statuses")),
    };
    list.iter()
        .enumerate()
        .map(|(i, s)| parse_status(s, &format!("statuses[{i}]"), now))
        .collect()
}

fn parse_status(value: &Value, path: &str, now: u64) -> Result<StatusEvent, ApiError> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::invalid(path, "must be an object"))?;
    if let Some(k) = object
        .keys()
        .find(|k| !["id", "status", "timestamp", "errors"].contains(&k.as_str()))
    {
        return Err(ApiError::Unknown(format!("{path}.{k}")));
    }
    let id = match object.get("id") {
        None => return Err(ApiError::Missing(format!("{path}.id"))),
        Some(Value::String(id)) if !id.is_empty() && id.len() <= 128 => id.clone(),
        Some(_) => return Err(ApiError::invalid(format!("{path}.id"), "a message id")),
    };
    let status = match object.get("status") {
        None => return Err(ApiError::Missing(format!("{path}.status"))),
        Some(Value::String(s)) => Status::ALL
            .into_iter()
            .find(|known| known.as_str() == s)
            .ok_or_else(|| ApiError::invalid(format!("{path}.status"), "one of sent, delivered, read, failed"))?,
        Some(_) => return Err(ApiError::invalid(format!("{path}.status"), "must be a string")),
    };
    let at = match object.get("timestamp") {
        None => now,
        Some(Value::String(s)) => seconds(s.parse().ok(), path)?,
        Some(Value::Number(n)) => seconds(n.as_u64(), path)?,
        Some(_) => return Err(ApiError::invalid(format!("{path}.timestamp"), "Unix seconds")),
    };
    let errors = match object.get("errors") {
        None => None,
        Some(errors @ Value::Array(_)) if status == Status::Failed => Some(errors.clone()),
        Some(Value::Array(_)) => {
            return Err(ApiError::invalid(
                format!("{path}.errors"),
                "only a failed status has errors",
            ));
        }
        Some(_) => return Err(ApiError::invalid(format!("{path}.errors"), "must be an array")),
    };
    Ok(StatusEvent { id, status, at, errors })
}

/// Unix seconds (as the On-Premises API writes them) to milliseconds.
fn seconds(value: Option<u64>, path: &str) -> Result<u64, ApiError> {
    value
        .and_then(|s| s.checked_mul(1000))
        .ok_or_else(|| ApiError::invalid(format!("{path}.timestamp"), "Unix seconds"))
}
