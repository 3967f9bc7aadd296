//! `coreq-storage` — coreq's state model and where it lives.
//!
//! Every state change is a [`Change`] record. A [`Store`] commits it in two steps: append it to
//! the WAL (`coreq-wal`) and wait for the group commit's fdatasync, then apply it to a
//! [`State`] backend. The state is therefore always a fold of the durable log, and anything
//! visible in it survives a crash. Recovery replays the log from the state's last checkpoint.
//!
//! Backends: [`SledState`] (the default, on disk) and [`MemoryState`] (for
//! `callback_persist=false` and tests). Both pass one suite (`tests/suite.rs`).
//!
//! Invariants:
//! - A `*_durable` write returns only after its record is durable in the WAL and applied.
//! - A `*_lazy` write (delivery marks, attempt counts) is applied at once and rides the next
//!   group commit; a crash may lose it, which at-least-once delivery allows.
//! - A checkpoint claims LSN `n` only when every record up to `n` is durable and applied; the
//!   WAL is truncated only below the checkpoint and below every retaining cursor (the mirror).
//! - Identifiers (callback seq, send seq) are never reused: the counters are saved with each
//!   checkpoint and raised past every replayed record.
//! - Nothing here reads the clock or the environment: times come from the caller.

mod change;
mod error;
pub mod memory;
pub mod model;
pub mod sled_state;
mod state;
mod watermark;

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use coreq_wal::{Lsn, OpenReport, VerifyReport, Wal, WalConfig, WalError, WalStats};

pub use change::Change;
pub use error::{Result, StorageError};
pub use memory::MemoryState;
pub use model::*;
pub use sled_state::{SledConfig, SledState};
pub use state::{Checkpoint, Counters, State};

use watermark::Watermark;

/// Largest encoded size of one `CallbacksEnqueued` record; larger batches are split into
/// several consecutive records committed together.
const MAX_ENQUEUE_RECORD_BYTES: usize = 4 << 20;

/// Histogram (through the `metrics` facade): seconds from submitting a durable commit to its
/// records being on disk, which is what an acknowledged request waits for.
pub const WAL_APPEND_SECONDS: &str = "coreq_wal_append_duration_seconds";

/// Version of each area's record format, reported by `/v1/support` as `schema`. Bumped when an
/// area's `Change` variants or stored values change shape.
pub const SCHEMA_VERSIONS: [(&str, u32); 5] = [
    ("callback", 2),
    ("config", 1),
    ("jobqueue", 1),
    ("message", 2),
    ("user", 1),
];

/// Where the durable store keeps its files, all under one data directory.
#[derive(Clone)]
pub struct StoreConfig {
    pub wal: WalConfig,
    pub sled: SledConfig,
    /// Cursors whose value is an LSN the WAL must keep records after (e.g. the mirror's).
    pub retaining_cursors: Vec<String>,
}

impl StoreConfig {
    /// `<data_dir>/wal`, `<data_dir>/state` (sled) and `<data_dir>/quarantine`.
    pub fn new(data_dir: impl Into<PathBuf>) -> StoreConfig {
        let data_dir = data_dir.into();
        StoreConfig {
            wal: WalConfig::new(data_dir.join("wal"), data_dir.join("quarantine")),
            sled: SledConfig::new(data_dir.join("state")),
            retaining_cursors: Vec::new(),
        }
    }
}

/// What start-up recovery did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub wal: OpenReport,
    /// The checkpoint replay started from.
    pub checkpoint_lsn: Lsn,
    /// Records applied again.
    pub replayed: u64,
    /// Damaged records met during replay (quarantined by the WAL, and skipped).
    pub corrupt_records: u64,
}

struct Inner {
    wal: Option<Wal<Change>>,
    state: Box<dyn State>,
    /// Allocates ids and orders WAL submission, so that LSN order is id order.
    sequencer: Mutex<Counters>,
    applied: Watermark,
    /// Highest callback seq below which every enqueued callback is applied. Enqueues finish in
    /// any order; readers see only this prefix, so the head never shows a later callback while
    /// an earlier one is still being applied (FIFO delivery depends on it).
    visible_callbacks: Watermark,
    /// The same for the send queue.
    visible_sends: Watermark,
    checkpointing: Mutex<()>,
    /// Serializes [`Store::record_statuses`]: its check and its commit are one step.
    status_writer: tokio::sync::Mutex<()>,
    retaining_cursors: Vec<String>,
    /// Set once applying a durable record failed; published so the service can stop.
    poisoned: tokio::sync::watch::Sender<Option<Arc<str>>>,
    /// The counters as recovered: ids below them were handed out before this process.
    counters_at_open: Counters,
}

/// The state with its log. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// A store that lives in memory only: nothing survives the process.
    pub fn memory() -> Store {
        Store::with(None, Box::new(MemoryState::new()), Counters::START, 0, Vec::new())
    }

    fn with(
        wal: Option<Wal<Change>>,
        state: Box<dyn State>,
        counters: Counters,
        applied: Lsn,
        retaining: Vec<String>,
    ) -> Store {
        Store {
            inner: Arc::new(Inner {
                wal,
                state,
                sequencer: Mutex::new(counters),
                applied: Watermark::new(applied),
                visible_callbacks: Watermark::new(counters.next_callback_seq - 1),
                visible_sends: Watermark::new(counters.next_send_seq - 1),
                checkpointing: Mutex::new(()),
                status_writer: tokio::sync::Mutex::new(()),
                retaining_cursors: retaining,
                poisoned: tokio::sync::watch::Sender::new(None),
                counters_at_open: counters,
            }),
        }
    }

    /// Opens the durable store and recovers: the WAL's end is repaired, and every record after
    /// the state's last checkpoint is applied again. Blocking; call before serving.
    pub fn open(config: StoreConfig) -> Result<(Store, RecoveryReport)> {
        std::fs::create_dir_all(&config.sled.path).map_err(|source| StorageError::Io {
            path: config.sled.path.clone(),
            source,
        })?;
        let state = SledState::open(&config.sled)?;
        let (wal, wal_report) = Wal::<Change>::open(config.wal)?;
        let checkpoint = state.last_checkpoint()?;
        check_log_covers(&wal, &wal_report, checkpoint.lsn)?;
        let mut counters = Counters {
            next_callback_seq: checkpoint.counters.next_callback_seq.max(1),
            next_send_seq: checkpoint.counters.next_send_seq.max(1),
        };
        let (mut replayed, mut corrupt) = (0, 0);
        for item in wal.read_from(checkpoint.lsn + 1) {
            match item {
                Ok((_, change)) => {
                    counters.observe(&change);
                    state.apply(&change)?;
                    replayed += 1;
                }
                Err(WalError::Corruption { .. }) => corrupt += 1,
                Err(e) => return Err(e.into()),
            }
        }
        let durable = wal.durable_lsn();
        let store = Store::with(Some(wal), Box::new(state), counters, durable, config.retaining_cursors);
        store.checkpoint()?;
        let report = RecoveryReport {
            wal: wal_report,
            checkpoint_lsn: checkpoint.lsn,
            replayed,
            corrupt_records: corrupt,
        };
        tracing::info!(
            checkpoint = checkpoint.lsn,
            replayed,
            corrupt,
            next_lsn = report.wal.next_lsn,
            "storage: recovered"
        );
        Ok((store, report))
    }

    fn check_poison(&self) -> Result<()> {
        match &*self.inner.poisoned.borrow() {
            Some(why) => Err(StorageError::Poisoned(why.to_string())),
            None => Ok(()),
        }
    }

    fn poison(&self, err: &StorageError) {
        tracing::error!(error = %err, "storage: applying a committed record failed; the store is poisoned until restart");
        let why: Arc<str> = err.to_string().into();
        self.inner.poisoned.send_if_modified(|current| {
            let first = current.is_none();
            if first {
                *current = Some(why);
            }
            first
        });
    }

    /// Why the store can no longer write (a failed WAL write or sync, or a failed apply of a
    /// durable record), or `None` while it can. Nothing clears it: only a restart recovers.
    pub fn failure(&self) -> Option<Arc<str>> {
        if let Some(why) = self.inner.poisoned.borrow().clone() {
            return Some(why);
        }
        self.inner.wal.as_ref().and_then(|wal| wal.failure())
    }

    /// Resolves, with the reason, once the store can no longer write (see [`Store::failure`]):
    /// the service must then stop rather than linger unable to work.
    pub async fn failed(&self) -> Arc<str> {
        let mut poisoned = self.inner.poisoned.subscribe();
        let applying = async move {
            match poisoned.wait_for(Option::is_some).await {
                Ok(why) => why.clone().unwrap_or_else(|| "store poisoned".into()),
                // Invariant: the sender lives in `Inner`, which `self` keeps alive.
                Err(_) => std::future::pending().await,
            }
        };
        match &self.inner.wal {
            Some(wal) => tokio::select! {
                why = applying => why,
                why = wal.failed() => why,
            },
            None => applying.await,
        }
    }

    /// Allocates ids with `build` and queues the records, in one critical section. If the log
    /// refuses them, the ids are given back: an id never used would hold visibility back.
    fn submit(
        &self,
        build: impl FnOnce(&mut Counters) -> Vec<Change>,
        lazy: bool,
    ) -> Result<(Vec<Change>, Option<coreq_wal::Ticket>)> {
        self.check_poison()?;
        let mut counters = self.inner.sequencer.lock().expect("sequencer lock");
        let before = *counters;
        let changes = build(&mut counters);
        let ticket = match &self.inner.wal {
            Some(wal) => match if lazy {
                wal.submit_lazy(&changes)
            } else {
                wal.submit(&changes)
            } {
                Ok(ticket) => Some(ticket),
                Err(e) => {
                    *counters = before;
                    return Err(e.into());
                }
            },
            None => None,
        };
        Ok((changes, ticket))
    }

    fn apply_all(&self, changes: &[Change], lsns: Option<RangeInclusive<Lsn>>) -> Result<()> {
        if let Err(e) = self.inner.state.apply_all(changes) {
            self.poison(&e);
            return Err(e);
        }
        for change in changes {
            change.for_each_leaf(&mut |leaf| match leaf {
                Change::CallbacksEnqueued { first_seq, bodies, .. } => {
                    self.inner
                        .visible_callbacks
                        .mark(*first_seq..=first_seq + bodies.len() as u64 - 1);
                }
                Change::MessageAccepted { message } => {
                    self.inner.visible_sends.mark(message.send_seq..=message.send_seq)
                }
                _ => {}
            });
        }
        if let Some(lsns) = lsns {
            self.inner.applied.mark(lsns);
        }
        Ok(())
    }

    /// Commits and returns once the records are durable and applied. The wait and the apply
    /// run in their own task, so a caller that goes away (a dropped HTTP request) cannot leave
    /// a durable record unapplied.
    async fn commit_durable(&self, build: impl FnOnce(&mut Counters) -> Vec<Change>) -> Result<Vec<Change>> {
        let submitted = std::time::Instant::now();
        let (changes, ticket) = self.submit(build, false)?;
        let Some(ticket) = ticket else {
            self.apply_all(&changes, None)?;
            return Ok(changes);
        };
        let store = self.clone();
        let task = tokio::spawn(async move {
            ticket.durable().await?;
            metrics::histogram!(WAL_APPEND_SECONDS).record(submitted.elapsed().as_secs_f64());
            store.apply_all(&changes, Some(ticket.lsns()))?;
            Ok::<_, StorageError>(changes)
        });
        task.await
            .map_err(|e| StorageError::Poisoned(format!("commit task failed: {e}")))?
    }

    /// Commits without waiting for durability: applied now, durable with the next urgent
    /// commit or within the WAL's lazy window (`lazy_sync_after`), whichever comes first.
    fn commit_lazy(&self, changes: Vec<Change>) -> Result<()> {
        let (changes, ticket) = self.submit(|_| changes, true)?;
        self.apply_all(&changes, ticket.map(|t| t.lsns()))
    }

    // ---- callbacks --------------------------------------------------------------------------

    /// Enqueues callbacks; returns their seqs (in order) once durable.
    pub async fn enqueue_callbacks(&self, bodies: Vec<Vec<u8>>, now: UnixMillis) -> Result<Vec<CallbackSeq>> {
        if bodies.is_empty() {
            return Err(StorageError::Invalid("empty callback batch".into()));
        }
        let changes = self
            .commit_durable(|c| {
                let mut out = Vec::new();
                for chunk in chunk_by_size(bodies, MAX_ENQUEUE_RECORD_BYTES) {
                    let first_seq = c.next_callback_seq;
                    c.next_callback_seq += chunk.len() as u64;
                    out.push(Change::CallbacksEnqueued {
                        first_seq,
                        enqueued_at: now,
                        bodies: chunk,
                    });
                }
                out
            })
            .await?;
        Ok(changes
            .iter()
            .flat_map(|c| match c {
                Change::CallbacksEnqueued { first_seq, bodies, .. } => *first_seq..*first_seq + bodies.len() as u64,
                _ => 0..0,
            })
            .collect())
    }

    /// The webhook answered 200: the callback leaves the queue (lazily durable).
    pub fn mark_delivered_lazy(&self, seq: CallbackSeq) -> Result<()> {
        self.commit_lazy(vec![Change::CallbackDelivered { seq }])
    }

    /// [`mark_delivered_lazy`](Store::mark_delivered_lazy) for several callbacks in one append.
    pub fn mark_all_delivered_lazy(&self, seqs: &[CallbackSeq]) -> Result<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        self.commit_lazy(seqs.iter().map(|&seq| Change::CallbackDelivered { seq }).collect())
    }

    /// A delivery attempt failed (lazily durable).
    pub fn record_failure_lazy(
        &self,
        seq: CallbackSeq,
        failures: u32,
        error: String,
        at: UnixMillis,
        next_attempt_at: UnixMillis,
    ) -> Result<()> {
        self.commit_lazy(vec![Change::CallbackFailed {
            seq,
            failures,
            error,
            at,
            next_attempt_at,
        }])
    }

    /// An operator deletes a callback (durable).
    pub async fn delete_callback(&self, seq: CallbackSeq) -> Result<bool> {
        if self.inner.state.pending_callback(seq)?.is_none() {
            return Ok(false);
        }
        self.commit_durable(|_| vec![Change::CallbackDeleted { seq }]).await?;
        Ok(true)
    }

    /// Up to `limit` pending callbacks after `after`, oldest first: only the prefix whose
    /// enqueues have all completed (see `visible_callbacks`).
    pub fn pending_callbacks(&self, after: Option<CallbackSeq>, limit: usize) -> Result<Vec<PendingCallback>> {
        let visible = self.inner.visible_callbacks.get();
        let mut window = self.inner.state.pending_callbacks(after, limit)?;
        window.retain(|c| c.seq <= visible);
        Ok(window)
    }

    pub fn pending_callback(&self, seq: CallbackSeq) -> Result<Option<PendingCallback>> {
        self.inner.state.pending_callback(seq)
    }

    pub fn pending_callback_count(&self) -> u64 {
        self.inner.state.pending_callback_count()
    }

    // ---- messages ---------------------------------------------------------------------------

    /// Accepts a message under `id` and queues it for the gateway; returns once durable.
    pub async fn accept_message(
        &self,
        id: String,
        recipient: String,
        body: Vec<u8>,
        now: UnixMillis,
    ) -> Result<Message> {
        let changes = self
            .commit_durable(|c| {
                let send_seq = c.next_send_seq;
                c.next_send_seq += 1;
                let message = Message {
                    id,
                    recipient,
                    body,
                    accepted_at: now,
                    send_seq,
                    handed_to_gateway: false,
                    statuses: Vec::new(),
                };
                vec![Change::MessageAccepted { message }]
            })
            .await?;
        match changes.into_iter().next() {
            Some(Change::MessageAccepted { message }) => Ok(message),
            _ => unreachable!("commit_durable returns the records built"),
        }
    }

    /// The gateway accepted the message (durable: it must not be sent again).
    pub async fn mark_handed(&self, id: &str, send_seq: SendSeq) -> Result<()> {
        self.commit_durable(|_| {
            vec![Change::MessageHanded {
                id: id.to_owned(),
                send_seq,
            }]
        })
        .await?;
        Ok(())
    }

    /// Records the reports whose message exists and does not have that status yet, each
    /// together with its callback in one record (a crash keeps both or neither); returns what
    /// was recorded, in order, once durable. Calls are serialized, so a status is recorded, and
    /// its callback enqueued, at most once.
    pub async fn record_statuses(&self, reports: Vec<StatusReport>, now: UnixMillis) -> Result<Vec<RecordedStatus>> {
        let _one_writer = self.inner.status_writer.lock().await;
        let mut fresh: Vec<StatusReport> = Vec::with_capacity(reports.len());
        for report in reports {
            let known = match self.inner.state.message(&report.id)? {
                None => true,
                Some(m) => m.has_status(&report.status),
            };
            let repeated = fresh.iter().any(|f| f.id == report.id && f.status == report.status);
            if !known && !repeated {
                fresh.push(report);
            }
        }
        if fresh.is_empty() {
            return Ok(Vec::new());
        }
        let mut recorded = Vec::with_capacity(fresh.len());
        self.commit_durable(|c| {
            fresh
                .into_iter()
                .map(|report| {
                    let callback_seq = report.callback.is_some().then(|| {
                        c.next_callback_seq += 1;
                        c.next_callback_seq - 1
                    });
                    recorded.push(RecordedStatus {
                        id: report.id.clone(),
                        status: report.status.clone(),
                        callback_seq,
                    });
                    let status = Change::MessageStatus {
                        id: report.id,
                        status: report.status,
                        at: report.at,
                        errors: report.errors,
                    };
                    match (report.callback, callback_seq) {
                        (Some(body), Some(first_seq)) => Change::Together {
                            changes: vec![
                                status,
                                Change::CallbacksEnqueued {
                                    first_seq,
                                    enqueued_at: now,
                                    bodies: vec![body],
                                },
                            ],
                        },
                        _ => status,
                    }
                })
                .collect()
        })
        .await?;
        Ok(recorded)
    }

    /// Deletes messages (garbage collection). Durable.
    pub async fn delete_messages(&self, ids: Vec<String>) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.commit_durable(|_| vec![Change::MessagesDeleted { ids }]).await?;
        Ok(())
    }

    pub fn message(&self, id: &str) -> Result<Option<Message>> {
        self.inner.state.message(id)
    }

    /// Up to `limit` messages waiting for the gateway after `after`, in acceptance order: only
    /// the prefix whose acceptances have all completed.
    pub fn send_queue(&self, after: Option<SendSeq>, limit: usize) -> Result<Vec<Message>> {
        let visible = self.inner.visible_sends.get();
        let mut queue = self.inner.state.send_queue(after, limit)?;
        queue.retain(|m| m.send_seq <= visible);
        Ok(queue)
    }

    pub fn send_queue_len(&self) -> u64 {
        self.inner.state.send_queue_len()
    }

    pub fn message_count(&self) -> u64 {
        self.inner.state.message_count()
    }

    pub fn message_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        self.inner.state.message_ids(after, limit)
    }

    // ---- settings, users, tokens, cursors ---------------------------------------------------

    /// Writes settings atomically (`None` removes one). Durable.
    pub async fn put_settings(&self, entries: Vec<(String, Option<Vec<u8>>)>) -> Result<()> {
        self.commit_durable(|_| vec![Change::SettingsPut { entries }]).await?;
        Ok(())
    }

    pub fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.state.setting(name)
    }

    pub fn settings(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.inner.state.settings()
    }

    pub async fn put_user(&self, user: User) -> Result<()> {
        self.commit_durable(|_| vec![Change::UserPut { user }]).await?;
        Ok(())
    }

    /// Deletes a user and revokes all their tokens. Durable.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        self.commit_durable(|_| vec![Change::UserDeleted { name: name.to_owned() }])
            .await?;
        Ok(())
    }

    pub fn user(&self, name: &str) -> Result<Option<User>> {
        self.inner.state.user(name)
    }

    pub fn users(&self) -> Result<Vec<User>> {
        self.inner.state.users()
    }

    pub async fn put_token(&self, token: Token) -> Result<()> {
        self.commit_durable(|_| vec![Change::TokenPut { token }]).await?;
        Ok(())
    }

    pub async fn revoke_token(&self, hash: Vec<u8>) -> Result<()> {
        self.commit_durable(|_| vec![Change::TokenRevoked { hash }]).await?;
        Ok(())
    }

    pub fn token(&self, hash: &[u8]) -> Result<Option<Token>> {
        self.inner.state.token(hash)
    }

    pub async fn set_cursor(&self, name: &str, value: u64) -> Result<()> {
        self.commit_durable(|_| {
            vec![Change::CursorSet {
                name: name.to_owned(),
                value,
            }]
        })
        .await?;
        Ok(())
    }

    pub fn cursor(&self, name: &str) -> Result<Option<u64>> {
        self.inner.state.cursor(name)
    }

    // ---- log maintenance --------------------------------------------------------------------

    /// Makes the applied state durable up to the applied watermark, records that checkpoint,
    /// and drops WAL segments no longer needed. Blocking (flush and fsyncs): run it off the
    /// async workers. Returns the checkpoint.
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        self.check_poison()?;
        let _one_at_a_time = self.inner.checkpointing.lock().expect("checkpoint lock");
        let Some(wal) = &self.inner.wal else {
            return Ok(Checkpoint::default());
        };
        // Never claim an LSN that is not durable: after a crash it could be given to another
        // record, which replay would then skip.
        let lsn = self.inner.applied.get().min(wal.durable_lsn());
        let counters = *self.inner.sequencer.lock().expect("sequencer lock");
        let checkpoint = Checkpoint { lsn, counters };
        self.inner.state.checkpoint(checkpoint)?;
        let mut floor = lsn + 1;
        for name in &self.inner.retaining_cursors {
            floor = floor.min(self.inner.state.cursor(name)?.map_or(1, |kept| kept + 1));
        }
        wal.truncate_below(floor)?;
        Ok(checkpoint)
    }

    /// The last LSN such that every record up to it is durable and applied to the state: a
    /// reader of the state sees at least their effects (`0` for a memory store).
    pub fn settled_lsn(&self) -> Lsn {
        match &self.inner.wal {
            Some(wal) => self.inner.applied.get().min(wal.durable_lsn()),
            None => 0,
        }
    }

    /// The first callback seq this process could hand out: every callback below it was
    /// enqueued before the store was opened.
    pub fn next_callback_seq_at_open(&self) -> CallbackSeq {
        self.inner.counters_at_open.next_callback_seq
    }

    /// The last LSN known to be on disk (`0` for a memory store).
    pub fn durable_lsn(&self) -> Lsn {
        self.inner.wal.as_ref().map_or(0, |w| w.durable_lsn())
    }

    /// Makes every record submitted so far durable, lazy ones included (before a last
    /// checkpoint at shutdown, so the next start has nothing to replay). Blocking.
    pub fn sync(&self) -> Result<()> {
        if let Some(wal) = &self.inner.wal {
            wal.submit(&[])?.wait()?;
        }
        Ok(())
    }

    /// The WAL's counters (`None` for a memory store).
    pub fn wal_stats(&self) -> Option<WalStats> {
        self.inner.wal.as_ref().map(|w| w.stats())
    }

    /// Scans the whole WAL (see [`Wal::verify`]).
    pub fn verify_wal(&self) -> Result<Option<VerifyReport>> {
        self.inner
            .wal
            .as_ref()
            .map(|w| w.verify())
            .transpose()
            .map_err(Into::into)
    }

    /// Reads committed records from `from` on (for the mirror and tools).
    pub fn read_log(&self, from: Lsn) -> Option<coreq_wal::Reader<Change>> {
        self.inner.wal.as_ref().map(|w| w.read_from(from))
    }

    /// True when `other` is this very store (not a copy of its contents).
    pub fn is_same(&self, other: &Store) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// True when this store keeps nothing across restarts.
    pub fn is_volatile(&self) -> bool {
        self.inner.wal.is_none()
    }
}

/// Refuses a log that no longer reaches the state's checkpoint (lost or replaced files):
/// replaying it would hand out LSNs that the state already claims.
fn check_log_covers(wal: &Wal<Change>, report: &OpenReport, checkpoint: Lsn) -> Result<()> {
    if checkpoint >= report.next_lsn {
        return Err(StorageError::Invalid(format!(
            "the WAL ends at lsn {} but the state was checkpointed at {checkpoint}: the log was lost or replaced",
            report.next_lsn - 1
        )));
    }
    let first = wal.stats().first_lsn;
    if first > checkpoint + 1 {
        return Err(StorageError::Invalid(format!(
            "the WAL starts at lsn {first}, after the checkpoint {checkpoint}: records are missing"
        )));
    }
    Ok(())
}

/// Splits `bodies` into runs whose total size stays under `max` (a body larger than `max`
/// is a run of its own).
fn chunk_by_size(bodies: Vec<Vec<u8>>, max: usize) -> Vec<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut current: Vec<Vec<u8>> = Vec::new();
    let mut size = 0;
    for body in bodies {
        if !current.is_empty() && size + body.len() > max {
            out.push(std::mem::take(&mut current));
            size = 0;
        }
        size += body.len();
        current.push(body);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Adds `status` to a message's history unless it is already there (idempotent apply).
pub(crate) fn record_status(message: &mut Message, status: &str, at: UnixMillis, errors: &Option<Vec<u8>>) {
    if !message.has_status(status) {
        message.statuses.push(StatusEntry {
            status: status.to_owned(),
            at,
            errors: errors.clone(),
        });
    }
}
