//! The HTTP front against hostile or careless clients (spec §14), on the real binary: slowloris,
//! an open-file limit filled with idle connections, a shutdown with idle and stalled
//! connections, SIGHUP, many large uploads at once, a large body refused before it is read.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::{self, request};
use crate::server::TestServer;
use crate::session;

/// `coreq serve` on `addr` over `dir` with `args`, the test admin password, and (when given)
/// its open-file limit set to `nofile` (soft and hard) before it starts; waits until ready.
pub fn spawn(dir: &Path, addr: SocketAddr, args: &[&str], nofile: Option<u64>) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_coreq"));
    command
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .args(args)
        .env("COREQ_ADMIN_PASSWORD", session::ADMIN_PASSWORD)
        .env_remove("COREQ_LOG")
        .stderr(Stdio::null());
    if let Some(limit) = nofile {
        // SAFETY: between fork and exec only setrlimit runs, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    }
    let child = Running(command.spawn().expect("spawn coreq"));
    http::wait_for(addr, "/readyz", 200, Duration::from_secs(30));
    child
}

/// A child process killed (if still running) when the test ends, passed or failed.
pub struct Running(pub Child);

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends `signal` to `child`.
pub fn signal(child: &Child, signal: i32) {
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, signal) };
}

/// Waits up to `limit` for `child` to exit; its exit status, or `None` if it is still running.
pub fn exited_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A connection the server has closed: a read sees the end or a reset.
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (408, 400) before the close
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    stream.set_nonblocking(true).unwrap();
    stream
}

#[test]
fn slowloris_connections_are_closed_after_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn(dir.path(), addr, &["--header-timeout-ms", "1000"], None);
    let mut loris: Vec<TcpStream> = (0..300).map(|_| connect(addr)).collect();
    for stream in &mut loris {
        let _ = stream.write_all(b"POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\n");
    }
    // Keep trickling one header byte each 200 ms, as slowloris does, for at most 10 s.
    let start = Instant::now();
    let mut open = loris.len();
    while open > 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        open = 0;
        for stream in &mut loris {
            if !closed_by_server(stream) && stream.write_all(b"X").is_ok() {
                open += 1;
            }
        }
    }
    assert_eq!(open, 0, "slowloris connections still open after 10 s");
    assert_eq!(http::get(addr, "/readyz").unwrap().status, 200);
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

/// A batch of one callback with a `len`-byte string.
fn callback_batch(len: usize) -> String {
    format!(r#"{{"callbacks":[{{"pad":"{}"}}]}}"#, "x".repeat(len))
}

#[test]
fn idle_connections_up_to_the_open_file_limit_leave_the_store_able_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    // Small segments and frequent checkpoints: the store opens files while clients hold the rest.
    let args = [
        "--header-timeout-ms",
        "2000",
        "--wal-segment-mb",
        "1",
        "--checkpoint-interval-ms",
        "100",
    ];
    let mut child = spawn(dir.path(), addr, &args, Some(256));
    let admin = session::admin(addr);
    let idle: Vec<TcpStream> = (0..250).map(|_| connect(addr)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let body = callback_batch(200 << 10);
    for i in 0..12 {
        let reply = request(addr, "POST", "/v1/callbacks", &[("Authorization", &admin)], &body);
        assert_eq!(reply.status, 201, "enqueue {i}: {}", reply.body);
    }
    drop(idle);
    assert!(child.try_wait().unwrap().is_none(), "coreq stopped");
    assert_eq!(http::get(addr, "/readyz").unwrap().body, "ok");
    let reply = request(addr, "POST", "/v1/callbacks", &[("Authorization", &admin)], &body);
    assert_eq!(reply.status, 201, "the store no longer writes: {}", reply.body);
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn sigterm_with_idle_and_stalled_connections_exits_zero_after_the_drain() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    // Timeouts far away: only the drain may close these connections.
    let args = [
        "--header-timeout-ms",
        "600000",
        "--idle-timeout-ms",
        "600000",
        "--body-timeout-ms",
        "600000",
        "--shutdown-timeout-ms",
        "1000",
    ];
    let mut child = spawn(dir.path(), addr, &args, None);
    let admin = session::admin(addr);
    let mut held = Vec::new();
    for _ in 0..10 {
        // Idle keep-alive, after one answered request.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\nHost: coreq\r\n\r\n").unwrap();
        let mut buf = [0u8; 256];
        let _ = stream.read(&mut buf).unwrap();
        held.push(stream);
        // Never sent anything.
        held.push(TcpStream::connect(addr).unwrap());
        // Half a request head.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.write_all(b"GET /livez HTTP/1.1\r\nHost:").unwrap();
        held.push(stream);
        // A body that stops half-way.
        let mut stream = TcpStream::connect(addr).unwrap();
        let head = format!(
            "POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"callbacks\":["
        );
        stream.write_all(head.as_bytes()).unwrap();
        held.push(stream);
    }
    std::thread::sleep(Duration::from_millis(300));
    signal(&child, libc::SIGTERM);
    let status = exited_within(&mut child, Duration::from_secs(30));
    if status.is_none() {
        let _ = child.kill();
    }
    assert_eq!(status.and_then(|s| s.code()), Some(0), "held open by idle connections");
}

#[test]
fn sighup_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn(dir.path(), addr, &[], None);
    for _ in 0..3 {
        signal(&child, libc::SIGHUP);
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(child.try_wait().unwrap().is_none(), "SIGHUP stopped coreq");
    assert_eq!(http::get(addr, "/readyz").unwrap().status, 200);
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

/// `/proc/<pid>/status` field `name` (VmHWM: peak resident set; VmRSS: current), in bytes.
fn memory(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name}"));
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib << 10
}

#[test]
fn many_large_uploads_at_once_do_not_grow_memory_by_their_sum() {
    const UPLOADS: usize = 4;
    const BODY: usize = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn(dir.path(), addr, &["--body-budget-mb", "128"], None);
    let admin = session::admin(addr);
    let before = memory(child.id(), "VmRSS");
    // Well-formed JSON the API refuses once it has read it all (an empty batch): every byte is
    // read and held, nothing is written.
    let body = format!(r#"{{"callbacks":[{}]}}"#, " ".repeat(BODY - 16));
    let (bytes, tail) = body.as_bytes().split_at(body.len() - 1024);
    let mut streams: Vec<TcpStream> = (0..UPLOADS)
        .map(|_| {
            let mut stream = TcpStream::connect(addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            let head = format!(
                "POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\nConnection: close\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream
        })
        .collect();
    // All but the last KiB of every body first, from one thread per upload, then the tails.
    std::thread::scope(|scope| {
        for stream in &mut streams {
            scope.spawn(move || {
                let _ = stream.write_all(bytes);
            });
        }
    });
    let mut statuses = Vec::new();
    for stream in &mut streams {
        let _ = stream.write_all(tail);
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        statuses.push(text.split_whitespace().nth(1).unwrap_or("none").to_owned());
    }
    let peak = memory(child.id(), "VmHWM");
    assert!(statuses.iter().all(|s| s == "400" || s == "503"), "{statuses:?}");
    assert!(statuses.iter().any(|s| s == "400"), "none was read: {statuses:?}");
    // Budget 128 MiB: one 100 MB body at a time (held twice while collected into one buffer).
    assert!(
        peak < before + 3 * BODY as u64,
        "peak RSS {} MiB (from {} MiB)",
        peak >> 20,
        before >> 20
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn memory_is_given_back_after_a_large_upload() {
    const BODY: usize = 100 << 20;
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn(dir.path(), addr, &[], None);
    let admin = session::admin(addr);
    let before = memory(child.id(), "VmRSS");
    // 400 callbacks of 250 kB each, copied one by one, then a refusal at the last item (not an
    // object): the memory of a real batch, without writing it.
    let one = format!(r#"{{"pad":"{}"}}"#, "x".repeat(250_000));
    let body = format!(r#"{{"callbacks":[{},1]}}"#, vec![one; BODY / 250_000].join(","));
    for _ in 0..2 {
        let reply = request(addr, "POST", "/v1/callbacks", &[("Authorization", &admin)], &body);
        assert_eq!(reply.status, 400, "{}", reply.body);
    }
    // The trim runs after the answer, off the async workers: give it a moment.
    let start = Instant::now();
    let mut after = memory(child.id(), "VmRSS");
    while after > before + (BODY as u64) / 4 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        after = memory(child.id(), "VmRSS");
    }
    assert!(
        after < before + (BODY as u64) / 4,
        "RSS {} MiB after the uploads, {} MiB before",
        after >> 20,
        before >> 20
    );
    signal(&child, libc::SIGTERM);
    assert_eq!(
        exited_within(&mut child, Duration::from_secs(20)).and_then(|s| s.code()),
        Some(0)
    );
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_after_the_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &["--body-timeout-ms", "500"]);
    let admin = session::admin(server.addr);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let head = format!(
        "POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"callbacks\":["
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("1025"), "{answer}");
}

#[test]
fn aborting_the_serving_task_closes_the_listener_and_every_connection_at_once() {
    use coreq::listener::{HttpFront, HttpLimits};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let far = Duration::from_secs(600);
    let limits = HttpLimits {
        max_connections: 16,
        header_timeout: far,
        body_timeout: far,
        idle_timeout: far,
        body_budget_bytes: 1 << 20,
        shutdown_timeout: far,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let front = HttpFront::new(limits, None, 0).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = coreq::api::router(coreq::api::AppState::new(None));
        let serving = tokio::spawn(front.serve(listener, router, std::future::pending()));
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /livez HTTP/1.1\r\nHost: coreq\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        assert!(idle.read(&mut buf).await.unwrap() > 0);
        let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
        stalled.write_all(b"GET /livez HTTP/1.1\r\nHost:").await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;

        serving.abort();
        let _ = serving.await;
        for stream in [&mut idle, &mut stalled] {
            let end = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
            assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "still open: {end:?}");
        }
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "still listening");
    });
}

/// Waits up to 10 s for the server to close `stream`.
fn closed_within_10s(stream: &mut TcpStream) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if closed_by_server(stream) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A keep-alive connection that has had one `GET /livez` answered.
fn after_one_request(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(b"GET /livez HTTP/1.1\r\nHost: coreq\r\n\r\n").unwrap();
    let mut buf = [0u8; 512];
    assert!(stream.read(&mut buf).unwrap() > 0);
    stream.set_nonblocking(true).unwrap();
    stream
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--idle-timeout-ms", "500", "--header-timeout-ms", "600000"];
    let server = TestServer::start_with(dir.path(), session::env(), &args);
    let mut stream = after_one_request(server.addr);
    assert!(closed_within_10s(&mut stream), "idle connection kept open");
}

#[test]
fn a_keep_alive_connection_whose_next_head_trickles_is_cut_at_the_header_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--idle-timeout-ms", "600000", "--header-timeout-ms", "500"];
    let server = TestServer::start_with(dir.path(), session::env(), &args);
    let mut stream = after_one_request(server.addr);
    let start = Instant::now();
    let mut closed = false;
    while !closed && start.elapsed() < Duration::from_secs(10) {
        closed = stream.write_all(b"X").is_err() || closed_by_server(&mut stream);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "a trickling head kept the connection open");
}

#[test]
fn a_chunked_body_is_metered_into_the_budget_piece_by_piece_and_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &["--body-budget-mb", "1"]);
    let admin = session::admin(server.addr);
    let body = callback_batch(200 << 10);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "POST /v1/callbacks HTTP/1.1\r\nHost: coreq\r\nConnection: close\r\nAuthorization: {admin}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    for piece in body.as_bytes().chunks(16 << 10) {
        stream.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).unwrap();
        stream.write_all(piece).unwrap();
        stream.write_all(b"\r\n").unwrap();
    }
    stream.write_all(b"0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
}
