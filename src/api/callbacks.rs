//! The callback queue (spec §8, [ext]): `POST /v1/callbacks` (Bearer) enqueues 1–1000 JSON
//! objects, each kept byte for byte as sent; `GET /v1/callbacks?state=pending&limit=N&after=ID`
//! lists the backlog; `POST /v1/callbacks/{id}/retry` retries a failed one now;
//! `DELETE /v1/callbacks/{id}` (admin) removes a poison callback.

use axum::extract::{DefaultBodyLimit, RawQuery, Request, State};
use axum::http::StatusCode;
use axum::routing::{delete, post};
use axum::{Json, Router};
use coreq_storage::{CallbackSeq, PendingCallback};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::api::auth::{Admin, Caller};
use crate::api::error::{ApiError, ApiPath, body_bytes};
use crate::api::{AppState, meta};
use crate::delivery::DeliveryError;

/// Callbacks per batch.
const MAX_BATCH: usize = 1000;
/// Bytes per callback object.
const MAX_CALLBACK_BYTES: usize = 256 * 1024;
/// A full batch of the largest callbacks, plus room for the envelope.
const BATCH_BODY_LIMIT: usize = MAX_BATCH * MAX_CALLBACK_BYTES + 64 * 1024;
const DEFAULT_LIST_LIMIT: usize = 100;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/v1/callbacks",
            post(enqueue).get(list).layer(DefaultBodyLimit::max(BATCH_BODY_LIMIT)),
        )
        .route("/v1/callbacks/{id}/retry", post(retry))
        .route("/v1/callbacks/{id}", delete(remove))
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> ApiError {
        match e {
            DeliveryError::Overloaded(_) => ApiError::Overloaded("callbacks: backlog over its high-water mark"),
            DeliveryError::Storage(e) => e.into(),
        }
    }
}

async fn enqueue(
    State(state): State<AppState>,
    _caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let bytes = body_bytes(request, &state).await?;
    let bodies = parse_batch(&bytes)?;
    let seqs = state.services()?.delivery.enqueue(bodies).await?;
    let ids: Vec<Value> = seqs.iter().map(|seq| json!({ "id": seq.to_string() })).collect();
    Ok((StatusCode::CREATED, Json(json!({ "callbacks": ids, "meta": meta() }))))
}

/// `{"callbacks":[{…}, …]}` → each object's exact bytes. Every refusal names the field.
fn parse_batch(bytes: &[u8]) -> Result<Vec<Vec<u8>>, ApiError> {
    // One pass that keeps every value raw: the callbacks are never re-serialized.
    let top: std::collections::HashMap<String, &RawValue> =
        serde_json::from_slice(bytes).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => ApiError::Malformed("body: must be a JSON object".into()),
            _ => ApiError::Malformed(format!(
                "body: invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            )),
        })?;
    if let Some(unknown) = top.keys().find(|k| *k != "callbacks") {
        return Err(ApiError::Unknown(unknown.clone()));
    }
    let raw = top
        .get("callbacks")
        .ok_or_else(|| ApiError::Missing("callbacks".into()))?;
    let callbacks: Vec<&RawValue> = serde_json::from_str(raw.get())
        .map_err(|_| ApiError::invalid("callbacks", "must be an array of JSON objects"))?;
    if callbacks.is_empty() || callbacks.len() > MAX_BATCH {
        return Err(ApiError::invalid(
            "callbacks",
            format!("must hold 1 to {MAX_BATCH} callbacks, not {}", callbacks.len()),
        ));
    }
    callbacks
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            let text = raw.get();
            if !text.starts_with('{') {
                return Err(ApiError::invalid(format!("callbacks[{i}]"), "must be a JSON object"));
            }
            if text.len() > MAX_CALLBACK_BYTES {
                return Err(ApiError::invalid(
                    format!("callbacks[{i}]"),
                    format!("{} bytes, over the limit of {MAX_CALLBACK_BYTES}", text.len()),
                ));
            }
            Ok(text.as_bytes().to_vec())
        })
        .collect()
}

async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let mut limit = DEFAULT_LIST_LIMIT;
    let mut after = None;
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match key.as_ref() {
            "state" if value == "pending" => {}
            "state" => return Err(ApiError::invalid("state", "only pending is listed")),
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_BATCH).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit", format!("must be 1 to {MAX_BATCH}")))?;
            }
            "after" => after = Some(parse_id("after", &value)?),
            other => return Err(ApiError::Unknown(other.to_owned())),
        }
    }
    let delivery = &state.services()?.delivery;
    let pending = delivery.pending(after, limit)?;
    let callbacks: Vec<Value> = pending.iter().map(describe).collect();
    Ok(Json(json!({ "callbacks": callbacks, "meta": meta() })))
}

fn describe(cb: &PendingCallback) -> Value {
    json!({
        "id": cb.seq.to_string(),
        "enqueued_at": iso8601(cb.enqueued_at),
        "attempts": cb.attempts.failures,
        "last_error": cb.attempts.last_error,
        "last_attempt_at": cb.attempts.last_attempt_at.map(iso8601),
        "next_attempt_at": cb.attempts.next_attempt_at.map(iso8601),
        "bytes": cb.body.len(),
    })
}

/// RFC 3339 with milliseconds, UTC.
fn iso8601(ms: u64) -> String {
    let at =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    at.format(&Rfc3339).unwrap_or_default()
}

fn parse_id(field: &str, text: &str) -> Result<CallbackSeq, ApiError> {
    text.parse()
        .map_err(|_| ApiError::invalid(field, "must be a callback id (a decimal number)"))
}

async fn retry(
    State(state): State<AppState>,
    _caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let seq = parse_id("id", &id)?;
    if !state.services()?.delivery.retry_now(seq)? {
        return Err(ApiError::NotFound(format!("callback {id}")));
    }
    Ok(Json(json!({ "meta": meta() })))
}

async fn remove(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let seq = parse_id("id", &id)?;
    if !state.services()?.delivery.delete(seq).await? {
        return Err(ApiError::NotFound(format!("callback {id}")));
    }
    Ok(Json(json!({ "meta": meta() })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(body: &str) -> ApiError {
        parse_batch(body.as_bytes()).expect_err("refused")
    }

    #[test]
    fn each_callback_keeps_its_exact_bytes() {
        let bodies = parse_batch(br#"{"callbacks":[{"b": 1,  "a":"x"} , {"z":[1,2]}]}"#).expect("ok");
        assert_eq!(bodies, [br#"{"b": 1,  "a":"x"}"#.to_vec(), br#"{"z":[1,2]}"#.to_vec()]);
    }

    #[test]
    fn a_batch_must_hold_one_to_a_thousand_objects() {
        assert!(matches!(refused(r#"{"callbacks":[]}"#), ApiError::Invalid { field, .. } if field == "callbacks"));
        let many = format!(r#"{{"callbacks":[{}]}}"#, vec!["{}"; 1001].join(","));
        assert!(matches!(refused(&many), ApiError::Invalid { field, .. } if field == "callbacks"));
    }

    #[test]
    fn a_non_object_callback_is_named_by_index() {
        assert!(
            matches!(refused(r#"{"callbacks":[{}, 3]}"#), ApiError::Invalid { field, .. } if field == "callbacks[1]")
        );
    }

    #[test]
    fn missing_unknown_and_malformed_are_told_apart() {
        assert!(matches!(refused(r#"{}"#), ApiError::Missing(f) if f == "callbacks"));
        assert!(matches!(refused(r#"{"callbacks":[{}],"x":1}"#), ApiError::Unknown(f) if f == "x"));
        assert!(matches!(refused(r#"{"callbacks":"#), ApiError::Malformed(_)));
        assert!(matches!(refused(r#"[1]"#), ApiError::Malformed(_)));
        assert!(matches!(refused(r#"{"callbacks":{}}"#), ApiError::Invalid { field, .. } if field == "callbacks"));
    }
}
