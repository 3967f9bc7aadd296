//! The fake's WhatsApp network: after a send is accepted it reports `sent`, `delivered` and
//! `read` (or `failed`, for a recipient the test made unreachable), each a configured delay
//! after the one before, and it carries messages injected "from users". Each becomes a
//! notification POSTed to the callback URL by one deliverer, strictly one after the other in
//! due order, so a message's statuses arrive in order and a notification that is being retried
//! holds back the ones behind it.
//!
//! While the network is paused (or no callback URL is set) nothing is posted: notifications
//! wait and go out, in order, on resume. A repeat count makes each delivered notification go out
//! that many more times, as Meta's at-least-once delivery can, to test de-duplication.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::graph_error::CloudError;
use super::ids::Ids;
use super::ledger::SendRecord;
use super::notification::{self, Business, CONVERSATION_SECONDS, Conversation, InboundEvent, Status, StatusEvent};
use super::webhook::{Outcome, WebhookClient};

/// Most notifications waiting at once; further ones are dropped and counted.
pub const MAX_PENDING: usize = 1_000_000;
/// Most deliveries kept in the log; later ones are counted only.
pub const MAX_LOGGED: usize = 100_000;

/// When the automatic statuses of an accepted send are due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusDelays {
    /// From acceptance to `sent` (or `failed`).
    pub sent: Duration,
    /// From `sent` to `delivered`.
    pub delivered: Duration,
    /// From `delivered` to `read`.
    pub read: Duration,
}

impl Default for StatusDelays {
    fn default() -> StatusDelays {
        StatusDelays {
            sent: Duration::from_millis(20),
            delivered: Duration::from_millis(20),
            read: Duration::from_millis(20),
        }
    }
}

/// One POSTed notification (with all its retries) as the log keeps it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// `sent`, `delivered`, `read`, `failed`, or `message` for an inbound message.
    pub kind: String,
    /// The `wamid` the notification is about.
    pub wamid: String,
    pub body: Vec<u8>,
    pub signature: String,
    /// 0 for the first delivery of a notification, 1.. for its repeats.
    pub repeat: u32,
    pub outcome: Outcome,
}

/// Counts of what the deliverer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliveryCounts {
    /// Notifications answered 200 (repeats included).
    pub delivered: u64,
    /// Notifications that ran out of attempts.
    pub gave_up: u64,
    /// Notifications dropped because [`MAX_PENDING`] were waiting.
    pub dropped: u64,
}

/// What a notification is about; its body is made when it goes out.
#[derive(Debug, Clone)]
enum Event {
    Status {
        wamid: String,
        recipient: String,
        category: &'static str,
        opaque: Option<String>,
        status: Status,
        error: Option<CloudError>,
    },
    Inbound {
        from: String,
        profile_name: String,
        id: String,
        message_type: String,
        content: Value,
    },
}

struct Due {
    at: Instant,
    /// Keeps notifications due at the same instant in the order they were scheduled.
    order: u64,
    event: Event,
}

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Due) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct State {
    queue: BinaryHeap<Reverse<Due>>,
    next_order: u64,
    paused: bool,
    automatic: bool,
    repeat: u32,
    delays: StatusDelays,
    callback_url: Option<String>,
    /// Recipients whose messages fail, with the error their `failed` status carries.
    unreachable: HashMap<String, CloudError>,
    /// The open conversation per recipient.
    conversations: HashMap<String, Conversation>,
    log: Vec<Delivery>,
}

pub(crate) struct Network {
    state: Mutex<State>,
    /// Wakes the deliverer when something was scheduled or the network resumed.
    wake: Notify,
    counts: watch::Sender<DeliveryCounts>,
    business: Business,
}

/// The category (conversation origin and pricing) of a message of this type.
fn category(message_type: &str) -> &'static str {
    if message_type == "template" {
        "utility"
    } else {
        "service"
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Network {
    pub fn new(business: Business, delays: StatusDelays, callback_url: Option<String>) -> Network {
        Network {
            state: Mutex::new(State {
                queue: BinaryHeap::new(),
                next_order: 0,
                paused: false,
                automatic: true,
                repeat: 0,
                delays,
                callback_url,
                unreachable: HashMap::new(),
                conversations: HashMap::new(),
                log: Vec::new(),
            }),
            wake: Notify::new(),
            counts: watch::channel(DeliveryCounts::default()).0,
            business,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent, so a panic elsewhere does not spoil it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Schedules the statuses of a send just accepted (unless statuses are manual).
    pub fn accepted(&self, send: &SendRecord) {
        let mut state = self.lock();
        if !state.automatic {
            return;
        }
        let now = Instant::now();
        let sent_at = now + state.delays.sent;
        let failure = state.unreachable.get(&send.wa_id).cloned();
        if let Some(error) = failure {
            schedule(
                &mut state,
                &self.counts,
                sent_at,
                status_event(send, Status::Failed, Some(error)),
            );
        } else {
            let delivered_at = sent_at + state.delays.delivered;
            let read_at = delivered_at + state.delays.read;
            for (at, status) in [
                (sent_at, Status::Sent),
                (delivered_at, Status::Delivered),
                (read_at, Status::Read),
            ] {
                schedule(&mut state, &self.counts, at, status_event(send, status, None));
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// Schedules one status of `send` now.
    pub fn emit_status(&self, send: &SendRecord, status: Status, error: Option<CloudError>) {
        self.schedule_now(status_event(send, status, error));
    }

    /// Schedules an inbound message now.
    pub fn emit_inbound(&self, from: &str, profile_name: &str, id: &str, message_type: &str, content: Value) {
        self.schedule_now(Event::Inbound {
            from: from.to_string(),
            profile_name: profile_name.to_string(),
            id: id.to_string(),
            message_type: message_type.to_string(),
            content,
        });
    }

    fn schedule_now(&self, event: Event) {
        schedule(&mut self.lock(), &self.counts, Instant::now(), event);
        self.wake.notify_one();
    }

    pub fn set_paused(&self, paused: bool) {
        self.lock().paused = paused;
        self.wake.notify_one();
    }

    pub fn set_automatic(&self, on: bool) {
        self.lock().automatic = on;
    }

    pub fn set_repeat(&self, repeat: u32) {
        self.lock().repeat = repeat;
    }

    pub fn set_delays(&self, delays: StatusDelays) {
        self.lock().delays = delays;
    }

    pub fn set_callback_url(&self, url: Option<String>) {
        self.lock().callback_url = url;
        self.wake.notify_one();
    }

    pub fn callback_url(&self) -> Option<String> {
        self.lock().callback_url.clone()
    }

    /// Messages to `wa_id` accepted from now on fail with `error` (`None`: they succeed again).
    pub fn set_unreachable(&self, wa_id: &str, error: Option<CloudError>) {
        let mut state = self.lock();
        match error {
            Some(error) => state.unreachable.insert(wa_id.to_string(), error),
            None => state.unreachable.remove(wa_id),
        };
    }

    pub fn paused(&self) -> bool {
        self.lock().paused
    }

    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn deliveries(&self) -> Vec<Delivery> {
        self.lock().log.clone()
    }

    pub fn counts(&self) -> DeliveryCounts {
        self.counts.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<DeliveryCounts> {
        self.counts.subscribe()
    }

    /// The deliverer: runs until its task is aborted.
    pub async fn run(&self, client: &WebhookClient, ids: &Ids) {
        loop {
            match self.take_due() {
                Next::Ready(url, event, repeat) => self.deliver(client, ids, &url, &event, repeat).await,
                Next::At(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    }
                }
                // notify_one keeps a permit when nobody waits, so a wake-up sent while the
                // deliverer was busy is not lost.
                Next::Idle => self.wake.notified().await,
            }
        }
    }

    fn take_due(&self) -> Next {
        let mut state = self.lock();
        let (Some(url), false) = (state.callback_url.clone(), state.paused) else {
            return Next::Idle;
        };
        match state.queue.peek() {
            None => Next::Idle,
            Some(Reverse(due)) if due.at > Instant::now() => Next::At(due.at),
            Some(_) => match state.queue.pop() {
                Some(Reverse(due)) => Next::Ready(url, Box::new(due.event), state.repeat),
                None => Next::Idle,
            },
        }
    }

    async fn deliver(&self, client: &WebhookClient, ids: &Ids, url: &str, event: &Event, repeat: u32) {
        let (kind, wamid, body) = self.render(ids, event);
        let body = match serde_json::to_vec(&body) {
            Ok(bytes) => bytes,
            // Invariant: a Value built from strings and numbers always serialises.
            Err(_) => return,
        };
        let signature = client.sign(&body);
        for copy in 0..=repeat {
            let outcome = client.deliver(url, &body, &signature).await;
            let delivered = outcome.delivered;
            // The log first: whoever the counts wake finds the delivery logged.
            let mut state = self.lock();
            if state.log.len() < MAX_LOGGED {
                state.log.push(Delivery {
                    kind: kind.clone(),
                    wamid: wamid.clone(),
                    signature: signature.clone(),
                    body: body.clone(),
                    repeat: copy,
                    outcome,
                });
            }
            drop(state);
            self.counts.send_modify(|c| {
                if delivered {
                    c.delivered += 1;
                } else {
                    c.gave_up += 1;
                }
            });
            if !delivered {
                break;
            }
        }
    }

    /// The notification's kind, the message id it is about, and its body.
    fn render(&self, ids: &Ids, event: &Event) -> (String, String, Value) {
        let timestamp = unix_now();
        match event {
            Event::Status {
                wamid,
                recipient,
                category,
                opaque,
                status,
                error,
            } => {
                let conversation = self.conversation(ids, recipient, category, timestamp);
                let event = StatusEvent {
                    wamid,
                    status: *status,
                    timestamp,
                    recipient_id: recipient,
                    conversation: &conversation,
                    biz_opaque_callback_data: opaque.as_deref(),
                    error: error.as_ref(),
                };
                let body = notification::status(&self.business, &event);
                (status.as_str().to_string(), wamid.clone(), body)
            }
            Event::Inbound {
                from,
                profile_name,
                id,
                message_type,
                content,
            } => {
                let event = InboundEvent {
                    from,
                    profile_name,
                    id,
                    timestamp,
                    message_type,
                    content,
                };
                (
                    "message".to_string(),
                    id.clone(),
                    notification::inbound(&self.business, &event),
                )
            }
        }
    }

    /// The recipient's open conversation, opened now if there is none (or it expired).
    fn conversation(&self, ids: &Ids, recipient: &str, category: &'static str, now: u64) -> Conversation {
        let mut state = self.lock();
        let open = state
            .conversations
            .get(recipient)
            .filter(|c| c.expiration_timestamp > now)
            .cloned();
        open.unwrap_or_else(|| {
            let conversation = Conversation {
                id: ids.conversation(),
                category,
                expiration_timestamp: now + CONVERSATION_SECONDS,
            };
            state.conversations.insert(recipient.to_string(), conversation.clone());
            conversation
        })
    }
}

enum Next {
    /// The callback URL, the notification due, and how often to repeat it.
    Ready(String, Box<Event>, u32),
    At(Instant),
    Idle,
}

fn status_event(send: &SendRecord, status: Status, error: Option<CloudError>) -> Event {
    Event::Status {
        wamid: send.wamid.clone(),
        recipient: send.wa_id.clone(),
        category: category(&send.message_type),
        opaque: send.biz_opaque_callback_data.clone(),
        status,
        error,
    }
}

fn schedule(state: &mut State, counts: &watch::Sender<DeliveryCounts>, at: Instant, event: Event) {
    if state.queue.len() >= MAX_PENDING {
        counts.send_modify(|c| c.dropped += 1);
        return;
    }
    let order = state.next_order;
    state.next_order += 1;
    state.queue.push(Reverse(Due { at, order, event }));
}
