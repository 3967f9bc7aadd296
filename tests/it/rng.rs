//! The crash tests' randomness: a tiny xorshift generator, seeded from `COREQ_CRASH_SEED` or the
//! clock, and printed by each test so that a failure can be replayed.

use std::time::Duration;

pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    /// A duration in `from..to` milliseconds.
    pub fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// `COREQ_CRASH_SEED` if set, else the clock (never 0: xorshift would stay at 0).
pub fn seed() -> u64 {
    std::env::var("COREQ_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        })
}
