//! The messages mode end to end against a small fake coreq (login, webhook setting,
//! `POST /v1/messages`, a sim that reports sent, delivered and read to the webhook), which can
//! also misbehave: the load generator must then say so.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use coreq_loadgen::messages::{MessageOptions, run_messages};
use coreq_loadgen::run::Target;

const PASSWORD: &str = "Adm1n-Passw0rd!";

/// How the fake's sim reports.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Send the `delivered` callback of the message with this (0-based) acceptance position
    /// twice, with the same callback id.
    redeliver: Option<u64>,
    /// Report `delivered` of this message twice, as two callbacks.
    report_twice: Option<u64>,
    /// Never report `delivered` for this message.
    drop_delivered: Option<u64>,
}

struct Webhook {
    url: String,
    read: bool,
}

struct Fake {
    webhook: Mutex<Option<Webhook>>,
    next: AtomicU64,
    next_callback: AtomicU64,
    client: reqwest::Client,
    faults: Faults,
}

async fn start_fake(faults: Faults) -> SocketAddr {
    coreq_loadgen::http::install_crypto_provider();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fake = Arc::new(Fake {
        webhook: Mutex::new(None),
        next: AtomicU64::new(0),
        next_callback: AtomicU64::new(0),
        client: reqwest::Client::builder().no_proxy().build().expect("client"),
        faults,
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let fake = Arc::clone(&fake);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |r| api(Arc::clone(&fake), r));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn answer(status: u16, body: String) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).expect("valid status");
    Ok(response)
}

async fn api(fake: Arc<Fake>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let auth = parts
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    );
    match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/v1/users/login") if auth == basic => answer(200, r#"{"users":[{"token":"tok"}]}"#.into()),
        (_, _) if auth != "Bearer tok" => answer(401, r#"{"errors":[{"code":1005}]}"#.into()),
        ("PATCH", "/v1/settings/application") => {
            let patch: Value = serde_json::from_slice(&body).expect("JSON patch");
            let w = &patch["webhooks"];
            assert_eq!(w["max_concurrent_requests"], 24);
            assert_eq!(
                (&w["message"]["sent"], &w["message"]["delivered"]),
                (&json!(true), &json!(true))
            );
            *fake.webhook.lock().unwrap() = Some(Webhook {
                url: w["url"].as_str().expect("url").to_string(),
                read: w["message"]["read"].as_bool().expect("read"),
            });
            answer(200, "{}".into())
        }
        ("GET", "/v1/sim/gateway") => answer(
            200,
            json!({"gateway": {"accepted": fake.next.load(Ordering::SeqCst), "duplicates": 0}}).to_string(),
        ),
        ("POST", "/v1/messages") => {
            let message: Value = serde_json::from_slice(&body).expect("JSON message");
            let to = message["to"].as_str().expect("to").to_string();
            assert!(to.starts_with("1555") && to.len() == 11, "{to}");
            assert_eq!(message["type"], "text");
            assert!(message["text"]["body"].as_str().is_some());
            let position = fake.next.fetch_add(1, Ordering::SeqCst);
            let id = format!("msg{position}");
            tokio::spawn(simulate(Arc::clone(&fake), id.clone(), to, position));
            answer(201, json!({"messages": [{"id": id}]}).to_string())
        }
        _ => answer(404, "{}".into()),
    }
}

/// Reports sent, delivered and (if on) read, one after the other, like the sim.
async fn simulate(fake: Arc<Fake>, id: String, to: String, position: u64) {
    let Some((url, read)) = fake.webhook.lock().unwrap().as_ref().map(|w| (w.url.clone(), w.read)) else {
        return;
    };
    let f = fake.faults;
    let mut statuses = vec!["sent", "delivered"];
    if read {
        statuses.push("read");
    }
    for status in statuses {
        if status == "delivered" && f.drop_delivered == Some(position) {
            continue;
        }
        let body = json!({"statuses":[{"id": id, "recipient_id": to, "status": status, "timestamp": "1700000000"}]});
        let callback = fake.next_callback.fetch_add(1, Ordering::SeqCst).to_string();
        let mut copies = vec![callback.clone()];
        if status == "delivered" && f.redeliver == Some(position) {
            copies.push(callback);
        }
        if status == "delivered" && f.report_twice == Some(position) {
            copies.push(fake.next_callback.fetch_add(1, Ordering::SeqCst).to_string());
        }
        for callback_id in copies {
            let _ = fake
                .client
                .post(&url)
                .header("content-type", "application/json")
                .header("X-Coreq-Callback-Id", callback_id)
                .body(body.to_string())
                .send()
                .await;
        }
    }
}

fn options(count: u64, through_sim: bool) -> MessageOptions {
    MessageOptions {
        count,
        duration: Duration::from_secs(60),
        rate: None,
        concurrency: 8,
        payload_bytes: 200,
        through_sim,
        read_callbacks: true,
        webhook_concurrency: 24,
        tls: false,
        ca_dir: None,
        drain_timeout: Duration::from_secs(10),
        progress: false,
    }
}

fn target(addr: SocketAddr) -> Target {
    Target {
        base: format!("http://{addr}"),
        user: "admin".into(),
        password: PASSWORD.into(),
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acceptance_only_counts_every_201() {
    let addr = start_fake(Faults::default()).await;
    let report = run_messages(&options(300, false), &target(addr)).await.expect("run");
    assert_eq!((report.posted, report.acked), (300, 300), "{report:?}");
    assert!(
        report.errors.is_empty() && report.problems(false).is_empty(),
        "{report:?}"
    );
    assert!(report.accepted_per_sec() > 0.0);
    let latency = report.post_latency.expect("recorded");
    assert!(latency.p50_ms <= latency.p99_ms && latency.p99_ms <= latency.max_ms);
    let json = report.to_json();
    assert_eq!(json["mode"], "messages");
    assert_eq!(json["accepted"], 300);
    assert!(json.get("delivered").is_none(), "no callbacks measured: {json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_sim_every_status_arrives_once() {
    let addr = start_fake(Faults::default()).await;
    let report = run_messages(&options(200, true), &target(addr)).await.expect("run");
    assert_eq!((report.acked, report.delivered), (200, 200), "{report:?}");
    for status in ["sent", "delivered", "read"] {
        let c = report.statuses[status];
        assert_eq!((c.arrivals, c.accepted_messages), (200, 200), "{status}: {report:?}");
        assert_eq!(report.missing[status], 0);
    }
    assert_eq!(report.callbacks, 600);
    assert_eq!(
        (
            report.duplicates,
            report.wrong_recipient,
            report.unacked_ids,
            report.foreign
        ),
        (0, 0, 0, 0)
    );
    assert!(report.drained && report.problems(false).is_empty(), "{report:?}");
    assert!(report.delivered_per_sec() > 0.0);
    assert!(report.e2e_latency.is_some());
    assert_eq!(report.sim.as_ref().expect("sim counters")["accepted"], 200);
    let json = report.to_json();
    assert_eq!(json["mode"], "messages-sim");
    assert_eq!(json["statuses"]["delivered"]["arrivals"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_callbacks_can_be_turned_off() {
    let addr = start_fake(Faults::default()).await;
    let mut opts = options(100, true);
    opts.read_callbacks = false;
    let report = run_messages(&opts, &target(addr)).await.expect("run");
    assert_eq!(report.statuses["read"].arrivals, 0, "{report:?}");
    assert!(!report.missing.contains_key("read"));
    assert_eq!((report.delivered, report.callbacks), (100, 200));
    assert!(report.drained && report.problems(false).is_empty(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_are_reported_and_told_apart() {
    let addr = start_fake(Faults {
        redeliver: Some(10),
        report_twice: Some(20),
        ..Faults::default()
    })
    .await;
    let report = run_messages(&options(50, true), &target(addr)).await.expect("run");
    assert_eq!((report.duplicates, report.redelivered), (2, 1), "{report:?}");
    assert_eq!(report.statuses["delivered"].arrivals, 52);
    assert_eq!(report.problems(false).len(), 1);
    assert!(report.problems(true).is_empty(), "--allow-duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_delivered_fails_the_run_after_a_bounded_wait() {
    let addr = start_fake(Faults {
        drop_delivered: Some(7),
        ..Faults::default()
    })
    .await;
    let mut opts = options(40, true);
    opts.drain_timeout = Duration::from_secs(2);
    let started = std::time::Instant::now();
    let report = run_messages(&opts, &target(addr)).await.expect("run");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "bounded by the drain timeout"
    );
    assert_eq!((report.missing["delivered"], report.delivered), (1, 39), "{report:?}");
    assert!(!report.drained);
    let problems = report.problems(true);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("never got their delivered callback")),
        "{problems:?}"
    );
}
