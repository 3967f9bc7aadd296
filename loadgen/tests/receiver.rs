//! The webhook receiver, driven by a real HTTP client (reqwest on rustls/ring, trusting only the
//! receiver's CA), the way coreq's webhook client talks to it.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use coreq_loadgen::receiver::{
    Behaviour, Receiver, ReceiverConfig, Reply, Request, always, always_reply, start_blocking,
};

const WAIT: Duration = Duration::from_secs(10);

fn client(ca_pem: Option<&str>, timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .no_proxy()
        .http1_only();
    if let Some(pem) = ca_pem {
        let ca = reqwest::Certificate::from_pem(pem.as_bytes()).expect("receiver CA parses");
        builder = builder.tls_certs_only([ca]);
    }
    builder.build().expect("client builds")
}

async fn https_receiver(behaviour: Behaviour) -> (Receiver, reqwest::Client) {
    let receiver = Receiver::start(ReceiverConfig::https(behaviour))
        .await
        .expect("receiver starts");
    let client = client(receiver.ca_pem(), Duration::from_secs(10));
    (receiver, client)
}

#[tokio::test]
async fn https_request_gets_the_behaviours_status_and_is_recorded_byte_for_byte() {
    let (receiver, client) = https_receiver(always(202)).await;
    assert!(receiver.url().starts_with("https://127.0.0.1:"), "{}", receiver.url());
    // Not UTF-8, with a NUL: the body must come back exactly.
    let body: Vec<u8> = vec![0xff, 0x00, b'{', 0xc3, 0x28, b'}', b'\n'];
    let response = client
        .post(format!("{}?secret=abc", receiver.url()))
        .header("Content-Type", "application/json")
        .header("X-Hub-Signature-256", "sha256=00")
        .body(body.clone())
        .send()
        .await
        .expect("request answered");
    assert_eq!(response.status().as_u16(), 202);
    assert_eq!(receiver.count(), 1);
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 1);
    let arrival = &arrivals[0];
    assert_eq!(arrival.index, 0);
    assert_eq!(arrival.method, "POST");
    assert_eq!(arrival.path_and_query, "/hook?secret=abc");
    assert_eq!(arrival.body, body);
    assert_eq!(arrival.header("content-type"), Some("application/json"));
    assert_eq!(arrival.header("X-Hub-Signature-256"), Some("sha256=00"));
    assert!(
        arrival
            .headers
            .iter()
            .all(|(name, _)| *name == name.to_ascii_lowercase())
    );
    assert_eq!((arrival.reply, &arrival.answer), (202, &Reply::Status(202)));
    receiver.shutdown().await;
}

#[tokio::test]
async fn only_a_client_trusting_the_receivers_ca_gets_through() {
    let receiver = Receiver::start(ReceiverConfig::https(always(200)))
        .await
        .expect("receiver starts");
    let other = Receiver::start(ReceiverConfig::https(always(200)))
        .await
        .expect("second receiver starts");
    // Trusting another (fresh) CA only: the handshake must fail.
    let stranger = client(other.ca_pem(), Duration::from_secs(5));
    let error = stranger
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect_err("untrusted certificate refused");
    assert!(error.is_connect(), "{error:?}");
    assert_eq!(receiver.count(), 0);
    // The certificate names both 127.0.0.1 and localhost.
    let trusted = client(receiver.ca_pem(), Duration::from_secs(5));
    let localhost = format!("https://localhost:{}/hook", receiver.addr().port());
    let response = trusted
        .post(localhost)
        .body("{}")
        .send()
        .await
        .expect("localhost is in the certificate");
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn the_ca_file_is_written_and_reused_from_a_given_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ReceiverConfig::https(always(200));
    config.ca_dir = Some(dir.path().to_path_buf());
    let first = Receiver::start(config).await.expect("receiver starts");
    let ca_path = first.ca_path().expect("https receiver has a CA file").to_path_buf();
    assert_eq!(ca_path, dir.path().join("ca.pem"));
    let on_disk = std::fs::read_to_string(&ca_path).expect("CA file readable");
    assert_eq!(Some(on_disk.as_str()), first.ca_pem());
    first.shutdown().await;

    // A later receiver on the same directory is trusted by a client that read the file earlier
    // (as coreq, started with COREQ_WEBHOOK_CA, would be).
    let mut config = ReceiverConfig::https(always(204));
    config.ca_dir = Some(dir.path().to_path_buf());
    let second = Receiver::start(config).await.expect("second receiver starts");
    assert_eq!(second.ca_pem(), Some(on_disk.as_str()));
    let response = client(Some(&on_disk), WAIT)
        .post(second.url())
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 204);
}

#[tokio::test]
async fn an_own_ca_directory_is_removed_with_the_receiver() {
    let receiver = Receiver::start(ReceiverConfig::https(always(200)))
        .await
        .expect("receiver starts");
    let ca_path = receiver.ca_path().expect("CA file").to_path_buf();
    assert!(ca_path.exists());
    receiver.shutdown().await;
    assert!(!ca_path.exists(), "{} left behind", ca_path.display());
}

#[tokio::test]
async fn reset_closes_the_connection_without_an_answer() {
    let (receiver, client) = https_receiver(always_reply(Reply::Reset)).await;
    let error = client
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect_err("no answer");
    assert!(!error.is_timeout(), "a reset, not a timeout: {error:?}");
    assert!(receiver.wait_for_count(1, WAIT).await);
    assert_eq!(receiver.arrivals()[0].reply, 0);
    // The receiver itself carries on.
    receiver.set_behaviour(always(200));
    let response = client
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect("answered after a reset");
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn redirect_answers_3xx_with_location() {
    let (receiver, client) =
        https_receiver(always_reply(Reply::Redirect(307, "https://elsewhere.invalid/x".into()))).await;
    let response = client.post(receiver.url()).body("{}").send().await.expect("answered");
    assert_eq!(response.status().as_u16(), 307);
    let location = response.headers().get("location").and_then(|v| v.to_str().ok());
    assert_eq!(location, Some("https://elsewhere.invalid/x"));
    assert_eq!(receiver.arrivals()[0].reply, 307);
}

#[tokio::test]
async fn delay_and_hang_trip_a_client_timeout() {
    let (receiver, _) = https_receiver(always_reply(Reply::Delay(Duration::from_secs(5), 200))).await;
    let impatient = client(receiver.ca_pem(), Duration::from_millis(300));
    let error = impatient
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect_err("too slow");
    assert!(error.is_timeout(), "{error:?}");

    receiver.set_behaviour(always_reply(Reply::Hang));
    let error = impatient
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect_err("never answered");
    assert!(error.is_timeout(), "{error:?}");
    assert_eq!(receiver.count(), 2);
    assert_eq!(receiver.arrivals()[1].reply, 0);

    // A delay shorter than the timeout is answered, after the delay.
    receiver.set_behaviour(always_reply(Reply::Delay(Duration::from_millis(100), 201)));
    let started = std::time::Instant::now();
    let response = impatient
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect("answered in time");
    assert_eq!(response.status().as_u16(), 201);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn set_behaviour_switches_answers_and_the_behaviour_sees_each_request() {
    let (receiver, client) = https_receiver(always(500)).await;
    let status = |r: reqwest::Response| r.status().as_u16();
    let first = client.post(receiver.url()).body("a").send().await.map(status);
    assert_eq!(first.ok(), Some(500));
    // A behaviour deciding from the request: 200 for bodies starting with "ok".
    receiver.set_behaviour(Arc::new(|r: &Request| {
        if r.body.starts_with(b"ok") {
            Reply::Status(200)
        } else {
            Reply::Status(400)
        }
    }));
    let second = client.post(receiver.url()).body("ok!").send().await.map(status);
    let third = client.post(receiver.url()).body("no").send().await.map(status);
    assert_eq!((second.ok(), third.ok()), (Some(200), Some(400)));
    let replies: Vec<u16> = receiver.arrivals().iter().map(|a| a.reply).collect();
    assert_eq!(replies, [500, 200, 400]);
}

#[tokio::test]
async fn keep_alive_connections_are_reused() {
    let (receiver, client) = https_receiver(always(200)).await;
    for _ in 0..5 {
        let response = client.post(receiver.url()).body("{}").send().await.expect("answered");
        assert_eq!(response.status().as_u16(), 200);
        // Read to the end so the connection goes back to the pool.
        response.bytes().await.expect("empty body read");
    }
    let arrivals = receiver.arrivals();
    assert_eq!(arrivals.len(), 5);
    assert!(
        arrivals.iter().all(|a| a.peer == arrivals[0].peer),
        "one connection: {arrivals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_all_counted_in_index_order() {
    let seen = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&seen);
    let behaviour: Behaviour = Arc::new(move |_: &Request| {
        counter.fetch_add(1, Ordering::Relaxed);
        Reply::Status(200)
    });
    let mut config = ReceiverConfig::http(behaviour);
    config.record_bodies = false;
    let receiver = Receiver::start(config).await.expect("receiver starts");
    let client = client(None, WAIT);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64 {
        let (client, url) = (client.clone(), receiver.url());
        tasks.spawn(async move {
            client
                .post(url)
                .body(format!("{i}"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    while let Some(done) = tasks.join_next().await {
        assert_eq!(done.expect("task").expect("answered"), 200);
    }
    assert!(receiver.wait_for_count(64, WAIT).await);
    assert_eq!(seen.load(Ordering::Relaxed), 64);
    let indices: Vec<u64> = receiver.arrivals().iter().map(|a| a.index).collect();
    assert_eq!(indices, (0..64).collect::<Vec<u64>>());
    assert!(
        receiver.arrivals().iter().all(|a| a.body.is_empty()),
        "bodies not recorded"
    );
}

#[tokio::test]
async fn wait_for_count_gives_up_at_its_limit_and_recording_can_be_turned_off() {
    let receiver = Receiver::start(ReceiverConfig::http(always(200)))
        .await
        .expect("receiver starts");
    assert!(!receiver.wait_for_count(1, Duration::from_millis(50)).await);
    receiver.set_record_arrivals(false);
    let response = client(None, WAIT)
        .post(receiver.url())
        .body("{}")
        .send()
        .await
        .expect("answered");
    assert_eq!(response.status().as_u16(), 200);
    assert!(receiver.wait_for_count(1, WAIT).await);
    assert!(receiver.arrivals().is_empty());
}

/// One HTTP/1.1 request over a plain socket: the status code and whether the server kept the
/// connection open for the next one.
fn raw_post(stream: &mut std::net::TcpStream, body: &str) -> u16 {
    let request = format!(
        "POST /hook?x=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("request written");
    // The answer has an empty body: read until the end of its head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("answer read"),
            1,
            "connection closed early"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ASCII head");
    head.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line")
}

#[test]
fn the_blocking_wrapper_works_from_a_plain_test() {
    let receiver = start_blocking(ReceiverConfig::http(always(200))).expect("receiver starts");
    assert!(receiver.url().starts_with("http://127.0.0.1:"));
    assert!(receiver.ca_pem().is_none() && receiver.ca_path().is_none());
    let mut stream = std::net::TcpStream::connect(receiver.addr()).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout set");
    assert_eq!(raw_post(&mut stream, "hello"), 200);
    assert!(receiver.wait_for_count(1, WAIT));
    assert_eq!(receiver.arrivals()[0].body, b"hello");
    assert_eq!(receiver.arrivals()[0].path_and_query, "/hook?x=1");
    // Same connection (keep-alive), new behaviour.
    receiver.set_behaviour(always(503));
    assert_eq!(raw_post(&mut stream, "again"), 503);
    assert_eq!(receiver.count(), 2);
    assert!(!receiver.wait_for_count(3, Duration::from_millis(50)));
    receiver.shutdown();
}

#[test]
fn the_blocking_wrapper_serves_https_with_its_ca_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = ReceiverConfig::https(always(200));
    config.ca_dir = Some(dir.path().to_path_buf());
    let receiver = start_blocking(config).expect("receiver starts");
    assert!(receiver.url().starts_with("https://127.0.0.1:"));
    let ca = std::fs::read_to_string(receiver.ca_path().expect("CA file")).expect("CA file readable");
    // The client runs on a runtime of the test's own, as a coreq child process would.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = receiver.url();
    let status = runtime.block_on(async move {
        let response = client(Some(&ca), WAIT)
            .post(url)
            .body("{}")
            .send()
            .await
            .expect("answered");
        response.status().as_u16()
    });
    assert_eq!(status, 200);
    assert!(receiver.wait_for_count(1, WAIT));
    // Dropped without shutdown: must not hang or panic.
    drop(receiver);
}

#[test]
fn reset_is_a_tcp_reset_not_a_clean_close() {
    let receiver = start_blocking(ReceiverConfig::http(always_reply(Reply::Reset))).expect("receiver starts");
    let mut stream = std::net::TcpStream::connect(receiver.addr()).expect("connects");
    stream.set_read_timeout(Some(WAIT)).expect("timeout set");
    stream
        .write_all(b"POST /hook HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\n{}")
        .expect("written");
    let mut buf = [0u8; 64];
    let error = stream.read(&mut buf).expect_err("no answer, no clean end of stream");
    assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error:?}");
    assert_eq!(receiver.count(), 1);
}
