//! The backend seam: a `State` is the fold of the WAL's records, queried by the engine.
//! [`crate::memory::MemoryState`] and [`crate::sled_state::SledState`] implement it and pass
//! the same suite (`tests/suite.rs`).

use coreq_wal::Lsn;
use serde::{Deserialize, Serialize};

use crate::change::Change;
use crate::error::Result;
use crate::model::{CallbackSeq, Message, PendingCallback, SendSeq, Token, User};

/// The next identifiers to hand out. Kept by the store in memory, saved with each checkpoint,
/// and raised past every record replayed after it, so an id is never reused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub next_callback_seq: CallbackSeq,
    pub next_send_seq: SendSeq,
}

impl Counters {
    pub const START: Counters = Counters {
        next_callback_seq: 1,
        next_send_seq: 1,
    };

    /// Raises the counters past the ids `change` uses.
    pub fn observe(&mut self, change: &Change) {
        change.for_each_leaf(&mut |leaf| self.observe_leaf(leaf));
    }

    fn observe_leaf(&mut self, change: &Change) {
        match change {
            Change::CallbacksEnqueued { first_seq, bodies, .. } => {
                self.next_callback_seq = self.next_callback_seq.max(first_seq + bodies.len() as u64);
            }
            Change::MessageAccepted { message } => {
                self.next_send_seq = self.next_send_seq.max(message.send_seq + 1);
            }
            _ => {}
        }
    }
}

/// Where a checkpoint left the state: every record up to `lsn` is reflected durably.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub lsn: Lsn,
    pub counters: Counters,
}

pub trait State: Send + Sync + 'static {
    /// Applies one record. Must be idempotent (see [`crate::change`]). Records touching the
    /// same key arrive in LSN order; records touching different keys may arrive in any order.
    fn apply(&self, change: &Change) -> Result<()>;

    /// Applies records in order; a backend may group them (same contract as [`State::apply`]).
    fn apply_all(&self, changes: &[Change]) -> Result<()> {
        changes.iter().try_for_each(|change| self.apply(change))
    }

    /// Makes everything applied so far durable and records `checkpoint` with it, atomically.
    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()>;
    /// The last checkpoint recorded (default: nothing applied).
    fn last_checkpoint(&self) -> Result<Checkpoint>;

    /// Up to `limit` pending callbacks with seq > `after`, oldest first.
    fn pending_callbacks(&self, after: Option<CallbackSeq>, limit: usize) -> Result<Vec<PendingCallback>>;
    fn pending_callback(&self, seq: CallbackSeq) -> Result<Option<PendingCallback>>;
    fn pending_callback_count(&self) -> u64;

    fn message(&self, id: &str) -> Result<Option<Message>>;
    /// Up to `limit` messages not yet handed to the gateway with send seq > `after`, in order.
    fn send_queue(&self, after: Option<SendSeq>, limit: usize) -> Result<Vec<Message>>;
    fn send_queue_len(&self) -> u64;
    fn message_count(&self) -> u64;
    /// Up to `limit` message ids after `after` in id order (for garbage collection scans).
    fn message_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>>;

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>>;

    fn user(&self, name: &str) -> Result<Option<User>>;
    fn users(&self) -> Result<Vec<User>>;
    fn token(&self, hash: &[u8]) -> Result<Option<Token>>;

    fn cursor(&self, name: &str) -> Result<Option<u64>>;
    fn cursors(&self) -> Result<Vec<(String, u64)>>;
}
