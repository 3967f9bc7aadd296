//! Credentials for tests: an admin whose password comes from `COREQ_ADMIN_PASSWORD` (so no
//! forced change), a monitoring API key, and logins.

use std::net::SocketAddr;

use base64::Engine;
use coreq::config::EnvSecrets;

use crate::http::request;

pub const ADMIN_PASSWORD: &str = "Adm1n-Passw0rd!";
pub const API_KEY: &str = "monitoring-key-0123456789";
pub const USER_PASSWORD: &str = "Us3r-Passw0rd!";

/// An admin password and an API key, and `extra` as the process environment.
pub fn env_with(environment: &[(&str, &str)]) -> EnvSecrets {
    EnvSecrets {
        api_key: Some(API_KEY.into()),
        admin_password: Some(ADMIN_PASSWORD.into()),
        environment: environment
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

pub fn env() -> EnvSecrets {
    env_with(&[])
}

pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Logs in and returns the `Authorization` value `Bearer <token>`.
pub fn bearer(addr: SocketAddr, user: &str, password: &str) -> String {
    let reply = request(
        addr,
        "POST",
        "/v1/users/login",
        &[("Authorization", &basic(user, password))],
        "",
    );
    assert_eq!(reply.status, 200, "login {user}: {}", reply.body);
    format!("Bearer {}", reply.json()["users"][0]["token"].as_str().expect("token"))
}

pub fn admin(addr: SocketAddr) -> String {
    bearer(addr, "admin", ADMIN_PASSWORD)
}

/// Creates `name` with `ROLE_USER` and returns its Bearer value.
pub fn user(addr: SocketAddr, admin: &str, name: &str) -> String {
    let body = format!(r#"{{"username":"{name}","password":"{USER_PASSWORD}"}}"#);
    let reply = request(addr, "POST", "/v1/users", &[("Authorization", admin)], &body);
    assert_eq!(reply.status, 201, "create {name}: {}", reply.body);
    bearer(addr, name, USER_PASSWORD)
}

pub fn apikey() -> String {
    format!("Apikey {API_KEY}")
}
