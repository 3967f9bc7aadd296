//! The HTTP front (spec §1, §13, §14): accepts connections for the API's router and keeps
//! clients from exhausting what the store needs. It owns the accept loop, the connection cap,
//! the timeouts for headers, bodies and idle connections, the HTTP/2 limits, the budget of
//! request-body bytes, TLS with certificate reload on SIGHUP, and the drain at shutdown.
//!
//! Invariants: at most the connection cap is accepted at once (the rest wait in the kernel's
//! backlog, never accepted and held), and the cap stays under the open-file limit minus the
//! store's reserve (`fds.rs`); an accept error never ends the loop (it backs off); after the
//! stop, nothing is accepted and every connection is gone by the drain deadline. Aborting the
//! task that runs [`HttpFront::serve`] closes the listener and every connection at once.

pub mod body;
mod connection;
pub mod fds;
pub mod tls;
mod watchdog;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::ConfigError;
use body::BodyBudget;
use tls::{Reloadable, TlsFiles};

/// How long the accept loop pauses after an error that is not one connection's (EMFILE,
/// ENFILE, ENOBUFS): long enough not to spin, short enough to pick up again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Accept errors are logged at most this often.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// HTTP/2: requests in progress on one connection.
const H2_MAX_STREAMS: u32 = 64;
/// HTTP/2: bytes of one request's header list.
const H2_MAX_HEADER_LIST_BYTES: u32 = 64 << 10;
/// HTTP/2: streams a client may open and reset before the connection is closed (the "rapid
/// reset" attack).
const H2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2: a ping this often finds dead peers; one unanswered this long closes the connection.
const H2_PING_EVERY: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// What clients may hold, from the flags (`config.rs` gives defaults and bounds).
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connections open at once (lowered to fit the open-file limit).
    pub max_connections: usize,
    /// A request's head must arrive within this of its first byte (the first request of a
    /// connection: of the accept, TLS handshake included).
    pub header_timeout: Duration,
    /// A request's body must arrive in full within this of its head.
    pub body_timeout: Duration,
    /// A connection without a request in progress (nor a head arriving) is closed after this.
    pub idle_timeout: Duration,
    /// Bytes of request bodies held at once, across every request.
    pub body_budget_bytes: usize,
    /// At shutdown, requests in progress get this long to finish.
    pub shutdown_timeout: Duration,
}

/// What every connection task shares.
struct Shared {
    router: axum::Router,
    limits: HttpLimits,
    budget: BodyBudget,
    tls: Option<Reloadable>,
    /// Plain connections: HTTP/1.1, or HTTP/2 with prior knowledge.
    http: auto::Builder<TokioExecutor>,
    /// TLS connections, by the protocol ALPN chose.
    h1_only: auto::Builder<TokioExecutor>,
    h2_only: auto::Builder<TokioExecutor>,
}

/// The front, ready to serve: TLS loaded, the open-file limit raised, the cap computed.
pub struct HttpFront {
    limits: HttpLimits,
    tls: Option<Reloadable>,
}

impl HttpFront {
    /// Checks everything that can refuse a start: the certificate and key, and an open-file
    /// limit that leaves room for connections after `reserve` descriptors for the store.
    pub fn new(mut limits: HttpLimits, tls: Option<TlsFiles>, reserve: u64) -> Result<HttpFront, ConfigError> {
        let tls = tls.map(Reloadable::new).transpose().map_err(|e| ConfigError {
            setting: e.setting,
            problem: e.problem,
        })?;
        let open_files = fds::raise_open_file_limit().map_err(|e| ConfigError {
            setting: "--max-connections/COREQ_MAX_CONNECTIONS",
            problem: format!("cannot read the open-file limit: {e}"),
        })?;
        let cap = fds::connection_cap(limits.max_connections, open_files, reserve).map_err(|room| ConfigError {
            setting: "--max-connections/COREQ_MAX_CONNECTIONS",
            problem: format!(
                "the open-file limit is {open_files} and {reserve} are held back for the store, leaving {room} \
                 for connections (at least {} needed): raise the limit (ulimit -n)",
                fds::MIN_CONNECTIONS
            ),
        })?;
        if cap < limits.max_connections {
            tracing::info!(
                cap,
                open_files,
                reserve,
                "connections capped below --max-connections to leave file descriptors for the store"
            );
        }
        limits.max_connections = cap;
        Ok(HttpFront { limits, tls })
    }

    /// Serves `router` on `listener` until `stop` resolves, then stops accepting, lets the
    /// requests in progress finish until the drain deadline and closes what is left.
    pub async fn serve(self, listener: TcpListener, router: axum::Router, stop: impl Future<Output = ()>) {
        let _hangups = AbortOnDrop(tokio::spawn(on_sighup(self.tls.clone())));
        let shared = Arc::new(Shared {
            router,
            budget: BodyBudget::new(self.limits.body_budget_bytes),
            http: builder(),
            h1_only: builder().http1_only(),
            h2_only: builder().http2_only(),
            tls: self.tls,
            limits: self.limits,
        });
        let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
        let (drain_tx, drain_rx) = watch::channel(None);
        let mut connections = JoinSet::new();
        let mut last_logged: Option<Instant> = None;
        tokio::pin!(stop);
        loop {
            while connections.try_join_next().is_some() {}
            // A slot first: over the cap, connections wait in the kernel's backlog.
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot,
                () = &mut stop => break,
            };
            let Ok(slot) = slot else { break }; // never closed
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut stop => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection::serve(stream, peer, shared.clone(), drain_rx.clone(), slot));
                }
                Err(e) if one_connections_error(&e) => {}
                Err(e) => {
                    if last_logged.is_none_or(|at| at.elapsed() >= ACCEPT_LOG_EVERY) {
                        tracing::warn!(error = %e, "accepting connections failed; retrying");
                        last_logged = Some(Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
        drop(listener);
        let deadline = Instant::now() + shared.limits.shutdown_timeout;
        let _ = drain_tx.send(Some(deadline));
        // Each connection closes itself by the deadline; the margin only guards against a bug.
        let drained = tokio::time::timeout_at(deadline + Duration::from_secs(1), async {
            while connections.join_next().await.is_some() {}
        });
        if drained.await.is_err() {
            connections.abort_all();
        }
    }
}

/// The protocol settings every connection gets.
fn builder() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The watchdog times request heads (from their first byte) and idle connections; hyper's
    // own header timer would also cut idle keep-alive connections at the header timeout.
    builder.http1().header_read_timeout(None).keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(H2_MAX_HEADER_LIST_BYTES)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_RESETS)
        .keep_alive_interval(H2_PING_EVERY)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// Errors that concern only the connection being accepted; the next accept may succeed at once.
fn one_connections_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset)
}

/// SIGHUP never stops coreq: with TLS it reloads the certificate, without it is only logged.
async fn on_sighup(tls: Option<Reloadable>) {
    let hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP; it would stop coreq");
            return;
        }
    };
    match tls {
        Some(tls) => tls.reload_on_sighup(hangups).await,
        None => {
            let mut hangups = hangups;
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: no TLS certificate to reload");
            }
        }
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_out_of_descriptors_is_not_one_connections_error() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(
                !one_connections_error(&std::io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
        for code in [libc::ECONNABORTED, libc::ECONNRESET] {
            assert!(
                one_connections_error(&std::io::Error::from_raw_os_error(code)),
                "{code}"
            );
        }
    }
}
