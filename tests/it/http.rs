//! A tiny HTTP/1.1 client over a raw TCP stream: enough for GET probes, with no TLS stack.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub struct Reply {
    pub status: u16,
    /// Status line and headers.
    pub head: String,
    pub body: String,
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Reply> {
    try_request(addr, "GET", path, &[], b"")
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
        assert!(
            start.elapsed() < limit,
            "{path} did not answer {status} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Sends one request with `headers` and `body`; returns status and body.
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let content_type: &[(&str, &str)] = if body.is_empty() {
        &[]
    } else {
        &[("Content-Type", "application/json")]
    };
    let all: Vec<(&str, &str)> = headers.iter().chain(content_type).copied().collect();
    request_bytes(addr, method, path, &all, body.as_bytes())
}

/// Sends one request exactly as given (no headers added but Host, Connection and
/// Content-Length); returns status, head and body.
pub fn request_bytes(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request(addr, method, path, headers, body).expect("request")
}

/// [`request_bytes`], with a refused or broken connection as an error (for servers that come
/// and go).
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413, 401) and close before reading the whole body.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    // A reset after the answer (the server closing on an unread body) still leaves the answer.
    if let Err(e) = stream.read_to_end(&mut raw)
        && raw.is_empty()
    {
        return Err(e);
    }
    let raw = String::from_utf8_lossy(&raw);
    let status = raw.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    Ok(Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The value of response header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The On-Premises error code of an error reply.
    pub fn code(&self) -> i64 {
        self.json()["errors"][0]["code"]
            .as_i64()
            .unwrap_or_else(|| panic!("no error code in {}", self.body))
    }
}
