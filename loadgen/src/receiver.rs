//! A webhook receiver for tests and load runs: a real HTTP/1.1 server (hyper) on
//! `127.0.0.1:0`, plain or HTTPS (rustls with ring, certificate from a test CA), whose answer to
//! each request is decided by a replaceable [`Behaviour`], and which records every arrival.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use coreq_loadgen::receiver::{always, Receiver, ReceiverConfig};
//! let receiver = Receiver::start(ReceiverConfig::https(always(200))).await?;
//! // start coreq with COREQ_WEBHOOK_CA=<receiver.ca_path()>, point its webhook at receiver.url()
//! assert!(receiver.wait_for_count(1, std::time::Duration::from_secs(5)).await);
//! receiver.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Tests without a tokio runtime (plain `#[test]`) use [`start_blocking`], which runs the server
//! on a runtime of its own.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::StatusCode;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, LOCATION};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::serve::{CloseConnection, HttpResponse, OwnedDir, Peer, TlsSetup, accept_loop, empty, status};

/// Decides the answer to each request. Called once per request, after its body has been read,
/// from the connection's task: keep it quick (answer slowly with [`Reply::Delay`], not by
/// sleeping here).
pub type Behaviour = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// Bodies above this are refused with 413 and not recorded (coreq's callbacks are ≤ 256 KiB).
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

/// [`Reply::Hang`] gives up (closes the connection) after this, so no task outlives a long run.
const HANG_LIMIT: Duration = Duration::from_secs(3600);

/// One request as the behaviour sees it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Arrival order, from 0 (assigned once the whole body has been read).
    pub index: u64,
    pub method: String,
    pub path_and_query: String,
    /// Names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// Always the full body, even when the receiver does not record bodies.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// How to answer one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This status with an empty body.
    Status(u16),
    /// This status with an empty body, after the delay.
    Delay(Duration, u16),
    /// Close the TCP connection (with an RST) without answering.
    Reset,
    /// This status (301/302/307/308) with a `Location` header.
    Redirect(u16, String),
    /// Never answer (until the client gives up, the receiver shuts down, or an hour passes).
    Hang,
    /// This status with this body (for example a verification handshake's echoed challenge).
    Body(u16, String),
}

impl Reply {
    /// The status code sent, or 0 when none is (reset, hang).
    pub fn status(&self) -> u16 {
        match self {
            Reply::Status(code) | Reply::Delay(_, code) | Reply::Redirect(code, _) | Reply::Body(code, _) => *code,
            Reply::Reset | Reply::Hang => 0,
        }
    }
}

/// A recorded request.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub index: u64,
    /// When the whole request (headers and body) had been read.
    pub at: Instant,
    /// The client's address: requests on one keep-alive connection share it.
    pub peer: SocketAddr,
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    /// Empty unless the receiver records bodies.
    pub body: Vec<u8>,
    /// The status code answered (after any delay), or 0 for a reset or a hang.
    pub reply: u16,
    /// The behaviour's full decision.
    pub answer: Reply,
}

impl Arrival {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

pub struct ReceiverConfig {
    /// HTTPS with a certificate from a test CA, else plain HTTP.
    pub tls: bool,
    /// Keep each request's body in its [`Arrival`] (turn off for big loads).
    pub record_bodies: bool,
    pub behaviour: Behaviour,
    /// Where the CA lives (`ca.pem`, and its key `ca-key.pem`). An existing CA there is reused,
    /// so a coreq started with `COREQ_WEBHOOK_CA=<dir>/ca.pem` trusts every later receiver.
    /// `None`: a fresh CA whose certificate goes to a temporary directory owned by the receiver.
    pub ca_dir: Option<PathBuf>,
}

impl ReceiverConfig {
    /// Plain HTTP, bodies recorded.
    pub fn http(behaviour: Behaviour) -> ReceiverConfig {
        ReceiverConfig {
            tls: false,
            record_bodies: true,
            behaviour,
            ca_dir: None,
        }
    }

    /// HTTPS with a fresh CA, bodies recorded.
    pub fn https(behaviour: Behaviour) -> ReceiverConfig {
        ReceiverConfig {
            tls: true,
            ..ReceiverConfig::http(behaviour)
        }
    }
}

impl Default for ReceiverConfig {
    /// Plain HTTP, bodies recorded, always 200.
    fn default() -> ReceiverConfig {
        ReceiverConfig::http(always(200))
    }
}

/// A behaviour that answers every request with `status`.
pub fn always(status: u16) -> Behaviour {
    Arc::new(move |_: &Request| Reply::Status(status))
}

/// A behaviour that gives every request the same reply.
pub fn always_reply(reply: Reply) -> Behaviour {
    Arc::new(move |_: &Request| reply.clone())
}

/// What the connections share.
struct Shared {
    behaviour: RwLock<Behaviour>,
    next_index: AtomicU64,
    record_bodies: bool,
    record_arrivals: AtomicBool,
    /// In index order (see `record`).
    arrivals: Mutex<Vec<Arrival>>,
    /// Requests recorded so far; a watch so that waiters wake on each one.
    count: watch::Sender<u64>,
}

impl Shared {
    fn decide(&self, request: &Request) -> Reply {
        // Clone the Arc out first: the behaviour then runs without any lock of ours held, so it
        // may even call `set_behaviour`.
        let behaviour = Arc::clone(&self.behaviour.read().unwrap_or_else(PoisonError::into_inner));
        behaviour(request)
    }

    fn record(&self, request: Request, answer: &Reply, at: Instant, peer: SocketAddr) {
        let mut arrivals = self.lock_arrivals();
        if self.record_arrivals.load(Ordering::Relaxed) {
            let arrival = Arrival {
                index: request.index,
                at,
                peer,
                method: request.method,
                path_and_query: request.path_and_query,
                headers: request.headers,
                body: if self.record_bodies { request.body } else { Vec::new() },
                reply: answer.status(),
                answer: answer.clone(),
            };
            // Indices are handed out before the behaviour runs, so two concurrent requests can
            // reach this point out of order: insert in place (almost always at the end).
            let at = arrivals.partition_point(|a| a.index < arrival.index);
            arrivals.insert(at, arrival);
        }
        // Counted under the same lock, so `count()` never exceeds what `arrivals()` shows.
        self.count.send_modify(|count| *count += 1);
    }

    fn lock_arrivals(&self) -> MutexGuard<'_, Vec<Arrival>> {
        // A panic elsewhere while holding the lock leaves a Vec that is still valid.
        self.arrivals.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running receiver. Dropping it stops the server (as [`Receiver::shutdown`] does, without
/// waiting).
pub struct Receiver {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    ca_pem: Option<String>,
    ca_path: Option<PathBuf>,
    /// The temporary directory holding `ca.pem` when the caller gave none; removed on drop.
    _own_dir: Option<OwnedDir>,
    server: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds `127.0.0.1:0` and serves until shut down or dropped. Must be called within a tokio
    /// runtime, whose tasks then serve the connections.
    pub async fn start(config: ReceiverConfig) -> io::Result<Receiver> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let (acceptor, ca) = if config.tls {
            let tls = TlsSetup::new(config.ca_dir.as_deref())?;
            (Some(tls.acceptor), Some(tls.ca))
        } else {
            (None, None)
        };
        let (count, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            behaviour: RwLock::new(config.behaviour),
            next_index: AtomicU64::new(0),
            record_bodies: config.record_bodies,
            record_arrivals: AtomicBool::new(true),
            arrivals: Mutex::new(Vec::new()),
            count,
        });
        let handler = {
            let shared = Arc::clone(&shared);
            move |request, peer| handle(request, Arc::clone(&shared), peer)
        };
        let server = tokio::spawn(accept_loop(listener, acceptor, handler));
        let (ca_pem, ca_path, own_dir) = match ca {
            Some(ca) => (Some(ca.pem), Some(ca.path), ca.own_dir),
            None => (None, None, None),
        };
        Ok(Receiver {
            shared,
            addr,
            tls: config.tls,
            ca_pem,
            ca_path,
            _own_dir: own_dir,
            server: Some(server),
        })
    }

    /// The webhook URL: `http(s)://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("{}/hook", self.base_url())
    }

    /// `http(s)://127.0.0.1:PORT`, for other paths.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) to trust, for an HTTPS receiver.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The file holding [`Receiver::ca_pem`] (for `COREQ_WEBHOOK_CA`), for an HTTPS receiver.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    /// Every arrival recorded so far, in arrival order.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.shared.lock_arrivals().clone()
    }

    /// Requests received so far (counted even while arrivals are not recorded).
    pub fn count(&self) -> u64 {
        *self.shared.count.borrow()
    }

    /// Waits until at least `n` requests were received, or `limit` passed; true if they were.
    pub async fn wait_for_count(&self, n: u64, limit: Duration) -> bool {
        let mut count = self.shared.count.subscribe();
        // `wait_for` fails only once the sender is dropped, and `self` holds it.
        matches!(
            tokio::time::timeout(limit, count.wait_for(|c| *c >= n)).await,
            Ok(Ok(_))
        )
    }

    /// Replaces the behaviour; requests whose body is read from now on get the new one.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.write().unwrap_or_else(PoisonError::into_inner) = behaviour;
    }

    /// Stops (`false`) or resumes keeping an [`Arrival`] per request; counting goes on. For long
    /// loads whose behaviour does its own bookkeeping.
    pub fn set_record_arrivals(&self, on: bool) {
        self.shared.record_arrivals.store(on, Ordering::Relaxed);
    }

    /// Stops accepting and closes every connection (in-flight requests get no answer).
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
            // Cancelled is the expected outcome; a panic in the accept loop has nothing to add.
            let _ = server.await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            // Aborting the accept loop drops its JoinSet, which aborts every connection task.
            server.abort();
        }
    }
}

async fn handle(
    request: hyper::Request<Incoming>,
    shared: Arc<Shared>,
    peer: Peer,
) -> Result<HttpResponse, CloseConnection> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => return Ok(empty(StatusCode::PAYLOAD_TOO_LARGE)),
        Err(_) => return Err(CloseConnection),
    };
    let at = Instant::now();
    let request = Request {
        index: shared.next_index.fetch_add(1, Ordering::Relaxed),
        method: parts.method.as_str().to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
    };
    let answer = shared.decide(&request);
    shared.record(request, &answer, at, peer.addr);
    respond(answer, &peer).await
}

async fn respond(answer: Reply, peer: &Peer) -> Result<HttpResponse, CloseConnection> {
    match answer {
        Reply::Status(code) => Ok(empty(status(code))),
        Reply::Delay(delay, code) => {
            tokio::time::sleep(delay).await;
            Ok(empty(status(code)))
        }
        Reply::Reset => {
            peer.reset_on_close();
            Err(CloseConnection)
        }
        Reply::Redirect(code, location) => {
            let mut response = empty(status(code));
            match HeaderValue::from_str(&location) {
                Ok(value) => {
                    response.headers_mut().insert(LOCATION, value);
                    Ok(response)
                }
                Err(_) => Ok(empty(StatusCode::INTERNAL_SERVER_ERROR)),
            }
        }
        Reply::Hang => {
            tokio::time::sleep(HANG_LIMIT).await;
            Err(CloseConnection)
        }
        Reply::Body(code, body) => {
            let mut response = HttpResponse::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status(code);
            Ok(response)
        }
    }
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A receiver usable without a tokio runtime (plain `#[test]` functions): the server runs on a
/// small runtime of its own. Do not call its waiting methods from inside an async context.
pub struct BlockingReceiver {
    // Both are `Some` until `shutdown` or drop takes them.
    receiver: Option<Receiver>,
    runtime: Option<tokio::runtime::Runtime>,
}

/// Starts a receiver on a runtime of its own (two worker threads).
pub fn start_blocking(config: ReceiverConfig) -> io::Result<BlockingReceiver> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coreq-receiver")
        .enable_all()
        .build()?;
    let receiver = runtime.block_on(Receiver::start(config))?;
    Ok(BlockingReceiver {
        receiver: Some(receiver),
        runtime: Some(runtime),
    })
}

impl BlockingReceiver {
    /// Same as [`start_blocking`].
    pub fn start(config: ReceiverConfig) -> io::Result<BlockingReceiver> {
        start_blocking(config)
    }

    fn inner(&self) -> &Receiver {
        // Invariant: only `shutdown(self)` and `drop` take it, and nothing runs after either.
        self.receiver.as_ref().expect("receiver present until shutdown")
    }

    pub fn url(&self) -> String {
        self.inner().url()
    }

    pub fn base_url(&self) -> String {
        self.inner().base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.inner().addr()
    }

    pub fn ca_pem(&self) -> Option<&str> {
        self.inner().ca_pem()
    }

    pub fn ca_path(&self) -> Option<&Path> {
        self.inner().ca_path()
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.inner().arrivals()
    }

    pub fn count(&self) -> u64 {
        self.inner().count()
    }

    /// Blocks until at least `n` requests were received, or `limit` passed; true if they were.
    pub fn wait_for_count(&self, n: u64, limit: Duration) -> bool {
        match &self.runtime {
            Some(runtime) => runtime.block_on(self.inner().wait_for_count(n, limit)),
            None => false,
        }
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        self.inner().set_behaviour(behaviour);
    }

    pub fn set_record_arrivals(&self, on: bool) {
        self.inner().set_record_arrivals(on);
    }

    /// Stops the server and its runtime.
    pub fn shutdown(mut self) {
        if let (Some(receiver), Some(runtime)) = (self.receiver.take(), self.runtime.take()) {
            runtime.block_on(receiver.shutdown());
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for BlockingReceiver {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(runtime) = self.runtime.take() {
            // Unlike dropping the runtime, this does not panic inside an async context.
            runtime.shutdown_background();
        }
    }
}
