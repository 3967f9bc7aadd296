//! One POST of one callback to the webhook, and what came of it. HTTPS through reqwest on
//! rustls (ring), trusting the system roots plus `COREQ_WEBHOOK_CA`; redirects are never
//! followed; one keep-alive pool sized to the largest allowed concurrency.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use sha2::Sha256;

/// The most requests ever in flight (`webhooks.max_concurrent_requests` ≤ 24).
const MAX_CONCURRENCY: usize = 24;

/// The header carrying the callback's id ([ext]).
pub const CALLBACK_ID: &str = "X-Coreq-Callback-Id";

/// At most this much of a webhook's answer is read (to keep the connection reusable); the rest
/// is dropped with the connection.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Why an attempt did not count as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// An HTTP answer other than 200 (redirects included: they are not followed).
    Status(u16),
    /// No complete answer within the request timeout.
    Timeout,
    /// No connection (refused, reset, DNS, TLS handshake).
    Connect(String),
    /// Anything else on the way (the connection broke mid-answer, …).
    Transport(String),
}

impl Failure {
    /// The `result` label of the attempt metrics and the `last_error` of the callback.
    pub fn label(&self) -> String {
        match self {
            Failure::Status(code) => code.to_string(),
            Failure::Timeout => "timeout".into(),
            Failure::Connect(_) => "connect_error".into(),
            Failure::Transport(_) => "transport_error".into(),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Failure::Status(code) => format!("HTTP {code}"),
            Failure::Timeout => "timed out".into(),
            Failure::Connect(e) => format!("connect: {e}"),
            Failure::Transport(e) => format!("transport: {e}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookSetupError {
    #[error("--webhook-ca/COREQ_WEBHOOK_CA: {0}")]
    Ca(String),
    #[error("webhook client: {0}")]
    Client(String),
}

/// The pooled HTTP client for webhooks.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
}

impl WebhookClient {
    pub fn new(timeout: Duration, extra_ca: Option<&Path>) -> Result<WebhookClient, WebhookSetupError> {
        Ok(WebhookClient {
            client: http_client(timeout, extra_ca)?,
        })
    }

    /// POSTs `body` as `application/json` to `url` exactly as given, with the callback's id in
    /// `X-Coreq-Callback-Id` (the same on every attempt: at-least-once delivery lets a
    /// receiver see a callback twice, and the id lets it tell); delivered only on 200.
    pub async fn post(
        &self,
        url: reqwest::Url,
        id: u64,
        body: Bytes,
        signing_secret: Option<&str>,
    ) -> Result<(), Failure> {
        let mut request = self
            .client
            .post(url)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(CALLBACK_ID, id);
        if let Some(secret) = signing_secret {
            request = request.header("X-Hub-Signature-256", signature(secret, &body));
        }
        let mut response = request.body(body).send().await.map_err(classify)?;
        let status = response.status().as_u16();
        drain_reply(&mut response, status == 200).await?;
        if status == 200 {
            Ok(())
        } else {
            Err(Failure::Status(status))
        }
    }
}

/// A pooled HTTP/1 client on rustls (ring) that never follows redirects, trusting the system
/// roots plus `extra_ca`. Shared by the webhook client and the http gateway.
pub(crate) fn http_client(timeout: Duration, extra_ca: Option<&Path>) -> Result<reqwest::Client, WebhookSetupError> {
    // reqwest is built without a crypto provider: the process uses ring, installed once.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_max_idle_per_host(MAX_CONCURRENCY)
        .tcp_nodelay(true)
        .http1_only();
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| WebhookSetupError::Ca(format!("{}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| WebhookSetupError::Ca(format!("{}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(WebhookSetupError::Ca(format!(
                "{}: no certificate in it",
                path.display()
            )));
        }
        builder = builder.tls_certs_merge(certs);
    }
    builder.build().map_err(|e| WebhookSetupError::Client(e.to_string()))
}

/// Reads at most [`MAX_REPLY_BYTES`] of an answer, so that the connection can go back to the
/// pool; an error is returned only when the answer counts (`keep_errors`).
pub(crate) async fn drain_reply(response: &mut reqwest::Response, keep_errors: bool) -> Result<(), Failure> {
    let mut read = 0;
    while read < MAX_REPLY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            Ok(None) => break,
            Err(e) if keep_errors => return Err(classify(e)),
            Err(_) => break,
        }
    }
    Ok(())
}

pub(crate) fn classify(e: reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect(root_cause(&e))
    } else {
        Failure::Transport(root_cause(&e))
    }
}

/// The innermost error's message: reqwest's own says only "error sending request".
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// `sha256=<hex HMAC-SHA256 of the exact body>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256() {
        // RFC 4231 test case 2.
        let sig = signature("Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn failures_have_bounded_labels() {
        assert_eq!(Failure::Status(503).label(), "503");
        assert_eq!(Failure::Connect("refused".into()).label(), "connect_error");
        assert_eq!(Failure::Timeout.label(), "timeout");
    }
}
