//! Garbage collection of the message store (spec §9): finished messages (delivered, read or
//! failed) accepted longer ago than the retention are deleted, at random intervals of a few
//! hours while `garbagecollector_enable.messages` is on, or when an operator asks
//! (`PUT /v1/services/message/gc`). A message still waiting for the gateway or for a final
//! status is never collected, and callbacks are never touched: they live in their own queue.
//! Each run ends with a completion callback.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use argon2::password_hash::rand_core::{OsRng, RngCore};
use coreq_storage::Message;
use tokio::sync::watch;

use super::{FINAL_STATUSES, Messages, callbacks};
use crate::delivery::DeliveryError;
use crate::settings::AppSettings;

/// Message ids read per scan step, and the most deleted in one record.
const PAGE: usize = 1000;

/// Automatic runs happen between these many seconds apart ("a few hours").
const INTERVAL_SECS: std::ops::Range<u64> = 3600..5 * 3600;

/// Starts collections, one at a time. Cheap to clone.
#[derive(Clone)]
pub struct Collector {
    messages: Messages,
    retention: Duration,
    running: Arc<AtomicBool>,
}

impl Collector {
    pub fn new(messages: Messages, retention: Duration) -> Collector {
        Collector {
            messages,
            retention,
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Starts a collection in the background unless one is running. Either way a collection
    /// is now in progress; its end is reported by a callback.
    pub fn start(&self) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let collector = self.clone();
        tokio::spawn(async move {
            match collector.collect().await {
                Ok(deleted) => tracing::info!(deleted, "gc: message collection complete"),
                Err(e) => tracing::error!(error = %e, "gc: message collection failed"),
            }
            collector.running.store(false, Ordering::Release);
        });
    }

    /// Runs a collection at random intervals while the setting allows it, until `stop`.
    pub async fn run_periodically(self, settings: watch::Receiver<AppSettings>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(next_interval()) => {
                    if settings.borrow().gc_messages {
                        self.start();
                    }
                }
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Deletes what may go, page by page, then enqueues the completion callback. Returns how
    /// many messages were deleted.
    async fn collect(&self) -> Result<u64, DeliveryError> {
        let store = self.messages.store();
        let cutoff = self.messages.now_ms().saturating_sub(self.retention.as_millis() as u64);
        let mut after: Option<String> = None;
        let mut deleted = 0u64;
        loop {
            let ids = store.message_ids(after.as_deref(), PAGE)?;
            let Some(last) = ids.last().cloned() else { break };
            let mut doomed = Vec::new();
            for id in ids {
                if store.message(&id)?.is_some_and(|m| collectable(&m, cutoff)) {
                    doomed.push(id);
                }
            }
            deleted += doomed.len() as u64;
            store.delete_messages(doomed).await?;
            after = Some(last);
        }
        self.messages
            .delivery()
            .enqueue_produced(vec![callbacks::gc_complete(deleted)])
            .await?;
        Ok(deleted)
    }
}

/// A random wait within [`INTERVAL_SECS`].
fn next_interval() -> Duration {
    let span = INTERVAL_SECS.end - INTERVAL_SECS.start;
    Duration::from_secs(INTERVAL_SECS.start + OsRng.next_u64() % span)
}

/// Finished, and accepted before `cutoff`.
fn collectable(message: &Message, cutoff: u64) -> bool {
    message.accepted_at < cutoff && message.handed_to_gateway && FINAL_STATUSES.iter().any(|s| message.has_status(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use coreq_storage::StatusEntry;

    fn message(accepted_at: u64, handed: bool, statuses: &[&str]) -> Message {
        Message {
            id: "m".into(),
            recipient: "1".into(),
            body: vec![],
            accepted_at,
            send_seq: 1,
            handed_to_gateway: handed,
            statuses: statuses
                .iter()
                .map(|s| StatusEntry {
                    status: (*s).into(),
                    at: accepted_at,
                    errors: None,
                })
                .collect(),
        }
    }

    #[test]
    fn automatic_collections_are_one_to_five_hours_apart_and_vary() {
        let waits: std::collections::HashSet<Duration> = (0..50).map(|_| next_interval()).collect();
        assert!(
            waits.iter().all(|w| (3600..5 * 3600).contains(&w.as_secs())),
            "{waits:?}"
        );
        assert!(waits.len() > 1, "the interval is not random");
    }

    #[test]
    fn only_finished_messages_older_than_the_cutoff_are_collectable() {
        assert!(collectable(&message(5, true, &["sent", "delivered"]), 10));
        assert!(collectable(&message(5, true, &["failed"]), 10));
        assert!(collectable(&message(5, true, &["sent", "delivered", "read"]), 10));
        assert!(
            !collectable(&message(10, true, &["read"]), 10),
            "not older than the cutoff"
        );
        assert!(!collectable(&message(5, true, &["sent"]), 10), "sent is not final");
        assert!(
            !collectable(&message(5, false, &[]), 10),
            "still waiting for the gateway"
        );
    }
}
