//! The health node (spec §5): Bearer or Apikey, and `uninitialized` during recovery.

use axum::body::Body;
use axum::http::Request;
use base64::Engine;
use coreq::config::EnvSecrets;
use tower::ServiceExt;

use crate::http::request;
use crate::server::TestServer;

const API_KEY: &str = "monitoring-key-0123456789";

fn env() -> EnvSecrets {
    EnvSecrets {
        api_key: Some(API_KEY.into()),
        ..Default::default()
    }
}

#[test]
fn apikey_reads_health_unregistered_without_a_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = request(
        server.addr,
        "GET",
        "/v1/health",
        &[("Authorization", &format!("Apikey {API_KEY}"))],
        "",
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["health"]["gateway_status"], "unregistered");
    assert_eq!(reply.json()["meta"]["api_status"], "stable");
}

#[test]
fn bearer_token_reads_health() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("admin:secret")
    );
    let login = request(
        server.addr,
        "POST",
        "/v1/users/login",
        &[("Authorization", &basic)],
        r#"{"new_password":"Adm1n-Passw0rd!"}"#,
    );
    let bearer = format!("Bearer {}", login.json()["users"][0]["token"].as_str().unwrap());
    let reply = request(server.addr, "GET", "/v1/health", &[("Authorization", &bearer)], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn health_without_or_with_wrong_credentials_is_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    for auth in [None, Some("Apikey wrong-key-0123456789"), Some("Bearer nope")] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let reply = request(server.addr, "GET", "/v1/health", &headers, "");
        assert_eq!((reply.status, reply.code()), (401, 1005), "{auth:?}");
        assert!(!reply.body.contains(API_KEY));
    }
}

#[test]
fn apikey_is_refused_where_only_bearer_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let apikey = format!("Apikey {API_KEY}");
    for (method, path) in [
        ("GET", "/v1/settings/application"),
        ("POST", "/v1/users/logout"),
        ("GET", "/v1/users/admin"),
    ] {
        let reply = request(server.addr, method, path, &[("Authorization", &apikey)], "");
        assert_eq!((reply.status, reply.code()), (401, 1005), "{method} {path}");
    }
}

#[test]
fn health_says_uninitialized_while_recovering() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let state = coreq::api::AppState::new(Some(coreq::auth::ApiKey::new(API_KEY)));
        let app = coreq::api::router(state);
        let request = Request::get("/v1/health")
            .header("Authorization", format!("Apikey {API_KEY}"))
            .body(Body::empty())
            .unwrap();
        let reply = app.oneshot(request).await.unwrap();
        assert_eq!(reply.status(), 200);
        let bytes = axum::body::to_bytes(reply.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(body["health"]["gateway_status"], "uninitialized");
    });
}
