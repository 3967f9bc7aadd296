//! Request bodies (spec §14): a byte budget shared by every request being read and handled, so
//! that many large uploads do not grow memory by their sum, and a deadline by which a body must
//! have arrived in full.
//!
//! A request that declares its length reserves all of it before the router sees it (all or
//! nothing: two half-admitted uploads can never wait on each other); a body without a declared
//! length (chunked) reserves each piece as it arrives. The reservation is held until the
//! response is ready, because the handler keeps the bytes (and what it parsed from them) until
//! then. After a large request the allocator is asked to return its free memory to the system.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

/// How long a request waits for room in the budget before it is refused with 503/1011.
const ADMISSION_WAIT: Duration = Duration::from_secs(5);
/// A request that held at least this many bytes is followed by a `malloc_trim`.
const TRIM_AFTER_BYTES: usize = 8 << 20;

/// Bytes of request bodies that may be held at once, across all requests.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    trimming: Arc<AtomicBool>,
}

/// The outcome of asking for room.
pub enum Admission {
    Granted(Reservation),
    /// The declared length is more than the whole budget: it can never be read.
    TooLarge {
        limit: usize,
    },
    /// No room within [`ADMISSION_WAIT`].
    Busy,
}

impl BodyBudget {
    /// A budget of `total` bytes (at most `u32::MAX`: one reservation is one semaphore call).
    pub fn new(total: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            trimming: Arc::default(),
        }
    }

    /// Reserves `declared` bytes (nothing when the length is not declared: the body then
    /// reserves as it arrives), waiting up to [`ADMISSION_WAIT`].
    pub async fn admit(&self, declared: Option<u64>) -> Admission {
        let wanted = declared.unwrap_or(0);
        if wanted > self.total as u64 {
            return Admission::TooLarge { limit: self.total };
        }
        // Lossless: wanted <= total <= u32::MAX (checked in config).
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        let permit = if wanted == 0 {
            None
        } else {
            match tokio::time::timeout(ADMISSION_WAIT, self.bytes.clone().acquire_many_owned(wanted)).await {
                Ok(Ok(permit)) => Some(permit),
                // The semaphore is never closed; a timeout is the only way here.
                Ok(Err(_)) | Err(_) => return Admission::Busy,
            }
        };
        Admission::Granted(Reservation {
            held: Arc::new(Mutex::new(permit)),
            budget: self.clone(),
        })
    }

    /// Asks glibc to hand free heap pages back to the system, once at a time, off the async
    /// workers. Measured (`front::memory_is_given_back_after_a_large_upload`, two 100 MB
    /// batches of 250 kB callbacks): without it RSS stayed 64 MiB above where it started (the
    /// callbacks' copies are under glibc's mmap threshold, so they stay in the heap); with it
    /// RSS went back below its start.
    fn trim(&self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            if self.trimming.swap(true, Ordering::AcqRel) {
                return;
            }
            let trimming = self.trimming.clone();
            runtime.spawn_blocking(move || {
                // SAFETY: malloc_trim only walks glibc's own arenas; it has no preconditions.
                unsafe { libc::malloc_trim(0) };
                trimming.store(false, Ordering::Release);
            });
        }
    }
}

/// Room held in the budget for one request, until dropped.
pub struct Reservation {
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    budget: BodyBudget,
}

impl Reservation {
    /// The share a body without a declared length adds to as it arrives.
    pub fn meter(&self) -> Meter {
        Meter {
            bytes: self.budget.bytes.clone(),
            held: self.held.clone(),
            waiting: None,
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let permit = self.held.lock().unwrap_or_else(|p| p.into_inner()).take();
        let bytes = permit.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        drop(permit);
        if bytes >= TRIM_AFTER_BYTES {
            self.budget.trim();
        }
    }
}

type Acquiring = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// Reserves a chunked body's pieces as they arrive, into its request's reservation.
pub struct Meter {
    bytes: Arc<Semaphore>,
    held: Arc<Mutex<Option<OwnedSemaphorePermit>>>,
    /// A piece that arrived and waits for room, with the wait.
    waiting: Option<(Frame<Bytes>, Acquiring)>,
}

impl Meter {
    fn add(&self, permit: OwnedSemaphorePermit) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        match held.as_mut() {
            Some(existing) => existing.merge(permit),
            None => *held = Some(permit),
        }
    }
}

/// A body that did not arrive in full within the body timeout. The API answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} ms", .0.as_millis())]
pub struct BodyTimedOut(pub Duration);

/// What the router reads: the connection's body, cut off at the deadline, metered when its
/// length was not declared, reporting at drop whether it was read to its end.
pub struct GuardedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    meter: Option<Meter>,
    ended: bool,
    /// Set at drop when the body was not read to its end (see `Activity::unread_body`).
    unread: Arc<AtomicBool>,
}

impl GuardedBody {
    pub fn new(inner: Incoming, timeout: Duration, meter: Option<Meter>, unread: Arc<AtomicBool>) -> GuardedBody {
        let ended = inner.is_end_stream();
        GuardedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            timeout,
            meter,
            ended,
            unread,
        }
    }

    /// Waits for room for the piece that arrived (metered bodies only); `None` when no piece
    /// waits.
    fn poll_room(&mut self, cx: &mut Context<'_>) -> Option<Poll<Result<Frame<Bytes>, BodyTimedOut>>> {
        let meter = self.meter.as_mut()?;
        let (frame, mut acquiring) = meter.waiting.take()?;
        Some(match acquiring.as_mut().poll(cx) {
            Poll::Ready(Ok(permit)) => {
                meter.add(permit);
                Poll::Ready(Ok(frame))
            }
            // The semaphore is never closed; treat it as room never coming.
            Poll::Ready(Err(_)) => Poll::Ready(Err(BodyTimedOut(self.timeout))),
            Poll::Pending => {
                meter.waiting = Some((frame, acquiring));
                Poll::Pending
            }
        })
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match this.poll_room(cx) {
            Some(Poll::Ready(frame)) => return Poll::Ready(Some(frame.map_err(Into::into))),
            Some(Poll::Pending) => {
                ready!(this.deadline.as_mut().poll(cx));
                return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
            }
            None => {}
        }
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => {
                ready!(this.deadline.as_mut().poll(cx));
                return Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into())));
            }
            Poll::Ready(None) => {
                this.ended = true;
                return Poll::Ready(None);
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        let len = frame.data_ref().map_or(0, Bytes::len);
        let Some(meter) = this.meter.as_mut().filter(|_| len > 0) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        // A piece is at most hyper's read buffer, far below u32::MAX.
        let wanted = u32::try_from(len).unwrap_or(u32::MAX);
        meter.waiting = Some((frame, Box::pin(meter.bytes.clone().acquire_many_owned(wanted))));
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && self.meter.as_ref().is_none_or(|m| m.waiting.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        if !self.ended && !self.inner.is_end_stream() {
            self.unread.store(true, Ordering::Release);
        }
    }
}
