//! Driving one measured run: through coreq (enqueue, coreq delivers to our receiver) or straight
//! to the receiver (the ceiling). Every loop here is bounded by the callback count and by a
//! deadline.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::coreq::{Coreq, Enqueued, is_fatal};
use crate::error::Result;
use crate::http::{api_client, failure_label, webhook_client};
use crate::payload::{self, parse_marker, unix_micros};
use crate::receiver::{Behaviour, Receiver, ReceiverConfig, Reply, Request};
use crate::report::{Mode, Report, Setup};
use crate::tracker::{Floor, Tracker, batch_seqs};

/// How long a worker waits after a refusal that may pass (503, 429, 5xx) or a failed request,
/// so that an overloaded coreq is not hammered in a tight loop.
const BACKOFF: Duration = Duration::from_millis(100);

/// How often the drain looks at the pending count.
const DRAIN_POLL: Duration = Duration::from_millis(10);

/// What a run does, validated by the command line.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Callbacks to send at most.
    pub count: u64,
    /// Stop sending after this long even if `count` is not reached.
    pub duration: Duration,
    /// Callbacks per second, paced; flat out when `None`.
    pub rate: Option<f64>,
    /// Enqueue requests in flight (coreq mode).
    pub concurrency: usize,
    /// Callbacks per enqueue request (coreq mode; the ceiling posts one callback per request).
    pub batch: u64,
    pub payload_bytes: usize,
    /// coreq's `max_concurrent_requests`, and the ceiling's requests in flight.
    pub webhook_concurrency: usize,
    pub tls: bool,
    /// Where the receiver's CA lives (required for coreq over HTTPS).
    pub ca_dir: Option<PathBuf>,
    /// How long to wait for acknowledged callbacks to arrive after the last enqueue.
    pub drain_timeout: Duration,
    /// A progress line per second on stderr.
    pub progress: bool,
    /// Coreq mode: enqueue everything first, with the webhook held, then release it.
    pub prefill: bool,
}

/// The coreq to drive.
#[derive(Debug, Clone)]
pub struct Target {
    pub base: String,
    pub user: String,
    pub password: String,
    /// Extra CA for coreq's own API over HTTPS.
    pub ca: Option<PathBuf>,
}

/// Callbacks enqueued into coreq, delivered by coreq to a receiver of ours.
pub async fn run_coreq(opts: &LoadOptions, target: &Target) -> Result<Report> {
    let ledger = Ledger::new(opts.count, opts.batch, opts.webhook_concurrency);
    let receiver = start_receiver(opts, &ledger).await?;
    let http = api_client(target.ca.as_deref(), opts.concurrency)?;
    let coreq = Arc::new(Coreq::login(http, &target.base, &target.user, &target.password).await?);
    let held = format!("{}{HELD_PATH}", receiver.base_url());
    ledger.held.store(opts.prefill, Ordering::SeqCst);
    let first_url = if opts.prefill { held } else { receiver.url() };
    coreq.set_webhook(&first_url, opts.webhook_concurrency).await?;

    let phase = Phase::new(Mode::Coreq, ledger, opts, opts.batch);
    let progress = tokio::spawn(progress(Arc::clone(&phase), progress_limit(opts), opts.progress));
    let mut workers = JoinSet::new();
    for _ in 0..opts.concurrency {
        workers.spawn(enqueue_worker(Arc::clone(&phase), Arc::clone(&coreq)));
    }
    if opts.prefill {
        // Every worker done: the backlog is complete. A new URL makes coreq retry its failed
        // callbacks at once, and everything behind them follows.
        while workers.join_next().await.is_some() {}
        // Cleared first: a callback that arrives after the new URL is set is not early.
        phase.ledger.held.store(false, Ordering::SeqCst);
        coreq.set_webhook(&receiver.url(), opts.webhook_concurrency).await?;
    }
    let report = finish(phase, workers, opts, opts.concurrency).await;
    progress.abort();
    receiver.shutdown().await;
    Ok(report)
}

/// The ceiling: the same callback bodies POSTed by us straight to a receiver, with as many
/// requests in flight as coreq would have.
pub async fn run_ceiling(opts: &LoadOptions) -> Result<Report> {
    let ledger = Ledger::new(opts.count, 1, opts.webhook_concurrency);
    let receiver = start_receiver(opts, &ledger).await?;
    let client = webhook_client(receiver.ca_pem(), opts.webhook_concurrency)?;
    let url: Arc<str> = receiver.url().into();

    let phase = Phase::new(Mode::Ceiling, ledger, opts, 1);
    let progress = tokio::spawn(progress(Arc::clone(&phase), progress_limit(opts), opts.progress));
    let mut workers = JoinSet::new();
    for _ in 0..opts.webhook_concurrency {
        workers.spawn(direct_worker(Arc::clone(&phase), client.clone(), Arc::clone(&url)));
    }
    let report = finish(phase, workers, opts, opts.webhook_concurrency).await;
    progress.abort();
    receiver.shutdown().await;
    Ok(report)
}

/// Waits for the workers, drains, and reports.
async fn finish(phase: Arc<Phase>, mut workers: JoinSet<()>, opts: &LoadOptions, in_flight: usize) -> Report {
    // A worker only panics on a bug; its batches then simply stay unacknowledged.
    while workers.join_next().await.is_some() {}
    let enqueue_secs = phase.started.elapsed().as_secs_f64();
    let drained = drain(&phase.ledger, opts.drain_timeout).await;
    let setup = Setup {
        tls: opts.tls,
        webhook_concurrency: opts.webhook_concurrency,
        enqueue_concurrency: in_flight,
        batch: phase.batch,
        payload_bytes: opts.payload_bytes,
        rate: opts.rate,
        requested: opts.count,
        prefilled: opts.prefill && phase.mode == Mode::Coreq,
    };
    phase.report(setup, enqueue_secs, drained)
}

/// What the receiver and the senders share: this run's id and its tracker.
struct Ledger {
    run: String,
    tracker: Mutex<Tracker>,
    /// `--prefill`: true until coreq's webhook is pointed at the real path.
    held: AtomicBool,
    /// Callbacks that reached the real path while `held` (the hold did not hold).
    early: AtomicU64,
}

impl Ledger {
    fn new(count: u64, batch: u64, window: usize) -> Arc<Ledger> {
        let tracker = Tracker::new(count, batch, window as u64);
        Arc::new(Ledger {
            run: payload::run_id(),
            tracker: Mutex::new(tracker),
            held: AtomicBool::new(false),
            early: AtomicU64::new(0),
        })
    }

    fn tracker(&self) -> MutexGuard<'_, Tracker> {
        // A panic while holding the lock leaves counters that are still consistent enough to
        // report; refusing to report would hide the run.
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One request at the receiver.
    fn observe(&self, body: &[u8]) {
        let (now_us, at) = (unix_micros(), Instant::now());
        if self.held.load(Ordering::SeqCst) {
            self.early.fetch_add(1, Ordering::Relaxed);
        }
        // Parsed outside the lock: the senders need it too.
        match parse_marker(body) {
            Some(marker) if marker.run == self.run => {
                self.tracker().arrival(marker.seq, marker.sent_at_us, now_us, at);
            }
            _ => self.tracker().foreign(),
        }
    }
}

/// The receiver's path that refuses everything (503), where `--prefill` parks the webhook.
const HELD_PATH: &str = "/held";

async fn start_receiver(opts: &LoadOptions, ledger: &Arc<Ledger>) -> Result<Receiver> {
    let observer = Arc::clone(ledger);
    let behaviour: Behaviour = Arc::new(move |request: &Request| {
        if request.path_and_query.starts_with(HELD_PATH) {
            return Reply::Status(503);
        }
        observer.observe(&request.body);
        Reply::Status(200)
    });
    let config = ReceiverConfig {
        tls: opts.tls,
        record_bodies: false,
        behaviour,
        ca_dir: opts.ca_dir.clone(),
    };
    let receiver = Receiver::start(config).await?;
    // The ledger keeps what matters; an Arrival per request would grow with the run.
    receiver.set_record_arrivals(false);
    Ok(receiver)
}

/// The senders' shared state.
struct Phase {
    mode: Mode,
    ledger: Arc<Ledger>,
    batch: u64,
    batches: u64,
    count: u64,
    next_batch: AtomicU64,
    in_flight: AtomicU64,
    stop: AtomicBool,
    errors: Mutex<BTreeMap<String, u64>>,
    started: Instant,
    deadline: Instant,
    rate: Option<f64>,
    payload_bytes: usize,
}

impl Phase {
    fn new(mode: Mode, ledger: Arc<Ledger>, opts: &LoadOptions, batch: u64) -> Arc<Phase> {
        let started = Instant::now();
        Arc::new(Phase {
            mode,
            ledger,
            batch,
            batches: opts.count.div_ceil(batch),
            count: opts.count,
            next_batch: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            errors: Mutex::new(BTreeMap::new()),
            started,
            deadline: started + opts.duration,
            rate: opts.rate,
            payload_bytes: opts.payload_bytes,
        })
    }

    /// The next batch to send, unless the count is reached, time is up or the run was stopped.
    fn next_batch(&self) -> Option<(u64, Range<u64>)> {
        if self.stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline {
            return None;
        }
        let index = self.next_batch.fetch_add(1, Ordering::Relaxed);
        (index < self.batches).then(|| (index, batch_seqs(index, self.batch, self.count)))
    }

    /// Waits until callback `first_seq` is due at the fixed rate; false if that is past the
    /// deadline.
    async fn pace(&self, first_seq: u64) -> bool {
        let Some(rate) = self.rate else { return true };
        let Ok(offset) = Duration::try_from_secs_f64(first_seq as f64 / rate) else {
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

    fn report(&self, setup: Setup, enqueue_secs: f64, drained: bool) -> Report {
        let tracker = self.ledger.tracker();
        let delivery_secs = tracker
            .arrival_span()
            .map(|(first, last)| (last - first).as_secs_f64())
            .filter(|secs| *secs > 0.0);
        Report {
            mode: self.mode,
            run: self.ledger.run.clone(),
            setup,
            counts: tracker.counts(),
            enqueue_secs,
            delivery_secs,
            latency: tracker.latency(),
            errors: self.errors.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            drained,
            early_arrivals: self.ledger.early.load(Ordering::Relaxed),
        }
    }
}

async fn enqueue_worker(phase: Arc<Phase>, coreq: Arc<Coreq>) {
    while let Some((index, seqs)) = phase.next_batch() {
        if !phase.pace(seqs.start).await {
            break;
        }
        let body = payload::enqueue_body(&phase.ledger.run, seqs.clone(), unix_micros(), phase.payload_bytes);
        // Before sending: the floor is what coreq has acknowledged up to now.
        phase.ledger.tracker().sent(index, Floor::ResolvedPrefix);
        phase.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = coreq.enqueue(body).await;
        phase.in_flight.fetch_sub(1, Ordering::Relaxed);
        let expected = usize::try_from(seqs.end - seqs.start).unwrap_or(usize::MAX);
        match outcome {
            Enqueued::Acked { ids } => {
                if ids != expected {
                    phase.error("201 with a wrong number of ids");
                }
                phase.ledger.tracker().resolve(seqs, true);
            }
            Enqueued::Refused(status) => {
                phase.ledger.tracker().resolve(seqs, false);
                phase.error(&status.to_string());
                if is_fatal(status) {
                    phase.stop.store(true, Ordering::Relaxed);
                } else {
                    tokio::time::sleep(BACKOFF).await;
                }
            }
            Enqueued::Failed(label) => {
                phase.ledger.tracker().resolve(seqs, false);
                phase.error(label);
                tokio::time::sleep(BACKOFF).await;
            }
        }
    }
}

async fn direct_worker(phase: Arc<Phase>, client: reqwest::Client, url: Arc<str>) {
    while let Some((index, seqs)) = phase.next_batch() {
        if !phase.pace(seqs.start).await {
            break;
        }
        let body = payload::callback(&phase.ledger.run, seqs.start, unix_micros(), phase.payload_bytes);
        phase.ledger.tracker().sent(index, Floor::BatchStart);
        phase.in_flight.fetch_add(1, Ordering::Relaxed);
        let outcome = post(&client, &url, body).await;
        phase.in_flight.fetch_sub(1, Ordering::Relaxed);
        phase.ledger.tracker().resolve(seqs, outcome.is_ok());
        if let Err(label) = outcome {
            phase.error(&label);
        }
    }
}

/// One POST as coreq makes it: success is a 200 (the body read so the connection is reused).
async fn post(client: &reqwest::Client, url: &str, body: String) -> Result<(), String> {
    let response = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| failure_label(&e).to_string())?;
    let status = response.status().as_u16();
    response.bytes().await.map_err(|e| failure_label(&e).to_string())?;
    if status == 200 { Ok(()) } else { Err(status.to_string()) }
}

/// Waits until every acknowledged callback arrived, at most `timeout`; true if they did.
async fn drain(ledger: &Ledger, timeout: Duration) -> bool {
    wait_until(timeout, || ledger.tracker().counts().pending() == 0).await
}

/// Polls `done` every [`DRAIN_POLL`] until it holds (true) or `timeout` passes (false).
pub(crate) async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Longest a progress reporter may live: sending, draining, and some slack.
fn progress_limit(opts: &LoadOptions) -> Duration {
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
        let counts = phase.ledger.tracker().counts();
        let now = Instant::now();
        let secs = (now - last.0).as_secs_f64().max(1e-3);
        let acked_rate = (counts.acked - last.1) as f64 / secs;
        let delivered_rate = (counts.delivered - last.2) as f64 / secs;
        eprintln!(
            "[{:<7} {:>4}s] acked {} ({:.0}/s)  delivered {} ({:.0}/s)  pending {}  in flight {}  errors {}",
            phase.mode.name(),
            phase.started.elapsed().as_secs(),
            counts.acked,
            acked_rate,
            counts.delivered,
            delivered_rate,
            counts.pending(),
            phase.in_flight.load(Ordering::Relaxed),
            phase.error_total()
        );
        last = (now, counts.acked, counts.delivered);
    }
}
