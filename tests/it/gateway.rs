//! Gateways over real HTTP (spec §7): the `sim` gateway end to end (statuses and their
//! callbacks, filters, outages, inbound messages) and the `http` gateway against a real local
//! server that fails, resets, times out and recovers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hook::{self, Answer, Hook};
use crate::http::request;
use crate::server::TestServer;
use crate::session;

const TEXT: &str = r#"{"to":"+1 555 123 4567","type":"text","text":{"body":"hello"}}"#;

/// coreq with a gateway, `http://` webhooks allowed, fast retries, and the admin logged in.
struct Service {
    server: TestServer,
    admin: String,
}

impl Service {
    fn start(dir: &std::path::Path, extra: &[&str]) -> Service {
        let mut flags = vec![
            "--allow-http-webhooks",
            "--gateway-backoff-ms",
            "50",
            "--gateway-max-backoff-ms",
            "200",
        ];
        flags.extend_from_slice(extra);
        let server = TestServer::start_with(dir, session::env(), &flags);
        let admin = session::admin(server.addr);
        Service { server, admin }
    }

    fn sim(dir: &std::path::Path) -> Service {
        Service::start(dir, &["--gateway", "sim", "--sim-delay-ms", "20"])
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn call(&self, method: &str, path: &str, body: &str) -> crate::http::Reply {
        request(self.addr(), method, path, &[("Authorization", &self.admin)], body)
    }

    fn settings(&self, patch: Value) {
        let reply = self.call("PATCH", "/v1/settings/application", &patch.to_string());
        assert_eq!(reply.status, 200, "{patch}: {}", reply.body);
    }

    fn send(&self, body: &str) -> String {
        let reply = self.call("POST", "/v1/messages", body);
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["messages"][0]["id"].as_str().unwrap().to_owned()
    }

    fn message(&self, id: &str) -> Value {
        let reply = self.call("GET", &format!("/v1/messages/{id}"), "");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["messages"][0].clone()
    }

    /// Waits (at most 20 s) until the message's `status` is `status`.
    fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let message = self.message(id);
            if message["status"] == status {
                return message;
            }
            assert!(Instant::now() < deadline, "{id} never reached {status}: {message}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn set_sim_link(&self, status: &str) {
        let reply = self.call("PUT", "/v1/sim/gateway", &json!({ "status": status }).to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    fn health(&self) -> String {
        let reply = self.call("GET", "/v1/health", "");
        reply.json()["health"]["gateway_status"].as_str().unwrap().to_owned()
    }

    fn socket_conn(&self) -> String {
        let reply = self.call("GET", "/v1/support", "");
        reply.json()["support"]["socket_conn"].as_str().unwrap().to_owned()
    }

    /// Waits (at most 20 s) until no callback is pending.
    fn wait_callbacks_drained(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let reply = self.call("GET", "/v1/callbacks?state=pending", "");
            if reply.json()["callbacks"].as_array().is_some_and(|c| c.is_empty()) {
                return;
            }
            assert!(Instant::now() < deadline, "callbacks still pending: {}", reply.body);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The `statuses[0]` object of each status callback the hook received, in arrival order.
fn statuses(hook: &Hook) -> Vec<Value> {
    hook.bodies()
        .iter()
        .filter_map(|b| serde_json::from_str::<Value>(b).ok())
        .filter_map(|v| v["statuses"].get(0).cloned())
        .collect()
}

/// The statuses called back for message `id`, sorted (callbacks dispatched together may arrive
/// in either order; the recorded order is checked through `GET /v1/messages/{id}`).
fn status_names(hook: &Hook, id: &str) -> Vec<String> {
    let mut names: Vec<String> = statuses(hook)
        .iter()
        .filter(|s| s["id"] == id)
        .map(|s| s["status"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_message_through_the_sim_is_called_back_sent_delivered_and_read_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    let id = service.send(TEXT);
    hook.wait_for(3);
    service.wait_callbacks_drained();
    assert_eq!(status_names(&hook, &id), ["delivered", "read", "sent"]);
    for status in statuses(&hook) {
        assert_eq!(status["recipient_id"], "15551234567");
        let timestamp = status["timestamp"].as_str().expect("a string timestamp");
        assert!(timestamp.parse::<u64>().unwrap() > 1_600_000_000, "{timestamp}");
    }
    let message = service.message(&id);
    assert_eq!(message["status"], "read");
    let history: Vec<_> = message["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].clone())
        .collect();
    assert_eq!(history, [json!("sent"), json!("delivered"), json!("read")]);
}

#[test]
fn a_message_to_a_number_that_is_not_on_whatsapp_is_called_back_failed_with_errors() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    let id = service.send(r#"{"to":"15550000000","text":{"body":"hi"}}"#);
    hook.wait_for(1);
    let failed = &statuses(&hook)[0];
    assert_eq!(
        (failed["id"].as_str(), failed["status"].as_str()),
        (Some(id.as_str()), Some("failed"))
    );
    assert_eq!(failed["errors"][0]["code"], 1013);
    assert_eq!(service.message(&id)["status"], "failed");
}

#[test]
fn with_the_gateway_disconnected_a_message_waits_and_goes_when_it_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    service.set_sim_link("disconnected");
    assert_eq!(
        (service.health().as_str(), service.socket_conn().as_str()),
        ("disconnected", "DN")
    );
    let id = service.send(TEXT);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(service.message(&id)["status"], "pending");
    assert_eq!(hook.count(), 0);

    service.set_sim_link("connected");
    assert_eq!(
        (service.health().as_str(), service.socket_conn().as_str()),
        ("connected", "UP")
    );
    service.wait_status(&id, "read");
    hook.wait_for(3);
}

#[test]
fn statuses_reached_while_the_gateway_is_down_are_reported_after_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::start(dir.path(), &["--gateway", "sim", "--sim-delay-ms", "300"]);
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    let id = service.send(TEXT);
    service.wait_status(&id, "accepted_by_gateway");
    service.set_sim_link("disconnected");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(service.message(&id)["status"], "accepted_by_gateway");
    service.set_sim_link("connected");
    service.wait_status(&id, "read");
}

#[test]
fn webhooks_message_settings_choose_which_status_callbacks_are_sent() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({
        "webhooks": { "url": hook.url(), "message": { "sent": false, "delivered": true, "read": false } }
    }));
    let id = service.send(TEXT);
    service.wait_status(&id, "read");
    service.wait_callbacks_drained();
    assert_eq!(status_names(&hook, &id), ["delivered"]);
}

#[test]
fn sent_status_false_turns_off_sent_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({ "webhooks": { "url": hook.url() }, "sent_status": false }));
    let id = service.send(TEXT);
    service.wait_status(&id, "read");
    service.wait_callbacks_drained();
    assert_eq!(status_names(&hook, &id), ["delivered", "read"]);
}

#[test]
fn an_injected_inbound_message_becomes_an_inbound_callback() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::sim(dir.path());
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    let reply = service.call(
        "POST",
        "/v1/sim/inbound",
        r#"{"from":"+16315551234","name":"Kerry Fisher","text":{"body":"Hello this is an answer"}}"#,
    );
    assert_eq!(reply.status, 201, "{}", reply.body);
    let id = reply.json()["messages"][0]["id"].as_str().unwrap().to_owned();
    hook.wait_for(1);
    let callback: Value = serde_json::from_str(&hook.bodies()[0]).unwrap();
    assert_eq!(
        callback["contacts"],
        json!([{ "profile": { "name": "Kerry Fisher" }, "wa_id": "16315551234" }])
    );
    let message = &callback["messages"][0];
    assert_eq!(
        (message["id"].as_str(), message["from"].as_str()),
        (Some(id.as_str()), Some("16315551234"))
    );
    assert_eq!(
        (message["type"].as_str(), message["text"]["body"].as_str()),
        (Some("text"), Some("Hello this is an answer"))
    );
    assert!(message["timestamp"].as_str().unwrap().parse::<u64>().is_ok());
}

#[test]
fn a_malformed_inbound_message_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::sim(dir.path());
    for (body, code, field) in [
        (r#"{"text":{"body":"x"}}"#, 1008, "from"),
        (r#"{"from":"12ab","text":{"body":"x"}}"#, 1009, "from"),
        (r#"{"from":"16315551234"}"#, 1008, "text"),
        (r#"{"from":"16315551234","text":{"body":""}}"#, 1009, "text.body"),
        (
            r#"{"from":"16315551234","text":{"body":"x"},"colour":1}"#,
            1010,
            "colour",
        ),
    ] {
        let reply = service.call("POST", "/v1/sim/inbound", body);
        assert_eq!((reply.status, reply.code()), (400, code), "{body}: {}", reply.body);
        let details = reply.json()["errors"][0]["details"].as_str().unwrap().to_owned();
        assert!(details.contains(field), "{body}: {details}");
    }
}

#[test]
fn the_sim_api_is_404_when_the_sim_gateway_is_not_running() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let reply = service.call("PUT", "/v1/sim/gateway", r#"{"status":"connected"}"#);
    assert_eq!((reply.status, reply.code()), (404, 1006), "{}", reply.body);
    assert_eq!(service.health(), "unregistered");
}

#[test]
fn only_an_admin_may_take_the_sim_gateway_down() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::sim(dir.path());
    let user = session::user(service.addr(), &service.admin, "operator1");
    let reply = request(
        service.addr(),
        "PUT",
        "/v1/sim/gateway",
        &[("Authorization", &user)],
        r#"{"status":"disconnected"}"#,
    );
    assert_eq!((reply.status, reply.code()), (403, 1005), "{}", reply.body);
    assert_eq!(service.health(), "connected");
}

/// An upstream for the http gateway that answers the n-th request with `answers[n]` (the last
/// one from then on).
fn upstream(answers: Vec<Answer>) -> Hook {
    let n = Arc::new(AtomicUsize::new(0));
    Hook::http(move |_| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        answers[i.min(answers.len() - 1)].clone()
    })
}

fn header<'a>(seen: &'a crate::hook::Seen, name: &str) -> Option<&'a str> {
    seen.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn http_gateway(dir: &std::path::Path, upstream: &Hook, extra: &[&str]) -> Service {
    let url = upstream.url();
    let mut flags = vec![
        "--gateway",
        "http",
        "--gateway-url",
        url.as_str(),
        "--gateway-timeout-ms",
        "300",
    ];
    flags.extend_from_slice(extra);
    Service::start(dir, &flags)
}

#[test]
fn the_http_gateway_posts_the_message_as_accepted_with_its_id_as_idempotency_key() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream(vec![Answer::Status(202)]);
    let service = http_gateway(dir.path(), &upstream, &[]);
    assert_eq!(service.health(), "connecting");
    let id = service.send(TEXT);
    service.wait_status(&id, "accepted_by_gateway");
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, TEXT.as_bytes());
    assert_eq!(header(&seen[0], "idempotency-key"), Some(id.as_str()));
    assert_eq!(header(&seen[0], "content-type"), Some("application/json"));
    assert_eq!(service.health(), "connected");
}

#[test]
fn the_http_gateway_retries_failures_resets_and_timeouts_with_the_same_key_until_a_2xx() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream(vec![
        Answer::Status(500),
        Answer::Reset,
        Answer::Delay(Duration::from_millis(1500), 200),
        Answer::Status(429),
        Answer::Status(204),
    ]);
    let service = http_gateway(dir.path(), &upstream, &[]);
    let id = service.send(TEXT);
    service.wait_status(&id, "accepted_by_gateway");
    let keys: Vec<_> = upstream
        .seen()
        .iter()
        .map(|s| header(s, "idempotency-key").map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 5, "{keys:?}");
    assert!(keys.iter().all(|k| k.as_deref() == Some(id.as_str())), "{keys:?}");
}

#[test]
fn health_shows_the_http_gateway_disconnected_while_it_fails() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream(vec![Answer::Status(503)]);
    let service = http_gateway(dir.path(), &upstream, &[]);
    let id = service.send(TEXT);
    upstream.wait_for(2);
    assert_eq!(
        (service.health().as_str(), service.socket_conn().as_str()),
        ("disconnected", "DN")
    );
    assert_eq!(service.message(&id)["status"], "pending");
}

#[test]
fn messages_reach_the_http_gateway_in_acceptance_order_through_failures() {
    let dir = tempfile::tempdir().unwrap();
    // The third request fails: the third message must go again before the fourth goes.
    let n = Arc::new(AtomicUsize::new(0));
    let upstream = Hook::http(move |_| {
        if n.fetch_add(1, Ordering::SeqCst) == 2 {
            Answer::Status(500)
        } else {
            Answer::Status(200)
        }
    });
    let service = http_gateway(dir.path(), &upstream, &["--gateway-concurrency", "1"]);
    let bodies: Vec<String> = (0..8)
        .map(|i| format!(r#"{{"to":"15551234567","text":{{"body":"m{i}"}}}}"#))
        .collect();
    let ids: Vec<String> = bodies.iter().map(|b| service.send(b)).collect();
    service.wait_status(ids.last().unwrap(), "accepted_by_gateway");
    let seen: Vec<String> = upstream
        .seen()
        .iter()
        .filter_map(|s| header(s, "idempotency-key").map(str::to_owned))
        .collect();
    let mut expected = ids.clone();
    expected.insert(3, ids[2].clone());
    assert_eq!(seen, expected);
}

#[test]
fn the_http_upstream_reports_statuses_that_are_called_back_once() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let upstream = upstream(vec![Answer::Status(200)]);
    let service = http_gateway(dir.path(), &upstream, &[]);
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    let id = service.send(TEXT);
    service.wait_status(&id, "accepted_by_gateway");
    let report = json!({ "statuses": [
        { "id": id, "status": "sent", "timestamp": "1700000000" },
        { "id": id, "status": "delivered", "timestamp": 1700000001 },
    ]});
    let reply = service.call("POST", "/v1/gateway/statuses", &report.to_string());
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["statuses"], json!({ "received": 2, "recorded": 2 }));
    let again = service.call("POST", "/v1/gateway/statuses", &report.to_string());
    assert_eq!(again.json()["statuses"], json!({ "received": 2, "recorded": 0 }));
    service.wait_callbacks_drained();
    // Both are dispatched at once: they may arrive in either order.
    let mut arrived: Vec<(String, String)> = statuses(&hook)
        .iter()
        .map(|s| {
            (
                s["status"].as_str().unwrap().to_owned(),
                s["timestamp"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    arrived.sort();
    assert_eq!(
        arrived,
        [
            ("delivered".into(), "1700000001".into()),
            ("sent".into(), "1700000000".into())
        ]
    );
    assert_eq!(service.message(&id)["status"], "delivered");
}

#[test]
fn a_malformed_status_report_is_refused_naming_the_field_and_records_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream(vec![Answer::Status(200)]);
    let service = http_gateway(dir.path(), &upstream, &[]);
    let id = service.send(TEXT);
    service.wait_status(&id, "accepted_by_gateway");
    for (statuses, code, field) in [
        (json!([{ "status": "sent" }]), 1008, "statuses[0].id"),
        (
            json!([{ "id": id, "status": "sent" }, { "id": id, "status": "lost" }]),
            1009,
            "statuses[1].status",
        ),
        (
            json!([{ "id": id, "status": "sent", "errors": [] }]),
            1009,
            "statuses[0].errors",
        ),
        (
            json!([{ "id": id, "status": "sent", "colour": 1 }]),
            1010,
            "statuses[0].colour",
        ),
        (json!([]), 1009, "statuses"),
    ] {
        let body = json!({ "statuses": statuses }).to_string();
        let reply = service.call("POST", "/v1/gateway/statuses", &body);
        assert_eq!((reply.status, reply.code()), (400, code), "{body}: {}", reply.body);
        let details = reply.json()["errors"][0]["details"].as_str().unwrap().to_owned();
        assert!(details.contains(field), "{body}: {details}");
    }
    assert_eq!(service.message(&id)["status"], "accepted_by_gateway");
}

#[test]
fn statuses_can_be_reported_only_with_the_http_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::sim(dir.path());
    let reply = service.call(
        "POST",
        "/v1/gateway/statuses",
        r#"{"statuses":[{"id":"x","status":"sent"}]}"#,
    );
    assert_eq!((reply.status, reply.code()), (404, 1006), "{}", reply.body);
}
