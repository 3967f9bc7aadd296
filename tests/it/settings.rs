//! The settings node over real HTTP (spec §4): every rule, one test each; each refused patch
//! must leave the settings exactly as they were.

use base64::Engine;
use coreq::config::EnvSecrets;
use serde_json::{Value, json};

use crate::http::{self, Reply, request};
use crate::server::{TestServer, spawn_binary};

const PASSWORD: &str = "Adm1n-Passw0rd!";

fn admin(addr: std::net::SocketAddr) -> String {
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"))
    );
    let mut reply = request(addr, "POST", "/v1/users/login", &[("Authorization", &basic)], "");
    if reply.status != 200 {
        let first = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("admin:secret")
        );
        reply = request(
            addr,
            "POST",
            "/v1/users/login",
            &[("Authorization", &first)],
            &format!(r#"{{"new_password":"{PASSWORD}"}}"#),
        );
    }
    assert_eq!(reply.status, 200, "{}", reply.body);
    format!("Bearer {}", reply.json()["users"][0]["token"].as_str().unwrap())
}

fn get(addr: std::net::SocketAddr, auth: &str) -> Value {
    let reply = request(addr, "GET", "/v1/settings/application", &[("Authorization", auth)], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.json()["settings"]["application"].clone()
}

fn patch(addr: std::net::SocketAddr, auth: &str, body: &Value) -> Reply {
    request(
        addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", auth)],
        &body.to_string(),
    )
}

/// Asserts that `body` is refused with `code`, naming `field`, and that nothing changed.
fn assert_refused(body: Value, code: i64, field: &str) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    let before = get(server.addr, &auth);
    let reply = patch(server.addr, &auth, &body);
    assert_eq!((reply.status, reply.code()), (400, code), "{body}: {}", reply.body);
    let details = reply.json()["errors"][0]["details"].as_str().unwrap().to_owned();
    assert!(details.starts_with(field), "{details:?} does not name {field}");
    assert_eq!(get(server.addr, &auth), before, "a refused patch changed the settings");
}

macro_rules! refused {
    ($($name:ident: $body:expr => $code:expr, $field:expr;)*) => {
        $( #[test] fn $name() { assert_refused($body, $code, $field) } )*
    };
}

refused! {
    backoff_of_zero_is_refused: json!({"callback_backoff_delay_ms": 0}) => 1009, "callback_backoff_delay_ms";
    backoff_as_non_decimal_string_is_refused: json!({"callback_backoff_delay_ms": "3s"}) => 1009, "callback_backoff_delay_ms";
    backoff_above_its_maximum_is_refused: json!({"callback_backoff_delay_ms": 5000, "max_callback_backoff_delay_ms": 4000}) => 1009, "callback_backoff_delay_ms";
    max_backoff_of_zero_is_refused: json!({"max_callback_backoff_delay_ms": 0}) => 1009, "max_callback_backoff_delay_ms";
    callback_persist_must_be_a_bool: json!({"callback_persist": "yes"}) => 1009, "callback_persist";
    heartbeat_of_zero_is_refused: json!({"heartbeat_interval": 0}) => 1009, "heartbeat_interval";
    unhealthy_not_above_heartbeat_is_refused: json!({"heartbeat_interval": 10, "unhealthy_interval": 10}) => 1009, "unhealthy_interval";
    unknown_auto_download_kind_is_refused: json!({"media": {"auto_download": ["image", "gif"]}}) => 1009, "media.auto_download";
    repeated_auto_download_kind_is_refused: json!({"media": {"auto_download": ["image", "image"]}}) => 1009, "media.auto_download";
    webhook_url_must_be_absolute: json!({"webhooks": {"url": "/relative"}}) => 1009, "webhooks.url";
    plain_http_webhook_is_refused_without_the_opt_in: json!({"webhooks": {"url": "http://example.test/hook"}}) => 1009, "webhooks.url";
    webhook_url_of_another_scheme_is_refused: json!({"webhooks": {"url": "ftp://example.test/hook"}}) => 1009, "webhooks.url";
    max_concurrent_requests_outside_the_allowed_set_is_refused: json!({"webhooks": {"max_concurrent_requests": 7}}) => 1009, "webhooks.max_concurrent_requests";
    message_filter_must_be_a_bool: json!({"webhooks": {"message": {"read": 1}}}) => 1009, "webhooks.message.read";
    sent_status_contradicting_the_filter_is_refused: json!({"sent_status": true, "webhooks": {"message": {"sent": false}}}) => 1009, "sent_status";
    log_level_outside_the_list_is_refused: json!({"log_level": "debug"}) => 1009, "log_level";
    pass_through_cannot_be_enabled: json!({"pass_through": true}) => 1009, "pass_through";
    wa_id_is_read_only: json!({"wa_id": "15551234567"}) => 1009, "wa_id";
    unknown_field_is_1010: json!({"callback_persistence": true}) => 1010, "callback_persistence";
    unknown_nested_field_is_1010_with_its_path: json!({"webhooks": {"uri": "https://x.test"}}) => 1010, "webhooks.uri";
    a_valid_field_beside_an_invalid_one_is_not_applied: json!({"verbose_logging": true, "heartbeat_interval": -1}) => 1009, "heartbeat_interval";
}

#[test]
fn get_shows_every_field_with_its_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let settings = get(server.addr, &admin(server.addr));
    let expected = json!({
        "callback_persist": true, "callback_backoff_delay_ms": 3000, "max_callback_backoff_delay_ms": 900000,
        "garbagecollector_enable": {"messages": true, "media": false}, "heartbeat_interval": 5, "unhealthy_interval": 30,
        "media": {"auto_download": []}, "notify_user_change_number": false, "show_security_notifications": false,
        "skip_referral_media_download": false, "axolotl_context_striping_disabled": false,
        "webhooks": {"max_concurrent_requests": 6, "message": {"sent": true, "delivered": true, "read": true}},
        "sent_status": true, "verbose_logging": false, "log_level": "info", "pass_through": false,
    });
    assert_eq!(settings, expected);
}

#[test]
fn patch_applies_every_given_field_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    let body = json!({
        "callback_backoff_delay_ms": "2500",
        "webhooks": {"url": "https://hooks.example.test/in?secret=a%20b&x=1", "max_concurrent_requests": 24, "message": {"read": false}},
        "media": {"auto_download": ["image", "voice"]},
        "db_garbagecollector_enable": true,
    });
    let reply = patch(server.addr, &auth, &body);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.json()["meta"]["api_status"], "stable");
    let s = get(server.addr, &auth);
    assert_eq!(s["callback_backoff_delay_ms"], 2500);
    assert_eq!(
        s["webhooks"]["url"], "https://hooks.example.test/in?secret=a%20b&x=1",
        "query string kept verbatim"
    );
    assert_eq!(s["webhooks"]["max_concurrent_requests"], 24);
    assert_eq!(
        s["webhooks"]["message"],
        json!({"sent": true, "delivered": true, "read": false})
    );
    assert_eq!(s["media"]["auto_download"], json!(["image", "voice"]));
    assert_eq!(s["db_garbagecollector_enable"], true);
    assert_eq!(s["heartbeat_interval"], 5, "absent fields unchanged");
}

#[test]
fn sent_status_is_an_alias_of_the_sent_filter() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    assert_eq!(patch(server.addr, &auth, &json!({"sent_status": false})).status, 200);
    let s = get(server.addr, &auth);
    assert_eq!(
        (s["sent_status"].clone(), s["webhooks"]["message"]["sent"].clone()),
        (json!(false), json!(false))
    );
}

#[test]
fn signing_secret_is_write_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    assert_eq!(
        patch(
            server.addr,
            &auth,
            &json!({"webhooks": {"signing_secret": "s3cr3t-value"}})
        )
        .status,
        200
    );
    let reply = request(
        server.addr,
        "GET",
        "/v1/settings/application",
        &[("Authorization", &auth)],
        "",
    );
    assert!(!reply.body.contains("s3cr3t-value"));
    assert_eq!(
        reply.json()["settings"]["application"]["webhooks"]["signing_secret"],
        "****"
    );
}

#[test]
fn delete_restores_every_default() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    let defaults = get(server.addr, &auth);
    assert_eq!(
        patch(
            server.addr,
            &auth,
            &json!({"verbose_logging": true, "webhooks": {"url": "https://h.test/"}})
        )
        .status,
        200
    );
    let reply = request(
        server.addr,
        "DELETE",
        "/v1/settings/application",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(reply.status, 200);
    assert_eq!(get(server.addr, &auth), defaults);
}

#[test]
fn role_user_cannot_read_or_change_settings() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    let created = request(
        server.addr,
        "POST",
        "/v1/users",
        &[("Authorization", &auth)],
        r#"{"username":"carol","password":"Us3r-Passw0rd!"}"#,
    );
    assert_eq!(created.status, 201);
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("carol:Us3r-Passw0rd!")
    );
    let login = request(server.addr, "POST", "/v1/users/login", &[("Authorization", &basic)], "");
    let user = format!("Bearer {}", login.json()["users"][0]["token"].as_str().unwrap());
    for method in ["GET", "PATCH", "DELETE"] {
        let reply = request(
            server.addr,
            method,
            "/v1/settings/application",
            &[("Authorization", &user)],
            if method == "PATCH" { "{}" } else { "" },
        );
        assert_eq!((reply.status, reply.code()), (403, 1005), "{method}");
    }
    let unauthenticated = request(server.addr, "GET", "/v1/settings/application", &[], "");
    assert_eq!((unauthenticated.status, unauthenticated.code()), (401, 1005));
}

#[test]
fn malformed_patch_body_is_1025_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), EnvSecrets::default());
    let auth = admin(server.addr);
    let before = get(server.addr, &auth);
    let reply = request(
        server.addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", &auth)],
        "{\"verbose_logging\": tru",
    );
    assert_eq!((reply.status, reply.code()), (400, 1025));
    assert_eq!(get(server.addr, &auth), before);
}

#[test]
fn settings_survive_a_sigkill_right_after_the_200() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn_binary(dir.path(), addr);
    let auth = admin(addr);
    let reply = patch(
        addr,
        &auth,
        &json!({"webhooks": {"url": "https://after.kill.test/hook"}, "heartbeat_interval": 7}),
    );
    assert_eq!(reply.status, 200);
    child.kill().unwrap(); // SIGKILL, at once
    child.wait().unwrap();
    let mut child = spawn_binary(dir.path(), addr);
    let s = get(addr, &admin(addr));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(s["webhooks"]["url"], "https://after.kill.test/hook");
    assert_eq!(s["heartbeat_interval"], 7);
}
