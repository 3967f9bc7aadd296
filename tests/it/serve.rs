//! `coreq::run` in-process, on port 0: the router and its readiness.

use std::time::Duration;

use coreq::config::EnvSecrets;

use crate::http;
use crate::server::{TestServer, seed_callbacks};

#[test]
fn livez_answers_ok_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let reply = http::wait_for(server.addr, "/livez", 200, Duration::from_secs(10));
    assert_eq!(reply.body, "ok");
    server.stop().unwrap();
}

#[test]
fn unknown_path_is_404_in_the_on_premises_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let reply = http::wait_for(server.addr, "/v1/nothing-here", 404, Duration::from_secs(10));
    let body = reply.json();
    assert_eq!(body["errors"][0]["code"], 1006);
    assert_eq!(body["errors"][0]["details"], "/v1/nothing-here");
    assert_eq!(body["meta"]["api_status"], "stable");
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
        let app = coreq::api::router(coreq::api::AppState::new(None));
        let livez = app
            .clone()
            .oneshot(Request::get("/livez").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(livez.status(), 200);
        let other = app
            .oneshot(Request::get("/v1/settings/application").body(Body::empty()).unwrap())
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
    seed_callbacks(dir.path(), 3);
    TestServer::start(dir.path(), EnvSecrets::default()).stop().unwrap();
    let (store, report) = coreq_storage::Store::open(coreq_storage::StoreConfig::new(dir.path())).unwrap();
    assert_eq!(report.replayed, 0, "{report:?}");
    assert_eq!(store.pending_callback_count(), 3);
}

/// `GET path` through the router alone (no server), with `state`; status and body text.
fn through_router(state: coreq::api::AppState, path: &str) -> (u16, String) {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let reply = coreq::api::router(state)
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = reply.status().as_u16();
        let bytes = axum::body::to_bytes(reply.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&bytes).into_owned())
    })
}

#[test]
fn readyz_is_503_while_recovering() {
    let (status, body) = through_router(coreq::api::AppState::new(None), "/readyz");
    assert_eq!((status, body.as_str()), (503, "recovering the write-ahead log"));
}

#[test]
fn readyz_is_200_ok_once_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let reply = http::get(server.addr, "/readyz").unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "ok"));
}

#[test]
fn readyz_is_503_once_shutdown_has_begun() {
    let state = coreq::api::AppState::new(None);
    state.begin_shutdown();
    let (status, body) = through_router(state, "/readyz");
    assert_eq!((status, body.as_str()), (503, "shutting down"));
}

#[test]
fn readyz_is_503_under_the_free_space_minimum_while_livez_stays_200() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), EnvSecrets::default(), &["--min-free-mb", "1048576"]);
    let reply = http::get(server.addr, "/readyz").unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "the data volume is under its free-space minimum")
    );
    assert_eq!(http::get(server.addr, "/livez").unwrap().status, 200);
}
