//! The messages mode: `POST /v1/messages` into a running coreq, `--concurrency` requests in
//! flight, and optionally (`--through-sim`) on through coreq's `sim` gateway to the status
//! callbacks (`sent`, `delivered`, `read`) that coreq POSTs to our own receiver.
//!
//! - **Acceptance**: each 201 comes back only once the message is durable; the run measures
//!   accepted messages per second (first request to last answer) and the latency of each POST.
//! - **Through the sim**: from the first POST until every accepted message's `delivered`
//!   callback arrived; messages per second end to end, the end-to-end latency (POST sent →
//!   `delivered` arrived), callbacks per status, duplicates (the same message id and status
//!   twice; `redelivered` when the second one carried an `X-Coreq-Callback-Id` already seen,
//!   i.e. the same callback sent again rather than the status reported twice), the statuses
//!   missing after the drain, statuses out of order (informational), and the sim's counters.
//!
//! Every loop is bounded by `--count`, `--duration` and `--drain-timeout`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::coreq::{Coreq, Posted, is_fatal};
use crate::error::Result;
use crate::http::api_client;
use crate::payload;
use crate::receiver::{Behaviour, Receiver, ReceiverConfig, Reply, Request};
use crate::report::{errors_line, per_sec, round3};
use crate::run::{Target, wait_until};
use crate::tracker::Latency;

/// Largest `--count` in the messages mode: the books cost about 150 bytes per message.
pub const MAX_MESSAGES: u64 = 2_000_000;

/// Longest `text.body` coreq accepts (On-Premises: 4096 characters).
pub const MAX_TEXT_CHARS: usize = 4096;

/// The header carrying coreq's callback id, the same on every attempt of one callback.
pub const CALLBACK_ID_HEADER: &str = "x-coreq-callback-id";

/// How long a worker waits after a refusal that may pass (503, 429, 5xx) or a failed request.
const BACKOFF: Duration = Duration::from_millis(100);

/// Latencies above an hour are recorded as an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The statuses the sim reports, in the order it reports them, with their bit in [`Entry`].
const SENT: usize = 0;
const DELIVERED: usize = 1;
const READ: usize = 2;
const FAILED: usize = 3;
const STATUS_NAMES: [&str; 4] = ["sent", "delivered", "read", "failed"];

/// What a messages run does, validated by the command line.
#[derive(Debug, Clone)]
pub struct MessageOptions {
    /// Messages to send at most.
    pub count: u64,
    /// Stop sending after this long even if `count` is not reached.
    pub duration: Duration,
    /// Messages per second, paced; flat out when `None`.
    pub rate: Option<f64>,
    /// `POST /v1/messages` requests in flight.
    pub concurrency: usize,
    /// Size of each request body (the text is padded to reach it).
    pub payload_bytes: usize,
    /// On through coreq's sim gateway to the status callbacks; else acceptance only.
    pub through_sim: bool,
    /// `webhooks.message.read`: whether coreq reports `read` (through the sim only).
    pub read_callbacks: bool,
    /// coreq's `webhooks.max_concurrent_requests` (through the sim only).
    pub webhook_concurrency: usize,
    /// HTTPS receiver (through the sim only).
    pub tls: bool,
    pub ca_dir: Option<PathBuf>,
    /// After the last POST, how long to wait for every expected status callback.
    pub drain_timeout: Duration,
    /// A progress line per second on stderr.
    pub progress: bool,
}

/// The recipient of message `seq`: `1555` and 7 digits, never ending in `0000` (the sim reports
/// such numbers `failed`), distinct for the first 9,000,000 seqs.
pub fn recipient(seq: u64) -> String {
    format!("1555{:06}{}", seq % 1_000_000, 1 + (seq / 1_000_000) % 9)
}

/// The body of `POST /v1/messages` for message `seq`: a text message to [`recipient`], its text
/// padded so that the body is `payload_bytes` long (unless the text would exceed
/// [`MAX_TEXT_CHARS`], or even an empty pad makes it longer).
pub fn message_body(run: &str, seq: u64, payload_bytes: usize) -> String {
    let head = format!(
        r#"{{"to":"{}","type":"text","text":{{"body":"coreq-loadgen {run} {seq} "#,
        recipient(seq)
    );
    let closing = r#""}}"#;
    let text_so_far = head.len() - head.find("\"body\":\"").map_or(0, |i| i + 8);
    let pad = payload_bytes
        .saturating_sub(head.len() + closing.len())
        .min(MAX_TEXT_CHARS.saturating_sub(text_so_far));
    let mut out = String::with_capacity(head.len() + pad + closing.len());
    out.push_str(&head);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(closing);
    out
}

/// Messages sent, accepted, and the callbacks that came back (through the sim).
pub async fn run_messages(opts: &MessageOptions, target: &Target) -> Result<MessagesReport> {
    let book = Arc::new(Book::new());
    let http = api_client(target.ca.as_deref(), opts.concurrency)?;
    let coreq = Arc::new(Coreq::login(http, &target.base, &target.user, &target.password).await?);
    let receiver = if opts.through_sim {
        let receiver = start_receiver(opts, &book).await?;
        coreq
            .set_message_webhook(&receiver.url(), opts.webhook_concurrency, opts.read_callbacks)
            .await?;
        Some(receiver)
    } else {
        None
    };

    let phase = Arc::new(Phase::new(book, opts));
    let progress = tokio::spawn(progress(Arc::clone(&phase), progress_limit(opts), opts.progress));
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency {
        workers.spawn(post_worker(Arc::clone(&phase), Arc::clone(&coreq)));
    }
    // A worker only panics on a bug; its messages then simply stay unaccepted.
    while workers.join_next().await.is_some() {}
    let drained = if opts.through_sim {
        drain(&phase, opts.drain_timeout).await
    } else {
        true
    };
    let sim = if opts.through_sim {
        // Counters only: a failure to read them does not void the run.
        coreq.sim_stats().await.ok()
    } else {
        None
    };
    progress.abort();
    if let Some(receiver) = receiver {
        receiver.shutdown().await;
    }
    Ok(phase.report(opts, drained, sim))
}

async fn start_receiver(opts: &MessageOptions, book: &Arc<Book>) -> Result<Receiver> {
    let observer = Arc::clone(book);
    let behaviour: Behaviour = Arc::new(move |request: &Request| {
        observer.observe(request, Instant::now());
        Reply::Status(200)
    });
    let config = ReceiverConfig {
        tls: opts.tls,
        record_bodies: false,
        behaviour,
        ca_dir: opts.ca_dir.clone(),
    };
    let receiver = Receiver::start(config).await?;
    // The book keeps what matters; an Arrival per request would grow with the run.
    receiver.set_record_arrivals(false);
    Ok(receiver)
}

/// One message id: created by its 201 or by the first callback about it, whichever comes first.
#[derive(Debug, Default)]
struct Entry {
    /// Set by the 201: the seq it was sent as, when its POST was sent.
    posted: Option<(u64, Instant)>,
    /// Bits of [`STATUS_NAMES`] that arrived.
    seen: u8,
    /// First arrival of its `delivered`.
    delivered_at: Option<Instant>,
    /// The furthest status (1 + index in `sent, delivered, read`) that arrived so far.
    furthest: u8,
    /// The `recipient_id` of a callback that arrived before the 201, checked at the 201.
    early_recipient: Option<Box<str>>,
}

/// The shared books of a run.
struct Book {
    inner: Mutex<Books>,
}

#[derive(Default)]
struct Books {
    entries: HashMap<String, Entry>,
    callback_ids: HashSet<String>,
    acked: u64,
    /// Accepted messages (201 seen) with each status arrived.
    acked_with: [u64; 4],
    /// Every status arrival, duplicates included, by status name.
    arrivals: BTreeMap<String, u64>,
    /// Requests at the receiver.
    requests: u64,
    duplicates: u64,
    redelivered: u64,
    out_of_order: u64,
    wrong_recipient: u64,
    /// Requests that were not status callbacks.
    foreign: u64,
    /// The last answer to a POST.
    last_answer: Option<Instant>,
    /// The latest first `delivered` arrival of an accepted message.
    last_delivered: Option<Instant>,
    post_latency_us: Option<Histogram<u64>>,
}

impl Book {
    fn new() -> Book {
        Book {
            inner: Mutex::new(Books {
                post_latency_us: Some(histogram()),
                ..Books::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Books> {
        // A panic while holding the lock leaves counters consistent enough to report.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request at the receiver.
    fn observe(&self, request: &Request, at: Instant) {
        let callback_id = request.header(CALLBACK_ID_HEADER).map(str::to_string);
        // Parsed outside the lock: the senders need it too.
        let statuses: Option<Vec<(String, String, Option<String>)>> =
            serde_json::from_slice::<Value>(&request.body).ok().and_then(|v| {
                let list = v.get("statuses")?.as_array()?.clone();
                Some(
                    list.iter()
                        .filter_map(|s| {
                            Some((
                                s.get("id")?.as_str()?.to_string(),
                                s.get("status")?.as_str()?.to_string(),
                                s.get("recipient_id").and_then(Value::as_str).map(str::to_string),
                            ))
                        })
                        .collect(),
                )
            });
        let mut books = self.lock();
        books.requests += 1;
        let Some(statuses) = statuses.filter(|s| !s.is_empty()) else {
            books.foreign += 1;
            return;
        };
        let redelivered = match callback_id {
            Some(id) => !books.callback_ids.insert(id),
            None => false,
        };
        for (id, status, recipient_id) in statuses {
            books.status(id, &status, recipient_id, redelivered, at);
        }
    }

    /// Message `seq` (POST sent at `posted_at`) was accepted as `id`, answered at `answered`.
    fn accepted(&self, id: String, seq: u64, posted_at: Instant, answered: Instant) {
        let mut books = self.lock();
        let latency = u64::try_from((answered - posted_at).as_micros()).unwrap_or(u64::MAX);
        if let Some(h) = books.post_latency_us.as_mut() {
            h.saturating_record(latency.max(1));
        }
        books.last_answer = Some(books.last_answer.map_or(answered, |t| t.max(answered)));
        books.acked += 1;
        let entry = books.entries.entry(id).or_default();
        if entry.posted.is_some() {
            // coreq gave the same id to two messages: their callbacks cannot be told apart.
            books.wrong_recipient += 1;
            return;
        }
        entry.posted = Some((seq, posted_at));
        let early = entry.early_recipient.take();
        let seen = entry.seen;
        let delivered_at = entry.delivered_at;
        if early.is_some_and(|r| *r != *recipient(seq)) {
            books.wrong_recipient += 1;
        }
        for (bit, count) in books.acked_with.iter_mut().enumerate() {
            if seen & (1 << bit) != 0 {
                *count += 1;
            }
        }
        if let Some(at) = delivered_at {
            books.last_delivered = Some(books.last_delivered.map_or(at, |t| t.max(at)));
        }
    }
}

impl Books {
    fn status(&mut self, id: String, status: &str, recipient_id: Option<String>, redelivered: bool, at: Instant) {
        *self.arrivals.entry(status.to_string()).or_insert(0) += 1;
        let Some(bit) = STATUS_NAMES.iter().position(|s| *s == status) else {
            return;
        };
        let entry = self.entries.entry(id).or_default();
        if entry.seen & (1 << bit) != 0 {
            self.duplicates += 1;
            self.redelivered += u64::from(redelivered);
            return;
        }
        entry.seen |= 1 << bit;
        if bit != FAILED {
            let rank = bit as u8 + 1;
            if rank < entry.furthest {
                self.out_of_order += 1;
            }
            entry.furthest = entry.furthest.max(rank);
        }
        if bit == DELIVERED {
            entry.delivered_at = Some(at);
        }
        match (entry.posted, recipient_id) {
            (Some((seq, _)), Some(r)) => {
                if r != recipient(seq) {
                    self.wrong_recipient += 1;
                }
            }
            (None, Some(r)) => {
                entry.early_recipient.get_or_insert_with(|| r.into_boxed_str());
            }
            (_, None) => self.wrong_recipient += 1,
        }
        if entry.posted.is_some() {
            self.acked_with[bit] += 1;
            if bit == DELIVERED {
                self.last_delivered = Some(self.last_delivered.map_or(at, |t| t.max(at)));
            }
        }
    }

    /// Accepted messages still owed a status this run expects.
    fn owed(&self, read: bool) -> u64 {
        let mut owed = (self.acked - self.acked_with[SENT]) + (self.acked - self.acked_with[DELIVERED]);
        if read {
            owed += self.acked - self.acked_with[READ];
        }
        owed
    }

    /// Statuses for ids that never got a 201 (an earlier run's backlog, or a POST that failed
    /// after coreq had committed it).
    fn unacked_ids(&self) -> u64 {
        self.entries.values().filter(|e| e.posted.is_none()).count() as u64
    }

    fn e2e_latency(&self) -> Option<Latency> {
        let mut h = histogram();
        for entry in self.entries.values() {
            if let (Some((_, posted)), Some(delivered)) = (entry.posted, entry.delivered_at) {
                let us = u64::try_from(delivered.saturating_duration_since(posted).as_micros()).unwrap_or(u64::MAX);
                h.saturating_record(us.max(1));
            }
        }
        latency(&h)
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs to an hour at 3 significant digits: these bounds are valid, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

fn latency(h: &Histogram<u64>) -> Option<Latency> {
    if h.is_empty() {
        return None;
    }
    let ms = |us: u64| us as f64 / 1000.0;
    Some(Latency {
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        max_ms: ms(h.max()),
    })
}

/// The senders' shared state.
struct Phase {
    book: Arc<Book>,
    run: String,
    count: u64,
    next_seq: AtomicU64,
    posted: AtomicU64,
    in_flight: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
    started: Instant,
    deadline: Instant,
    rate: Option<f64>,
    payload_bytes: usize,
    through_sim: bool,
    read: bool,
}

impl Phase {
    fn new(book: Arc<Book>, opts: &MessageOptions) -> Phase {
        let started = Instant::now();
        Phase {
            book,
            run: payload::run_id(),
            count: opts.count,
            next_seq: AtomicU64::new(0),
            posted: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            errors: Mutex::new(BTreeMap::new()),
            started,
            deadline: started + opts.duration,
            rate: opts.rate,
            payload_bytes: opts.payload_bytes,
            through_sim: opts.through_sim,
            read: opts.read_callbacks,
        }
    }

    /// The next message to send, unless the count is reached, time is up or the run was stopped.
    fn next_seq(&self) -> Option<u64> {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        (seq < self.count).then_some(seq)
    }

    /// Waits until message `seq` is due at the fixed rate; false if that is past the deadline.
    async fn pace(&self, seq: u64) -> bool {
        let Some(rate) = self.rate else { return true };
        let Ok(offset) = Duration::try_from_secs_f64(seq as f64 / rate) else {
            return false;
        };
        let due = self.started + offset;
        if due >= self.deadline {
            return false;
        }
        tokio::time::sleep_until(due.into()).await;
        true
    }

    fn error(&self, label: &str) {
        let mut errors = self.errors.lock().unwrap_or_else(PoisonError::into_inner);
        *errors.entry(label.to_string()).or_insert(0) += 1;
    }

    fn error_total(&self) -> u64 {
        self.errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }

    fn report(&self, opts: &MessageOptions, drained: bool, sim: Option<Value>) -> MessagesReport {
        let books = self.book.lock();
        let secs_since_start = |t: Option<Instant>| {
            t.map(|t| t.saturating_duration_since(self.started).as_secs_f64())
                .filter(|s| *s > 0.0)
        };
        let acked = books.acked;
        let statuses = STATUS_NAMES
            .iter()
            .enumerate()
            .map(|(bit, name)| {
                let counts = StatusCounts {
                    arrivals: books.arrivals.get(*name).copied().unwrap_or(0),
                    accepted_messages: books.acked_with[bit],
                };
                (name.to_string(), counts)
            })
            .chain(
                books
                    .arrivals
                    .iter()
                    .filter(|(name, _)| !STATUS_NAMES.contains(&name.as_str()))
                    .map(|(name, n)| {
                        let counts = StatusCounts {
                            arrivals: *n,
                            accepted_messages: 0,
                        };
                        (name.clone(), counts)
                    }),
            )
            .collect();
        let mut missing = BTreeMap::new();
        if opts.through_sim {
            missing.insert("sent".to_string(), acked - books.acked_with[SENT]);
            missing.insert("delivered".to_string(), acked - books.acked_with[DELIVERED]);
            if opts.read_callbacks {
                missing.insert("read".to_string(), acked - books.acked_with[READ]);
            }
        }
        MessagesReport {
            run: self.run.clone(),
            through_sim: opts.through_sim,
            read_callbacks: opts.through_sim && opts.read_callbacks,
            concurrency: opts.concurrency,
            webhook_concurrency: opts.webhook_concurrency,
            tls: opts.tls,
            payload_bytes: opts.payload_bytes,
            rate: opts.rate,
            requested: opts.count,
            posted: self.posted.load(Ordering::Relaxed),
            acked,
            errors: self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            accept_secs: secs_since_start(books.last_answer),
            post_latency: books.post_latency_us.as_ref().and_then(latency),
            callbacks: books.requests,
            statuses,
            delivered: books.acked_with[DELIVERED],
            delivered_secs: secs_since_start(books.last_delivered),
            e2e_latency: if opts.through_sim { books.e2e_latency() } else { None },
            duplicates: books.duplicates,
            redelivered: books.redelivered,
            out_of_order: books.out_of_order,
            wrong_recipient: books.wrong_recipient,
            unacked_ids: books.unacked_ids(),
            foreign: books.foreign,
            missing,
            drained,
            sim,
        }
    }
}

async fn post_worker(phase: Arc<Phase>, coreq: Arc<Coreq>) {
    while let Some(seq) = phase.next_seq() {
        if !phase.pace(seq).await {
            break;
        }
        let body = message_body(&phase.run, seq, phase.payload_bytes);
        phase.posted.fetch_add(1, Ordering::Relaxed);
        phase.in_flight.fetch_add(1, Ordering::Relaxed);
        let posted_at = Instant::now();
        let outcome = coreq.post_message(body).await;
        let answered = Instant::now();
        phase.in_flight.fetch_sub(1, Ordering::Relaxed);
        match outcome {
            Posted::Accepted { id } => phase.book.accepted(id, seq, posted_at, answered),
            Posted::NoId => phase.error("201 without messages[0].id"),
            Posted::Refused(status) => {
                phase.error(&status.to_string());
                if is_fatal(status) {
                    phase.stop.store(true, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            Posted::Failed(label) => {
                phase.error(label);
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

/// Waits until every accepted message's expected statuses arrived, at most `timeout`.
async fn drain(phase: &Phase, timeout: Duration) -> bool {
    wait_until(timeout, || phase.book.lock().owed(phase.read) == 0).await
}

/// Longest a progress reporter may live: sending, draining, and some slack.
fn progress_limit(opts: &MessageOptions) -> Duration {
    opts.duration + opts.drain_timeout + Duration::from_secs(10)
}

/// A line per second on stderr until aborted (or `limit`).
async fn progress(phase: Arc<Phase>, limit: Duration, enabled: bool) {
    if !enabled {
        return;
    }
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut last = (Instant::now(), 0, 0);
    while phase.started.elapsed() < limit {
        ticker.tick().await;
        let (acked, with) = {
            let books = phase.book.lock();
            (books.acked, books.acked_with)
        };
        let now = Instant::now();
        let secs = (now - last.0).as_secs_f64().max(1e-3);
        let mut line = format!(
            "[messages {:>4}s] accepted {} ({:.0}/s)",
            phase.started.elapsed().as_secs(),
            acked,
            (acked - last.1) as f64 / secs
        );
        if phase.through_sim {
            let _ = write!(
                line,
                "  sent {}  delivered {} ({:.0}/s)  read {}  awaiting delivered {}",
                with[SENT],
                with[DELIVERED],
                (with[DELIVERED] - last.2) as f64 / secs,
                with[READ],
                acked - with[DELIVERED]
            );
        }
        let _ = write!(
            line,
            "  in flight {}  errors {}",
            phase.in_flight.load(Ordering::Relaxed),
            phase.error_total()
        );
        eprintln!("{line}");
        last = (now, acked, with[DELIVERED]);
    }
}

/// Arrivals of one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusCounts {
    /// Every arrival, duplicates and unaccepted ids included.
    pub arrivals: u64,
    /// Accepted messages (201 seen) that got this status.
    pub accepted_messages: u64,
}

/// The result of a messages run.
#[derive(Debug, Clone, PartialEq)]
pub struct MessagesReport {
    pub run: String,
    pub through_sim: bool,
    pub read_callbacks: bool,
    pub concurrency: usize,
    pub webhook_concurrency: usize,
    pub tls: bool,
    pub payload_bytes: usize,
    pub rate: Option<f64>,
    pub requested: u64,
    /// POSTs sent.
    pub posted: u64,
    /// 201s with an id.
    pub acked: u64,
    /// Failed POSTs by status or failure.
    pub errors: BTreeMap<String, u64>,
    /// First POST sent to the last answer.
    pub accept_secs: Option<f64>,
    /// Each POST, sent to answered (201s only).
    pub post_latency: Option<Latency>,
    /// Requests at the receiver.
    pub callbacks: u64,
    /// By status name.
    pub statuses: BTreeMap<String, StatusCounts>,
    /// Accepted messages whose `delivered` arrived.
    pub delivered: u64,
    /// First POST sent to the last first `delivered` of an accepted message.
    pub delivered_secs: Option<f64>,
    /// POST sent → its `delivered` arrived.
    pub e2e_latency: Option<Latency>,
    /// Arrivals of a (message id, status) that had already arrived.
    pub duplicates: u64,
    /// Of the duplicates, those whose `X-Coreq-Callback-Id` had been seen before.
    pub redelivered: u64,
    /// A status arriving after a later one of the same message (informational: with several
    /// webhook requests in flight, coreq may deliver them in either order).
    pub out_of_order: u64,
    /// Callbacks with a `recipient_id` other than the message's, or none.
    pub wrong_recipient: u64,
    /// Message ids with statuses but no 201 (an earlier run's backlog, or a POST that failed
    /// after coreq committed it).
    pub unacked_ids: u64,
    /// Requests at the receiver that were not status callbacks.
    pub foreign: u64,
    /// Through the sim: accepted messages without this status after the drain.
    pub missing: BTreeMap<String, u64>,
    /// Every expected status of every accepted message arrived before the drain timeout.
    pub drained: bool,
    /// `GET /v1/sim/gateway` after the run.
    pub sim: Option<Value>,
}

impl MessagesReport {
    pub fn mode(&self) -> &'static str {
        if self.through_sim { "messages-sim" } else { "messages" }
    }

    /// Accepted messages per second, first POST to last answer.
    pub fn accepted_per_sec(&self) -> f64 {
        per_sec(self.acked, self.accept_secs)
    }

    /// Messages per second end to end: first POST to the last `delivered`.
    pub fn delivered_per_sec(&self) -> f64 {
        per_sec(self.delivered, self.delivered_secs)
    }

    /// What makes this run a failure; empty when it passed.
    pub fn problems(&self, allow_duplicates: bool) -> Vec<String> {
        let mode = self.mode();
        let mut problems = Vec::new();
        if self.acked == 0 {
            problems.push(format!("{mode}: no message was accepted"));
        }
        if !self.through_sim {
            return problems;
        }
        if self.duplicates > 0 && !allow_duplicates {
            problems.push(format!(
                "{mode}: {} duplicate status callbacks ({} of them redeliveries of a callback id already seen)",
                self.duplicates, self.redelivered
            ));
        }
        for (status, n) in &self.missing {
            if *n > 0 {
                problems.push(format!(
                    "{mode}: {n} accepted messages never got their {status} callback"
                ));
            }
        }
        let failed = self.statuses.get("failed").map_or(0, |s| s.arrivals);
        if failed > 0 {
            problems.push(format!(
                "{mode}: {failed} failed statuses (no recipient of ours should fail)"
            ));
        }
        if self.wrong_recipient > 0 {
            problems.push(format!(
                "{mode}: {} callbacks with a wrong or no recipient_id (or an id given twice)",
                self.wrong_recipient
            ));
        }
        problems
    }

    pub fn to_json(&self) -> Value {
        let lat = |l: Option<Latency>| {
            l.map(|l| json!({"p50": round3(l.p50_ms), "p99": round3(l.p99_ms), "max": round3(l.max_ms)}))
        };
        let mut out = json!({
            "mode": self.mode(),
            "run": self.run,
            "concurrency": self.concurrency,
            "payload_bytes": self.payload_bytes,
            "rate": self.rate,
            "requested": self.requested,
            "posted": self.posted,
            "accepted": self.acked,
            "accept_secs": self.accept_secs.map(round3),
            "accepted_per_sec": round3(self.accepted_per_sec()),
            "post_errors": self.errors,
            "post_latency_ms": lat(self.post_latency),
        });
        if self.through_sim {
            let statuses: serde_json::Map<String, Value> = self
                .statuses
                .iter()
                .map(|(name, c)| {
                    let v = json!({"arrivals": c.arrivals, "accepted_messages": c.accepted_messages});
                    (name.clone(), v)
                })
                .collect();
            let extra = json!({
                "tls": self.tls,
                "webhook_concurrency": self.webhook_concurrency,
                "read_callbacks": self.read_callbacks,
                "delivered": self.delivered,
                "delivered_secs": self.delivered_secs.map(round3),
                "delivered_per_sec": round3(self.delivered_per_sec()),
                "e2e_latency_ms": lat(self.e2e_latency),
                "callbacks": self.callbacks,
                "statuses": statuses,
                "duplicates": self.duplicates,
                "redelivered": self.redelivered,
                "out_of_order": self.out_of_order,
                "wrong_recipient": self.wrong_recipient,
                "unacked_ids": self.unacked_ids,
                "foreign": self.foreign,
                "missing": self.missing,
                "drained": self.drained,
                "sim": self.sim,
            });
            if let (Some(out), Some(extra)) = (out.as_object_mut(), extra.as_object()) {
                out.extend(extra.clone());
            }
        }
        out
    }

    /// The report as aligned `key: value` lines.
    pub fn human(&self) -> String {
        let mut out = String::new();
        let rate = self.rate.map_or_else(|| "flat out".to_string(), |r| format!("{r}/s"));
        let lat = |l: Option<Latency>| {
            l.map_or_else(
                || "-".to_string(),
                |l| format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms),
            )
        };
        let secs = |s: Option<f64>| s.map_or_else(|| "-".to_string(), |s| format!("{s:.3} s"));
        // Writing to a String cannot fail.
        let _ = writeln!(out, "== {} (run {}) ==", self.mode(), self.run);
        let _ = write!(
            out,
            "setup:              {} POSTs in flight, body {} B, {rate}, {} messages requested",
            self.concurrency, self.payload_bytes, self.requested
        );
        if self.through_sim {
            let _ = write!(
                out,
                "; {} webhook, webhook concurrency {}, read callbacks {}",
                if self.tls { "https" } else { "http" },
                self.webhook_concurrency,
                if self.read_callbacks { "on" } else { "off" }
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(out, "posted:             {}", self.posted);
        let _ = writeln!(
            out,
            "accepted (201):     {} in {} = {:.1}/s",
            self.acked,
            secs(self.accept_secs),
            self.accepted_per_sec()
        );
        let _ = writeln!(out, "POST latency:       {}", lat(self.post_latency));
        let _ = writeln!(out, "errors:             {}", errors_line(&self.errors));
        if !self.through_sim {
            return out;
        }
        let _ = writeln!(
            out,
            "delivered:          {} in {} (first POST to last delivered) = {:.1}/s",
            self.delivered,
            secs(self.delivered_secs),
            self.delivered_per_sec()
        );
        let _ = writeln!(
            out,
            "e2e latency:        {} (POST sent to delivered arrived)",
            lat(self.e2e_latency)
        );
        let statuses = self
            .statuses
            .iter()
            .map(|(name, c)| format!("{name} {} ({} accepted messages)", c.arrivals, c.accepted_messages))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(out, "callbacks:          {} requests: {statuses}", self.callbacks);
        let missing = self
            .missing
            .iter()
            .map(|(status, n)| format!("{status} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = writeln!(
            out,
            "checks:             {} duplicates ({} redelivered), missing: {missing}, {} out of order, \
             {} wrong recipient, {} unacked ids, {} foreign, {}",
            self.duplicates,
            self.redelivered,
            self.out_of_order,
            self.wrong_recipient,
            self.unacked_ids,
            self.foreign,
            if self.drained { "drained" } else { "NOT drained" }
        );
        if let Some(sim) = &self.sim {
            let _ = writeln!(out, "sim gateway:        {sim}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(callback_id: &str, body: Value) -> Request {
        Request {
            index: 0,
            method: "POST".into(),
            path_and_query: "/hook".into(),
            headers: vec![(CALLBACK_ID_HEADER.into(), callback_id.into())],
            body: body.to_string().into_bytes(),
        }
    }

    fn status(id: &str, status: &str, seq: u64) -> Value {
        json!({"statuses":[{"id": id, "recipient_id": recipient(seq), "status": status, "timestamp": "1"}]})
    }

    #[test]
    fn recipients_are_valid_distinct_and_never_end_in_0000() {
        let mut seen = HashSet::new();
        for seq in (0..2_000_000)
            .step_by(997)
            .chain([0, 9_999, 10_000, 999_999, 1_000_000])
        {
            let r = recipient(seq);
            assert_eq!(r.len(), 11, "{r}");
            assert!(r.starts_with("1555") && r.bytes().all(|c| c.is_ascii_digit()), "{r}");
            assert!(!r.ends_with("0000"), "{r}");
            seen.insert((seq, r));
        }
        let distinct: HashSet<_> = seen.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(distinct.len(), seen.len());
    }

    #[test]
    fn a_message_body_is_valid_json_of_the_requested_size() {
        for size in [0, 100, 256, 1000] {
            let body = message_body("0123456789abcdef", 42, size);
            let minimum = message_body("0123456789abcdef", 42, 0).len();
            assert_eq!(body.len(), size.max(minimum), "{body}");
            let v: Value = serde_json::from_str(&body).expect("JSON");
            assert_eq!(v["to"], recipient(42));
            assert_eq!(v["type"], "text");
            assert!(
                v["text"]["body"]
                    .as_str()
                    .expect("text")
                    .starts_with("coreq-loadgen 0123456789abcdef 42 ")
            );
        }
        let huge = message_body("r", 1, 100_000);
        let v: Value = serde_json::from_str(&huge).expect("JSON");
        assert_eq!(
            v["text"]["body"].as_str().expect("text").chars().count(),
            MAX_TEXT_CHARS
        );
    }

    #[test]
    fn the_books_count_statuses_duplicates_early_arrivals_and_missing() {
        let book = Book::new();
        let t0 = Instant::now();
        book.accepted("a".into(), 0, t0, t0 + Duration::from_millis(2));
        // b's sent arrives before its 201.
        book.observe(&request("cb1", status("b", "sent", 1)), t0);
        book.accepted("b".into(), 1, t0, t0 + Duration::from_millis(3));
        book.observe(&request("cb2", status("a", "sent", 0)), t0);
        book.observe(
            &request("cb3", status("a", "delivered", 0)),
            t0 + Duration::from_millis(5),
        );
        // The same callback again, then the same status under a new callback id.
        book.observe(&request("cb3", status("a", "delivered", 0)), t0);
        book.observe(&request("cb4", status("a", "delivered", 0)), t0);
        // Out of order: read before delivered for b… and a wrong recipient.
        book.observe(&request("cb5", status("b", "read", 1)), t0);
        book.observe(
            &request("cb6", status("b", "delivered", 7)),
            t0 + Duration::from_millis(9),
        );
        book.observe(&request("cb7", json!({"contacts": []})), t0);
        book.observe(&request("cb8", status("zz", "sent", 5)), t0);
        let books = book.lock();
        assert_eq!(books.acked, 2);
        assert_eq!(books.acked_with, [2, 2, 1, 0]);
        assert_eq!((books.duplicates, books.redelivered), (2, 1));
        assert_eq!((books.out_of_order, books.wrong_recipient, books.foreign), (1, 1, 1));
        assert_eq!(books.unacked_ids(), 1);
        assert_eq!(books.owed(false), 0);
        assert_eq!(books.owed(true), 1, "a has no read");
        assert_eq!(books.requests, 9);
        let e2e = books.e2e_latency().expect("recorded");
        assert!((e2e.max_ms - 9.0).abs() < 0.05, "{e2e:?}");
    }

    #[test]
    fn a_delivered_before_the_201_still_counts_and_its_recipient_is_checked() {
        let book = Book::new();
        let t0 = Instant::now();
        book.observe(
            &request("c1", status("x", "delivered", 3)),
            t0 + Duration::from_millis(4),
        );
        book.accepted("x".into(), 4, t0, t0 + Duration::from_millis(5));
        let books = book.lock();
        assert_eq!(books.acked_with[DELIVERED], 1);
        assert_eq!(
            books.wrong_recipient, 1,
            "sent to recipient(4), reported for recipient(3)"
        );
        assert_eq!(books.last_delivered, Some(t0 + Duration::from_millis(4)));
    }
}
