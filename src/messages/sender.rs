//! The sender: hands accepted messages to the gateway in acceptance order, at most
//! `concurrency` at a time, retrying each without time limit. A message leaves the send queue
//! only once the gateway accepted it *and* that is durable (`MessageHanded`); a crash in
//! between sends it again, under the same id (the idempotency key), which the gateway
//! de-duplicates.
//!
//! Order through failures follows the callback dispatcher's rule: once a send fails, no new
//! message is started until every failed one has been accepted; failed ones are retried oldest
//! first after `min(n × backoff, max_backoff)`, and at once when the gateway's link comes back.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use coreq_storage::{Message, SendSeq, Store};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::Messages;
use crate::delivery::backoff_ms;
use crate::gateway::{Gateway, Link, SendError};
use crate::telemetry::catalog::GATEWAY_ATTEMPTS;

/// Messages read from the send queue at a time.
const WINDOW: usize = 1024;

/// How the sender paces itself (from `Config`).
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Most sends in flight.
    pub concurrency: usize,
    /// The n-th consecutive failure of a message waits n times this…
    pub backoff: Duration,
    /// …but never longer than this.
    pub max_backoff: Duration,
}

/// A message whose last send failed.
struct Retry {
    message: Message,
    failures: u32,
    due: Instant,
}

/// What one send came to.
struct Attempt {
    message: Message,
    outcome: Result<(), SendError>,
}

pub struct Sender<G> {
    store: Store,
    gateway: Arc<G>,
    link: Link,
    config: SenderConfig,
    accepted: Arc<Notify>,
    /// Loaded from the send queue, not started yet, in order.
    fresh: VecDeque<Message>,
    /// The last send seq loaded into `fresh`.
    loaded_up_to: Option<SendSeq>,
    more_in_store: bool,
    failed: BTreeMap<SendSeq, Retry>,
    /// Failure counts of the messages in flight that failed before.
    failures_in_flight: BTreeMap<SendSeq, u32>,
    in_flight: JoinSet<Attempt>,
}

impl<G: Gateway> Sender<G> {
    pub fn new(messages: &Messages, gateway: Arc<G>, link: Link, config: SenderConfig) -> Sender<G> {
        Sender {
            store: messages.store().clone(),
            gateway,
            link,
            config,
            accepted: messages.accepted_signal(),
            fresh: VecDeque::new(),
            loaded_up_to: None,
            more_in_store: true,
            failed: BTreeMap::new(),
            failures_in_flight: BTreeMap::new(),
            in_flight: JoinSet::new(),
        }
    }

    /// Sends until `stop`. Sends in flight at the stop are abandoned: their messages stay in
    /// the send queue and go again after the restart.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.refill() {
                tracing::error!(error = %e, "sender: reading the send queue failed; sending stopped");
                return;
            }
            self.start_what_may_start();
            let wait = self.next_retry_in();
            tokio::select! {
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(attempt) => self.finish(attempt),
                        // A send task panicked (a bug): its message stays in the send queue and
                        // goes again after the next restart.
                        Err(e) => tracing::error!(error = %e, "sender: a send task failed"),
                    }
                }
                () = self.accepted.notified() => self.more_in_store = true,
                () = self.link.reconnected() => self.retry_all_now(),
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    fn refill(&mut self) -> coreq_storage::Result<()> {
        if !self.more_in_store || self.fresh.len() > WINDOW / 2 {
            return Ok(());
        }
        let batch = self.store.send_queue(self.loaded_up_to, WINDOW - self.fresh.len())?;
        self.more_in_store = batch.len() == WINDOW - self.fresh.len();
        if let Some(last) = batch.last() {
            self.loaded_up_to = Some(last.send_seq);
        }
        self.fresh.extend(batch);
        Ok(())
    }

    fn start_what_may_start(&mut self) {
        let now = Instant::now();
        while self.in_flight.len() < self.config.concurrency {
            let next = if self.failed.is_empty() {
                self.fresh.pop_front()
            } else {
                self.take_due_retry(now)
            };
            let Some(message) = next else { return };
            self.start(message);
        }
    }

    /// The oldest failed message whose backoff is over.
    fn take_due_retry(&mut self, now: Instant) -> Option<Message> {
        let seq = *self.failed.iter().find(|(_, r)| r.due <= now)?.0;
        let retry = self.failed.remove(&seq)?;
        self.failures_in_flight.insert(seq, retry.failures);
        Some(retry.message)
    }

    fn start(&mut self, message: Message) {
        let (gateway, store) = (self.gateway.clone(), self.store.clone());
        self.in_flight.spawn(async move {
            let outcome = match gateway.send(&message).await {
                // Durable before the message leaves the queue: a crash before this point sends
                // it again, under the same idempotency key.
                Ok(()) => store
                    .mark_handed(&message.id, message.send_seq)
                    .await
                    .map_err(|e| SendError::Journal(e.to_string())),
                Err(e) => Err(e),
            };
            Attempt { message, outcome }
        });
    }

    fn finish(&mut self, attempt: Attempt) {
        let seq = attempt.message.send_seq;
        let earlier = self.failures_in_flight.remove(&seq).unwrap_or(0);
        match attempt.outcome {
            Ok(()) => metrics::counter!(GATEWAY_ATTEMPTS, "result" => "accepted").increment(1),
            Err(e) => {
                metrics::counter!(GATEWAY_ATTEMPTS, "result" => "failed").increment(1);
                let failures = earlier.saturating_add(1);
                let wait = backoff_ms(
                    failures,
                    self.config.backoff.as_millis() as u64,
                    self.config.max_backoff.as_millis() as u64,
                );
                tracing::debug!(id = %attempt.message.id, failures, error = %e, "sender: the gateway did not accept a message");
                self.failed.insert(
                    seq,
                    Retry {
                        message: attempt.message,
                        failures,
                        due: Instant::now() + Duration::from_millis(wait),
                    },
                );
            }
        }
    }

    fn retry_all_now(&mut self) {
        let now = Instant::now();
        for retry in self.failed.values_mut() {
            retry.due = now;
        }
    }

    fn next_retry_in(&self) -> Duration {
        self.failed
            .values()
            .map(|r| r.due)
            .min()
            .map_or(Duration::from_secs(3600), |due| {
                due.saturating_duration_since(Instant::now())
            })
    }
}
