//! Garbage collection of the message store (spec §9) over real HTTP: what a collection
//! deletes, what it must never touch, and its reply and completion callback.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hook::{self, Answer, Hook};
use crate::http::request;
use crate::server::TestServer;
use crate::session;

const TEXT: &str = r#"{"to":"15551234567","text":{"body":"hello"}}"#;

struct Service {
    server: TestServer,
    admin: String,
}

impl Service {
    /// coreq with the sim gateway and a retention of `retention_secs`.
    fn start(dir: &std::path::Path, retention_secs: &str) -> Service {
        Service::with_sim_delay(dir, retention_secs, "10")
    }

    fn with_sim_delay(dir: &std::path::Path, retention_secs: &str, sim_delay_ms: &str) -> Service {
        let flags = [
            "--allow-http-webhooks",
            "--gateway",
            "sim",
            "--sim-delay-ms",
            sim_delay_ms,
            "--gateway-backoff-ms",
            "50",
            "--message-retention-secs",
            retention_secs,
        ];
        let server = TestServer::start_with(dir, session::env(), &flags);
        let admin = session::admin(server.addr);
        Service { server, admin }
    }

    fn call(&self, method: &str, path: &str, body: &str) -> crate::http::Reply {
        request(self.server.addr, method, path, &[("Authorization", &self.admin)], body)
    }

    fn send(&self) -> String {
        let reply = self.call("POST", "/v1/messages", TEXT);
        assert_eq!(reply.status, 201, "{}", reply.body);
        reply.json()["messages"][0]["id"].as_str().unwrap().to_owned()
    }

    fn status(&self, id: &str) -> Option<String> {
        let reply = self.call("GET", &format!("/v1/messages/{id}"), "");
        (reply.status == 200).then(|| reply.json()["messages"][0]["status"].as_str().unwrap().to_owned())
    }

    fn wait_status(&self, id: &str, status: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.status(id).as_deref() != Some(status) {
            assert!(Instant::now() < deadline, "{id} never reached {status}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn webhook(&self, hook: &Hook) {
        let patch = json!({ "webhooks": { "url": hook.url() }, "callback_backoff_delay_ms": 100 });
        let reply = self.call("PATCH", "/v1/settings/application", &patch.to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    fn pending_callbacks(&self) -> Vec<Value> {
        let reply = self.call("GET", "/v1/callbacks?state=pending&limit=1000", "");
        reply.json()["callbacks"].as_array().unwrap().clone()
    }

    fn set_sim_link(&self, status: &str) {
        let reply = self.call("PUT", "/v1/sim/gateway", &json!({ "status": status }).to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    /// Starts a collection and checks the reply.
    fn collect(&self) {
        let reply = self.call("PUT", "/v1/services/message/gc", "");
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.json()["services"],
            json!({ "message": { "gc": { "status": "processing" } } })
        );
    }
}

/// Waits for the completion callback and returns its `messages_deleted`.
fn gc_completion(hook: &Hook) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for body in hook.bodies() {
            let v: Value = serde_json::from_str(&body).unwrap();
            if let Some(gc) = v["services"][0]["message"]["gc"].as_object() {
                assert_eq!(gc["status"], "complete");
                return gc["messages_deleted"].as_u64().unwrap();
            }
        }
        assert!(Instant::now() < deadline, "no completion callback: {:?}", hook.bodies());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn gc_deletes_finished_messages_older_than_the_retention_and_reports_how_many() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::start(dir.path(), "1");
    service.webhook(&hook);
    let ids = [service.send(), service.send()];
    for id in &ids {
        service.wait_status(id, "read");
    }
    std::thread::sleep(Duration::from_millis(1100));
    service.collect();
    assert_eq!(gc_completion(&hook), 2);
    for id in &ids {
        assert_eq!(service.status(id), None, "{id} is still there");
    }
}

#[test]
fn gc_keeps_finished_messages_younger_than_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::start(dir.path(), "3600");
    service.webhook(&hook);
    let id = service.send();
    service.wait_status(&id, "read");
    service.collect();
    assert_eq!(gc_completion(&hook), 0);
    assert_eq!(service.status(&id).as_deref(), Some("read"));
}

#[test]
fn gc_never_deletes_a_message_still_waiting_for_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    let service = Service::start(dir.path(), "1");
    service.webhook(&hook);
    service.set_sim_link("disconnected");
    let id = service.send();
    std::thread::sleep(Duration::from_millis(1100));
    service.collect();
    assert_eq!(gc_completion(&hook), 0);
    assert_eq!(service.status(&id).as_deref(), Some("pending"));
}

#[test]
fn gc_never_deletes_a_message_sent_but_not_yet_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let hook = Hook::http(hook::ok);
    // `sent` comes 1 s after the gateway accepts, `delivered` 1 s after that.
    let service = Service::with_sim_delay(dir.path(), "1", "1000");
    service.webhook(&hook);
    let id = service.send();
    service.wait_status(&id, "sent");
    service.set_sim_link("disconnected");
    service.collect();
    assert_eq!(gc_completion(&hook), 0);
    assert_eq!(service.status(&id).as_deref(), Some("sent"));
}

#[test]
fn gc_leaves_pending_callbacks_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let failing = Hook::http(|_| Answer::Status(500));
    let service = Service::start(dir.path(), "1");
    service.webhook(&failing);
    let id = service.send();
    service.wait_status(&id, "read");
    std::thread::sleep(Duration::from_millis(1100));
    let before: Vec<Value> = service.pending_callbacks().iter().map(|c| c["id"].clone()).collect();
    assert_eq!(before.len(), 3, "sent, delivered, read are pending");
    service.collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while service.status(&id).is_some() {
        assert!(Instant::now() < deadline, "the finished message was not collected");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after: Vec<Value> = service.pending_callbacks().iter().map(|c| c["id"].clone()).collect();
    assert_eq!(
        after[..3],
        before[..],
        "the status callbacks are still pending, first in line"
    );
}

#[test]
fn only_an_admin_may_start_a_collection() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(dir.path(), "1");
    let user = session::user(service.server.addr, &service.admin, "operator1");
    let reply = request(
        service.server.addr,
        "PUT",
        "/v1/services/message/gc",
        &[("Authorization", &user)],
        "",
    );
    assert_eq!((reply.status, reply.code()), (403, 1005), "{}", reply.body);
}
