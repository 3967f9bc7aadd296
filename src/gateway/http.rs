//! The `http` gateway: each message is POSTed, as accepted, to `COREQ_GATEWAY_URL` with its id
//! in `Idempotency-Key`; any 2xx means accepted, anything else is retried by the sender. The
//! link is `connecting` until the first answer, then follows the last attempt.

use std::path::Path;
use std::time::Duration;

use coreq_storage::Message;
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::{Gateway, Link, LinkState, SendError};
use crate::delivery::webhook::{Failure, WebhookSetupError, classify, drain_reply, http_client};

pub struct HttpGateway {
    client: reqwest::Client,
    url: reqwest::Url,
    link: Link,
}

impl HttpGateway {
    pub fn new(
        url: url::Url,
        timeout: Duration,
        extra_ca: Option<&Path>,
        link: Link,
    ) -> Result<HttpGateway, WebhookSetupError> {
        link.set(LinkState::Connecting);
        Ok(HttpGateway {
            client: http_client(timeout, extra_ca)?,
            url,
            link,
        })
    }

    async fn post(&self, message: &Message) -> Result<(), Failure> {
        let mut response = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("Idempotency-Key", message.id.as_str())
            .body(message.body.clone())
            .send()
            .await
            .map_err(classify)?;
        let status = response.status();
        drain_reply(&mut response, status.is_success()).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Status(status.as_u16()))
        }
    }
}

impl Gateway for HttpGateway {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        let outcome = self.post(message).await;
        self.link.set(match outcome {
            Ok(()) => LinkState::Connected,
            Err(_) => LinkState::Disconnected,
        });
        outcome.map_err(SendError::Http)
    }
}
