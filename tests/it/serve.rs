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
