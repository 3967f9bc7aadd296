//! The fake Cloud API's messages endpoint over real HTTP(S): the documented success and error
//! shapes, the scripted fault plan, duplicates, and the `coreq-fake-cloud` binary's control API.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use coreq_loadgen::cloud::{CloudConfig, CloudError, FakeCloud, Fault};
use coreq_loadgen::receiver::{Receiver, ReceiverConfig, Reply, Request};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);

fn client(ca_pem: Option<&str>, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder().timeout(timeout).no_proxy().http1_only();
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("CA parses");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("client builds")
}

async fn fake() -> FakeCloud {
    FakeCloud::start(CloudConfig::default()).await.expect("fake starts")
}

fn text_to(to: &str, body: &str) -> Value {
    json!({"messaging_product": "whatsapp", "recipient_type": "individual", "to": to, "type": "text",
           "text": {"preview_url": false, "body": body}})
}

/// POSTs `body` to `url` with `token`: the status and the JSON answer.
async fn post(client: &reqwest::Client, url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut request = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    (
        status,
        response
            .bytes()
            .await
            .map(|b| serde_json::from_slice::<Value>(&b))
            .expect("body")
            .expect("JSON answer"),
    )
}

async fn send(cloud: &FakeCloud, body: &Value) -> (u16, Value) {
    let token = cloud.access_token();
    post(&client(cloud.ca_pem(), WAIT), &cloud.messages_url(), Some(&token), body).await
}

/// Asserts the Graph API error envelope with this status and code; returns `error`.
fn assert_error(answer: &(u16, Value), status: u16, code: u64) -> Value {
    assert_eq!(answer.0, status, "{}", answer.1);
    let error = &answer.1["error"];
    assert_eq!(error["code"], code, "{error}");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    assert!(error["type"].is_string(), "{error}");
    assert!(error["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()), "{error}");
    error.clone()
}

#[tokio::test]
async fn an_accepted_send_gets_the_documented_success_body_and_is_recorded() {
    let cloud = fake().await;
    let body = text_to("+1 555 010 0001", "hello");
    let (status, answer) = send(&cloud, &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["messaging_product"], "whatsapp");
    assert_eq!(
        answer["contacts"],
        json!([{"input": "+1 555 010 0001", "wa_id": "15550100001"}])
    );
    let wamid = answer["messages"][0]["id"].as_str().expect("messages[0].id");
    assert!(wamid.starts_with("wamid."), "{wamid}");
    assert_eq!(answer["messages"].as_array().map(Vec::len), Some(1));

    let sends = cloud.sends();
    assert_eq!(sends.len(), 1);
    assert_eq!(sends[0].wamid, wamid);
    assert_eq!(sends[0].token, cloud.access_token());
    assert_eq!(sends[0].body, body);
    assert_eq!(
        (sends[0].to.as_str(), sends[0].wa_id.as_str()),
        ("+1 555 010 0001", "15550100001")
    );
    assert_eq!(cloud.send(wamid).map(|s| s.message_type), Some("text".to_string()));
}

#[tokio::test]
async fn every_supported_message_type_is_accepted_over_http() {
    let cloud = fake().await;
    let objects = [
        ("image", json!({"link": "https://example.com/a.png", "caption": "a"})),
        ("audio", json!({"id": "1001"})),
        ("video", json!({"id": "1002", "caption": "v"})),
        (
            "document",
            json!({"link": "https://example.com/a.pdf", "filename": "a.pdf"}),
        ),
        ("sticker", json!({"id": "1003"})),
        (
            "template",
            json!({"name": "hello_world", "language": {"code": "en_US"}, "components": []}),
        ),
        (
            "location",
            json!({"latitude": -33.9, "longitude": 18.4, "name": "Cape Town"}),
        ),
        (
            "contacts",
            json!([{"name": {"formatted_name": "Ann Lee", "first_name": "Ann"}, "phones": []}]),
        ),
        (
            "interactive",
            json!({"type": "button", "body": {"text": "Pick"}, "action": {"buttons": [
            {"type": "reply", "reply": {"id": "y", "title": "Yes"}}]}}),
        ),
        (
            "interactive",
            json!({"type": "flow", "body": {"text": "Book"}, "action": {"name": "flow",
            "parameters": {"flow_message_version": "3", "flow_token": "t", "flow_name": "booking",
                           "flow_cta": "Book now", "flow_action": "data_exchange"}}}),
        ),
    ];
    for (kind, object) in &objects {
        let body = json!({"messaging_product": "whatsapp", "to": "15550100002", "type": kind, (*kind): object});
        let (status, answer) = send(&cloud, &body).await;
        assert_eq!(status, 200, "{kind}: {answer}");
    }
    assert_eq!(cloud.send_count(), objects.len());
}

#[tokio::test]
async fn a_missing_wrong_or_revoked_token_is_refused_401_code_190() {
    let cloud = fake().await;
    let http = client(None, WAIT);
    let body = text_to("15550100001", "x");
    let missing = post(&http, &cloud.messages_url(), None, &body).await;
    let error = assert_error(&missing, 401, 190);
    assert_eq!(error["type"], "OAuthException");
    assert_error(
        &post(&http, &cloud.messages_url(), Some("not-the-token"), &body).await,
        401,
        190,
    );

    let old = cloud.access_token();
    cloud.set_access_token("rotated-token");
    assert_error(&post(&http, &cloud.messages_url(), Some(&old), &body).await, 401, 190);
    assert_eq!(
        post(&http, &cloud.messages_url(), Some("rotated-token"), &body).await.0,
        200
    );
    assert_eq!(cloud.send_count(), 1);
    assert_eq!(cloud.requests(), (4, 3));
}

#[tokio::test]
async fn an_unknown_phone_number_id_is_refused_400_code_100_subcode_33() {
    let cloud = fake().await;
    let url = format!("{}/999999/messages", cloud.graph_url());
    let answer = post(
        &client(None, WAIT),
        &url,
        Some(&cloud.access_token()),
        &text_to("15550100001", "x"),
    )
    .await;
    let error = assert_error(&answer, 400, 100);
    assert_eq!(error["error_subcode"], 33);
    assert_eq!(error["type"], "GraphMethodException");
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains("'999999'")),
        "{error}"
    );
    assert_eq!(cloud.send_count(), 0);
}

#[tokio::test]
async fn a_missing_envelope_parameter_is_refused_400_code_100_with_details() {
    let cloud = fake().await;
    let answer = send(&cloud, &json!({"to": "15550100001", "text": {"body": "x"}})).await;
    let error = assert_error(&answer, 400, 100);
    assert_eq!(error["error_data"]["messaging_product"], "whatsapp");
    assert_eq!(
        error["error_data"]["details"],
        "The parameter messaging_product is required."
    );
    let no_object = send(
        &cloud,
        &json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "image"}),
    )
    .await;
    assert_eq!(
        assert_error(&no_object, 400, 100)["error_data"]["details"],
        "The parameter image is required."
    );
    assert_eq!(cloud.send_count(), 0);
}

#[tokio::test]
async fn a_bad_value_is_refused_400_code_131009_and_a_missing_field_131008_naming_it() {
    let cloud = fake().await;
    let bad_to = send(&cloud, &text_to("not a number", "x")).await;
    assert_eq!(
        assert_error(&bad_to, 400, 131009)["error_data"]["details"],
        "to is not a valid phone number"
    );
    let no_flow_id = json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "interactive",
        "interactive": {"type": "flow", "body": {"text": "b"}, "action": {"name": "flow",
            "parameters": {"flow_message_version": "3", "flow_cta": "Go"}}}});
    let details = assert_error(&send(&cloud, &no_flow_id).await, 400, 131008)["error_data"]["details"].clone();
    assert_eq!(
        details,
        "interactive.action.parameters: flow_id or flow_name is required"
    );
    assert_eq!(cloud.send_count(), 0);
}

#[tokio::test]
async fn scripted_errors_answer_their_documented_status_and_code_then_sends_resume() {
    let cloud = fake().await;
    let scripted = [
        (CloudError::rate_limit_hit(), 429, 130429),
        (CloudError::something_went_wrong(), 500, 131000),
        (CloudError::service_unavailable(), 503, 131016),
        (CloudError::undeliverable(), 400, 131026),
    ];
    for (error, _, _) in &scripted {
        assert!(cloud.fail_next(1, Fault::Error(error.clone())));
    }
    assert_eq!(cloud.faults_pending(), 4);
    let body = text_to("15550100001", "x");
    for (_, status, code) in scripted {
        let error = assert_error(&send(&cloud, &body).await, status, code);
        assert!(error["error_data"]["details"].is_string(), "{error}");
    }
    assert_eq!(cloud.send_count(), 0, "a refused send is not sent");
    assert_eq!(send(&cloud, &body).await.0, 200);
    assert_eq!(cloud.send_count(), 1);
}

#[tokio::test]
async fn a_reset_fault_closes_the_connection_and_sends_nothing() {
    let cloud = fake().await;
    cloud.fail_next(1, Fault::Reset);
    let http = client(None, WAIT);
    let sent = http
        .post(cloud.messages_url())
        .bearer_auth(cloud.access_token())
        .header("Content-Type", "application/json")
        .body(text_to("15550100001", "x").to_string())
        .send()
        .await;
    let error = sent.expect_err("no answer");
    assert!(!error.is_timeout(), "{error:?}");
    assert_eq!(cloud.send_count(), 0);
}

#[tokio::test]
async fn delay_and_hang_faults_outlast_an_impatient_client() {
    let cloud = fake().await;
    cloud.fail_next(1, Fault::Delay(Duration::from_secs(30)));
    cloud.fail_next(1, Fault::Hang);
    let impatient = client(None, Duration::from_millis(300));
    for _ in 0..2 {
        let sent = impatient
            .post(cloud.messages_url())
            .bearer_auth(cloud.access_token())
            .header("Content-Type", "application/json")
            .body(text_to("15550100001", "x").to_string())
            .send()
            .await;
        assert!(sent.expect_err("no answer in time").is_timeout());
    }
    // A short delay is answered normally.
    cloud.fail_next(1, Fault::Delay(Duration::from_millis(50)));
    assert_eq!(send(&cloud, &text_to("15550100001", "y")).await.0, 200);
    assert_eq!(cloud.faults_pending(), 0);
}

#[tokio::test]
async fn accept_then_reset_sends_the_message_and_a_resend_is_a_visible_duplicate() {
    let cloud = fake().await;
    cloud.fail_next(1, Fault::AcceptThenReset);
    let body = json!({"messaging_product": "whatsapp", "to": "15550100001", "type": "text",
                      "text": {"body": "pay 10"}, "biz_opaque_callback_data": "onprem-id-7"});
    let http = client(None, WAIT);
    let first = http
        .post(cloud.messages_url())
        .bearer_auth(cloud.access_token())
        .header("Content-Type", "application/json")
        .body((body).to_string())
        .send()
        .await;
    assert!(first.is_err(), "the client saw no answer");
    assert_eq!(cloud.send_count(), 1, "but the message went out");

    // The client retries: no idempotency key, so a second message with a new wamid.
    let (status, answer) = send(&cloud, &body).await;
    assert_eq!(status, 200);
    let sends = cloud.sends();
    assert_eq!(sends.len(), 2);
    assert_ne!(sends[0].wamid, sends[1].wamid);
    assert_eq!(answer["messages"][0]["id"], sends[1].wamid);
    assert_eq!((sends[0].copy, sends[1].copy), (1, 2));
    assert_eq!(cloud.copies("onprem-id-7"), 2);
    assert_eq!(cloud.duplicates(), 1);
    assert_eq!(cloud.duplicated_keys(), vec![("onprem-id-7".to_string(), 2)]);
}

#[tokio::test]
async fn https_is_served_with_a_certificate_from_the_test_ca() {
    let config = CloudConfig {
        tls: true,
        ..CloudConfig::default()
    };
    let cloud = FakeCloud::start(config).await.expect("fake starts");
    assert!(
        cloud.graph_url().starts_with("https://127.0.0.1:"),
        "{}",
        cloud.graph_url()
    );
    let ca_path = cloud.ca_path().expect("CA file").to_path_buf();
    assert_eq!(std::fs::read_to_string(&ca_path).ok().as_deref(), cloud.ca_pem());
    assert_eq!(send(&cloud, &text_to("15550100001", "x")).await.0, 200);
    let stranger = client(None, WAIT).post(cloud.messages_url()).send().await;
    assert!(stranger.is_err(), "a client without the CA is refused");
    cloud.shutdown().await;
}

/// The binary, killed (by its own PID) when the test ends.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_binary() -> (Process, Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_coreq-fake-cloud"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--status-delay-ms",
            "5",
            "--webhook-attempts",
            "5",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("binary starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let process = Process(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("first line");
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (process, ready)
}

/// A callback endpoint that passes the handshake for `token` and accepts notifications.
fn verifying_endpoint(token: &'static str) -> ReceiverConfig {
    ReceiverConfig::http(std::sync::Arc::new(move |r: &Request| {
        if r.method != "GET" {
            return Reply::Status(200);
        }
        let param = |name: &str| {
            r.path_and_query
                .split(['?', '&'])
                .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        match (param("hub.verify_token"), param("hub.challenge")) {
            (Some(t), Some(challenge)) if t == token => Reply::Body(200, challenge),
            _ => Reply::Status(403),
        }
    }))
}

#[tokio::test]
async fn the_binary_is_steered_through_its_control_api() {
    let (_process, ready) = start_binary();
    let graph = ready["graph_url"].as_str().expect("graph_url");
    let control = ready["control_url"].as_str().expect("control_url");
    let messages = format!("{graph}/{}/messages", ready["phone_number_id"].as_str().expect("id"));
    let http = client(None, WAIT);
    let receiver = Receiver::start(verifying_endpoint("vt"))
        .await
        .expect("receiver starts");

    // Dashboard-style: a wrong verify token fails the handshake and saves nothing.
    let url = format!("{control}/callback");
    let refused = http
        .put(&url)
        .header("Content-Type", "application/json")
        .body(json!({"url": receiver.url(), "verify_token": "nope"}).to_string())
        .send()
        .await;
    assert_eq!(refused.expect("answered").status().as_u16(), 422);
    let saved = http
        .put(&url)
        .header("Content-Type", "application/json")
        .body(json!({"url": receiver.url(), "verify_token": "vt"}).to_string())
        .send()
        .await;
    let state: Value = saved
        .expect("answered")
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b))
        .expect("body")
        .expect("JSON");
    assert_eq!(state["network"]["callback_url"], receiver.url());

    let fault = json!({"fault": "error", "code": 130429, "count": 1});
    let scripted = http
        .post(format!("{control}/faults"))
        .header("Content-Type", "application/json")
        .body(fault.to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(scripted.status().as_u16(), 200);
    let token = Some("fake-cloud-access-token");
    assert_error(
        &post(&http, &messages, token, &text_to("15550100001", "x")).await,
        429,
        130429,
    );
    let (status, answer) = post(&http, &messages, token, &text_to("15550100001", "x")).await;
    assert_eq!(status, 200, "{answer}");

    // Three statuses after the two handshakes.
    assert!(receiver.wait_for_count(5, WAIT).await);
    let inbound = http
        .post(format!("{control}/inbound"))
        .header("Content-Type", "application/json")
        .body(json!({"from": "15550100009", "text": "hi"}).to_string())
        .send()
        .await
        .expect("answered");
    assert_eq!(inbound.status().as_u16(), 200);
    assert!(receiver.wait_for_count(6, WAIT).await);

    let state: Value = http
        .get(format!("{control}/state"))
        .send()
        .await
        .expect("answered")
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b))
        .expect("body")
        .expect("JSON");
    assert_eq!((state["sends"].as_u64(), state["refused"].as_u64()), (Some(1), Some(1)));
    let sends: Value = http
        .get(format!("{control}/sends"))
        .send()
        .await
        .expect("answered")
        .bytes()
        .await
        .map(|b| serde_json::from_slice::<Value>(&b))
        .expect("body")
        .expect("JSON");
    assert_eq!(sends["sends"][0]["wamid"], answer["messages"][0]["id"]);
    let unknown = http
        .post(format!("{control}/faults"))
        .header("Content-Type", "application/json")
        .body(json!({"fault": "boom"}).to_string())
        .send()
        .await;
    assert_eq!(unknown.expect("answered").status().as_u16(), 400);
}
