//! Webhook delivery (spec §8) over real HTTP: the real router and dispatcher in-process, a real
//! recording receiver (HTTP, or HTTPS with an rcgen test CA), and a manual clock so that
//! backoff is exact and instant.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use coreq::clock::ManualClock;
use hmac::Mac;
use serde_json::{Value, json};

use crate::hook::{Answer, Hook, ok};
use crate::http::request;
use crate::server::TestServer;
use crate::session;

struct Service {
    server: TestServer,
    admin: String,
    clock: Arc<ManualClock>,
}

impl Service {
    /// coreq on a manual clock, `http://` webhooks allowed, plus `extra` flags.
    fn start(dir: &std::path::Path, extra: &[&str]) -> Service {
        let clock = Arc::new(ManualClock::default());
        let mut flags = vec!["--allow-http-webhooks"];
        flags.extend_from_slice(extra);
        let server = TestServer::start_with_clock(dir, session::env(), &flags, clock.clone());
        let admin = session::admin(server.addr);
        Service { server, admin, clock }
    }

    fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    fn settings(&self, patch: Value) {
        let reply = request(
            self.addr(),
            "PATCH",
            "/v1/settings/application",
            &[("Authorization", &self.admin)],
            &patch.to_string(),
        );
        assert_eq!(reply.status, 200, "{patch}: {}", reply.body);
    }

    /// Points the webhook at `hook`, with backoff `delay_ms` capped at `max_ms`.
    fn webhook(&self, hook: &Hook, delay_ms: u64, max_ms: u64) {
        self.settings(json!({
            "webhooks": { "url": hook.url() },
            "callback_backoff_delay_ms": delay_ms,
            "max_callback_backoff_delay_ms": max_ms,
        }));
    }

    /// Enqueues raw JSON objects; returns their ids.
    fn enqueue(&self, callbacks: &[&str]) -> Vec<String> {
        let body = format!(r#"{{"callbacks":[{}]}}"#, callbacks.join(","));
        let reply = request(
            self.addr(),
            "POST",
            "/v1/callbacks",
            &[("Authorization", &self.admin)],
            &body,
        );
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["callbacks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["id"].as_str().unwrap().to_owned())
            .collect()
    }

    fn pending(&self) -> Vec<Value> {
        let reply = request(
            self.addr(),
            "GET",
            "/v1/callbacks?state=pending&limit=1000",
            &[("Authorization", &self.admin)],
            "",
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["callbacks"].as_array().unwrap().clone()
    }

    /// Waits (bounded) until the pending list satisfies `done`.
    fn wait_pending(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let start = Instant::now();
        loop {
            let pending = self.pending();
            if done(&pending) {
                return pending;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "{what}: {pending:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn millis(rfc3339: &Value) -> i128 {
    let at = time::OffsetDateTime::parse(
        rfc3339.as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    at.unix_timestamp_nanos() / 1_000_000
}

/// The wait the listing shows after the latest failure.
fn backoff_of(callback: &Value) -> i128 {
    millis(&callback["next_attempt_at"]) - millis(&callback["last_attempt_at"])
}

#[test]
fn enqueue_answers_201_with_ids_in_enqueue_order() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let first = service.enqueue(&["{}", "{}"]);
    let second = service.enqueue(&["{}"]);
    let ids: Vec<u64> = first.iter().chain(&second).map(|id| id.parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
}

#[test]
fn callbacks_arrive_byte_identical_over_https_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::https(dir.path(), ok);
    let service = Service::start(dir.path(), &["--webhook-ca", &hook.ca_path()]);
    service.settings(json!({ "webhooks": { "url": hook.url(), "max_concurrent_requests": 6 } }));
    let sent = [r#"{"b": 1,   "a":"é\u00e9"}"#, r#"{ "n" : [1, 2.50, null] }"#, r#"{}"#];
    service.enqueue(&sent);
    hook.wait_for(3);
    let mut got = hook.bodies();
    got.sort();
    let mut want: Vec<String> = sent.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(got, want);
    for seen in hook.seen() {
        let content_type = seen
            .headers
            .iter()
            .find(|(k, _)| k == "content-type")
            .map(|(_, v)| v.as_str());
        assert_eq!(content_type, Some("application/json"));
    }
    service.wait_pending("delivered callbacks leave the queue", <[Value]>::is_empty);
}

#[test]
fn callbacks_are_dispatched_in_enqueue_order_at_most_the_concurrency_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    // Every answer takes 200 ms, so each wave of 6 requests arrives well apart from the next.
    let hook = Hook::http(|_| Answer::Delay(Duration::from_millis(200), 200));
    let service = Service::start(dir.path(), &[]);
    service.settings(json!({ "webhooks": { "url": hook.url(), "max_concurrent_requests": 6 } }));
    let bodies: Vec<String> = (0..18).map(|k| format!(r#"{{"k":{k}}}"#)).collect();
    service.enqueue(&bodies.iter().map(String::as_str).collect::<Vec<_>>());
    hook.wait_for(18);
    let arrived = hook.bodies();
    for (wave, got) in arrived.chunks(6).enumerate() {
        let mut got = got.to_vec();
        got.sort();
        let mut want = bodies[wave * 6..wave * 6 + 6].to_vec();
        want.sort();
        assert_eq!(got, want, "wave {wave} of {arrived:?}");
    }
}

#[test]
fn the_webhook_query_string_is_kept_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(ok);
    let service = Service::start(dir.path(), &[]);
    let url = format!("{}?secret=a%2Fb&x=1", hook.url());
    service.settings(json!({ "webhooks": { "url": url } }));
    service.enqueue(&["{}"]);
    hook.wait_for(1);
    // The receiver records the request target; the query is exactly what was configured.
    let targets = hook.targets();
    assert!(targets[0].ends_with("?secret=a%2Fb&x=1"), "{targets:?}");
}

/// A first answer that must count as a failure: the callback is retried, then delivered.
fn assert_failure_then_retry(first: Answer, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let failed_once = Arc::new(AtomicBool::new(false));
    let flag = failed_once.clone();
    let hook = Hook::http(move |_| {
        if flag.swap(true, Ordering::SeqCst) {
            Answer::Status(200)
        } else {
            first.clone()
        }
    });
    let service = Service::start(dir.path(), extra);
    service.webhook(&hook, 60_000, 60_000);
    service.enqueue(&[r#"{"k":1}"#]);
    let pending = service.wait_pending("the first attempt fails", |p| p.len() == 1 && p[0]["attempts"] == 1);
    assert!(pending[0]["last_error"].is_string(), "{pending:?}");
    assert_eq!(hook.count(), 1, "retried before the backoff passed");
    service.clock.advance(Duration::from_secs(60));
    hook.wait_for(2);
    service.wait_pending("delivered on the retry", <[Value]>::is_empty);
}

macro_rules! failure_answers {
    ($($name:ident: $answer:expr, $extra:expr;)*) => {
        $( #[test] fn $name() { assert_failure_then_retry($answer, $extra) } )*
    };
}

failure_answers! {
    status_204_is_a_failure: Answer::Status(204), &[];
    status_500_is_a_failure: Answer::Status(500), &[];
    a_redirect_is_a_failure_and_not_followed: Answer::Redirect(301, "http://127.0.0.1:9/elsewhere".into()), &[];
    a_timeout_is_a_failure: Answer::Hang, &["--webhook-timeout-ms", "300"];
    a_connection_reset_is_a_failure: Answer::Reset, &[];
}

#[test]
fn backoff_grows_linearly_and_caps() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(|_| Answer::Status(500));
    let service = Service::start(dir.path(), &[]);
    service.webhook(&hook, 1000, 2500);
    service.enqueue(&["{}"]);
    let mut waits = Vec::new();
    for attempt in 1..=5u64 {
        let pending = service.wait_pending("attempt recorded", |p| p.len() == 1 && p[0]["attempts"] == attempt);
        waits.push(backoff_of(&pending[0]));
        service.clock.advance(Duration::from_millis(2500));
    }
    assert_eq!(waits, [1000, 2000, 2500, 2500, 2500]);
}

#[test]
fn nothing_new_starts_while_a_failed_callback_is_pending() {
    let dir = tempfile::tempdir().unwrap();
    let head_ok = Arc::new(AtomicBool::new(false));
    let flag = head_ok.clone();
    let hook = Hook::http(move |body| {
        if body == br#"{"k":"head"}"# && !flag.load(Ordering::SeqCst) {
            Answer::Status(503)
        } else {
            Answer::Status(200)
        }
    });
    let service = Service::start(dir.path(), &[]);
    service.webhook(&hook, 100, 100);
    service.enqueue(&[r#"{"k":"head"}"#]);
    service.wait_pending("the head failed", |p| p.len() == 1 && p[0]["attempts"] == 1);
    service.enqueue(&[r#"{"k":"next1"}"#, r#"{"k":"next2"}"#]);
    for attempt in 2..=4u64 {
        service.clock.advance(Duration::from_millis(100));
        hook.wait_for(attempt);
        service.wait_pending("the head's failure recorded", |p| p[0]["attempts"] == attempt);
    }
    assert!(
        hook.bodies().iter().all(|b| b == r#"{"k":"head"}"#),
        "a newer callback started while the head was failing: {:?}",
        hook.bodies()
    );
    head_ok.store(true, Ordering::SeqCst);
    service.clock.advance(Duration::from_millis(100));
    service.wait_pending("all delivered", <[Value]>::is_empty);
    let bodies = hook.bodies();
    let head_success = bodies.len() - 3;
    assert_eq!(bodies[head_success], r#"{"k":"head"}"#, "{bodies:?}");
    assert!(
        bodies[head_success + 1..]
            .iter()
            .all(|b| b.starts_with(r#"{"k":"next"#)),
        "{bodies:?}"
    );
}

#[test]
fn the_signing_header_is_the_hmac_sha256_of_the_exact_body() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(ok);
    let service = Service::start(dir.path(), &[]);
    service.settings(json!({ "webhooks": { "url": hook.url(), "signing_secret": "s3cr3t-key" } }));
    let body = r#"{"x": [1, 2,3]}"#;
    service.enqueue(&[body]);
    hook.wait_for(1);
    let seen = &hook.seen()[0];
    let header = seen
        .headers
        .iter()
        .find(|(k, _)| k == "x-hub-signature-256")
        .map(|(_, v)| v.clone());
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"s3cr3t-key").unwrap();
    mac.update(body.as_bytes());
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(header, Some(expected));
}

#[test]
fn without_a_signing_secret_there_is_no_signature_header() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(ok);
    let service = Service::start(dir.path(), &[]);
    service.settings(json!({ "webhooks": { "url": hook.url() } }));
    service.enqueue(&["{}"]);
    hook.wait_for(1);
    assert!(!hook.seen()[0].headers.iter().any(|(k, _)| k == "x-hub-signature-256"));
}

#[test]
fn retry_now_sends_a_failed_callback_without_waiting_for_its_backoff() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(|_| Answer::Status(500));
    let service = Service::start(dir.path(), &[]);
    service.webhook(&hook, 600_000, 900_000);
    let ids = service.enqueue(&["{}"]);
    service.wait_pending("failed once", |p| p.len() == 1 && p[0]["attempts"] == 1);
    let reply = request(
        service.addr(),
        "POST",
        &format!("/v1/callbacks/{}/retry", ids[0]),
        &[("Authorization", &service.admin)],
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    service.wait_pending("retried at once", |p| p[0]["attempts"] == 2);
}

#[test]
fn retrying_or_deleting_an_unknown_callback_is_404() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    for (method, path) in [("POST", "/v1/callbacks/999/retry"), ("DELETE", "/v1/callbacks/999")] {
        let reply = request(service.addr(), method, path, &[("Authorization", &service.admin)], "");
        assert_eq!((reply.status, reply.code()), (404, 1006), "{method} {path}");
    }
}

#[test]
fn admin_deletes_a_poison_callback_and_the_line_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(|body| Answer::Status(if body == br#"{"poison":1}"# { 400 } else { 200 }));
    let service = Service::start(dir.path(), &[]);
    service.webhook(&hook, 100, 100);
    let ids = service.enqueue(&[r#"{"poison":1}"#]);
    service.wait_pending("the poison failed", |p| p.len() == 1 && p[0]["attempts"] == 1);
    service.enqueue(&[r#"{"fine":2}"#]);
    let user = session::user(service.addr(), &service.admin, "alice");
    let path = format!("/v1/callbacks/{}", ids[0]);
    let refused = request(service.addr(), "DELETE", &path, &[("Authorization", &user)], "");
    assert_eq!((refused.status, refused.code()), (403, 1005));
    let reply = request(
        service.addr(),
        "DELETE",
        &path,
        &[("Authorization", &service.admin)],
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    service.wait_pending("the line moved on", <[Value]>::is_empty);
    assert!(hook.bodies().contains(&r#"{"fine":2}"#.to_owned()));
}

#[test]
fn without_a_webhook_url_callbacks_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let dropped = || {
        let reply = request(
            service.addr(),
            "GET",
            "/metrics?format=prometheus",
            &[("Authorization", &session::apikey())],
            "",
        );
        reply
            .body
            .lines()
            .find_map(|l| l.strip_prefix(r#"coreq_callbacks_dropped_total{reason="no_webhook_url"} "#))
            .map_or(0.0, |v| v.parse::<f64>().unwrap())
    };
    let before = dropped();
    service.enqueue(&["{}", "{}"]);
    service.wait_pending("dropped", <[Value]>::is_empty);
    assert!(dropped() >= before + 2.0);
}

#[test]
fn a_callback_enqueued_right_after_the_webhook_is_set_is_delivered_not_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(ok);
    let service = Service::start(dir.path(), &[]);
    for round in 1..=20u64 {
        service.settings(json!({ "webhooks": { "url": "" } }));
        service.settings(json!({ "webhooks": { "url": hook.url() } }));
        service.enqueue(&[&format!(r#"{{"round":{round}}}"#)]);
        hook.wait_for(round);
    }
}

#[test]
fn a_new_webhook_url_receives_the_pending_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let old = Hook::http(|_| Answer::Status(500));
    let new = Hook::http(ok);
    let service = Service::start(dir.path(), &[]);
    service.webhook(&old, 600_000, 900_000);
    service.enqueue(&[r#"{"k":1}"#]);
    service.wait_pending("failing at the old URL", |p| p.len() == 1 && p[0]["attempts"] == 1);
    service.settings(json!({ "webhooks": { "url": new.url() } }));
    new.wait_for(1);
    assert_eq!(new.bodies(), [r#"{"k":1}"#]);
    service.wait_pending("delivered", <[Value]>::is_empty);
}

#[test]
fn enqueue_over_the_high_water_mark_is_503_1016_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(|_| Answer::Status(500));
    let service = Service::start(dir.path(), &["--callback-high-water", "2"]);
    service.webhook(&hook, 600_000, 900_000);
    service.enqueue(&["{}", "{}"]);
    let reply = request(
        service.addr(),
        "POST",
        "/v1/callbacks",
        &[("Authorization", &service.admin)],
        r#"{"callbacks":[{}]}"#,
    );
    assert_eq!((reply.status, reply.code()), (503, 1016), "{}", reply.body);
    assert_eq!(service.pending().len(), 2);
}

#[test]
fn attempt_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(|_| Answer::Status(500));
    let service = Service::start(dir.path(), &[]);
    service.webhook(&hook, 1000, 1000);
    service.enqueue(&["{}"]);
    service.wait_pending("failed once", |p| p[0]["attempts"] == 1);
    service.clock.advance(Duration::from_secs(1));
    service.wait_pending("failed twice", |p| p[0]["attempts"] == 2);
    service.server.stop().unwrap();
    let service = Service::start(dir.path(), &[]);
    let pending = service.pending();
    assert_eq!(pending[0]["attempts"], 2, "{pending:?}");
}

#[test]
fn with_callback_persist_true_pending_callbacks_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let down = Hook::http(|_| Answer::Status(500));
    service.webhook(&down, 600_000, 900_000);
    service.enqueue(&[r#"{"k":1}"#, r#"{"k":2}"#]);
    service.server.stop().unwrap();
    let service = Service::start(dir.path(), &[]);
    assert_eq!(service.pending().len(), 2);
    let up = Hook::http(ok);
    service.settings(json!({ "webhooks": { "url": up.url() } }));
    up.wait_for(2);
}

#[test]
fn with_callback_persist_false_pending_callbacks_are_lost_by_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let down = Hook::http(|_| Answer::Status(500));
    service.webhook(&down, 600_000, 900_000);
    service.settings(json!({ "callback_persist": false }));
    service.server.stop().unwrap();
    // The setting takes effect at this start: the queue is in memory from now on.
    let service = Service::start(dir.path(), &[]);
    service.enqueue(&[r#"{"k":1}"#, r#"{"k":2}"#]);
    assert_eq!(service.pending().len(), 2);
    service.server.stop().unwrap();
    let service = Service::start(dir.path(), &[]);
    assert!(
        service.pending().is_empty(),
        "kept across a restart with callback_persist=false"
    );
}

#[test]
fn enqueue_refuses_bad_batches_naming_the_field_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    let big = format!(r#"{{"callbacks":[{{"pad":"{}"}}]}}"#, "x".repeat(256 * 1024));
    let cases: [(&str, u16, i64, &str); 7] = [
        (r#"{"callbacks":[]}"#, 400, 1009, "callbacks"),
        (r#"{"callbacks":[{}, 7]}"#, 400, 1009, "callbacks[1]"),
        (r#"{"callbacks":"no"}"#, 400, 1009, "callbacks"),
        (r#"{}"#, 400, 1008, "callbacks"),
        (r#"{"callbacks":[{}],"extra":1}"#, 400, 1010, "extra"),
        (r#"{"callbacks":[{}"#, 400, 1025, "body"),
        (&big, 400, 1009, "callbacks[0]"),
    ];
    for (body, status, code, field) in cases {
        let reply = request(
            service.addr(),
            "POST",
            "/v1/callbacks",
            &[("Authorization", &service.admin)],
            body,
        );
        assert_eq!(
            (reply.status, reply.code()),
            (status, code),
            "{}: {}",
            &body[..body.len().min(60)],
            reply.body
        );
        let details = reply.json()["errors"][0]["details"].as_str().unwrap().to_owned();
        assert!(details.starts_with(field), "{details} does not name {field}");
    }
    assert!(service.pending().is_empty());
}

#[test]
fn enqueue_needs_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), &[]);
    for auth in [None, Some(session::apikey())] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let reply = request(
            service.addr(),
            "POST",
            "/v1/callbacks",
            &headers,
            r#"{"callbacks":[{}]}"#,
        );
        assert_eq!((reply.status, reply.code()), (401, 1005));
    }
}
