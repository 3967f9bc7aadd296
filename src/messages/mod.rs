//! Outgoing messages (spec §7): validation at the edge (`validate`), acceptance into the store
//! with an opaque id, and reading a message back with its status history.
//!
//! Accepted messages wait in the store's send queue for the gateway. With the only gateway
//! coreq runs so far (`none`, health `unregistered`), they wait; the sender and the `sim` and
//! `http` gateways come next (issue 5).

pub mod validate;

use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use coreq_storage::{Message, StorageError, Store};

use crate::clock::Clock;

/// Random bytes in a message id: 160 bits, 27 URL-safe characters.
const ID_BYTES: usize = 20;

/// The message store as the API sees it.
#[derive(Clone)]
pub struct Messages {
    store: Store,
    clock: Arc<dyn Clock>,
}

impl Messages {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Messages {
        Messages { store, clock }
    }

    /// Stores a validated message (`body` exactly as received) and returns its new id once it
    /// is durable.
    pub async fn accept(&self, to: String, body: Vec<u8>) -> Result<String, StorageError> {
        let id = new_id();
        self.store
            .accept_message(id.clone(), to, body, self.clock.now_ms())
            .await?;
        Ok(id)
    }

    pub fn get(&self, id: &str) -> Result<Option<Message>, StorageError> {
        self.store.message(id)
    }
}

/// An opaque, URL-safe id that says nothing about the order or time of acceptance.
fn new_id() -> String {
    let mut bytes = [0u8; ID_BYTES];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_url_safe_and_distinct() {
        let a = new_id();
        assert_eq!(a.len(), 27);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(a, new_id());
    }
}
