//! The stats and metrics nodes (spec §6) over real HTTP.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::http::{Reply, request};
use crate::server::{TestServer, seed_callbacks};
use crate::session;

/// What Prometheus 2.x sends as `Accept` when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn get(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Reply {
    let reply = request(server.addr, "GET", path, headers, "");
    assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    reply
}

fn apikey_get(server: &TestServer, path: &str) -> Reply {
    get(server, path, &[("Authorization", &session::apikey())])
}

/// The value of the sample `name` with exactly `labels` in Prometheus text, if present.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let prefix = if labels.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{{labels}}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.parse().expect("number"))
}

#[test]
fn stats_app_json_carries_type_help_and_data_for_on_premises_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let json = apikey_get(&server, "/v1/stats/app").json();
    assert_eq!(json["meta"]["api_status"], "stable");
    for name in [
        "callback_queue_size",
        "pending_callbacks",
        "pending_messages",
        "out_message_persisted",
    ] {
        let metric = &json["stats"]["app"][name];
        assert_eq!(metric["type"], "gauge", "{name}: {metric}");
        assert!(!metric["help"].as_str().unwrap().is_empty(), "{name}");
        assert_eq!(metric["data"][0]["value"], 0, "{name}: {metric}");
        assert!(metric["data"][0]["labels"].is_object(), "{name}");
    }
}

#[test]
fn stats_db_shows_the_db_metrics_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let db = apikey_get(&server, "/v1/stats/db").json()["stats"]["db"].clone();
    let names: Vec<&String> = db.as_object().unwrap().keys().collect();
    assert_eq!(names, ["db_messages", "db_pending_callbacks", "db_pending_messages"]);
    assert_eq!(db["db_messages"]["data"][0]["labels"]["type"], "outgoing");
}

#[test]
fn format_prometheus_gives_the_text_exposition() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let reply = apikey_get(&server, "/v1/stats/db?format=prometheus");
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    assert!(
        reply.body.contains("# TYPE db_pending_callbacks gauge\n"),
        "{}",
        reply.body
    );
    assert_eq!(sample(&reply.body, "db_pending_callbacks", ""), Some(0.0));
    assert_eq!(
        sample(&reply.body, "pending_messages", ""),
        None,
        "app metric in db: {}",
        reply.body
    );
}

#[test]
fn metrics_answers_a_prometheus_scrape_with_text_and_anything_else_with_json() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let scrape = get(
        &server,
        "/metrics",
        &[("Authorization", &session::apikey()), ("Accept", PROMETHEUS_ACCEPT)],
    );
    assert!(scrape.header("content-type").unwrap().starts_with("text/plain"));
    assert!(
        sample(&scrape.body, "pending_callbacks", "").is_some(),
        "{}",
        scrape.body
    );
    assert!(sample(&scrape.body, "db_pending_callbacks", "").is_some());
    let json = get(
        &server,
        "/metrics",
        &[("Authorization", &session::apikey()), ("Accept", "*/*")],
    )
    .json();
    assert!(json["stats"]["app"]["pending_callbacks"].is_object(), "{json}");
    assert!(json["stats"]["db"]["db_pending_callbacks"].is_object(), "{json}");
}

#[test]
fn an_unknown_format_is_400_1009_naming_format() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let reply = request(
        server.addr,
        "GET",
        "/metrics?format=xml",
        &[("Authorization", &session::apikey())],
        "",
    );
    assert_eq!((reply.status, reply.code()), (400, 1009));
    assert!(
        reply.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .starts_with("format")
    );
}

#[test]
fn a_bearer_token_of_any_role_reads_stats_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let user = session::user(server.addr, &session::admin(server.addr), "alice");
    for path in ["/v1/stats/app", "/v1/stats/db", "/metrics"] {
        get(&server, path, &[("Authorization", &user)]);
    }
}

#[test]
fn stats_and_metrics_without_valid_credentials_are_401() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    for path in ["/v1/stats/app", "/v1/stats/db", "/metrics"] {
        for auth in [None, Some("Apikey wrong-key-0123456789"), Some("Bearer nope")] {
            let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
            let reply = request(server.addr, "GET", path, &headers, "");
            assert_eq!((reply.status, reply.code()), (401, 1005), "{path} {auth:?}");
        }
    }
}

#[test]
fn pending_callback_gauges_report_the_store() {
    let dir = tempfile::tempdir().unwrap();
    seed_callbacks(dir.path(), 5);
    let server = TestServer::start(dir.path(), session::env());
    let text = apikey_get(&server, "/metrics?format=prometheus").body;
    assert_eq!(sample(&text, "pending_callbacks", ""), Some(5.0), "{text}");
    assert_eq!(sample(&text, "callback_queue_size", ""), Some(5.0));
    assert_eq!(sample(&text, "db_pending_callbacks", ""), Some(5.0));
}

#[test]
fn requests_are_counted_by_route_template_not_raw_path() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let admin = session::admin(server.addr);
    let counted = |text: &str| {
        sample(
            text,
            "coreq_http_requests_total",
            r#"method="GET",route="/v1/users/{name}",status="200""#,
        )
    };
    let before = counted(&apikey_get(&server, "/metrics?format=prometheus").body).unwrap_or(0.0);
    for _ in 0..3 {
        get(&server, "/v1/users/admin", &[("Authorization", &admin)]);
    }
    let text = apikey_get(&server, "/metrics?format=prometheus").body;
    // Other tests in this process may add to the same series, never take from it.
    assert!(counted(&text).unwrap() >= before + 3.0, "{text}");
    assert!(!text.contains(r#"route="/v1/users/admin""#), "raw path used as a label");
    assert!(
        text.contains("# TYPE coreq_http_request_duration_seconds histogram"),
        "{text}"
    );
}

#[test]
fn every_durable_write_is_timed_in_the_wal_append_histogram() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let admin = session::admin(server.addr);
    let count = |text: &str| sample(text, "coreq_wal_append_duration_seconds_count", "");
    let before = count(&apikey_get(&server, "/metrics?format=prometheus").body).unwrap_or(0.0);
    let reply = request(
        server.addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", &admin)],
        r#"{"heartbeat_interval": 7}"#,
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    // The exporter moves samples into buckets at upkeep; render does it too for what it shows.
    let text = apikey_get(&server, "/metrics?format=prometheus").body;
    assert!(count(&text).unwrap() >= before + 1.0, "{text}");
}

#[test]
fn the_metrics_text_passes_promtool_check_metrics() {
    let Some(promtool) = promtool() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    seed_callbacks(dir.path(), 2);
    let server = TestServer::start(dir.path(), session::env());
    let admin = session::admin(server.addr);
    get(&server, "/v1/users/admin", &[("Authorization", &admin)]);
    let text = get(
        &server,
        "/metrics",
        &[("Authorization", &session::apikey()), ("Accept", PROMETHEUS_ACCEPT)],
    )
    .body;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// promtool on PATH; without it the check is skipped loudly, or fails when
/// `COREQ_REQUIRE_PROMTOOL=1` (set by `.ci/run`, which installs it).
fn promtool() -> Option<&'static str> {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return Some("promtool");
    }
    assert!(
        std::env::var("COREQ_REQUIRE_PROMTOOL").as_deref() != Ok("1"),
        "promtool is required (COREQ_REQUIRE_PROMTOOL=1) but not on PATH"
    );
    eprintln!("SKIPPED: promtool not found (apt-get install prometheus); the metrics text was not checked");
    None
}

#[test]
fn json_values_are_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let json: Value = apikey_get(&server, "/v1/stats/app").json();
    for (name, metric) in json["stats"]["app"].as_object().unwrap() {
        for point in metric["data"].as_array().unwrap() {
            assert!(point["value"].is_number(), "{name}: {point}");
        }
    }
}
