//! One client connection, from accept to close: the TLS handshake, HTTP/1.1 or HTTP/2 by
//! hyper under the watchdog (`watchdog.rs`), each request admitted into the body budget, and a
//! lingering close after an answer that left a request body unread.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, oneshot, watch};
use tokio::time::Instant;
use tower::ServiceExt;

use super::Shared;
use super::body::{Admission, GuardedBody};
use super::watchdog::{Activity, watch_over};
use crate::api::error::ApiError;

/// A lingering close reads and discards what the client still sends for at most this long…
const LINGER_TIME: Duration = Duration::from_secs(30);
/// …as long as something arrives at least this often…
const LINGER_GAP: Duration = Duration::from_secs(5);
/// …and at most this many bytes (more than the largest body any route accepts).
const LINGER_BYTES: u64 = 512 << 20;

/// Serves one accepted connection until it closes; `_slot` is its place under the connection
/// cap, given back when this returns.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut drain: watch::Receiver<Option<Instant>>,
    _slot: OwnedSemaphorePermit,
) {
    let accepted = Instant::now();
    let _ = stream.set_nodelay(true);
    let activity = Arc::new(Activity::new(accepted));
    let (io, returned) = Returning::new(stream, activity.clone());
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |request| handle(request, peer, shared.clone(), activity.clone()))
    };
    match &shared.tls {
        None => {
            let conn = shared.http.serve_connection(TokioIo::new(io), service);
            watch_over(conn, &activity, &shared.limits, &mut drain).await;
        }
        Some(tls) => {
            let handshake = tokio::time::timeout_at(accepted + shared.limits.header_timeout, tls.acceptor().accept(io));
            let stream = tokio::select! {
                done = handshake => match done {
                    Ok(Ok(stream)) => stream,
                    _ => return,
                },
                () = draining(&mut drain) => return,
            };
            // ALPN decides the protocol; nothing else is offered.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            activity.set_http2(h2);
            let builder = if h2 { &shared.h2_only } else { &shared.h1_only };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            watch_over(conn, &activity, &shared.limits, &mut drain).await;
        }
    }
    if activity.unread_body.load(Ordering::Acquire)
        && let Ok(stream) = returned.await
    {
        linger(stream, &drain).await;
    }
}

/// One request: admitted into the body budget, its body guarded, the peer address attached
/// (handlers read it as `ConnectInfo<SocketAddr>`), then routed.
async fn handle(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    activity: Arc<Activity>,
) -> Result<Response, Infallible> {
    let _in_flight = activity.begin();
    if request.version() == hyper::Version::HTTP_2 {
        activity.set_http2(true);
    }
    let declared = hyper::body::Body::size_hint(request.body()).exact();
    let reservation = match shared.budget.admit(declared).await {
        Admission::Granted(reservation) => reservation,
        Admission::TooLarge { limit } => return Ok(refuse(ApiError::TooLarge { limit }, &activity)),
        Admission::Busy => {
            return Ok(refuse(
                ApiError::Busy("body: no room in the request-body budget now; retry shortly"),
                &activity,
            ));
        }
    };
    let meter = declared.is_none().then(|| reservation.meter());
    let (mut parts, body) = request.into_parts();
    let body = GuardedBody::new(body, shared.limits.body_timeout, meter, activity.unread_body.clone());
    parts.extensions.insert(ConnectInfo(peer));
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::new(body));
    let response = shared.router.clone().oneshot(request).await;
    drop(reservation);
    Ok(response.unwrap_or_else(|never| match never {}))
}

/// An answer given before the body was looked at: the client may still be sending it.
fn refuse(error: ApiError, activity: &Activity) -> Response {
    activity.unread_body.store(true, Ordering::Release);
    error.into_response()
}

/// Resolves once the server drains (or is gone).
async fn draining(drain: &mut watch::Receiver<Option<Instant>>) {
    let _ = drain.wait_for(Option::is_some).await;
}

/// Lets a client that is still sending a body see the answer it was given: half-close, then
/// read and discard what keeps coming, bounded in time and bytes, before closing. Closing with
/// unread bytes would make the kernel answer with a reset, and the client's write fail before
/// it reads the answer (a broken pipe instead of a 507 or a 413).
async fn linger(mut stream: TcpStream, drain: &watch::Receiver<Option<Instant>>) {
    let _ = stream.shutdown().await;
    let mut until = Instant::now() + LINGER_TIME;
    if let Some(by) = *drain.borrow() {
        until = until.min(by);
    }
    let mut buf = vec![0u8; 64 << 10];
    let mut discarded = 0u64;
    while discarded < LINGER_BYTES {
        let gap = (Instant::now() + LINGER_GAP).min(until);
        match tokio::time::timeout_at(gap, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => discarded += n as u64,
            _ => return,
        }
    }
}

/// The accepted stream, telling the watchdog when bytes arrive, and handed back through a
/// channel when hyper (or TLS above it) drops it, so that the close can linger.
struct Returning {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
    activity: Arc<Activity>,
}

impl Returning {
    fn new(stream: TcpStream, activity: Arc<Activity>) -> (Returning, oneshot::Receiver<TcpStream>) {
        let (back, returned) = oneshot::channel();
        let io = Returning {
            stream: Some(stream),
            back: Some(back),
            activity,
        };
        (io, returned)
    }

    /// The stream; it is only taken out in `drop`.
    fn stream(&mut self) -> std::io::Result<&mut TcpStream> {
        self.stream
            .as_mut()
            .ok_or_else(|| std::io::ErrorKind::NotConnected.into())
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Returning {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match this.stream() {
            Ok(stream) => Pin::new(stream).poll_read(cx, buf),
            Err(e) => return Poll::Ready(Err(e)),
        };
        if buf.filled().len() > before {
            this.activity.bytes_arrived();
        }
        read
    }
}

impl AsyncWrite for Returning {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut().stream() {
            Ok(stream) => Pin::new(stream).poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}
