//! `Change`: the record type of the WAL. Every state change is one of these; the state is the
//! fold of the log with [`crate::State::apply`].
//!
//! Compatibility rule: records are encoded with postcard, which identifies variants by their
//! position. Add new variants and fields only at the end; never reorder, remove or change one
//! that has landed (a new shape is a new variant).
//!
//! Idempotence rule: applying a record twice, or a record whose effect the state already has,
//! leaves the same state. Recovery relies on it (it replays from the last checkpoint, and the
//! state may already hold some later records). So records carry absolute values (the new
//! attempt count, the full user), never increments.

use serde::{Deserialize, Serialize};

use crate::model::{CallbackSeq, Message, SendSeq, Token, UnixMillis, User};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// Callbacks `first_seq..first_seq + bodies.len()` were enqueued.
    CallbacksEnqueued {
        first_seq: CallbackSeq,
        enqueued_at: UnixMillis,
        bodies: Vec<Vec<u8>>,
    },
    /// A delivery attempt of `seq` failed; `failures` is the new consecutive-failure count.
    CallbackFailed {
        seq: CallbackSeq,
        failures: u32,
        error: String,
        at: UnixMillis,
        next_attempt_at: UnixMillis,
    },
    /// The webhook answered 200 for `seq`: it leaves the queue.
    CallbackDelivered {
        seq: CallbackSeq,
    },
    /// An operator removed `seq` (a poison callback).
    CallbackDeleted {
        seq: CallbackSeq,
    },
    /// A message was accepted and queued for the gateway.
    MessageAccepted {
        message: Message,
    },
    /// The gateway accepted the message: it leaves the send queue.
    MessageHanded {
        id: String,
        send_seq: SendSeq,
    },
    /// The message reached `status` (recorded once per status).
    MessageStatus {
        id: String,
        status: String,
        at: UnixMillis,
        errors: Option<Vec<u8>>,
    },
    /// Garbage collection removed finished messages.
    MessagesDeleted {
        ids: Vec<String>,
    },
    /// Settings written together (`None` removes one), applied atomically.
    SettingsPut {
        entries: Vec<(String, Option<Vec<u8>>)>,
    },
    UserPut {
        user: User,
    },
    /// The user and every token of theirs.
    UserDeleted {
        name: String,
    },
    TokenPut {
        token: Token,
    },
    TokenRevoked {
        hash: Vec<u8>,
    },
    /// A named position (e.g. the mirror's LSN).
    CursorSet {
        name: String,
        value: u64,
    },
    /// Several changes that take effect together or not at all: a status and the callback
    /// that reports it, so that a crash can neither lose the callback nor report it twice.
    /// Holds only leaf changes (no nested `Together`).
    Together {
        changes: Vec<Change>,
    },
}

impl Change {
    /// Calls `visit` with every leaf change in this record, in order.
    pub fn for_each_leaf<'a>(&'a self, visit: &mut impl FnMut(&'a Change)) {
        match self {
            Change::Together { changes } => changes.iter().for_each(|c| c.for_each_leaf(visit)),
            leaf => visit(leaf),
        }
    }
}
