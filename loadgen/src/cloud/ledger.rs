//! The record of every accepted send, and the duplicates among them.
//!
//! The Cloud API has no idempotency key: a gateway that sends the same message twice (say it
//! crashed between the answer and its own record of the `wamid`) gets two `wamid`s and the
//! recipient two messages. The fake does the same (it never de-duplicates) and makes the second
//! copy visible: each send gets a key (by default its `biz_opaque_callback_data`, else its whole
//! body), and sends whose key was seen before are counted as duplicates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tokio::sync::watch;

/// Most sends one fake records; later sends are refused (131000) with a detail saying so.
pub const MAX_SENDS: usize = 1_000_000;

/// Computes a send's duplicate key from its body.
pub type DuplicateKey = Arc<dyn Fn(&Value) -> String + Send + Sync>;

/// The default key: `biz_opaque_callback_data` when the send carries one (where a gateway can
/// put its own message id), else the whole body in a canonical form (object keys sorted).
pub fn default_duplicate_key() -> DuplicateKey {
    Arc::new(
        |body: &Value| match body.get("biz_opaque_callback_data").and_then(Value::as_str) {
            Some(opaque) => opaque.to_string(),
            None => canonical(body).to_string(),
        },
    )
}

/// `value` with every object's keys in sorted order, whatever serde_json's map keeps.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let sorted: Map<String, Value> = keys.into_iter().map(|k| (k.clone(), canonical(&map[k]))).collect();
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// One accepted send.
#[derive(Debug, Clone)]
pub struct SendRecord {
    /// Acceptance order, from 0.
    pub seq: u64,
    pub wamid: String,
    /// The bearer token it was sent with.
    pub token: String,
    /// `to` as sent, and as the recipient's WhatsApp id (digits only).
    pub to: String,
    pub wa_id: String,
    pub message_type: String,
    pub biz_opaque_callback_data: Option<String>,
    pub body: Value,
    /// Its duplicate key, and which copy of that key it is (1 for the first).
    pub key: String,
    pub copy: u32,
    pub at: SystemTime,
}

/// What a send brings to the ledger.
pub(crate) struct NewSend {
    pub wamid: String,
    pub token: String,
    pub to: String,
    pub wa_id: String,
    pub message_type: String,
    pub biz_opaque_callback_data: Option<String>,
    pub body: Value,
}

pub(crate) struct Ledger {
    sends: Vec<SendRecord>,
    by_wamid: HashMap<String, usize>,
    copies: HashMap<String, u32>,
    duplicates: u64,
    key: DuplicateKey,
    /// Sends recorded so far; a watch so that waiters wake on each one.
    count: watch::Sender<u64>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger {
            sends: Vec::new(),
            by_wamid: HashMap::new(),
            copies: HashMap::new(),
            duplicates: 0,
            key: default_duplicate_key(),
            count: watch::channel(0).0,
        }
    }

    pub fn is_full(&self) -> bool {
        self.sends.len() >= MAX_SENDS
    }

    /// Records an accepted send; the caller checked [`Ledger::is_full`] first.
    pub fn record(&mut self, send: NewSend) -> SendRecord {
        debug_assert!(!self.is_full(), "the caller refuses sends once the ledger is full");
        let key = (self.key)(&send.body);
        let copy = self.copies.entry(key.clone()).or_insert(0);
        *copy += 1;
        if *copy > 1 {
            self.duplicates += 1;
        }
        let record = SendRecord {
            seq: self.sends.len() as u64,
            wamid: send.wamid,
            token: send.token,
            to: send.to,
            wa_id: send.wa_id,
            message_type: send.message_type,
            biz_opaque_callback_data: send.biz_opaque_callback_data,
            body: send.body,
            key,
            copy: *copy,
            at: SystemTime::now(),
        };
        self.by_wamid.insert(record.wamid.clone(), self.sends.len());
        self.sends.push(record.clone());
        self.count.send_replace(self.sends.len() as u64);
        record
    }

    pub fn sends(&self) -> &[SendRecord] {
        &self.sends
    }

    pub fn find(&self, wamid: &str) -> Option<&SendRecord> {
        self.by_wamid.get(wamid).map(|&i| &self.sends[i])
    }

    /// How many accepted sends had `key`.
    pub fn copies(&self, key: &str) -> u32 {
        self.copies.get(key).copied().unwrap_or(0)
    }

    /// Accepted sends whose key had been seen before.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Every key sent more than once, with its number of copies, in key order.
    pub fn duplicated_keys(&self) -> Vec<(String, u32)> {
        let mut keys: Vec<(String, u32)> = self
            .copies
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        keys.sort();
        keys
    }

    /// Replaces the key function; sends recorded before keep their keys.
    pub fn set_key(&mut self, key: DuplicateKey) {
        self.key = key;
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.count.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn send(body: Value) -> NewSend {
        NewSend {
            wamid: format!("wamid.{body}"),
            token: "t".into(),
            to: "1".into(),
            wa_id: "1".into(),
            message_type: "text".into(),
            biz_opaque_callback_data: None,
            body,
        }
    }

    #[test]
    fn the_same_body_in_another_key_order_is_a_duplicate() {
        let mut ledger = Ledger::new();
        let first = ledger.record(send(json!({"to": "1", "text": {"body": "a", "preview_url": false}})));
        let second = ledger.record(send(json!({"text": {"preview_url": false, "body": "a"}, "to": "1"})));
        assert_eq!((first.copy, second.copy), (1, 2));
        assert_eq!(first.key, second.key);
        assert_eq!(ledger.duplicates(), 1);
        assert_eq!(ledger.duplicated_keys(), vec![(first.key.clone(), 2)]);
    }

    #[test]
    fn the_opaque_callback_data_is_the_default_key() {
        let mut ledger = Ledger::new();
        ledger.record(send(json!({"biz_opaque_callback_data": "m-1", "text": {"body": "a"}})));
        ledger.record(send(json!({"biz_opaque_callback_data": "m-1", "text": {"body": "b"}})));
        assert_eq!(ledger.copies("m-1"), 2);
    }
}
