//! The dispatcher: one task that owns the delivery order (spec §8).
//!
//! - FIFO: callbacks start in enqueue order, at most `webhooks.max_concurrent_requests` at once.
//! - Hold: once an attempt is seen to fail, nothing newer than the oldest failed callback starts
//!   until every failed one has succeeded; requests already in flight finish. Failed callbacks
//!   are retried oldest first, each when its backoff `min(n × delay, max)` has passed.
//! - Window: only a bounded slice of the queue is in memory (by count and bytes); the backlog
//!   stays in the store and is read in order as the window drains.
//! - Durability: success and failure are recorded lazily (they ride the next group commit); a
//!   crash may repeat a callback, never lose one. Attempt counts come back from the store, so
//!   backoff resumes where it stopped.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use coreq_storage::{Attempts, CallbackSeq, PendingCallback, Store};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::clock::Clock;
use crate::delivery::webhook::{Failure, WebhookClient};
use crate::delivery::{Command, DeliveryConfig, Shared};
use crate::settings::AppSettings;
use crate::telemetry::catalog::{
    CALLBACK_ATTEMPTS, CALLBACK_DELIVERY_SECONDS, CALLBACK_REQUEST_SECONDS, CALLBACK_RETRIES, CALLBACKS_DROPPED,
};

/// The longest the dispatcher sleeps without looking at the clock again. Retry times are
/// wall-clock times from the injected [`Clock`]; polling at this period lets a test's manual
/// clock move them without the dispatcher knowing about it.
const CLOCK_POLL: Duration = Duration::from_millis(100);

/// Deliveries are recorded in groups of this many, or once the oldest unrecorded one is
/// [`MARK_DELAY`] old: one WAL record and one bitmap update per page for the group, instead of
/// one each per wake-up. The delay adds to the WAL's lazy window in what a crash can repeat.
const MARK_GROUP: usize = 64;
const MARK_DELAY: Duration = Duration::from_millis(2);

/// A callback in memory: its stored form plus what the dispatcher derives once.
struct Entry {
    seq: CallbackSeq,
    enqueued_at: u64,
    body: Bytes,
    attempts: Attempts,
    kind: Kind,
}

impl Entry {
    fn new(cb: PendingCallback) -> Entry {
        let kind = Kind::of(&cb.body);
        Entry {
            seq: cb.seq,
            enqueued_at: cb.enqueued_at,
            body: Bytes::from(cb.body),
            attempts: cb.attempts,
            kind,
        }
    }
}

/// Where and how callbacks go, from the settings (kept so that no request clones them).
#[derive(Clone)]
struct Target {
    /// Parsed once: parsing it for every request was a measurable share of delivery CPU.
    url: reqwest::Url,
    secret: Option<Arc<str>>,
    limit: usize,
}

impl Target {
    fn of(settings: &AppSettings) -> Option<Target> {
        let url = match reqwest::Url::parse(settings.webhook_url.as_deref()?) {
            Ok(url) => url,
            Err(e) => {
                // The settings API validates URLs: this is a setting stored by an older
                // version or edited behind our back. Treated as unset, loudly.
                tracing::error!(error = %e, "webhooks.url does not parse; callbacks are dropped as if it were unset");
                return None;
            }
        };
        Some(Target {
            url,
            secret: settings.signing_secret.as_deref().map(Arc::from),
            limit: settings.max_concurrent_requests as usize,
        })
    }
}

/// What an attempt came to, with the entry handed back.
struct Attempted {
    entry: Entry,
    outcome: Result<(), Failure>,
    elapsed: Duration,
}

pub(super) struct Dispatcher {
    queue: Store,
    client: WebhookClient,
    clock: Arc<dyn Clock>,
    settings: watch::Receiver<AppSettings>,
    commands: mpsc::UnboundedReceiver<Command>,
    shared: Arc<Shared>,
    config: DeliveryConfig,
    /// Loaded, never attempted in this window, in seq order.
    fresh: BTreeMap<CallbackSeq, Entry>,
    /// Failed at least once and waiting for their retry, in seq order.
    failed: BTreeMap<CallbackSeq, Entry>,
    /// Seqs with a request in flight.
    in_flight: HashSet<CallbackSeq>,
    /// The failed callbacks among those in flight (retries): they hold the line like the
    /// waiting ones until they succeed.
    retrying: BTreeSet<CallbackSeq>,
    /// In-flight seqs deleted by an operator: their outcome is ignored.
    deleted_in_flight: HashSet<CallbackSeq>,
    requests: JoinSet<Attempted>,
    /// The highest seq loaded from the store.
    cursor: Option<CallbackSeq>,
    /// Body bytes held in memory (fresh, failed and in flight).
    held_bytes: usize,
    /// Where callbacks go; `None` without a webhook URL.
    target: Option<Target>,
    /// False once a read found nothing more; set again by every enqueue.
    more_in_store: bool,
    /// Delivered seqs not yet recorded. Recorded at the end of a step, after new requests have
    /// started (the store's work stays off the path from one request to the next), in groups
    /// (see [`MARK_GROUP`]), and at stop.
    delivered: Vec<CallbackSeq>,
    /// When the oldest of `delivered` was delivered.
    delivered_since: Option<std::time::Instant>,
    success: SuccessMetrics,
}

impl Dispatcher {
    pub(super) fn new(
        queue: Store,
        client: WebhookClient,
        clock: Arc<dyn Clock>,
        settings: watch::Receiver<AppSettings>,
        commands: mpsc::UnboundedReceiver<Command>,
        shared: Arc<Shared>,
        config: DeliveryConfig,
    ) -> Dispatcher {
        let target = Target::of(&settings.borrow());
        Dispatcher {
            queue,
            client,
            clock,
            settings,
            commands,
            shared,
            config,
            fresh: BTreeMap::new(),
            failed: BTreeMap::new(),
            in_flight: HashSet::new(),
            retrying: BTreeSet::new(),
            deleted_in_flight: HashSet::new(),
            requests: JoinSet::new(),
            cursor: None,
            held_bytes: 0,
            target,
            more_in_store: true,
            delivered: Vec::new(),
            delivered_since: None,
            success: SuccessMetrics::register(),
        }
    }

    /// Runs until `stop` is set. Requests in flight then are abandoned: their callbacks stay
    /// pending and are sent again after the restart.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.step() {
                // The store is poisoned or broken: nothing can be recorded any more. The
                // checkpoint loop stops the service on the same failure.
                tracing::error!(error = %e, "dispatcher: store failed; delivery stopped");
                return;
            }
            let retry_in = self.next_retry_in().min(self.next_mark_in());
            tokio::select! {
                Some(done) = self.requests.join_next(), if !self.requests.is_empty() => {
                    // Take every finished request at once: one append records all their marks.
                    let mut finished = vec![done];
                    while let Some(more) = self.requests.try_join_next() {
                        finished.push(more);
                    }
                    self.finish_all(finished);
                }
                Some(command) = self.commands.recv() => self.command(command),
                () = self.shared.enqueued.notified() => self.more_in_store = true,
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        // The settings are gone: the service is shutting down.
                        return self.record_last_deliveries();
                    }
                    self.settings_changed();
                }
                () = tokio::time::sleep(retry_in) => {}
                _ = stop.wait_for(|stopped| *stopped) => return self.record_last_deliveries(),
            }
        }
    }

    /// Delivered before a stop: not to be sent again after the restart.
    fn record_last_deliveries(&mut self) {
        if let Err(e) = self.record_deliveries(true) {
            tracing::error!(error = %e, "dispatcher: cannot record the last deliveries");
        }
    }

    /// Loads what fits, drops what has nowhere to go, starts what may start.
    fn step(&mut self) -> coreq_storage::Result<()> {
        // A settings change may be waiting behind the event that woke us: a webhook URL set
        // just before an enqueue must be seen before the callback is judged to have nowhere
        // to go.
        if self.settings.has_changed().unwrap_or(false) {
            self.settings_changed();
        }
        self.refill()?;
        match self.target.clone() {
            None => self.drop_all_loaded()?,
            Some(target) => self.start_due(&target),
        }
        self.shared
            .in_flight
            .store(self.in_flight.len() as u64, Ordering::Relaxed);
        self.record_deliveries(false)
    }

    /// Records the deliveries so far once there are enough of them or the oldest has waited
    /// long enough (see [`MARK_GROUP`]), or now when `now`.
    fn record_deliveries(&mut self, now: bool) -> coreq_storage::Result<()> {
        let due = now || self.delivered.len() >= MARK_GROUP || self.next_mark_in().is_zero();
        if self.delivered.is_empty() || !due {
            return Ok(());
        }
        self.delivered_since = None;
        let result = self.queue.mark_all_delivered_lazy(&self.delivered);
        self.delivered.clear();
        result
    }

    /// How long until the unrecorded deliveries are due ([`CLOCK_POLL`] when there are none).
    fn next_mark_in(&self) -> Duration {
        self.delivered_since
            .map_or(CLOCK_POLL, |since| MARK_DELAY.saturating_sub(since.elapsed()))
    }

    /// Tops the window up once it is half empty, so that the store is read in long runs (a
    /// page is decoded whole, however few of its callbacks are wanted).
    fn refill(&mut self) -> coreq_storage::Result<()> {
        if self.fresh.len() + self.failed.len() > self.config.window_callbacks / 2 {
            return Ok(());
        }
        while self.more_in_store
            && self.fresh.len() + self.failed.len() < self.config.window_callbacks
            && self.held_bytes < self.config.window_bytes
        {
            let want = (self.config.window_callbacks - self.fresh.len() - self.failed.len()).min(256);
            let batch = self.queue.pending_callbacks(self.cursor, want)?;
            if batch.len() < want {
                self.more_in_store = false;
            }
            for cb in batch {
                self.cursor = Some(cb.seq);
                self.held_bytes += cb.body.len();
                let entry = Entry::new(cb);
                // Attempt counts survive restarts: a callback that had failed resumes its backoff.
                if entry.attempts.failures > 0 {
                    self.failed.insert(entry.seq, entry);
                } else {
                    self.fresh.insert(entry.seq, entry);
                }
            }
        }
        Ok(())
    }

    /// No webhook URL: callbacks are dropped and counted (spec §8, as On-Premises does).
    fn drop_all_loaded(&mut self) -> coreq_storage::Result<()> {
        let loaded: Vec<Entry> = std::mem::take(&mut self.fresh)
            .into_values()
            .chain(std::mem::take(&mut self.failed).into_values())
            .collect();
        let seqs: Vec<CallbackSeq> = loaded.iter().map(|e| e.seq).collect();
        self.queue.mark_all_delivered_lazy(&seqs)?;
        self.held_bytes -= loaded.iter().map(|e| e.body.len()).sum::<usize>();
        metrics::counter!(CALLBACKS_DROPPED, "reason" => "no_webhook_url").increment(seqs.len() as u64);
        Ok(())
    }

    fn start_due(&mut self, target: &Target) {
        let now = self.clock.now_ms();
        while self.in_flight.len() < target.limit {
            let Some(entry) = self.next_to_start(now) else {
                return;
            };
            self.start(entry, target);
        }
    }

    /// The oldest waiting failed callback, once due; else, if no failed callback (waiting or
    /// being retried) is older than it, the oldest fresh one.
    fn next_to_start(&mut self, now: u64) -> Option<Entry> {
        if let Some((&seq, failed)) = self.failed.iter().next()
            && failed.attempts.next_attempt_at.unwrap_or(0) <= now
        {
            self.retrying.insert(seq);
            return self.failed.remove(&seq);
        }
        let oldest_failed = [self.failed.keys().next(), self.retrying.first()]
            .into_iter()
            .flatten()
            .min()
            .copied();
        let first_fresh = self.fresh.keys().next().copied()?;
        if oldest_failed.is_some_and(|failed| failed < first_fresh) {
            return None; // hold: nothing newer than a failure starts
        }
        self.fresh.remove(&first_fresh)
    }

    fn start(&mut self, entry: Entry, target: &Target) {
        self.in_flight.insert(entry.seq);
        if entry.attempts.failures > 0 {
            metrics::counter!(CALLBACK_RETRIES).increment(1);
        }
        let client = self.client.clone();
        let url = target.url.clone();
        let secret = target.secret.clone();
        self.requests.spawn(async move {
            let started = std::time::Instant::now();
            let outcome = client.post(url, entry.seq, entry.body.clone(), secret.as_deref()).await;
            Attempted {
                entry,
                outcome,
                elapsed: started.elapsed(),
            }
        });
    }

    fn finish_all(&mut self, finished: Vec<Result<Attempted, tokio::task::JoinError>>) {
        for done in finished {
            match done {
                Ok(attempted) => {
                    if let Some(seq) = self.finish(attempted) {
                        self.delivered.push(seq);
                        self.delivered_since.get_or_insert_with(std::time::Instant::now);
                    }
                }
                Err(e) => tracing::error!(error = %e, "dispatcher: request task failed"),
            }
        }
    }

    /// Accounts for one attempt; returns the seq when it was delivered (to be recorded by the
    /// next step).
    fn finish(&mut self, attempted: Attempted) -> Option<CallbackSeq> {
        let Attempted {
            mut entry,
            outcome,
            elapsed,
        } = attempted;
        self.in_flight.remove(&entry.seq);
        self.retrying.remove(&entry.seq);
        match &outcome {
            Ok(()) => {
                // Most attempts succeed: their handles are registered once, not per request.
                self.success.request_seconds[entry.kind as usize].record(elapsed.as_secs_f64());
                self.success.attempts.increment(1);
            }
            Err(failure) => {
                let result = failure.label();
                metrics::histogram!(CALLBACK_REQUEST_SECONDS, "result" => result.clone(), "type" => entry.kind.label())
                    .record(elapsed.as_secs_f64());
                metrics::counter!(CALLBACK_ATTEMPTS, "result" => result).increment(1);
            }
        }
        if self.deleted_in_flight.remove(&entry.seq) {
            self.held_bytes -= entry.body.len();
            return None;
        }
        let now = self.clock.now_ms();
        match outcome {
            Ok(()) => {
                let latency_ms = now.saturating_sub(entry.enqueued_at);
                self.success.delivery_seconds.record(latency_ms as f64 / 1000.0);
                self.held_bytes -= entry.body.len();
                Some(entry.seq)
            }
            Err(failure) => {
                let (delay_ms, max_ms) = {
                    let settings = self.settings.borrow();
                    (
                        settings.callback_backoff_delay_ms,
                        settings.max_callback_backoff_delay_ms,
                    )
                };
                let failures = entry.attempts.failures.saturating_add(1);
                let next = now.saturating_add(backoff_ms(failures, delay_ms, max_ms));
                let error = failure.describe();
                tracing::debug!(seq = entry.seq, failures, next, %error, "callback attempt failed");
                entry.attempts = Attempts::failed(failures, &error, now, next);
                if let Err(e) = self.queue.record_failure_lazy(entry.seq, failures, error, now, next) {
                    tracing::error!(error = %e, "dispatcher: cannot record a failed attempt");
                }
                self.failed.insert(entry.seq, entry);
                None
            }
        }
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::RetryNow(seq) => {
                if let Some(entry) = self.failed.get_mut(&seq) {
                    entry.attempts.next_attempt_at = Some(self.clock.now_ms());
                }
            }
            Command::Deleted(seq) => {
                let removed = self.fresh.remove(&seq).or_else(|| self.failed.remove(&seq));
                if let Some(entry) = removed {
                    self.held_bytes -= entry.body.len();
                } else if self.in_flight.contains(&seq) {
                    self.deleted_in_flight.insert(seq);
                }
                metrics::counter!(CALLBACKS_DROPPED, "reason" => "deleted").increment(1);
            }
        }
    }

    /// Takes the new target; a new webhook URL gets every failed callback at once (the
    /// failures were the old URL's).
    fn settings_changed(&mut self) {
        let target = Target::of(&self.settings.borrow_and_update());
        let url_changed = self.target.as_ref().map(|t| &t.url) != target.as_ref().map(|t| &t.url);
        self.target = target;
        if url_changed {
            let now = self.clock.now_ms();
            for entry in self.failed.values_mut() {
                entry.attempts.next_attempt_at = Some(now);
            }
        }
    }

    /// How long until the oldest waiting failed callback is due (polled at most every
    /// [`CLOCK_POLL`]). Only the oldest matters: retries go in order.
    fn next_retry_in(&self) -> Duration {
        let now = self.clock.now_ms();
        self.failed
            .values()
            .next()
            .and_then(|e| e.attempts.next_attempt_at)
            .map_or(CLOCK_POLL, |at| {
                Duration::from_millis(at.saturating_sub(now)).min(CLOCK_POLL)
            })
    }
}

/// Wait after the `failures`-th consecutive failure: `min(failures × delay, max)`.
pub fn backoff_ms(failures: u32, delay_ms: u64, max_ms: u64) -> u64 {
    u64::from(failures).saturating_mul(delay_ms).min(max_ms)
}

/// What a callback reports, from its top-level keys: the On-Premises `type` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    InboundMessage,
    StatusChange,
    Service,
    Other,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::InboundMessage, Kind::StatusChange, Kind::Service, Kind::Other];

    fn of(body: &[u8]) -> Kind {
        #[derive(serde::Deserialize)]
        struct Keys {
            messages: Option<serde::de::IgnoredAny>,
            statuses: Option<serde::de::IgnoredAny>,
            services: Option<serde::de::IgnoredAny>,
        }
        match serde_json::from_slice::<Keys>(body) {
            Ok(Keys { messages: Some(_), .. }) => Kind::InboundMessage,
            Ok(Keys { statuses: Some(_), .. }) => Kind::StatusChange,
            Ok(Keys { services: Some(_), .. }) => Kind::Service,
            _ => Kind::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::InboundMessage => "inbound_message",
            Kind::StatusChange => "status_change",
            Kind::Service => "service",
            Kind::Other => "other",
        }
    }
}

/// The metric handles of a successful attempt, registered once.
struct SuccessMetrics {
    /// Indexed by `Kind as usize`.
    request_seconds: [metrics::Histogram; 4],
    attempts: metrics::Counter,
    delivery_seconds: metrics::Histogram,
}

impl SuccessMetrics {
    fn register() -> SuccessMetrics {
        SuccessMetrics {
            request_seconds: Kind::ALL.map(
                |kind| metrics::histogram!(CALLBACK_REQUEST_SECONDS, "result" => "success", "type" => kind.label()),
            ),
            attempts: metrics::counter!(CALLBACK_ATTEMPTS, "result" => "success"),
            delivery_seconds: metrics::histogram!(CALLBACK_DELIVERY_SECONDS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_linearly_and_caps() {
        let waits: Vec<u64> = (1..=6).map(|n| backoff_ms(n, 3000, 10_000)).collect();
        assert_eq!(waits, [3000, 6000, 9000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn backoff_does_not_overflow() {
        assert_eq!(backoff_ms(u32::MAX, u64::MAX, 900_000), 900_000);
    }

    #[test]
    fn callback_kind_comes_from_its_top_level_keys() {
        assert_eq!(Kind::of(br#"{"messages":[{}],"contacts":[]}"#), Kind::InboundMessage);
        assert_eq!(Kind::of(br#"{"statuses":[{"id":"x"}]}"#), Kind::StatusChange);
        assert_eq!(Kind::of(br#"{"services":[]}"#), Kind::Service);
        assert_eq!(Kind::of(br#"{"anything":1}"#), Kind::Other);
        assert_eq!(Kind::of(b"not json"), Kind::Other);
    }

    #[test]
    fn kinds_are_listed_in_their_index_order() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i);
        }
    }
}
