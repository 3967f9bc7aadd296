//! Identifiers the fake hands out: message ids (`wamid.…`), conversation ids, `fbtrace_id`s and
//! handshake challenges.
//!
//! Invariant: no two ids of one kind repeat, not even across fake instances (a coreq that
//! outlives a restarted fake must never see a `wamid` twice for two messages): each id carries
//! a counter and a nonce drawn once per instance from the clock, the process id and a count of
//! the instances made in this process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

pub(crate) struct Ids {
    nonce: u64,
    next: AtomicU64,
}

impl Ids {
    pub fn new() -> Ids {
        static INSTANCES: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let instance = INSTANCES.fetch_add(1, Ordering::Relaxed);
        Ids {
            nonce: (nanos ^ (u64::from(std::process::id()) << 40)).wrapping_add(instance << 20),
            next: AtomicU64::new(1),
        }
    }

    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// A message id shaped like the Cloud API's: `wamid.` and base64 of an opaque value that
    /// names the other party.
    pub fn wamid(&self, wa_id: &str) -> String {
        let n = self.next();
        format!(
            "wamid.{}",
            STANDARD.encode(format!("{wa_id}:{:016X}:{n:08X}", self.nonce))
        )
    }

    /// A conversation id: 32 hexadecimal digits.
    pub fn conversation(&self) -> String {
        format!("{:016x}{:016x}", self.nonce, self.next())
    }

    /// A Graph API trace id, for error answers.
    pub fn fbtrace(&self) -> String {
        let raw = (self.nonce.rotate_left(17) ^ self.next()).to_be_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
    }

    /// A verification challenge: a decimal number, as Meta sends.
    pub fn challenge(&self) -> String {
        format!(
            "{}",
            (self.nonce ^ self.next().wrapping_mul(0x9e37_79b9_7f4a_7c15)) % 10_000_000_000
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wamids_are_unique_and_shaped_like_the_cloud_apis() {
        let ids = Ids::new();
        let a = ids.wamid("15550100001");
        let b = ids.wamid("15550100001");
        assert_ne!(a, b);
        assert!(a.starts_with("wamid."), "{a}");
        assert_ne!(Ids::new().wamid("1"), Ids::new().wamid("1"));
        assert_eq!(ids.conversation().len(), 32);
    }
}
