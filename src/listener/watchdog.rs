//! What a connection is doing, and when it must close for doing nothing useful.
//!
//! Invariants: a connection without a request in progress is closed `header_timeout` after its
//! accept if no request came yet (TLS handshake included), `header_timeout` after the first
//! byte of a request head that is still incomplete, and `idle_timeout` after its last request
//! otherwise; a request in progress is bounded by the body timeout and the handlers' own
//! limits; once the server drains, nothing outlives the drain deadline.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_util::server::graceful::GracefulConnection;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::HttpLimits;

/// After the watchdog asks an idle connection to close, how long it may take (a response
/// still being written to a client that reads slowly) before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// What the watchdog knows of a connection's requests.
pub(super) struct Activity {
    in_flight: AtomicUsize,
    requests: AtomicU64,
    /// HTTP/2: bytes between requests are pings and window updates, not a request head.
    http2: AtomicBool,
    times: Mutex<Times>,
    /// Wakes the watchdog when a deadline may have moved earlier (a request ended, a head
    /// started).
    moved: Notify,
    /// The last request's body was not read to its end: the client may still be sending it.
    pub(super) unread_body: Arc<AtomicBool>,
}

struct Times {
    /// When the last request in progress ended (or the connection was accepted).
    idle_since: Instant,
    /// The first byte that arrived since then, while no request was in progress: a head has
    /// started (HTTP/1.1).
    head_started: Option<Instant>,
}

/// What is due when the deadline passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// No request and nothing owed to the client: close now.
    Drop,
    /// Idle after answering: close gracefully (HTTP/2 says GOAWAY; a slow reader may still be
    /// taking the last answer).
    Graceful,
}

/// A request in progress, counted until dropped.
pub(super) struct InFlight<'a>(&'a Activity);

impl Activity {
    pub(super) fn new(accepted: Instant) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            times: Mutex::new(Times {
                idle_since: accepted,
                head_started: None,
            }),
            moved: Notify::new(),
            unread_body: Arc::default(),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        // Only plain assignments happen under the lock: a poisoned value is still whole.
        self.times.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_http2(&self, http2: bool) {
        self.http2.store(http2, Ordering::Release);
    }

    /// A request's head has arrived: it is in progress until the returned guard drops.
    pub(super) fn begin(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.unread_body.store(false, Ordering::Release);
        self.times().head_started = None;
        InFlight(self)
    }

    /// Bytes were read from the client.
    pub(super) fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            let mut times = self.times();
            if times.head_started.is_none() {
                times.head_started = Some(Instant::now());
                self.moved.notify_one();
            }
        }
    }

    /// When the connection is due to close and how, if no request is in progress; `None`
    /// while one is.
    fn due(&self, limits: &HttpLimits) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let times = self.times();
        if self.requests.load(Ordering::Acquire) == 0 {
            return Some((times.idle_since + limits.header_timeout, Expiry::Drop));
        }
        match times.head_started {
            Some(started) if !self.http2.load(Ordering::Acquire) => {
                Some((started + limits.header_timeout, Expiry::Drop))
            }
            _ => Some((times.idle_since + limits.idle_timeout, Expiry::Graceful)),
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            let mut times = self.0.times();
            times.idle_since = Instant::now();
            times.head_started = None;
            self.0.moved.notify_one();
        }
    }
}

/// Drives `conn` to its end under the rules above: closed when it idles or dawdles, gracefully
/// when the server drains, and dropped when a graceful close overstays.
pub(super) async fn watch_over<C: GracefulConnection>(
    conn: C,
    activity: &Activity,
    limits: &HttpLimits,
    drain: &mut watch::Receiver<Option<Instant>>,
) {
    tokio::pin!(conn);
    let mut closing_by: Option<Instant> = None;
    let mut draining = drain.borrow().is_some();
    loop {
        if closing_by.is_none()
            && let Some(by) = *drain.borrow()
        {
            conn.as_mut().graceful_shutdown();
            closing_by = Some(by);
        }
        // While a request is in progress, look again after the shorter timeout.
        let check_at = activity.due(limits).map_or_else(
            || Instant::now() + limits.header_timeout.min(limits.idle_timeout),
            |(at, _)| at,
        );
        tokio::select! {
            _ = conn.as_mut() => return,
            () = tokio::time::sleep_until(check_at), if closing_by.is_none() => {
                match activity.due(limits) {
                    Some((at, Expiry::Drop)) if at <= Instant::now() => return,
                    Some((at, Expiry::Graceful)) if at <= Instant::now() => {
                        conn.as_mut().graceful_shutdown();
                        closing_by = Some(Instant::now() + CLOSE_GRACE);
                    }
                    _ => {}
                }
            }
            () = activity.moved.notified(), if closing_by.is_none() => {}
            () = tokio::time::sleep_until(closing_by.unwrap_or(check_at)), if closing_by.is_some() => return,
            changed = drain.changed(), if !draining => draining = changed.is_err() || drain.borrow().is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HttpLimits {
        HttpLimits {
            max_connections: 1,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            body_budget_bytes: 1 << 20,
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    #[test]
    fn a_connection_without_a_request_is_dropped_after_the_header_timeout() {
        let now = Instant::now();
        let activity = Activity::new(now);
        assert_eq!(
            activity.due(&limits()),
            Some((now + Duration::from_secs(10), Expiry::Drop))
        );
    }

    #[test]
    fn an_idle_keep_alive_connection_gets_the_idle_timeout_until_a_head_starts() {
        let activity = Activity::new(Instant::now());
        drop(activity.begin());
        let Some((idle_due, Expiry::Graceful)) = activity.due(&limits()) else {
            panic!("not idle")
        };
        activity.bytes_arrived();
        let Some((head_due, Expiry::Drop)) = activity.due(&limits()) else {
            panic!("no head started")
        };
        assert!(head_due < idle_due, "the head's deadline is the shorter one");
        let _request = activity.begin();
        assert_eq!(activity.due(&limits()), None);
    }

    #[test]
    fn http2_frames_between_requests_do_not_count_as_a_head() {
        let activity = Activity::new(Instant::now());
        activity.set_http2(true);
        drop(activity.begin());
        activity.bytes_arrived();
        assert!(matches!(activity.due(&limits()), Some((_, Expiry::Graceful))));
    }
}
