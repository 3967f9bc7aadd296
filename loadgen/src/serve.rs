//! What the crate's test servers (the webhook [`receiver`](crate::receiver) and the
//! [fake Cloud API](crate::cloud)) share: an accept loop serving HTTP/1.1 with hyper, plain or
//! HTTPS with a certificate from a test CA, on connections that can be closed with a TCP reset.
//!
//! Invariant: every task a server starts belongs to its accept loop's `JoinSet`, so aborting
//! the accept loop closes every connection at once.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::ca::{CA_CERT_FILE, TestCa};

/// A TLS handshake not done by then is abandoned, so a stalled client cannot hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type HttpResponse = Response<Full<Bytes>>;

/// A handler's error: hyper closes the connection without answering when it gets one.
#[derive(Debug, thiserror::Error)]
#[error("connection closed without an answer")]
pub(crate) struct CloseConnection;

/// The connection a request arrived on.
#[derive(Clone)]
pub(crate) struct Peer {
    pub addr: SocketAddr,
    reset: Arc<AtomicBool>,
}

impl Peer {
    /// Makes the connection close with an RST (instead of a FIN) once the handler gives up on it.
    pub fn reset_on_close(&self) {
        self.reset.store(true, Ordering::Relaxed);
    }
}

/// An empty body with this status.
pub(crate) fn empty(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A status hyper can send: anything outside 100..=999 becomes 500.
pub(crate) fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Accepts connections until aborted and serves each request with `handler`.
pub(crate) async fn accept_loop<H, F>(listener: TcpListener, acceptor: Option<TlsAcceptor>, handler: H)
where
    H: Fn(hyper::Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<HttpResponse, CloseConnection>> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    connections.spawn(serve_connection(stream, addr, acceptor.clone(), handler.clone()));
                }
                // Out of file descriptors and the like: wait a little instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connections so the set does not grow over a long run.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<H, F>(stream: TcpStream, addr: SocketAddr, acceptor: Option<TlsAcceptor>, handler: H)
where
    H: Fn(hyper::Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<HttpResponse, CloseConnection>> + Send + 'static,
{
    // Answers are tiny; without this they can wait on Nagle + delayed ACK (40 ms per request).
    let _ = stream.set_nodelay(true);
    let reset = Arc::new(AtomicBool::new(false));
    let stream = ResettableStream {
        inner: stream,
        reset: Arc::clone(&reset),
    };
    let peer = Peer { addr, reset };
    match acceptor {
        None => serve_http(stream, peer, handler).await,
        Some(acceptor) => {
            if let Ok(Ok(tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                serve_http(tls, peer, handler).await;
            }
        }
    }
}

async fn serve_http<I, H, F>(io: I, peer: Peer, handler: H)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(hyper::Request<Incoming>, Peer) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Result<HttpResponse, CloseConnection>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| handler(request, peer.clone()));
    // Keep-alive is on by default; no header-read timeout, so idle pooled connections stay open
    // (closing one just as the client reuses it would show up as a spurious delivery failure).
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// The TLS side of a server: the acceptor and where its CA is.
pub(crate) struct TlsSetup {
    pub acceptor: TlsAcceptor,
    pub ca: CaFile,
}

/// The CA certificate a client must trust, and the file holding it.
pub(crate) struct CaFile {
    pub pem: String,
    pub path: PathBuf,
    /// The temporary directory holding the file when the caller gave none; removed on drop.
    pub own_dir: Option<OwnedDir>,
}

impl TlsSetup {
    /// A server certificate signed by the CA kept in `ca_dir` (created there if absent), or by a
    /// fresh CA whose certificate goes to a temporary directory.
    pub fn new(ca_dir: Option<&Path>) -> io::Result<TlsSetup> {
        let (ca, ca_file) = match ca_dir {
            Some(dir) => {
                let ca = TestCa::load_or_create(dir)?;
                let file = CaFile {
                    pem: ca.cert_pem().to_string(),
                    path: dir.join(CA_CERT_FILE),
                    own_dir: None,
                };
                (ca, file)
            }
            None => {
                let ca = TestCa::generate()?;
                let dir = OwnedDir::create()?;
                let path = ca.write_cert(dir.path())?;
                let file = CaFile {
                    pem: ca.cert_pem().to_string(),
                    path,
                    own_dir: Some(dir),
                };
                (ca, file)
            }
        };
        let identity = ca.issue_server()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_no_client_auth()
            .with_single_cert(identity.chain, identity.key)
            .map_err(io::Error::other)?;
        // HTTP/1.1 only is served; saying so keeps an h2-capable client from choosing h2.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            ca: ca_file,
        })
    }
}

/// A directory under the system temporary directory, removed with everything in it on drop.
pub(crate) struct OwnedDir(PathBuf);

impl OwnedDir {
    fn create() -> io::Result<OwnedDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // A few attempts: the name is unique within the process; another process could collide.
        let mut last_error = io::Error::other("no attempt");
        for _ in 0..8 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!("coreq-receiver-{}-{nanos}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(OwnedDir(path)),
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for OwnedDir {
    fn drop(&mut self) {
        // Best effort: a leftover certificate in /tmp harms nothing.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP stream that, when [`Peer::reset_on_close`] asked for it, closes with an RST (linger 0)
/// instead of a FIN: the client sees "connection reset", as with a crashed or hostile server.
struct ResettableStream {
    inner: TcpStream,
    reset: Arc<AtomicBool>,
}

impl Drop for ResettableStream {
    fn drop(&mut self) {
        if self.reset.load(Ordering::Relaxed) {
            let _ = self.inner.set_zero_linger();
        }
    }
}

impl AsyncRead for ResettableStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResettableStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
