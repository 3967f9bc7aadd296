//! Spec §3: under the free-space minimum on the data or log volume, writes get 507/1014 and
//! change nothing; reads (and login, to reach them) keep working. The minimum is set above
//! the machine's free space (`--min-free-mb 1048576`, 1 TiB) instead of filling a disk.

use crate::http::request;
use crate::server::TestServer;
use crate::session;

const NO_ROOM: [&str; 2] = ["--min-free-mb", "1048576"];

#[test]
fn a_write_under_the_free_space_minimum_is_507_1014_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &NO_ROOM);
    let admin = session::admin(server.addr);
    let read = || {
        request(
            server.addr,
            "GET",
            "/v1/settings/application",
            &[("Authorization", &admin)],
            "",
        )
    };
    let before = read().json()["settings"].clone();
    let reply = request(
        server.addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", &admin)],
        r#"{"heartbeat_interval": 9}"#,
    );
    assert_eq!((reply.status, reply.code()), (507, 1014), "{}", reply.body);
    assert!(
        reply.json()["errors"][0]["details"]
            .as_str()
            .unwrap()
            .starts_with("data")
    );
    assert_eq!(read().json()["settings"], before);
}

#[test]
fn every_kind_of_write_is_refused_while_space_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &NO_ROOM);
    let admin = session::admin(server.addr);
    for (method, path, body) in [
        (
            "POST",
            "/v1/users",
            r#"{"username":"alice","password":"Us3r-Passw0rd!"}"#,
        ),
        ("DELETE", "/v1/users/alice", ""),
        ("DELETE", "/v1/settings/application", ""),
    ] {
        let reply = request(server.addr, method, path, &[("Authorization", &admin)], body);
        assert_eq!(
            (reply.status, reply.code()),
            (507, 1014),
            "{method} {path}: {}",
            reply.body
        );
    }
    let alice = request(server.addr, "GET", "/v1/users/alice", &[("Authorization", &admin)], "");
    assert_eq!(alice.status, 404, "the refused POST created alice");
}

#[test]
fn reads_and_login_keep_working_while_space_is_short() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &NO_ROOM);
    let admin = session::admin(server.addr);
    for path in [
        "/v1/settings/application",
        "/v1/support",
        "/v1/health",
        "/v1/users/admin",
    ] {
        let reply = request(server.addr, "GET", path, &[("Authorization", &admin)], "");
        assert_eq!(reply.status, 200, "{path}: {}", reply.body);
    }
    let logout = request(
        server.addr,
        "POST",
        "/v1/users/logout",
        &[("Authorization", &admin)],
        "",
    );
    assert_eq!(logout.status, 200, "{}", logout.body);
}
