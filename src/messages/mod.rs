//! Outgoing messages (spec §7, §9): validation at the edge (`validate`), acceptance into the
//! store with an opaque id, the [`sender`] that hands them to the gateway, the statuses the
//! gateway reports (each recorded once, with its callback, in one WAL record), inbound
//! messages, and garbage collection ([`gc`]).

pub mod callbacks;
pub mod gc;
pub mod sender;
pub mod validate;

use std::collections::HashMap;
use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use coreq_storage::{Message, StatusReport, StorageError, Store, UnixMillis};
use tokio::sync::{Notify, watch};

use crate::clock::Clock;
use crate::delivery::{Delivery, DeliveryError};
use crate::settings::AppSettings;
use crate::telemetry::catalog::IN_MESSAGE_PERSISTED;

/// Random bytes in a message id: 160 bits, 27 URL-safe characters.
const ID_BYTES: usize = 20;

/// A status of an outgoing message, as the gateway reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Sent,
    Delivered,
    Read,
    Failed,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::Sent, Status::Delivered, Status::Read, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Read => "read",
            Status::Failed => "failed",
        }
    }

    /// Whether the webhook asked for this status (`webhooks.message.*`); `failed` always goes.
    fn wanted(self, settings: &AppSettings) -> bool {
        match self {
            Status::Sent => settings.notify_sent,
            Status::Delivered => settings.notify_delivered,
            Status::Read => settings.notify_read,
            Status::Failed => true,
        }
    }
}

/// The statuses after which a message is finished (garbage collection may take it).
pub const FINAL_STATUSES: [&str; 3] = ["delivered", "read", "failed"];

/// A status change reported by the gateway.
#[derive(Debug, Clone)]
pub struct StatusEvent {
    pub id: String,
    pub status: Status,
    pub at: UnixMillis,
    /// For `failed`: the errors array the gateway gave.
    pub errors: Option<serde_json::Value>,
}

/// A message a user sent to the business, as the gateway hands it over.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The sender's WhatsApp id (digits).
    pub from: String,
    /// The sender's profile name, if known.
    pub name: Option<String>,
    pub text: String,
}

/// The message store as the API, the sender and the gateways see it.
#[derive(Clone)]
pub struct Messages {
    store: Store,
    clock: Arc<dyn Clock>,
    delivery: Delivery,
    settings: watch::Receiver<AppSettings>,
    /// Woken at each acceptance: the sender's signal that the send queue grew.
    accepted: Arc<Notify>,
}

impl Messages {
    pub fn new(
        store: Store,
        clock: Arc<dyn Clock>,
        delivery: Delivery,
        settings: watch::Receiver<AppSettings>,
    ) -> Messages {
        Messages {
            store,
            clock,
            delivery,
            settings,
            accepted: Arc::new(Notify::new()),
        }
    }

    /// Stores a validated message (`body` exactly as received) and returns its new id once it
    /// is durable.
    pub async fn accept(&self, to: String, body: Vec<u8>) -> Result<String, StorageError> {
        let id = new_id();
        self.store
            .accept_message(id.clone(), to, body, self.clock.now_ms())
            .await?;
        self.accepted.notify_one();
        Ok(id)
    }

    pub fn get(&self, id: &str) -> Result<Option<Message>, StorageError> {
        self.store.message(id)
    }

    /// Records the statuses not recorded yet, each with its status callback when the webhook
    /// wants it. Returns once they are durable; a status already known is ignored, so the
    /// gateway may report one again (after a crash) without a second callback. Returns how many
    /// were new.
    pub async fn report_statuses(&self, events: Vec<StatusEvent>) -> Result<usize, DeliveryError> {
        let settings = self.settings.borrow().clone();
        let mut reports = Vec::with_capacity(events.len());
        for event in events {
            let Some(message) = self.store.message(&event.id)? else {
                continue; // collected, or never ours
            };
            let callback = event
                .status
                .wanted(&settings)
                .then(|| callbacks::status(&event, &message.recipient));
            reports.push(StatusReport {
                id: event.id,
                status: event.status.as_str().to_owned(),
                at: event.at,
                errors: event.errors.map(|e| e.to_string().into_bytes()),
                callback,
            });
        }
        if self.delivery.queues_in(&self.store) {
            let recorded = self.store.record_statuses(reports, self.clock.now_ms()).await?;
            if recorded.iter().any(|r| r.callback_seq.is_some()) {
                self.delivery.wake();
            }
            return Ok(recorded.len());
        }
        // Callbacks live in memory (`callback_persist=false`): the status is durable, its
        // callback is not, as documented for that setting.
        let mut bodies: HashMap<(String, String), Vec<u8>> = HashMap::new();
        for report in &mut reports {
            if let Some(body) = report.callback.take() {
                bodies.insert((report.id.clone(), report.status.clone()), body);
            }
        }
        let recorded = self.store.record_statuses(reports, self.clock.now_ms()).await?;
        let count = recorded.len();
        let out: Vec<Vec<u8>> = recorded
            .into_iter()
            .filter_map(|r| bodies.remove(&(r.id, r.status)))
            .collect();
        if !out.is_empty() {
            self.delivery.enqueue_produced(out).await?;
        }
        Ok(count)
    }

    /// Persists an inbound message as its callback; returns the message id once durable.
    pub async fn receive_inbound(&self, inbound: Inbound) -> Result<String, DeliveryError> {
        let id = new_id();
        let body = callbacks::inbound(&id, &inbound, self.clock.now_ms());
        self.delivery.enqueue_produced(vec![body]).await?;
        metrics::gauge!(IN_MESSAGE_PERSISTED).increment(1.0);
        Ok(id)
    }

    /// The signal the sender waits on for new messages.
    pub(crate) fn accepted_signal(&self) -> Arc<Notify> {
        self.accepted.clone()
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn delivery(&self) -> &Delivery {
        &self.delivery
    }

    pub(crate) fn now_ms(&self) -> UnixMillis {
        self.clock.now_ms()
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

    #[test]
    fn failed_is_always_wanted_and_the_others_follow_their_setting() {
        let off = AppSettings {
            notify_sent: false,
            notify_delivered: false,
            notify_read: false,
            ..AppSettings::default()
        };
        assert!(Status::Failed.wanted(&off));
        for s in [Status::Sent, Status::Delivered, Status::Read] {
            assert!(!s.wanted(&off));
            assert!(s.wanted(&AppSettings::default()));
        }
    }
}
