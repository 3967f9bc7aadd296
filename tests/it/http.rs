//! A tiny HTTP/1.1 client over a raw TCP stream: enough for GET probes, with no TLS stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Reply {
    pub status: u16,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw)?;
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok(Reply { status, body })
}

/// Polls `GET path` until it answers `status`, for at most `limit`.
pub fn wait_for(addr: SocketAddr, path: &str, status: u16, limit: Duration) -> Reply {
    let start = Instant::now();
    loop {
        if let Ok(reply) = get(addr, path)
            && reply.status == status
        {
            return reply;
        }
        assert!(start.elapsed() < limit, "{path} did not answer {status} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}
