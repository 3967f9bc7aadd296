//! The memory backend: the state in ordered maps. Used when callbacks are not persisted
//! (`callback_persist=false`: lost by a restart, by definition) and in tests. Its checkpoint
//! is a no-op record: there is nothing to make durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use crate::change::Change;
use crate::error::Result;
use crate::model::{Attempts, CallbackSeq, Message, PendingCallback, SendSeq, Token, User};
use crate::state::{Checkpoint, State};

#[derive(Default)]
struct Maps {
    callbacks: BTreeMap<CallbackSeq, PendingCallback>,
    messages: BTreeMap<String, Message>,
    send_queue: BTreeMap<SendSeq, String>,
    settings: BTreeMap<String, Vec<u8>>,
    users: BTreeMap<String, User>,
    tokens: HashMap<Vec<u8>, Token>,
    cursors: BTreeMap<String, u64>,
    checkpoint: Checkpoint,
}

#[derive(Default)]
pub struct MemoryState {
    maps: RwLock<Maps>,
}

impl MemoryState {
    pub fn new() -> MemoryState {
        MemoryState::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Maps> {
        // Invariant: no code path panics while holding the lock.
        self.maps.read().expect("memory state lock")
    }
}

impl State for MemoryState {
    fn apply(&self, change: &Change) -> Result<()> {
        if let Change::Together { changes } = change {
            return self.apply_all(changes);
        }
        let mut m = self.maps.write().expect("memory state lock");
        match change {
            Change::CallbacksEnqueued {
                first_seq,
                enqueued_at,
                bodies,
            } => {
                for (i, body) in bodies.iter().enumerate() {
                    let seq = first_seq + i as u64;
                    m.callbacks.entry(seq).or_insert_with(|| PendingCallback {
                        seq,
                        enqueued_at: *enqueued_at,
                        body: body.clone(),
                        attempts: Attempts::default(),
                    });
                }
            }
            Change::CallbackFailed {
                seq,
                failures,
                error,
                at,
                next_attempt_at,
            } => {
                if let Some(cb) = m.callbacks.get_mut(seq) {
                    cb.attempts = Attempts::failed(*failures, error, *at, *next_attempt_at);
                }
            }
            Change::CallbackDelivered { seq } | Change::CallbackDeleted { seq } => {
                m.callbacks.remove(seq);
            }
            Change::MessageAccepted { message } => {
                if !m.messages.contains_key(&message.id) {
                    m.send_queue.insert(message.send_seq, message.id.clone());
                    m.messages.insert(message.id.clone(), message.clone());
                }
            }
            Change::MessageHanded { id, send_seq } => {
                m.send_queue.remove(send_seq);
                if let Some(msg) = m.messages.get_mut(id) {
                    msg.handed_to_gateway = true;
                }
            }
            Change::MessageStatus { id, status, at, errors } => {
                if let Some(msg) = m.messages.get_mut(id) {
                    crate::record_status(msg, status, *at, errors);
                }
            }
            Change::MessagesDeleted { ids } => {
                for id in ids {
                    if let Some(msg) = m.messages.remove(id) {
                        m.send_queue.remove(&msg.send_seq);
                    }
                }
            }
            Change::SettingsPut { entries } => {
                for (name, value) in entries {
                    match value {
                        Some(v) => m.settings.insert(name.clone(), v.clone()),
                        None => m.settings.remove(name),
                    };
                }
            }
            Change::UserPut { user } => {
                m.users.insert(user.name.clone(), user.clone());
            }
            Change::UserDeleted { name } => {
                m.users.remove(name);
                m.tokens.retain(|_, t| &t.user != name);
            }
            Change::TokenPut { token } => {
                m.tokens.insert(token.hash.clone(), token.clone());
            }
            Change::TokenRevoked { hash } => {
                m.tokens.remove(hash);
            }
            Change::CursorSet { name, value } => {
                m.cursors.insert(name.clone(), *value);
            }
            Change::Together { .. } => {} // applied above, part by part
        }
        Ok(())
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        self.maps.write().expect("memory state lock").checkpoint = checkpoint;
        Ok(())
    }

    fn last_checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.read().checkpoint)
    }

    fn pending_callbacks(&self, after: Option<CallbackSeq>, limit: usize) -> Result<Vec<PendingCallback>> {
        let from = after.map_or(0, |a| a + 1);
        Ok(self
            .read()
            .callbacks
            .range(from..)
            .take(limit)
            .map(|(_, c)| c.clone())
            .collect())
    }

    fn pending_callback(&self, seq: CallbackSeq) -> Result<Option<PendingCallback>> {
        Ok(self.read().callbacks.get(&seq).cloned())
    }

    fn pending_callback_count(&self) -> u64 {
        self.read().callbacks.len() as u64
    }

    fn message(&self, id: &str) -> Result<Option<Message>> {
        Ok(self.read().messages.get(id).cloned())
    }

    fn send_queue(&self, after: Option<SendSeq>, limit: usize) -> Result<Vec<Message>> {
        let m = self.read();
        let from = after.map_or(0, |a| a + 1);
        Ok(m.send_queue
            .range(from..)
            .take(limit)
            .filter_map(|(_, id)| m.messages.get(id).cloned())
            .collect())
    }

    fn send_queue_len(&self) -> u64 {
        self.read().send_queue.len() as u64
    }

    fn message_count(&self) -> u64 {
        self.read().messages.len() as u64
    }

    fn message_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let m = self.read();
        let ids = m
            .messages
            .keys()
            .filter(|k| after.is_none_or(|a| k.as_str() > a))
            .take(limit);
        Ok(ids.cloned().collect())
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read().settings.get(name).cloned())
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .read()
            .settings
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn user(&self, name: &str) -> Result<Option<User>> {
        Ok(self.read().users.get(name).cloned())
    }

    fn users(&self) -> Result<Vec<User>> {
        Ok(self.read().users.values().cloned().collect())
    }

    fn token(&self, hash: &[u8]) -> Result<Option<Token>> {
        Ok(self.read().tokens.get(hash).cloned())
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        Ok(self.read().cursors.get(name).copied())
    }

    fn cursors(&self) -> Result<Vec<(String, u64)>> {
        Ok(self.read().cursors.iter().map(|(k, v)| (k.clone(), *v)).collect())
    }
}
