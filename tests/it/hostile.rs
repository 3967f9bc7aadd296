//! Hostile input at every endpoint (spec §3): arbitrary bytes, arbitrary JSON and near-valid
//! JSON, with every kind of credential. No 5xx but the documented 503/507, every error in the
//! envelope, nothing changed by a refused request, and no response that carries a secret.

use std::net::SocketAddr;

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{Value, json};

use crate::http::{Reply, request, request_bytes};
use crate::server::TestServer;
use crate::session::{self, ADMIN_PASSWORD, API_KEY, USER_PASSWORD};

/// Every route of the API, with the methods it serves.
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/users/login"),
    ("POST", "/v1/users/logout"),
    ("POST", "/v1/users"),
    ("GET", "/v1/users/alice"),
    ("DELETE", "/v1/users/alice"),
    ("GET", "/v1/settings/application"),
    ("PATCH", "/v1/settings/application"),
    ("DELETE", "/v1/settings/application"),
    ("GET", "/v1/health"),
    ("GET", "/v1/support"),
    ("GET", "/v1/stats/app"),
    ("GET", "/v1/stats/db"),
    ("POST", "/v1/messages"),
    ("GET", "/v1/messages/x"),
    ("PUT", "/v1/services/message/gc"),
    ("PUT", "/v1/sim/gateway"),
    ("GET", "/v1/sim/gateway"),
    ("POST", "/v1/sim/inbound"),
    ("POST", "/v1/gateway/statuses"),
    ("GET", "/metrics"),
    ("GET", "/livez"),
];

/// Field names the handlers know, so that generated objects reach deep validation.
const KNOWN_FIELDS: &[&str] = &[
    "username",
    "password",
    "new_password",
    "callback_persist",
    "callback_backoff_delay_ms",
    "max_callback_backoff_delay_ms",
    "heartbeat_interval",
    "unhealthy_interval",
    "media",
    "auto_download",
    "webhooks",
    "url",
    "max_concurrent_requests",
    "message",
    "sent",
    "signing_secret",
    "sent_status",
    "log_level",
    "verbose_logging",
    "pass_through",
    "wa_id",
    "garbagecollector_enable",
    "messages",
    "to",
    "type",
    "text",
    "body",
    "recipient_type",
    "image",
    "link",
];

/// What a refused request must not change: settings, the users the test knows, and the number
/// of messages waiting for the gateway (there is none: every accepted message stays).
fn snapshot(addr: SocketAddr, admin: &str) -> Value {
    let get = |path: &str| {
        let reply = request(addr, "GET", path, &[("Authorization", admin)], "");
        json!([
            reply.status,
            serde_json::from_str::<Value>(&reply.body).unwrap_or(Value::Null)
        ])
    };
    let pending_messages = get("/v1/stats/db")[1]["stats"]["db"]["db_pending_messages"]["data"][0]["value"].clone();
    json!([
        get("/v1/settings/application"),
        get("/v1/users/alice"),
        get("/v1/users/admin"),
        pending_messages
    ])
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,40}".prop_map(Value::from),
        prop::sample::select(vec![
            "https://example.test/hook?k=v",
            "http://x",
            "",
            "info",
            "audio",
            "6",
            "24"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6).prop_map(|pairs| Value::Object(pairs.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(KNOWN_FIELDS).prop_map(str::to_owned),
        1 => ".{0,12}",
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(Vec::new()),
        prop::collection::vec(any::<u8>(), 0..512),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        // Valid JSON cut short or with a stray byte: syntax errors at every position.
        (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, byte)| {
            let mut text = v.to_string().into_bytes();
            let at = at.index(text.len() + 1);
            text.insert(at.min(text.len()), byte);
            text
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let segment = "[a-zA-Z0-9._~%-]{0,24}";
    let encoded = prop::collection::vec(any::<u8>(), 1..8)
        .prop_map(|bytes| bytes.iter().map(|b| format!("%{b:02X}")).collect::<String>());
    prop_oneof![
        4 => prop::sample::select(ROUTES).prop_map(|(_, p)| p.to_owned()),
        1 => segment.prop_map(|s| format!("/v1/users/{s}")),
        1 => encoded.prop_map(|s| format!("/v1/users/{s}")),
        1 => segment.prop_map(|s| format!("/{s}")),
        1 => (prop::sample::select(ROUTES), "[a-zA-Z0-9=&%._-]{0,30}").prop_map(|((_, p), q)| format!("{p}?{q}")),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        4 => prop::sample::select(ROUTES).prop_map(|(m, _)| m),
        1 => prop::sample::select(vec!["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW"]),
    ]
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Admin,
    User,
    ApiKey,
    Garbage(String),
    Basic(String, String),
}

fn auth() -> impl Strategy<Value = Auth> {
    prop_oneof![
        1 => Just(Auth::None),
        3 => Just(Auth::Admin),
        1 => Just(Auth::User),
        1 => Just(Auth::ApiKey),
        1 => "[ -~]{0,40}".prop_map(Auth::Garbage),
        1 => ("[a-z]{0,8}", "[ -~]{0,16}").prop_map(|(u, p)| Auth::Basic(u, p)),
    ]
}

fn content_type() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("application/json".to_owned())),
        Just(Some("text/plain".to_owned())),
        "[ -~]{0,30}".prop_map(Some),
    ]
}

struct World {
    server: TestServer,
    admin: String,
    user: String,
}

impl World {
    fn new(dir: &std::path::Path) -> World {
        let server = TestServer::start(dir, session::env());
        let admin = session::admin(server.addr);
        let user = session::user(server.addr, &admin, "alice");
        World { server, admin, user }
    }

    fn send(&self, method: &str, path: &str, auth: &Auth, content_type: Option<&str>, body: &[u8]) -> Reply {
        let authorization = match auth {
            Auth::None => None,
            Auth::Admin => Some(self.admin.clone()),
            Auth::User => Some(self.user.clone()),
            Auth::ApiKey => Some(session::apikey()),
            Auth::Garbage(g) => Some(g.clone()),
            Auth::Basic(u, p) => Some(session::basic(u, p)),
        };
        let mut headers = Vec::new();
        if let Some(a) = &authorization {
            headers.push(("Authorization", a.as_str()));
        }
        if let Some(c) = content_type {
            headers.push(("Content-Type", c));
        }
        request_bytes(self.server.addr, method, path, &headers, body)
    }
}

#[test]
fn arbitrary_requests_get_enveloped_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let world = World::new(dir.path());
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let case = (method(), path(), auth(), content_type(), body());
    runner
        .run(&case, |(method, path, auth, content_type, body)| {
            let before = snapshot(world.server.addr, &world.admin);
            let reply = world.send(method, &path, &auth, content_type.as_deref(), &body);
            prop_assert!(reply.status != 0, "no response to {method} {path}");
            prop_assert!(
                reply.status < 500 || reply.status == 503 || reply.status == 507,
                "{method} {path} -> {}: {}",
                reply.status,
                reply.body
            );
            if reply.status >= 400 && method != "HEAD" {
                let envelope: Value = serde_json::from_str(&reply.body).map_err(|e| {
                    TestCaseError::fail(format!(
                        "{method} {path} -> {} not JSON ({e}): {}",
                        reply.status, reply.body
                    ))
                })?;
                prop_assert!(
                    envelope["errors"][0]["code"].is_i64(),
                    "{method} {path}: {}",
                    reply.body
                );
                prop_assert_eq!(&envelope["meta"]["api_status"], "stable");
            }
            if !(200..300).contains(&reply.status) {
                prop_assert_eq!(
                    before,
                    snapshot(world.server.addr, &world.admin),
                    "{} {} -> {} changed state",
                    method,
                    path,
                    reply.status
                );
            }
            Ok(())
        })
        .unwrap();
    let alive = request(world.server.addr, "GET", "/livez", &[], "");
    assert_eq!(alive.status, 200);
}

#[test]
fn no_response_carries_the_api_key_a_password_or_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let environment = [("WA_API_KEY", API_KEY), ("COREQ_ADMIN_PASSWORD", ADMIN_PASSWORD)];
    let server = TestServer::start(dir.path(), session::env_with(&environment));
    let admin = session::admin(server.addr);
    let user = session::user(server.addr, &admin, "alice");
    let tokens = [admin.trim_start_matches("Bearer "), user.trim_start_matches("Bearer ")];
    let secrets = [API_KEY, ADMIN_PASSWORD, USER_PASSWORD, tokens[0], tokens[1]];
    let credentials = [
        None,
        Some(admin.clone()),
        Some(user.clone()),
        Some(session::apikey()),
        Some(format!("Apikey {API_KEY}x")),
        Some(format!("Bearer {}x", tokens[0])),
        Some(session::basic("admin", &format!("{ADMIN_PASSWORD}x"))),
        Some(session::basic("alice", USER_PASSWORD)),
    ];
    // Bodies that put the secrets where an error message might echo them.
    let bodies = [
        String::new(),
        format!(r#"{{"new_password": ["{ADMIN_PASSWORD}"]}}"#),
        format!(r#"{{"username": "bob", "password": {{"x": "{USER_PASSWORD}"}}}}"#),
        format!(r#"{{"username": "bob", "password": "{USER_PASSWORD}", "extra": 1}}"#),
        format!(r#"{{"webhooks": {{"signing_secret": "{API_KEY}", "url": "ftp://{ADMIN_PASSWORD}@x"}}}}"#),
        format!(r#"{{"log_level": "{API_KEY}"}}"#),
        format!(r#"{{"password": "{USER_PASSWORD}"#),
    ];
    let methods = ["GET", "POST", "PATCH", "DELETE", "PUT"];
    // Logging out and deleting alice revoke the tokens the other requests use: last.
    let mut paths: Vec<&str> = vec!["/nope", "/v1/users/nobody", "/v1/users/alice/x"];
    for (_, path) in ROUTES {
        if !paths.contains(path) && !["/v1/users/logout", "/v1/users/alice"].contains(path) {
            paths.push(path);
        }
    }
    paths.extend(["/v1/users/alice", "/v1/users/logout"]);
    let mut checked = 0;
    for path in paths {
        for method in methods {
            for auth in &credentials {
                for body in &bodies {
                    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
                    let reply = request(server.addr, method, path, &headers, body);
                    // A successful login carries a new token of its own, never one of these.
                    let text = format!("{}\n{}", reply.head, reply.body);
                    for secret in secrets {
                        assert!(
                            !text.contains(secret),
                            "{method} {path} {auth:?} {body} -> {}: leaked a secret: {text}",
                            reply.status
                        );
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 3000, "{checked}");
}
