//! `POST /v1/messages` and `GET /v1/messages/{id}` over real HTTP (spec §7). The validation
//! rules themselves are unit-tested in `src/messages/validate/tests.rs`; here: the envelope,
//! the id, durability, and that a refusal stores nothing.

use std::net::SocketAddr;

use serde_json::Value;

use crate::http::{free_addr, request};
use crate::server::{TestServer, respawn};
use crate::session::{self, admin};

const TEXT: &str = r#"{"to":"15550100000","type":"text","text":{"body":"hello"}}"#;

fn send(addr: SocketAddr, token: &str, body: &str) -> crate::http::Reply {
    request(addr, "POST", "/v1/messages", &[("Authorization", token)], body)
}

fn message(addr: SocketAddr, token: &str, id: &str) -> crate::http::Reply {
    request(
        addr,
        "GET",
        &format!("/v1/messages/{id}"),
        &[("Authorization", token)],
        "",
    )
}

fn id_of(reply: &crate::http::Reply) -> String {
    assert_eq!(reply.status, 201, "{}", reply.body);
    reply.json()["messages"][0]["id"].as_str().unwrap().to_owned()
}

#[test]
fn an_accepted_message_gets_an_opaque_id_and_reads_back_pending() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let token = admin(server.addr);
    let id = id_of(&send(server.addr, &token, TEXT));
    assert!(id.len() <= 128 && id.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)));

    let reply = message(server.addr, &token, &id);
    assert_eq!(reply.status, 200, "{}", reply.body);
    let shown = &reply.json()["messages"][0];
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["to"], "15550100000");
    assert_eq!(shown["type"], "text");
    assert_eq!(shown["status"], "pending");
    assert_eq!(shown["statuses"], Value::Array(vec![]));
    assert!(reply.json()["meta"]["version"].is_string());
}

#[test]
fn two_messages_get_different_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let token = admin(server.addr);
    assert_ne!(
        id_of(&send(server.addr, &token, TEXT)),
        id_of(&send(server.addr, &token, TEXT))
    );
}

#[test]
fn a_text_too_long_is_400_1001_naming_text_body() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let token = admin(server.addr);
    let body = format!(r#"{{"to":"15550100000","text":{{"body":"{}"}}}}"#, "a".repeat(4097));
    let reply = send(server.addr, &token, &body);
    assert_eq!((reply.status, reply.code()), (400, 1001), "{}", reply.body);
    assert!(
        reply.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .contains("text.body")
    );
}

#[test]
fn a_missing_field_is_400_1008_and_a_bad_value_400_1009() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let token = admin(server.addr);
    let missing = send(server.addr, &token, r#"{"type":"text","text":{"body":"hi"}}"#);
    assert_eq!((missing.status, missing.code()), (400, 1008), "{}", missing.body);
    let bad = send(server.addr, &token, r#"{"to":"15550100000","type":"fax"}"#);
    assert_eq!((bad.status, bad.code()), (400, 1009), "{}", bad.body);
}

#[test]
fn malformed_json_is_400_1025() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let reply = send(server.addr, &admin(server.addr), r#"{"to":"#);
    assert_eq!((reply.status, reply.code()), (400, 1025), "{}", reply.body);
}

#[test]
fn messages_need_a_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let reply = request(server.addr, "POST", "/v1/messages", &[], TEXT);
    assert_eq!((reply.status, reply.code()), (401, 1005), "{}", reply.body);
    let apikey = session::apikey();
    let reply = request(server.addr, "POST", "/v1/messages", &[("Authorization", &apikey)], TEXT);
    assert_eq!(reply.status, 401, "{}", reply.body);
}

#[test]
fn an_unknown_message_is_404_1006() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let reply = message(server.addr, &admin(server.addr), "nope");
    assert_eq!((reply.status, reply.code()), (404, 1006), "{}", reply.body);
}

#[test]
fn an_accepted_message_survives_a_sigkill_right_after_its_201() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = respawn(dir.path(), addr);
    let token = admin(addr);
    let ids: Vec<String> = (0..20).map(|_| id_of(&send(addr, &token, TEXT))).collect();
    child.kill().unwrap();
    child.wait().unwrap();

    let mut child = respawn(dir.path(), addr);
    let token = admin(addr);
    for id in &ids {
        let reply = message(addr, &token, id);
        assert_eq!(reply.status, 200, "{id} was acknowledged and lost: {}", reply.body);
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

fn messages_waiting(addr: SocketAddr, token: &str) -> serde_json::Value {
    let reply = request(addr, "GET", "/v1/stats/db", &[("Authorization", token)], "");
    reply.json()["stats"]["db"]["db_pending_messages"]["data"][0]["value"].clone()
}

#[test]
fn a_refused_message_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), session::env());
    let token = admin(server.addr);
    let reply = send(server.addr, &token, r#"{"to":"15550100000","type":"text","text":{}}"#);
    assert_eq!((reply.status, reply.code()), (400, 1008), "{}", reply.body);
    assert_eq!(messages_waiting(server.addr, &token), 0.0);
    id_of(&send(server.addr, &token, TEXT));
    assert_eq!(messages_waiting(server.addr, &token), 1.0);
}
