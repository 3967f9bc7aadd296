//! The coreq mode end to end against a small fake coreq (login, webhook setting, enqueue, FIFO
//! delivery with N in flight), which can also misbehave: the load generator must then say so.

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
use tokio::sync::{Semaphore, mpsc};

use coreq_loadgen::error::Error;
use coreq_loadgen::run::{LoadOptions, Target, run_coreq};

const PASSWORD: &str = "Adm1n-Passw0rd!";

/// How the fake delivers.
#[derive(Clone, Copy, Default)]
struct Faults {
    /// Deliver the callback with this (0-based) dispatch position twice.
    duplicate: Option<u64>,
    /// Never deliver the callback with this dispatch position.
    drop: Option<u64>,
    /// Hold back `len` callbacks from dispatch position `start`, until position `release`.
    hold_back: Option<HoldBack>,
}

#[derive(Clone, Copy)]
struct HoldBack {
    start: u64,
    len: u64,
    release: u64,
}

struct FakeCoreq {
    webhook: Mutex<Option<(String, usize)>>,
    queue: mpsc::UnboundedSender<Vec<u8>>,
    next_id: AtomicU64,
}

async fn start_fake(faults: Faults) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (queue, bodies) = mpsc::unbounded_channel();
    let fake = Arc::new(FakeCoreq {
        webhook: Mutex::new(None),
        queue,
        next_id: AtomicU64::new(0),
    });
    tokio::spawn(dispatch(Arc::clone(&fake), bodies, faults));
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

async fn api(fake: Arc<FakeCoreq>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
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
            let patch: serde_json::Value = serde_json::from_slice(&body).expect("JSON patch");
            let url = patch["webhooks"]["url"].as_str().expect("url").to_string();
            let n = patch["webhooks"]["max_concurrent_requests"]
                .as_u64()
                .expect("concurrency") as usize;
            *fake.webhook.lock().unwrap() = Some((url, n));
            answer(200, "{}".into())
        }
        ("POST", "/v1/callbacks") => {
            let batch: serde_json::Value = serde_json::from_slice(&body).expect("JSON batch");
            let mut ids = Vec::new();
            for callback in batch["callbacks"].as_array().expect("array") {
                ids.push(serde_json::json!({"id": fake.next_id.fetch_add(1, Ordering::SeqCst).to_string()}));
                fake.queue
                    .send(callback.to_string().into_bytes())
                    .expect("dispatcher alive");
            }
            answer(201, serde_json::json!({ "callbacks": ids }).to_string())
        }
        _ => answer(404, "{}".into()),
    }
}

/// FIFO with at most N requests in flight, like coreq, plus the faults.
async fn dispatch(fake: Arc<FakeCoreq>, mut bodies: mpsc::UnboundedReceiver<Vec<u8>>, faults: Faults) {
    coreq_loadgen::http::install_crypto_provider();
    let client = reqwest::Client::builder().no_proxy().build().expect("client");
    let slots = Arc::new(Semaphore::new(24));
    let mut held = Vec::new();
    let mut position = 0u64;
    while let Some(body) = bodies.recv().await {
        let Some((url, n)) = fake.webhook.lock().unwrap().clone() else {
            continue;
        };
        // Only n of the 24 permits are used: take 24 − n once, forever.
        if slots.available_permits() == 24 {
            slots.acquire_many(24 - n as u32).await.expect("open").forget();
        }
        let this = position;
        position += 1;
        if faults.drop == Some(this) {
            continue;
        }
        if let Some(h) = faults.hold_back
            && (h.start..h.start + h.len).contains(&this)
        {
            held.push(body);
            continue;
        }
        let copies = if faults.duplicate == Some(this) { 2 } else { 1 };
        for _ in 0..copies {
            send(&client, &slots, &url, body.clone()).await;
        }
        if faults.hold_back.is_some_and(|h| h.release == this) {
            for body in held.drain(..) {
                send(&client, &slots, &url, body).await;
            }
        }
    }
}

async fn send(client: &reqwest::Client, slots: &Arc<Semaphore>, url: &str, body: Vec<u8>) {
    let permit = Arc::clone(slots).acquire_owned().await.expect("open");
    let request = client.post(url).header("content-type", "application/json").body(body);
    tokio::spawn(async move {
        let _ = request.send().await;
        drop(permit);
    });
}

fn options(count: u64, batch: u64) -> LoadOptions {
    LoadOptions {
        count,
        duration: Duration::from_secs(60),
        rate: None,
        concurrency: 4,
        batch,
        payload_bytes: 200,
        webhook_concurrency: 6,
        tls: false,
        ca_dir: None,
        drain_timeout: Duration::from_secs(3),
        progress: false,
        prefill: false,
    }
}

fn target(addr: SocketAddr, password: &str) -> Target {
    Target {
        base: format!("http://{addr}"),
        user: "admin".into(),
        password: password.into(),
        ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_coreq_passes_every_check() {
    let addr = start_fake(Faults::default()).await;
    let report = run_coreq(&options(600, 7), &target(addr, PASSWORD)).await.expect("run");
    let c = report.counts;
    assert_eq!(
        (c.sent, c.acked, c.delivered, c.duplicates, c.order_violations),
        (600, 600, 600, 0, 0),
        "{report:?}"
    );
    assert!(report.drained && report.problems(false).is_empty(), "{report:?}");
    assert_eq!(report.setup.batch, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_is_reported() {
    let addr = start_fake(Faults {
        duplicate: Some(10),
        ..Faults::default()
    })
    .await;
    let report = run_coreq(&options(100, 1), &target(addr, PASSWORD)).await.expect("run");
    assert_eq!(report.counts.duplicates, 1, "{report:?}");
    assert_eq!(report.problems(false).len(), 1);
    assert!(report.problems(true).is_empty(), "--allow-duplicates");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_callback_is_reported_after_the_drain() {
    let addr = start_fake(Faults {
        drop: Some(50),
        ..Faults::default()
    })
    .await;
    let report = run_coreq(&options(100, 1), &target(addr, PASSWORD)).await.expect("run");
    assert_eq!((report.lost(), report.drained), (1, false), "{report:?}");
    assert!(report.problems(true).iter().any(|p| p.contains("never arrived")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_overtaken_by_more_than_the_window_is_an_order_violation() {
    // One batch of 100: positions 20..28 (more than the window of 6) are sent after 60, so
    // 28 arrives while 8 callbacks ahead of it have not even been started.
    let hold_back = HoldBack {
        start: 20,
        len: 8,
        release: 60,
    };
    let addr = start_fake(Faults {
        hold_back: Some(hold_back),
        ..Faults::default()
    })
    .await;
    let mut opts = options(100, 100);
    opts.concurrency = 1;
    let report = run_coreq(&opts, &target(addr, PASSWORD)).await.expect("run");
    assert!(report.counts.order_violations > 0, "{report:?}");
    assert_eq!((report.counts.delivered, report.lost()), (100, 0));
}

#[tokio::test]
async fn a_refused_login_is_an_error_not_a_report() {
    let addr = start_fake(Faults::default()).await;
    match run_coreq(&options(10, 1), &target(addr, "wrong")).await {
        Err(Error::Refused { status: 401, .. }) => {}
        other => panic!("expected a 401 refusal, got {:?}", other.map(|r| r.counts)),
    }
}
