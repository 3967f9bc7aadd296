//! The support node (spec §5) over real HTTP.

use serde_json::Value;

use crate::http::request;
use crate::server::{TestServer, seed_callbacks};
use crate::session::{self, ADMIN_PASSWORD, API_KEY};

fn support(server: &TestServer, auth: &str) -> Value {
    let reply = request(server.addr, "GET", "/v1/support", &[("Authorization", auth)], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["meta"]["api_status"], "stable");
    reply.json()["support"].clone()
}

#[test]
fn support_reports_every_on_premises_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env_with(&[("LANG", "pt_BR.UTF-8")]));
    let s = support(&server, &session::admin(server.addr));
    for field in [
        "context",
        "db_engine",
        "db_info",
        "debug_info",
        "description",
        "device_iso8601",
        "env",
        "lc",
        "lg",
        "multi_connect",
        "os_name",
        "os_version",
        "schema",
        "socket_conn",
        "version",
    ] {
        assert!(!s[field].is_null(), "{field} missing in {s}");
    }
    for volume in ["data", "logs", "media_incoming", "media_outgoing"] {
        assert!(s[format!("free_space_{volume}")].as_u64().unwrap() > 0, "{volume}");
    }
    assert_eq!(s["db_engine"], "SLED");
    assert_eq!(s["debug_info"], "unregistered");
    assert_eq!(s["socket_conn"], "DN");
    assert_eq!((s["lc"].as_str(), s["lg"].as_str()), (Some("pt"), Some("BR")));
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    for area in ["callback", "config", "jobqueue", "message"] {
        assert!(s["schema"][area].as_u64().is_some(), "schema.{area}");
    }
}

#[test]
fn support_env_shows_coreq_variables_with_every_secret_masked() {
    let dir = tempfile::tempdir().unwrap();
    let environment = [
        ("WA_API_KEY", API_KEY),
        ("COREQ_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("WA_DB_PASSWORD", "db-pass-3141"),
        ("COREQ_DATABASE_URL", "postgres://app:url-pass-2718@db.local/coreq"),
        ("COREQ_LISTEN", "127.0.0.1:8080"),
    ];
    let server = TestServer::start(dir.path(), session::env_with(&environment));
    let reply = request(
        server.addr,
        "GET",
        "/v1/support",
        &[("Authorization", &session::admin(server.addr))],
        "",
    );
    for secret in [API_KEY, ADMIN_PASSWORD, "db-pass-3141", "url-pass-2718"] {
        assert!(!reply.body.contains(secret), "{secret} shown: {}", reply.body);
    }
    let env: Vec<String> = serde_json::from_value(reply.json()["support"]["env"].clone()).unwrap();
    assert!(env.contains(&"WA_API_KEY=****".to_owned()), "{env:?}");
    assert!(
        env.contains(&"COREQ_DATABASE_URL=postgres://****@db.local/coreq".to_owned()),
        "{env:?}"
    );
    assert!(env.contains(&"COREQ_LISTEN=127.0.0.1:8080".to_owned()), "{env:?}");
}

#[test]
fn support_reports_the_callback_backlog_and_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    seed_callbacks(dir.path(), 3);
    let server = TestServer::start(dir.path(), session::env());
    let s = support(&server, &session::admin(server.addr));
    assert_eq!(s["callbacks"]["pending"], 3);
    assert_eq!(s["callbacks"]["head"]["id"], "1");
    // The seeded webhook refuses connections: the head may have failed once by now.
    assert!(
        s["callbacks"]["head"]["attempts"].as_u64().is_some(),
        "{}",
        s["callbacks"]
    );
    assert!(s["callbacks"]["in_flight"].as_u64().is_some());
    assert!(s["wal"]["last_lsn"].as_u64().unwrap() >= 1, "{}", s["wal"]);
    assert!(s["wal"]["bytes"].as_u64().unwrap() > 0);
    assert_eq!(s["wal"]["corrupt_records_quarantined"], 0);
    assert!(s["replication"]["target"].is_null());
}

#[test]
fn a_role_user_may_read_support() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let user = session::user(server.addr, &session::admin(server.addr), "alice");
    support(&server, &user);
}

#[test]
fn support_refuses_the_api_key_and_missing_credentials_with_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    for auth in [Some(session::apikey()), None, Some("Bearer not-a-token".into())] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        let reply = request(server.addr, "GET", "/v1/support", &headers, "");
        assert_eq!((reply.status, reply.code()), (401, 1005), "{auth:?}");
    }
}
