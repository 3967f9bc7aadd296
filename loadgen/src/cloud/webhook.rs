//! How the fake talks to the business's callback URL, as Meta's webhooks do ("Getting started
//! with webhooks": verification requests and event notifications):
//!
//! - Each notification is POSTed as JSON with `X-Hub-Signature-256: sha256=<hex>`, the
//!   HMAC-SHA256 of the exact body bytes keyed with the app secret.
//! - Only a 200 counts as delivered. Anything else (another status, a transport error, a
//!   timeout) is retried with the same bytes and signature, after a backoff that doubles up to
//!   a cap. Meta keeps trying for days; the fake stops after a configured number of attempts so
//!   that a test ends.
//! - The verification handshake is a GET with `hub.mode=subscribe`, `hub.verify_token` and
//!   `hub.challenge`; the endpoint passes if it answers 200 with the challenge as its body.

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http::root_cause;

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature-256";

/// How notifications are retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per notification, the first included (at least 1).
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// A request not answered by then counts as failed.
    pub request_timeout: Duration,
}

impl Default for RetryPolicy {
    /// 20 attempts, backoff from 50 ms doubling to 1 s (about 15 s in all), 10 s per request.
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 20,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What became of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub attempts: u32,
    /// Answered 200 at the last attempt.
    pub delivered: bool,
    /// The status of the last answer, or 0 when there was none (transport error, timeout).
    pub last_status: u16,
}

/// The result of a verification handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub challenge: String,
    /// The answer's status (0: no answer) and body.
    pub status: u16,
    pub body: String,
    /// 200 with the challenge (surrounding whitespace ignored) as the body.
    pub verified: bool,
}

/// `sha256=<lower-case hex HMAC-SHA256 of body keyed with app_secret>`.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    // Invariant: HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

pub(crate) struct WebhookClient {
    client: reqwest::Client,
    app_secret: String,
    retry: RetryPolicy,
}

impl WebhookClient {
    pub fn new(client: reqwest::Client, app_secret: String, retry: RetryPolicy) -> WebhookClient {
        WebhookClient {
            client,
            app_secret,
            retry,
        }
    }

    pub fn app_secret(&self) -> &str {
        &self.app_secret
    }

    /// The `X-Hub-Signature-256` value of `body`.
    pub fn sign(&self, body: &[u8]) -> String {
        signature(&self.app_secret, body)
    }

    /// POSTs `body` with its `signature` to `url` until it is answered 200 or the attempts run
    /// out.
    pub async fn deliver(&self, url: &str, body: &[u8], signature: &str) -> Outcome {
        let mut backoff = self.retry.first_backoff;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let last_status = self.post_once(url, body, signature).await;
            let delivered = last_status == 200;
            if delivered || attempts >= self.retry.max_attempts.max(1) {
                return Outcome {
                    attempts,
                    delivered,
                    last_status,
                };
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
        }
    }

    /// One POST; the status answered, or 0 without an answer.
    async fn post_once(&self, url: &str, body: &[u8], signature: &str) -> u16 {
        let sent = self
            .client
            .post(url)
            .timeout(self.retry.request_timeout)
            .header("Content-Type", "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            Ok(response) => response.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// Runs the verification handshake against `url` with `challenge`.
    pub async fn verify(&self, url: &str, verify_token: &str, challenge: String) -> Result<Handshake, String> {
        let mut target = reqwest::Url::parse(url).map_err(|e| format!("callback URL {url}: {e}"))?;
        target
            .query_pairs_mut()
            .append_pair("hub.mode", "subscribe")
            .append_pair("hub.challenge", &challenge)
            .append_pair("hub.verify_token", verify_token);
        let sent = self.client.get(target).timeout(self.retry.request_timeout).send().await;
        let (status, body) = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                (status, response.text().await.unwrap_or_default())
            }
            Err(e) => (0, root_cause(&e)),
        };
        Ok(Handshake {
            verified: status == 200 && body.trim() == challenge,
            challenge,
            status,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_hmac_sha256() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
