//! The domain types the store holds. Plain data; how they are stored is the backends' business.

use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch, as given by the caller's clock (never read here).
pub type UnixMillis = u64;

/// Position of a callback in the delivery queue, assigned in enqueue order; never reused.
pub type CallbackSeq = u64;

/// Position of a message in the outbound send queue, assigned in acceptance order.
pub type SendSeq = u64;

/// A callback waiting for its webhook, with its delivery history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCallback {
    pub seq: CallbackSeq,
    pub enqueued_at: UnixMillis,
    pub body: Vec<u8>,
    pub attempts: Attempts,
}

/// The delivery history of one callback. Survives restarts so backoff resumes where it was.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempts {
    /// Consecutive failed attempts so far.
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<UnixMillis>,
    /// Not to be retried before this time.
    pub next_attempt_at: Option<UnixMillis>,
}

impl Attempts {
    /// The history after a failed attempt at `at`: `failures` in a row, retry not before
    /// `next_attempt_at`.
    pub fn failed(failures: u32, error: &str, at: UnixMillis, next_attempt_at: UnixMillis) -> Attempts {
        Attempts {
            failures,
            last_error: Some(error.to_owned()),
            last_attempt_at: Some(at),
            next_attempt_at: Some(next_attempt_at),
        }
    }
}

/// An outgoing message and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Opaque, URL-safe id given to the client.
    pub id: String,
    /// Recipient (`to`).
    pub recipient: String,
    /// The request body as accepted (JSON).
    pub body: Vec<u8>,
    pub accepted_at: UnixMillis,
    /// Where it sits in the send queue until the gateway accepts it.
    pub send_seq: SendSeq,
    /// True once the gateway accepted it.
    pub handed_to_gateway: bool,
    /// Each status at most once, in the order reached.
    pub statuses: Vec<StatusEntry>,
}

impl Message {
    pub fn has_status(&self, status: &str) -> bool {
        self.statuses.iter().any(|s| s.status == status)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    /// `sent`, `delivered`, `read`, `failed`, …
    pub status: String,
    pub at: UnixMillis,
    /// For `failed`: the errors object (JSON) reported by the gateway.
    pub errors: Option<Vec<u8>>,
}

/// A status change reported by the gateway, with the callback that tells the webhook about it
/// (`None` when the webhook does not want this status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub id: String,
    pub status: String,
    pub at: UnixMillis,
    pub errors: Option<Vec<u8>>,
    pub callback: Option<Vec<u8>>,
}

/// A status [`crate::Store::record_statuses`] recorded, and the seq of its callback if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedStatus {
    pub id: String,
    pub status: String,
    pub callback_seq: Option<CallbackSeq>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    Admin,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// A PHC-format slow salted hash; never the password.
    pub password_hash: String,
    pub role: Role,
    /// True while the account still has the default password that must be changed.
    pub must_change_password: bool,
}

/// A login token. Stored by the hash of the token, so the store never holds a usable secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub hash: Vec<u8>,
    pub user: String,
    pub expires_at: UnixMillis,
}
