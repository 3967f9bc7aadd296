//! The few calls of coreq's API the load generator makes: log in, point the webhook at the
//! receiver, enqueue callbacks, send messages, read the sim gateway's counters.

use reqwest::header::CONTENT_TYPE;
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::http::{failure_label, root_cause};

/// A logged-in session with a running coreq.
pub struct Coreq {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// What came of one `POST /v1/callbacks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// 201, with this many ids.
    Acked { ids: usize },
    /// Another status.
    Refused(u16),
    /// No answer: `timeout`, `connect` or `transport`.
    Failed(&'static str),
}

/// What came of one `POST /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Posted {
    /// 201 with `messages[0].id`.
    Accepted { id: String },
    /// 201 without a readable id.
    NoId,
    /// Another status.
    Refused(u16),
    /// No answer: `timeout`, `connect` or `transport`.
    Failed(&'static str),
}

impl Coreq {
    /// `POST /v1/users/login` with HTTP Basic credentials → a Bearer token.
    pub async fn login(http: reqwest::Client, base: &str, user: &str, password: &str) -> Result<Coreq> {
        const WHAT: &str = "login (POST /v1/users/login)";
        let base = base.trim_end_matches('/').to_string();
        let response = http
            .post(format!("{base}/v1/users/login"))
            .basic_auth(user, Some(password))
            .send()
            .await
            .map_err(|e| http_error(WHAT, &e))?;
        let body = success_json(WHAT, response).await?;
        let token = body["users"][0]["token"]
            .as_str()
            .ok_or_else(|| Error::Http {
                what: WHAT,
                detail: format!("no users[0].token in {body}"),
            })?
            .to_string();
        Ok(Coreq { http, base, token })
    }

    /// Points the webhook at `url` with `concurrency` requests in flight at most.
    pub async fn set_webhook(&self, url: &str, concurrency: usize) -> Result<()> {
        const WHAT: &str = "set the webhook (PATCH /v1/settings/application)";
        let body = json!({"webhooks": {"url": url, "max_concurrent_requests": concurrency}});
        let response = self
            .http
            .patch(format!("{}/v1/settings/application", self.base))
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| http_error(WHAT, &e))?;
        success_json(WHAT, response).await.map(drop)
    }

    /// Points the webhook at `url` with `concurrency` requests in flight at most, and sets which
    /// message statuses are reported (`webhooks.message.{sent,delivered,read}`).
    pub async fn set_message_webhook(&self, url: &str, concurrency: usize, read: bool) -> Result<()> {
        const WHAT: &str = "set the webhook (PATCH /v1/settings/application)";
        let body = json!({"webhooks": {
            "url": url,
            "max_concurrent_requests": concurrency,
            "message": {"sent": true, "delivered": true, "read": read},
        }});
        let response = self
            .http
            .patch(format!("{}/v1/settings/application", self.base))
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| http_error(WHAT, &e))?;
        success_json(WHAT, response).await.map(drop)
    }

    /// `GET /v1/sim/gateway` → its `gateway` object (`accepted`, `duplicates`, …).
    pub async fn sim_stats(&self) -> Result<Value> {
        const WHAT: &str = "the sim gateway's counters (GET /v1/sim/gateway)";
        let response = self
            .http
            .get(format!("{}/v1/sim/gateway", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| http_error(WHAT, &e))?;
        let body = success_json(WHAT, response).await?;
        Ok(body["gateway"].clone())
    }

    /// `POST /v1/messages` with a body from [`crate::messages::message_body`].
    pub async fn post_message(&self, body: String) -> Posted {
        let bytes = match self.post_json("/v1/messages", body).await {
            Ok((201, bytes)) => bytes,
            Ok((status, _)) => return Posted::Refused(status),
            Err(label) => return Posted::Failed(label),
        };
        serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["messages"][0]["id"].as_str().map(str::to_string))
            .map_or(Posted::NoId, |id| Posted::Accepted { id })
    }

    /// POSTs `body` as JSON to `path`; the status and the whole answer (read either way, so the
    /// connection goes back to the pool), or the failure's label.
    async fn post_json(&self, path: &str, body: String) -> std::result::Result<(u16, bytes::Bytes), &'static str> {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| failure_label(&e))?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(|e| failure_label(&e))?;
        Ok((status, bytes))
    }

    /// `POST /v1/callbacks` with a body from [`crate::payload::enqueue_body`].
    pub async fn enqueue(&self, body: String) -> Enqueued {
        let bytes = match self.post_json("/v1/callbacks", body).await {
            Ok((201, bytes)) => bytes,
            Ok((status, _)) => return Enqueued::Refused(status),
            Err(label) => return Enqueued::Failed(label),
        };
        let ids = serde_json::from_slice::<Value>(&bytes)
            .ok()
            .and_then(|v| v["callbacks"].as_array().map(Vec::len))
            .unwrap_or(0);
        Enqueued::Acked { ids }
    }
}

fn http_error(what: &'static str, e: &reqwest::Error) -> Error {
    Error::Http {
        what,
        detail: root_cause(e),
    }
}

/// The JSON body of a 2xx answer, else the error with coreq's own words.
async fn success_json(what: &'static str, response: reqwest::Response) -> Result<Value> {
    let status = response.status().as_u16();
    let text = response.text().await.map_err(|e| http_error(what, &e))?;
    if !(200..300).contains(&status) {
        return Err(Error::Refused {
            what,
            status,
            body: text,
        });
    }
    if text.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&text).map_err(|e| Error::Http {
        what,
        detail: format!("{e} in {text}"),
    })
}

/// Statuses that no amount of waiting fixes: the run stops at the first one.
pub fn is_fatal(status: u16) -> bool {
    matches!(status, 400 | 401 | 403 | 404 | 405 | 413 | 415)
}
