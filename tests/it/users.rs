//! The users node over real HTTP (spec §2): login, forced password change, tokens, roles,
//! throttling, and the 401/403 matrix.

use base64::Engine;
use coreq::config::EnvSecrets;

use crate::http::{Reply, request};
use crate::server::TestServer;

const NEW_ADMIN_PASSWORD: &str = "Adm1n-Passw0rd!";
const API_KEY: &str = "monitoring-key-0123456789";

fn env() -> EnvSecrets {
    EnvSecrets {
        api_key: Some(API_KEY.into()),
        ..Default::default()
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn login(server: &TestServer, user: &str, password: &str, body: &str) -> Reply {
    request(
        server.addr,
        "POST",
        "/v1/users/login",
        &[("Authorization", &basic(user, password))],
        body,
    )
}

/// Logs in as admin, changing the default password; returns the Bearer header value.
fn admin_bearer(server: &TestServer) -> String {
    let reply = login(
        server,
        "admin",
        "secret",
        &format!(r#"{{"new_password":"{NEW_ADMIN_PASSWORD}"}}"#),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    format!("Bearer {}", reply.json()["users"][0]["token"].as_str().unwrap())
}

fn create_user(server: &TestServer, admin: &str, name: &str, password: &str) -> Reply {
    request(
        server.addr,
        "POST",
        "/v1/users",
        &[("Authorization", admin)],
        &format!(r#"{{"username":"{name}","password":"{password}"}}"#),
    )
}

fn user_bearer(server: &TestServer, admin: &str) -> String {
    assert_eq!(create_user(server, admin, "carol", "Us3r-Passw0rd!").status, 201);
    let reply = login(server, "carol", "Us3r-Passw0rd!", "");
    format!("Bearer {}", reply.json()["users"][0]["token"].as_str().unwrap())
}

#[test]
fn default_password_login_without_new_password_is_refused_with_1024() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(&server, "admin", "secret", "");
    assert_eq!((reply.status, reply.code()), (401, 1024));
}

#[test]
fn login_with_new_password_issues_a_token_expiring_in_seven_days() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(
        &server,
        "admin",
        "secret",
        &format!(r#"{{"new_password":"{NEW_ADMIN_PASSWORD}"}}"#),
    );
    assert_eq!(reply.status, 200);
    let user = &reply.json()["users"][0];
    assert!(user["token"].as_str().unwrap().len() >= 40);
    let expires = user["expires_after"].as_str().unwrap();
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]+00:00");
    let at = time::PrimitiveDateTime::parse(expires, format).unwrap().assume_utc();
    let days = (at - time::OffsetDateTime::now_utc()).whole_hours() as f64 / 24.0;
    assert!((6.9..=7.0).contains(&days), "{expires} is {days} days away");
    assert_eq!(reply.json()["meta"]["api_status"], "stable");
}

#[test]
fn weak_new_password_is_refused_naming_it_and_the_default_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(&server, "admin", "secret", r#"{"new_password":"weak"}"#);
    assert_eq!((reply.status, reply.code()), (400, 1009));
    assert!(
        reply.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .starts_with("new_password")
    );
    assert_eq!(
        login(&server, "admin", "secret", "").code(),
        1024,
        "the default password still applies"
    );
}

#[test]
fn wrong_password_is_401_1005() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(&server, "admin", "not-it", "");
    assert_eq!((reply.status, reply.code()), (401, 1005));
}

#[test]
fn repeated_failed_logins_are_throttled_with_429_1015() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    for _ in 0..coreq::auth::MAX_FAILED_LOGINS {
        assert_eq!(login(&server, "admin", "wrong", "").status, 401);
    }
    let reply = login(&server, "admin", "secret", "");
    assert_eq!(
        (reply.status, reply.code()),
        (429, 1015),
        "even the right password waits out the window"
    );
}

#[test]
fn unknown_login_body_field_is_1010() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(&server, "admin", "secret", r#"{"new_pasword":"Typo-1234!"}"#);
    assert_eq!((reply.status, reply.code()), (400, 1010));
}

#[test]
fn malformed_login_body_is_1025_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = login(&server, "admin", "secret", "{\"new_password\": }");
    assert_eq!((reply.status, reply.code()), (400, 1025));
    assert!(reply.body.contains("line 1 column"), "{}", reply.body);
}

#[test]
fn tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    server.stop().unwrap();
    let server = TestServer::start(dir.path(), env());
    let reply = request(server.addr, "GET", "/v1/users/admin", &[("Authorization", &admin)], "");
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[test]
fn logout_revokes_that_token_only() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let first = admin_bearer(&server);
    let second = login(&server, "admin", NEW_ADMIN_PASSWORD, "");
    let second = format!("Bearer {}", second.json()["users"][0]["token"].as_str().unwrap());
    assert_eq!(
        request(
            server.addr,
            "POST",
            "/v1/users/logout",
            &[("Authorization", &first)],
            ""
        )
        .status,
        200
    );
    let revoked = request(server.addr, "GET", "/v1/users/admin", &[("Authorization", &first)], "");
    assert_eq!((revoked.status, revoked.code()), (401, 1005));
    assert_eq!(
        request(server.addr, "GET", "/v1/users/admin", &[("Authorization", &second)], "").status,
        200
    );
}

#[test]
fn admin_creates_a_user_who_reads_as_role_user() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let created = create_user(&server, &admin, "dave", "Us3r-Passw0rd!");
    assert_eq!(created.status, 201);
    assert_eq!(created.json()["users"][0]["username"], "dave");
    let read = request(server.addr, "GET", "/v1/users/dave", &[("Authorization", &admin)], "");
    assert_eq!(read.json()["users"][0]["ROLES"], "ROLE_USER");
}

#[test]
fn creating_a_user_validates_each_field_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let cases = [
        (r#"{"password":"Us3r-Passw0rd!"}"#, 1008, "username"),
        (r#"{"username":"erin"}"#, 1008, "password"),
        (r#"{"username":"abc","password":"Us3r-Passw0rd!"}"#, 1009, "username"),
        (r#"{"username":"erin","password":"weakweak"}"#, 1009, "password"),
        (r#"{"username":7,"password":"Us3r-Passw0rd!"}"#, 1009, "username"),
        (
            r#"{"username":"erin","password":"Us3r-Passw0rd!","role":"admin"}"#,
            1010,
            "role",
        ),
    ];
    for (body, code, field) in cases {
        let reply = request(server.addr, "POST", "/v1/users", &[("Authorization", &admin)], body);
        assert_eq!((reply.status, reply.code()), (400, code), "{body}");
        assert!(
            reply.json()["errors"][0]["details"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{}",
            reply.body
        );
    }
    let erin = request(server.addr, "GET", "/v1/users/erin", &[("Authorization", &admin)], "");
    assert_eq!(erin.status, 404, "nothing was created");
}

#[test]
fn an_existing_username_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    assert_eq!(create_user(&server, &admin, "frank", "Us3r-Passw0rd!").status, 201);
    let again = create_user(&server, &admin, "frank", "Other-Passw0rd!");
    assert_eq!((again.status, again.code()), (400, 1009));
}

#[test]
fn deleting_a_user_revokes_their_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let user = user_bearer(&server, &admin);
    assert_eq!(
        request(
            server.addr,
            "DELETE",
            "/v1/users/carol",
            &[("Authorization", &admin)],
            ""
        )
        .status,
        200
    );
    let reply = request(server.addr, "GET", "/v1/users/carol", &[("Authorization", &user)], "");
    assert_eq!((reply.status, reply.code()), (401, 1005));
}

#[test]
fn the_admin_account_cannot_be_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let reply = request(
        server.addr,
        "DELETE",
        "/v1/users/admin",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!((reply.status, reply.code()), (400, 1009));
}

#[test]
fn role_user_on_user_management_is_403() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let user = user_bearer(&server, &admin);
    let create = create_user(&server, &user, "gina", "Us3r-Passw0rd!");
    assert_eq!((create.status, create.code()), (403, 1005));
    let delete = request(
        server.addr,
        "DELETE",
        "/v1/users/admin",
        &[("Authorization", &user)],
        "",
    );
    assert_eq!((delete.status, delete.code()), (403, 1005));
    let other = request(server.addr, "GET", "/v1/users/admin", &[("Authorization", &user)], "");
    assert_eq!((other.status, other.code()), (403, 1005));
    assert_eq!(
        request(server.addr, "GET", "/v1/users/carol", &[("Authorization", &user)], "").status,
        200,
        "a user reads themself"
    );
}

#[test]
fn missing_bad_and_apikey_credentials_are_401_on_user_management() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let apikey = format!("Apikey {API_KEY}");
    for auth in [
        None,
        Some("Bearer not-a-token"),
        Some(apikey.as_str()),
        Some("Basic Zm9vOmJhcg=="),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let reply = request(server.addr, "GET", "/v1/users/admin", &headers, "");
        assert_eq!((reply.status, reply.code()), (401, 1005), "{auth:?}");
    }
}

#[test]
fn an_expired_token_is_401_on_every_node_it_opened() {
    let dir = tempfile::tempdir().unwrap();
    let clock = std::sync::Arc::new(coreq::clock::ManualClock::default());
    let server = TestServer::start_with_clock(dir.path(), crate::session::env(), &[], clock.clone());
    let admin = crate::session::admin(server.addr);
    let paths = [
        "/v1/users/admin",
        "/v1/settings/application",
        "/v1/support",
        "/v1/health",
        "/metrics",
    ];
    clock.advance(std::time::Duration::from_secs(7 * 24 * 3600 - 60));
    for path in paths {
        let reply = request(server.addr, "GET", path, &[("Authorization", &admin)], "");
        assert_eq!(reply.status, 200, "{path} a minute before expiry: {}", reply.body);
    }
    clock.advance(std::time::Duration::from_secs(61));
    for path in paths {
        let reply = request(server.addr, "GET", path, &[("Authorization", &admin)], "");
        assert_eq!((reply.status, reply.code()), (401, 1005), "{path} after expiry");
    }
}

#[test]
fn initial_admin_password_from_the_environment_needs_no_change() {
    let dir = tempfile::tempdir().unwrap();
    let env = EnvSecrets {
        admin_password: Some("Init-Passw0rd!".into()),
        ..Default::default()
    };
    let server = TestServer::start(dir.path(), env);
    assert_eq!(login(&server, "admin", "Init-Passw0rd!", "").status, 200);
    assert_eq!(login(&server, "admin", "secret", "").status, 401);
}

#[test]
fn no_reply_leaks_a_password_or_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let token = admin.trim_start_matches("Bearer ");
    let replies = [
        create_user(&server, &admin, "abc", "Us3r-Passw0rd!"),
        request(server.addr, "GET", "/v1/users/admin", &[("Authorization", &admin)], ""),
        request(server.addr, "GET", "/v1/nothing", &[("Authorization", &admin)], ""),
        login(&server, "admin", NEW_ADMIN_PASSWORD, r#"{"new_password":"x"}"#),
    ];
    for reply in replies {
        for secret in [NEW_ADMIN_PASSWORD, token, API_KEY, "Us3r-Passw0rd!", "argon2"] {
            assert!(!reply.body.contains(secret), "{secret} leaked in {}", reply.body);
        }
    }
}

#[test]
fn body_over_the_limit_is_413_1025_naming_the_limit_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), env());
    let admin = admin_bearer(&server);
    let padding = "x".repeat(coreq::api::error::BODY_LIMIT_BYTES);
    let body = format!(r#"{{"username":"harry","password":"{padding}"}}"#);
    let reply = request(server.addr, "POST", "/v1/users", &[("Authorization", &admin)], &body);
    assert_eq!((reply.status, reply.code()), (413, 1025));
    let limit = coreq::api::error::BODY_LIMIT_BYTES.to_string();
    assert!(reply.body.contains(&limit), "{}", reply.body);
}
