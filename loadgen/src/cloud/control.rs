//! The control API under `/_fake/`, for the binary (the README tour, manual runs): the same
//! controls the Rust API gives a test, as JSON over HTTP. `loadgen/README.md` lists the routes.
//! A bad control request is answered 400 with `{"error": "..."}` and changes nothing.

use std::time::{Duration, UNIX_EPOCH};

use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use super::Shared;
use super::faults::Fault;
use super::graph_error::CloudError;
use super::network::StatusDelays;
use super::notification::Status;
use super::server::json_response;
use crate::serve::HttpResponse;

/// Most faults one control request may script.
const MAX_FAULTS_PER_REQUEST: u64 = 10_000;
/// Longest scripted delay.
const MAX_DELAY_MS: u64 = 3_600_000;
/// The code a `failed` status carries unless the request names another.
const UNDELIVERABLE: u32 = 131026;

type Answer = Result<Value, (StatusCode, String)>;

fn bad(what: impl Into<String>) -> (StatusCode, String) {
    (StatusCode::BAD_REQUEST, what.into())
}

pub(crate) async fn handle(shared: &Shared, method: &Method, route: &str, body: &[u8]) -> HttpResponse {
    let parsed: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(value) => value,
            Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": format!("body: {e}")})),
        }
    };
    let answer = match (method.as_str(), route) {
        ("GET", "state") => Ok(state(shared)),
        ("GET", "sends") => Ok(sends(shared)),
        ("POST", "faults") => script_faults(shared, &parsed),
        ("DELETE", "faults") => {
            shared.faults().clear();
            Ok(state(shared))
        }
        ("PUT", "network") => network(shared, &parsed),
        ("PUT", "callback") => callback(shared, &parsed).await,
        ("POST", "inbound") => inbound(shared, &parsed),
        ("POST", "statuses") => emit_status(shared, &parsed),
        ("PUT", "unreachable") => unreachable(shared, &parsed),
        _ => Err((
            StatusCode::NOT_FOUND,
            format!("no control route {method} /_fake/{route}"),
        )),
    };
    match answer {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err((code, error)) => json_response(code, &json!({ "error": error })),
    }
}

fn state(shared: &Shared) -> Value {
    let ledger = shared.ledger();
    let counts = shared.network.counts();
    json!({
        "requests": shared.requests.load(std::sync::atomic::Ordering::Relaxed),
        "refused": shared.refused.load(std::sync::atomic::Ordering::Relaxed),
        "sends": ledger.sends().len(),
        "duplicates": ledger.duplicates(),
        "faults_pending": shared.faults().pending(),
        "network": {
            "paused": shared.network.paused(),
            "callback_url": shared.network.callback_url(),
            "pending": shared.network.pending(),
            "delivered": counts.delivered,
            "gave_up": counts.gave_up,
            "dropped": counts.dropped,
        },
    })
}

fn sends(shared: &Shared) -> Value {
    let ledger = shared.ledger();
    let sends: Vec<Value> = ledger
        .sends()
        .iter()
        .map(|s| {
            json!({
                "seq": s.seq,
                "wamid": s.wamid,
                "to": s.to,
                "type": s.message_type,
                "key": s.key,
                "copy": s.copy,
                "at_ms": s.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                "body": s.body,
            })
        })
        .collect();
    let duplicated: Vec<Value> = ledger
        .duplicated_keys()
        .into_iter()
        .map(|(key, copies)| json!({"key": key, "copies": copies}))
        .collect();
    json!({"sends": sends, "duplicates": ledger.duplicates(), "duplicated_keys": duplicated})
}

/// `{"fault": "error"|"delay"|"reset"|"accept_then_reset"|"hang", "count"?, "code"?, "status"?,
/// "ms"?}`.
fn script_faults(shared: &Shared, body: &Value) -> Answer {
    let count = match body.get("count") {
        None => 1,
        Some(n) => n
            .as_u64()
            .filter(|n| (1..=MAX_FAULTS_PER_REQUEST).contains(n))
            .ok_or_else(|| bad(format!("count must be 1..={MAX_FAULTS_PER_REQUEST}")))?,
    };
    let fault = match body.get("fault").and_then(Value::as_str) {
        Some("error") => Fault::Error(scripted_error(body, CloudError::something_went_wrong().code)?),
        Some("delay") => {
            let ms = body
                .get("ms")
                .and_then(Value::as_u64)
                .filter(|ms| *ms <= MAX_DELAY_MS)
                .ok_or_else(|| bad(format!("ms must be 0..={MAX_DELAY_MS}")))?;
            Fault::Delay(Duration::from_millis(ms))
        }
        Some("reset") => Fault::Reset,
        Some("accept_then_reset") => Fault::AcceptThenReset,
        Some("hang") => Fault::Hang,
        _ => return Err(bad("fault must be error, delay, reset, accept_then_reset or hang")),
    };
    if !shared.faults().push(count as usize, fault) {
        return Err(bad("too many faults scripted"));
    }
    Ok(state(shared))
}

/// The documented error for the body's `code` (else `default_code`), its HTTP status replaced
/// by the body's `status` if given.
fn scripted_error(body: &Value, default_code: u32) -> Result<CloudError, (StatusCode, String)> {
    let code = match body.get("code") {
        None => u64::from(default_code),
        Some(code) => code.as_u64().ok_or_else(|| bad("code must be a number"))?,
    };
    let mut error = u32::try_from(code)
        .ok()
        .and_then(CloudError::for_code)
        .ok_or_else(|| bad(format!("code {code} is not one the fake knows")))?;
    if let Some(status) = body.get("status") {
        error.http_status = status
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (400..=599).contains(s))
            .ok_or_else(|| bad("status must be 400..=599"))?;
    }
    Ok(error)
}

/// `{"paused"?, "automatic"?, "repeat"?, "delays_ms"?: {"sent", "delivered", "read"}}`.
fn network(shared: &Shared, body: &Value) -> Answer {
    let flag = |name: &str| match body.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(format!("{name} must be a boolean"))),
    };
    let paused = flag("paused")?;
    let automatic = flag("automatic")?;
    let repeat = match body.get("repeat") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .filter(|r| *r <= 100)
                .ok_or_else(|| bad("repeat must be 0..=100"))?,
        ),
    };
    let delays = match body.get("delays_ms") {
        None => None,
        Some(d) => {
            let ms = |name: &str| {
                d.get(name)
                    .and_then(Value::as_u64)
                    .filter(|ms| *ms <= MAX_DELAY_MS)
                    .map(Duration::from_millis)
                    .ok_or_else(|| bad(format!("delays_ms.{name} must be 0..={MAX_DELAY_MS}")))
            };
            Some(StatusDelays {
                sent: ms("sent")?,
                delivered: ms("delivered")?,
                read: ms("read")?,
            })
        }
    };
    // Everything was checked: only now change anything.
    if let Some(automatic) = automatic {
        shared.network.set_automatic(automatic);
    }
    if let Some(repeat) = repeat {
        shared.network.set_repeat(repeat);
    }
    if let Some(delays) = delays {
        shared.network.set_delays(delays);
    }
    if let Some(paused) = paused {
        shared.network.set_paused(paused);
    }
    Ok(state(shared))
}

/// `{"url": ..., "verify_token"?: ...}`: with a token, the URL is saved only if it passes the
/// verification handshake (as Meta's dashboard does); `{"url": null}` disconnects.
async fn callback(shared: &Shared, body: &Value) -> Answer {
    let url = match body.get("url") {
        Some(Value::Null) => {
            shared.network.set_callback_url(None);
            return Ok(state(shared));
        }
        Some(Value::String(url)) => url.clone(),
        _ => return Err(bad("url must be a string or null")),
    };
    if let Some(token) = body.get("verify_token") {
        let token = token.as_str().ok_or_else(|| bad("verify_token must be a string"))?;
        let handshake = shared
            .webhook
            .verify(&url, token, shared.ids.challenge())
            .await
            .map_err(bad)?;
        let result = json!({"verified": handshake.verified, "status": handshake.status, "body": handshake.body});
        if !handshake.verified {
            return Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("verification failed: {result}"),
            ));
        }
    }
    shared.network.set_callback_url(Some(url));
    Ok(state(shared))
}

/// `{"from", "name"?, "text"}` or `{"from", "name"?, "type", "content"}`: answers `{"id"}`.
fn inbound(shared: &Shared, body: &Value) -> Answer {
    let from = body
        .get("from")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| bad("from must be a phone number in digits"))?;
    let name = body.get("name").and_then(Value::as_str).unwrap_or("Test User");
    let (message_type, content) = match (body.get("text"), body.get("type")) {
        (Some(Value::String(text)), None) => ("text".to_string(), json!({ "body": text })),
        (None, Some(Value::String(kind))) => {
            let content = body
                .get("content")
                .filter(|c| c.is_object())
                .ok_or_else(|| bad("content must be an object"))?;
            (kind.clone(), content.clone())
        }
        _ => return Err(bad("give either text, or type and content")),
    };
    let id = shared.inject_inbound(from, name, &message_type, content);
    Ok(json!({ "id": id }))
}

/// `{"id": wamid, "status": "sent"|"delivered"|"read"|"failed", "code"?}`.
fn emit_status(shared: &Shared, body: &Value) -> Answer {
    let wamid = body
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("id must be a wamid"))?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(Status::parse)
        .ok_or_else(|| bad("status must be sent, delivered, read or failed"))?;
    let error = if status == Status::Failed {
        Some(scripted_error(body, UNDELIVERABLE)?)
    } else {
        None
    };
    if shared.emit_status(wamid, status, error) {
        Ok(json!({"id": wamid, "status": status.as_str()}))
    } else {
        Err((StatusCode::NOT_FOUND, format!("no send with id {wamid}")))
    }
}

/// `{"wa_id", "code"?}` makes a recipient unreachable (its messages fail with `code`, default
/// 131026); `{"wa_id", "reachable": true}` makes it reachable again.
fn unreachable(shared: &Shared, body: &Value) -> Answer {
    let wa_id = body
        .get("wa_id")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("wa_id must be a string"))?;
    let error = if body.get("reachable") == Some(&Value::Bool(true)) {
        None
    } else {
        Some(scripted_error(body, UNDELIVERABLE)?)
    };
    shared.network.set_unreachable(wa_id, error);
    Ok(state(shared))
}
