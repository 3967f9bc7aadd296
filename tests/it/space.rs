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

#[test]
fn a_large_upload_refused_before_its_body_is_read_is_taken_in_full_and_answered_507() {
    use std::io::{Read, Write};

    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &NO_ROOM);
    let admin = session::admin(server.addr);
    let body = format!(r#"{{"callbacks":[{}]}}"#, " ".repeat(64 << 20));
    // As most clients do: send the whole request, then read the answer. Closing on the unread
    // body would reset the connection and fail the send with a broken pipe.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = format!(
        "POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).expect("the whole body was taken");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the answer, then the end");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 507"), "{answer}");
    assert!(answer.contains("1014"), "{answer}");
}

/// The first WAL segment in `dir`.
fn wal_segment(dir: &std::path::Path) -> std::path::PathBuf {
    std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .min()
        .expect("a segment")
}

#[test]
fn a_write_that_finds_no_space_answers_507_1014_not_500() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let dir = tempfile::tempdir().unwrap();
    let addr = crate::http::free_addr();
    let mut child = crate::front::spawn(dir.path(), addr, &[], None);
    let admin = session::admin(addr);
    // Every write to the active segment fails with ENOSPC from now on.
    let trace = dir.path().join("strace.out");
    let mut strace = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-e",
            "trace=write,pwrite64,writev",
            "-e",
            "inject=write,pwrite64,writev:error=ENOSPC",
        ])
        .arg("-o")
        .arg(&trace)
        .arg("-P")
        .arg(wal_segment(dir.path()))
        .args(["-p", &child.id().to_string()])
        .stderr(Stdio::null())
        .spawn()
        .expect("strace (apt-get install strace)");
    // strace writes its output file once it has attached.
    let start = Instant::now();
    while !trace.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // It opens the file before it attaches to the threads; give it time to reach them all.
    std::thread::sleep(Duration::from_millis(1000));
    let reply = request(
        addr,
        "POST",
        "/v1/callbacks",
        &[("Authorization", &admin)],
        r#"{"callbacks":[{"a":1}]}"#,
    );
    let _ = strace.kill();
    let _ = strace.wait();
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&trace).unwrap_or_default();
    assert!(log.contains("ENOSPC"), "no write failed: {log}");
    assert_eq!((reply.status, reply.code()), (507, 1014), "{}", reply.body);
}
