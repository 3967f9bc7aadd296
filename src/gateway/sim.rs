//! The `sim` gateway: an in-process stand-in for the WhatsApp network, for development, tests
//! and benchmarks. It behaves like a remote that outlives coreq:
//!
//! - A send is accepted after `delay` unless the simulated link is down (`PUT /v1/sim/gateway`).
//! - It de-duplicates by message id (the idempotency key): a message is accepted, and reaches
//!   the "recipient", once. The accepted ids are kept in a journal under
//!   `<data-dir>/sim/` (a `coreq-wal` log, durable before the send is answered), so that a
//!   coreq killed between the gateway's acceptance and its own record still meets the
//!   de-duplication when it sends again.
//! - After accepting it reports `sent`, `delivered` and `read`, each `delay` after the one
//!   before; a recipient whose number ends in `0000` is not a WhatsApp user: its message is
//!   reported `failed` (error 1013). Statuses wait while the link is down. At start the journal
//!   is read again and every status its message does not have yet is reported (again): the
//!   remote repeats what was not acknowledged, and coreq records each status once.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coreq_storage::{Message, UnixMillis};
use coreq_wal::{Wal, WalConfig, WalError};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{Gateway, Link, LinkState, SendError};
use crate::messages::{Messages, Status, StatusEvent};

/// Most statuses reported to the message store in one call.
const REPORT_BATCH: usize = 1024;

/// How long a report that the store refused waits before it is tried again.
const REPORT_RETRY: Duration = Duration::from_secs(1);

/// One journal record: the simulated network accepted message `id` for `recipient`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Accepted {
    id: String,
    recipient: String,
}

/// A status due at a time.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Due {
    at: Instant,
    /// Keeps statuses due at the same instant in the order they were scheduled.
    order: u64,
    id: String,
    status: Status,
}

pub struct Simulator {
    journal: Wal<Accepted>,
    accepted: Mutex<HashSet<String>>,
    link: Link,
    delay: Duration,
    schedule: mpsc::UnboundedSender<(String, Vec<Status>)>,
    /// Sends of an id already accepted (answered "accepted" without reaching anyone).
    duplicates: AtomicU64,
    journal_records: AtomicU64,
}

/// Runs the simulator's status reports; see [`Simulator::open`].
pub struct Reporter {
    scheduled: mpsc::UnboundedReceiver<(String, Vec<Status>)>,
    link: Link,
    delay: Duration,
    messages: Messages,
}

/// What `GET /v1/sim/gateway` shows.
#[derive(Debug, Clone, Serialize)]
pub struct SimStats {
    pub status: &'static str,
    pub accepted: u64,
    /// Records in the journal: equal to `accepted` unless de-duplication failed.
    pub journal_records: u64,
    pub duplicates: u64,
}

impl Simulator {
    /// Opens the journal in `dir` and queues the statuses still owed to the messages it
    /// accepted before. Blocking (reads the journal).
    pub fn open(
        dir: &Path,
        delay: Duration,
        link: Link,
        messages: Messages,
    ) -> Result<(Arc<Simulator>, Reporter), WalError> {
        let (journal, _) = Wal::<Accepted>::open(WalConfig::new(dir.join("journal"), dir.join("quarantine")))?;
        let (schedule, scheduled) = mpsc::unbounded_channel();
        let mut accepted = HashSet::new();
        let mut records = 0;
        for record in journal.read_from(1) {
            let (_, record) = match record {
                Ok(r) => r,
                Err(WalError::Corruption { .. }) => continue,
                Err(e) => return Err(e),
            };
            if let Ok(Some(message)) = messages.get(&record.id) {
                let owed: Vec<Status> = statuses_for(&record.recipient)
                    .into_iter()
                    .filter(|s| !message.has_status(s.as_str()))
                    .collect();
                if !owed.is_empty() {
                    let _ = schedule.send((record.id.clone(), owed));
                }
            }
            accepted.insert(record.id);
            records += 1;
        }
        link.set(LinkState::Connected);
        let sim = Arc::new(Simulator {
            journal,
            accepted: Mutex::new(accepted),
            link: link.clone(),
            delay,
            schedule,
            duplicates: AtomicU64::new(0),
            journal_records: AtomicU64::new(records),
        });
        let reporter = Reporter {
            scheduled,
            link,
            delay,
            messages,
        };
        Ok((sim, reporter))
    }

    /// Simulates the network going down or coming back.
    pub fn set_connected(&self, connected: bool) {
        self.link.set(if connected {
            LinkState::Connected
        } else {
            LinkState::Disconnected
        });
    }

    pub fn is_connected(&self) -> bool {
        self.link.get() == LinkState::Connected
    }

    pub fn stats(&self) -> SimStats {
        SimStats {
            status: if self.is_connected() {
                "connected"
            } else {
                "disconnected"
            },
            accepted: self.accepted_ids().len() as u64,
            journal_records: self.journal_records.load(Ordering::Relaxed),
            duplicates: self.duplicates.load(Ordering::Relaxed),
        }
    }

    fn accepted_ids(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // Invariant: nothing panics while holding this lock.
        self.accepted.lock().expect("sim accepted-ids lock")
    }

    /// Closes the journal (flushing it); the simulator accepts nothing afterwards.
    pub fn close(&self) {
        self.journal.close();
    }
}

impl Gateway for Simulator {
    async fn send(&self, message: &Message) -> Result<(), SendError> {
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        tokio::time::sleep(self.delay).await;
        if !self.is_connected() {
            return Err(SendError::Disconnected);
        }
        // Claimed before the journal write, so that two sends of one id cannot both pass.
        if !self.accepted_ids().insert(message.id.clone()) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let record = Accepted {
            id: message.id.clone(),
            recipient: message.recipient.clone(),
        };
        if let Err(e) = self.journal.append_async(&[record]).await {
            self.accepted_ids().remove(&message.id);
            return Err(SendError::Journal(e.to_string()));
        }
        self.journal_records.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .schedule
            .send((message.id.clone(), statuses_for(&message.recipient)));
        Ok(())
    }
}

/// The statuses the simulated network reports for a message to `recipient`, in order.
fn statuses_for(recipient: &str) -> Vec<Status> {
    let digits: String = recipient.chars().filter(char::is_ascii_digit).collect();
    if digits.ends_with("0000") {
        vec![Status::Failed]
    } else {
        vec![Status::Sent, Status::Delivered, Status::Read]
    }
}

/// The errors of a `failed` status: the recipient is not a WhatsApp user.
fn not_a_user() -> serde_json::Value {
    serde_json::json!([{ "code": 1013, "title": "User is not valid" }])
}

impl Reporter {
    /// Reports statuses as they fall due, while the link is up, until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut due: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
        let mut order = 0u64;
        loop {
            let now = Instant::now();
            let mut ready = Vec::new();
            if self.link.get() == LinkState::Connected {
                while ready.len() < REPORT_BATCH && due.peek().is_some_and(|Reverse(d)| d.at <= now) {
                    if let Some(Reverse(d)) = due.pop() {
                        ready.push(d);
                    }
                }
            }
            let mut wait = due.peek().map_or(Duration::from_secs(3600), |Reverse(d)| {
                d.at.saturating_duration_since(now)
            });
            if !ready.is_empty() {
                if let Err(retry) = self.report(ready).await {
                    due.extend(retry.into_iter().map(|mut d| {
                        d.at = now + REPORT_RETRY;
                        Reverse(d)
                    }));
                }
                wait = Duration::ZERO;
            } else if self.link.get() != LinkState::Connected {
                // Statuses wait for the link; look again shortly.
                wait = wait.min(Duration::from_millis(50));
            }
            tokio::select! {
                Some((id, statuses)) = self.scheduled.recv() => {
                    let start = Instant::now();
                    for (step, status) in statuses.into_iter().enumerate() {
                        order += 1;
                        due.push(Reverse(Due { at: start + self.delay * (step as u32 + 1), order, id: id.clone(), status }));
                    }
                }
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Hands due statuses to the message store; gives them back if it failed.
    async fn report(&self, ready: Vec<Due>) -> Result<(), Vec<Due>> {
        let at: UnixMillis = self.messages.now_ms();
        let events = ready
            .iter()
            .map(|d| StatusEvent {
                id: d.id.clone(),
                status: d.status,
                at,
                errors: (d.status == Status::Failed).then(not_a_user),
            })
            .collect();
        match self.messages.report_statuses(events).await {
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "sim: recording statuses failed; retrying");
                Err(ready)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_number_ending_in_four_zeros_fails_and_any_other_is_read() {
        assert_eq!(statuses_for("+1 555 120 0000"), vec![Status::Failed]);
        assert_eq!(
            statuses_for("15551230001"),
            vec![Status::Sent, Status::Delivered, Status::Read]
        );
    }
}
