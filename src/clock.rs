//! Time, passed in rather than read: the engine asks a [`Clock`], so tests can control it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coreq_storage::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> UnixMillis;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMillis {
        // A clock before 1970 is a broken host; report 0 rather than panic.
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// A clock that moves only when told to: starts at the wall clock's now, then [`advance`]s.
/// For tests and benchmarks of time-driven behaviour (token expiry, backoff).
///
/// [`advance`]: ManualClock::advance
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock {
            now_ms: AtomicU64::new(SystemClock.now_ms()),
        }
    }
}

impl ManualClock {
    pub fn advance(&self, by: Duration) {
        self.now_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> UnixMillis {
        self.now_ms.load(Ordering::SeqCst)
    }
}
