//! `coreq::run` in-process, on port 0: the router and its readiness.

use std::time::Duration;

use coreq::config::EnvSecrets;

use crate::http;

/// Starts `run` on its own runtime thread; returns the address and a stop handle.
#[allow(clippy::type_complexity)]
fn start(
    dir: &std::path::Path,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    std::thread::JoinHandle<Result<(), coreq::error::ServeError>>,
) {
    let config = crate::server::config(dir, EnvSecrets::default());
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            coreq::run(config, listener, async move {
                let _ = stop_rx.await;
            })
            .await
        })
    });
    (addr, stop_tx, handle)
}

#[test]
fn livez_answers_ok_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, handle) = start(dir.path());
    let reply = http::wait_for(addr, "/livez", 200, Duration::from_secs(10));
    assert_eq!(reply.body, "ok");
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

#[test]
fn unknown_path_is_404_in_the_on_premises_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, handle) = start(dir.path());
    http::wait_for(addr, "/livez", 200, Duration::from_secs(10));
    let reply = http::wait_for(addr, "/v1/nothing-here", 404, Duration::from_secs(10));
    let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
    assert_eq!(body["errors"][0]["code"], 1006);
    assert_eq!(body["errors"][0]["details"], "/v1/nothing-here");
    assert_eq!(body["meta"]["api_status"], "stable");
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
}

#[test]
fn routes_other_than_livez_answer_503_1011_until_recovery_is_done() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let app = coreq::api::router(coreq::api::AppState::new());
        let livez = app
            .clone()
            .oneshot(Request::get("/livez").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(livez.status(), 200);
        let other = app
            .oneshot(Request::get("/v1/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(other.status(), 503);
        let bytes = axum::body::to_bytes(other.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["errors"][0]["code"], 1011);
    });
}

#[test]
fn shutdown_checkpoints_so_the_next_start_replays_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _) = coreq_storage::Store::open(coreq_storage::StoreConfig::new(dir.path())).unwrap();
        store.enqueue_callbacks(vec![b"{}".to_vec(); 3], 0).await.unwrap();
    });
    let (addr, stop, handle) = start(dir.path());
    http::wait_for(addr, "/livez", 200, Duration::from_secs(10));
    http::wait_for(addr, "/v1/anything", 404, Duration::from_secs(10));
    stop.send(()).unwrap();
    handle.join().unwrap().unwrap();
    let (store, report) = coreq_storage::Store::open(coreq_storage::StoreConfig::new(dir.path())).unwrap();
    assert_eq!(report.replayed, 0, "{report:?}");
    assert_eq!(store.pending_callback_count(), 3);
}
