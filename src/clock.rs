//! Time, passed in rather than read: the engine asks a [`Clock`], so tests can control it.

use std::time::{SystemTime, UNIX_EPOCH};

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
