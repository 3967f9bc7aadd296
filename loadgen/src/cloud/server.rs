//! The fake's HTTP front: `POST /{version}/{phone-number-id}/messages` as the Cloud API answers
//! it, and the test control API under `/_fake/` (`control.rs`; routes in `loadgen/README.md`).
//!
//! A messages request goes through, in order: the fault plan, the bearer token (401/190), the
//! phone number id (400/100, subcode 33), the body (see [`super::validate`]); then the send is
//! recorded, its statuses are scheduled, and it is answered 200 with
//! `{"messaging_product": "whatsapp", "contacts": [{"input", "wa_id"}], "messages": [{"id"}]}`
//! (Meta's "Messages" reference, response).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};
use serde_json::{Value, json};

use super::Shared;
use super::faults::Fault;
use super::graph_error::CloudError;
use super::ledger::{MAX_SENDS, NewSend};
use super::validate::check_send;
use crate::serve::{CloseConnection, HttpResponse, Peer, empty, status};

/// Bodies above this are refused with 413.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// [`Fault::Hang`] gives up (closes the connection) after this, so no task outlives a long run.
const HANG_LIMIT: Duration = Duration::from_secs(3600);

/// Where the control API lives.
pub const CONTROL_PREFIX: &str = "/_fake/";

pub(crate) async fn handle(
    request: hyper::Request<Incoming>,
    shared: Arc<Shared>,
    peer: Peer,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(empty(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(_) => return Err(CloseConnection),
    };
    let path = parts.uri.path();
    if let Some(route) = path.strip_prefix(CONTROL_PREFIX) {
        return Ok(super::control::handle(&shared, &parts.method, route, &body).await);
    }
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let Some(phone_number_id) = messages_route(path) else {
        return Ok(refuse(&shared, &CloudError::unknown_path(path)));
    };
    let fault = shared.faults().next();
    let accept_then_reset = match fault {
        Some(Fault::Error(error)) => return Ok(refuse(&shared, &error)),
        Some(Fault::Reset) => {
            peer.reset_on_close();
            return Err(CloseConnection);
        }
        Some(Fault::Hang) => {
            tokio::time::sleep(HANG_LIMIT).await;
            return Err(CloseConnection);
        }
        Some(Fault::Delay(delay)) => {
            tokio::time::sleep(delay).await;
            false
        }
        Some(Fault::AcceptThenReset) => true,
        None => false,
    };
    let answer = send(&shared, &parts.method, &parts.headers, phone_number_id, &body);
    match answer {
        Ok(_) if accept_then_reset => {
            peer.reset_on_close();
            Err(CloseConnection)
        }
        Ok(success) => Ok(json_response(StatusCode::OK, &success)),
        Err(error) => Ok(refuse(&shared, &error)),
    }
}

/// The phone number id of `/{version}/{phone-number-id}/messages`, version like `v21.0`.
fn messages_route(path: &str) -> Option<&str> {
    let mut segments = path.trim_start_matches('/').split('/');
    let (Some(version), Some(id), Some("messages"), None) =
        (segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return None;
    };
    let number = version.strip_prefix('v')?;
    let well_formed = !number.is_empty()
        && number
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    (well_formed && !id.is_empty()).then_some(id)
}

/// Checks and records one send; the success body, or the error to answer.
fn send(
    shared: &Shared,
    method: &Method,
    headers: &hyper::HeaderMap,
    phone_number_id: &str,
    body: &Bytes,
) -> Result<Value, CloudError> {
    let token = bearer(headers).filter(|t| *t == shared.access_token().as_str());
    let Some(token) = token else {
        return Err(CloudError::access_token_invalid());
    };
    if method != Method::POST || phone_number_id != shared.business.phone_number_id {
        return Err(CloudError::unknown_object(method.as_str(), phone_number_id));
    }
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let checked = check_send(&body)?;
    let mut ledger = shared.ledger();
    if ledger.is_full() {
        return Err(CloudError {
            details: Some(format!("fake cloud: {MAX_SENDS} sends recorded, the most it keeps")),
            ..CloudError::something_went_wrong()
        });
    }
    let record = ledger.record(NewSend {
        wamid: shared.ids.wamid(&checked.wa_id),
        token: token.to_string(),
        to: checked.to,
        wa_id: checked.wa_id,
        message_type: checked.message_type,
        biz_opaque_callback_data: checked.biz_opaque_callback_data,
        body,
    });
    drop(ledger);
    shared.network.accepted(&record);
    Ok(json!({
        "messaging_product": "whatsapp",
        "contacts": [{"input": record.to, "wa_id": record.wa_id}],
        "messages": [{"id": record.wamid}],
    }))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(headers: &hyper::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Answers `error` in the Graph API's envelope, and counts the refusal.
fn refuse(shared: &Shared, error: &CloudError) -> HttpResponse {
    shared.refused.fetch_add(1, Ordering::Relaxed);
    let mut response = json_response(status(error.http_status), &error.envelope(&shared.ids.fbtrace()));
    if error.code == 190 {
        // As the Graph API does for a bad token (RFC 6750).
        let challenge = format!("OAuth \"Facebook Platform\" \"invalid_token\" \"{}\"", error.message);
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
    }
    response
}

pub(crate) fn json_response(code: StatusCode, body: &Value) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = code;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::messages_route;

    #[test]
    fn only_versioned_messages_paths_route() {
        assert_eq!(messages_route("/v21.0/123/messages"), Some("123"));
        assert_eq!(messages_route("/v22/9/messages"), Some("9"));
        for path in [
            "/123/messages",
            "/v21.0/123",
            "/v21.0/123/messages/x",
            "/vX/1/messages",
            "/v1./1/messages",
        ] {
            assert_eq!(messages_route(path), None, "{path}");
        }
    }
}
