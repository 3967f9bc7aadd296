//! The log handle: opening and recovering, queueing appends for the committer, waiting for
//! durability, truncation, verification and statistics.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Instant;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::committer::{self, SegmentWriter};
use crate::error::{Result, WalError};
use crate::frame::{self, PreparedBody};
use crate::quarantine::Quarantine;
use crate::reader::Reader;
use crate::segments::{self, Damage};
use crate::{Lsn, WalConfig};

/// What the committer and the appenders share, under one lock.
struct Queue {
    /// Frames queued since the committer last took them.
    buf: Vec<u8>,
    /// LSN of the first frame in `buf`.
    buf_first: Lsn,
    next_lsn: Lsn,
    durable: Lsn,
    poisoned: Option<Arc<str>>,
    closed: bool,
    /// Someone is waiting for `buf` to be durable: commit it now.
    urgent: bool,
    /// When the oldest lazy frame in `buf` was queued (while nothing urgent is).
    lazy_since: Option<Instant>,
}

/// Whether a submission is waited for.
#[derive(Clone, Copy)]
enum Urgency {
    Now,
    Lazy,
}

/// Durability progress as published to async waiters.
#[derive(Clone, Debug)]
struct Progress {
    durable: Lsn,
    failure: Option<Arc<str>>,
}

pub(crate) struct Batch {
    pub bytes: Vec<u8>,
    pub first_lsn: Lsn,
    pub last_lsn: Lsn,
}

#[derive(Default)]
pub(crate) struct Counters {
    fsyncs: AtomicU64,
    bytes: AtomicU64,
}

impl Counters {
    pub(crate) fn record_sync(&self, written: u64) {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(written, Ordering::Relaxed);
    }
}

pub(crate) struct Inner {
    pub(crate) config: WalConfig,
    queue: Mutex<Queue>,
    /// The committer waits here for frames.
    work: Condvar,
    /// Appenders wait here while the buffer is full.
    space: Condvar,
    /// Blocking waiters wait here for the durable LSN to pass theirs.
    durable_cv: Condvar,
    progress: watch::Sender<Progress>,
    pub(crate) segments: Mutex<BTreeMap<Lsn, PathBuf>>,
    pub(crate) stats: Counters,
    pub(crate) quarantine: Quarantine,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Invariant: no code path panics while holding the queue lock.
        self.queue.lock().expect("wal queue lock poisoned")
    }

    pub(crate) fn durable(&self) -> Lsn {
        self.lock().durable
    }

    /// Blocks until frames are due for commit; hands them over with an empty buffer in
    /// exchange. Frames are due at once when someone waits for them (or the log closes); lazy
    /// frames alone wait up to `lazy_sync_after`, so that a stream of them costs one sync per
    /// interval rather than one each. `None` once closed and drained, or poisoned.
    pub(crate) fn take_batch(&self, spare: Vec<u8>) -> Option<Batch> {
        let mut q = self.lock();
        loop {
            if q.poisoned.is_some() {
                return None;
            }
            if !q.buf.is_empty() {
                let wait = match q.lazy_since {
                    Some(since) if !q.urgent && !q.closed => self.config.lazy_sync_after.checked_sub(since.elapsed()),
                    _ => None,
                };
                if let Some(wait) = wait.filter(|w| !w.is_zero()) {
                    q = self.work.wait_timeout(q, wait).expect("wal queue lock poisoned").0;
                    continue;
                }
                let bytes = std::mem::replace(&mut q.buf, spare);
                let batch = Batch {
                    bytes,
                    first_lsn: q.buf_first,
                    last_lsn: q.next_lsn - 1,
                };
                q.buf_first = q.next_lsn;
                q.urgent = false;
                q.lazy_since = None;
                self.space.notify_all();
                return Some(batch);
            }
            if q.closed {
                return None;
            }
            q = self.work.wait(q).expect("wal queue lock poisoned");
        }
    }

    pub(crate) fn publish_durable(&self, lsn: Lsn) {
        self.lock().durable = lsn;
        self.durable_cv.notify_all();
        self.progress.send_modify(|p| p.durable = lsn);
    }

    pub(crate) fn poison(&self, why: String) {
        let why: Arc<str> = why.into();
        self.lock().poisoned = Some(why.clone());
        self.durable_cv.notify_all();
        self.space.notify_all();
        self.progress.send_modify(|p| p.failure = Some(why));
    }
}

/// Owns the committer thread; dropping the last [`Wal`] closes the log and joins it.
struct Owner {
    inner: Arc<Inner>,
    committer: Mutex<Option<JoinHandle<()>>>,
}

impl Owner {
    fn close(&self) {
        self.inner.lock().closed = true;
        self.inner.work.notify_all();
        let handle = self.committer.lock().expect("committer handle lock").take();
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.close();
    }
}

/// The log of records of type `R`. Cheap to clone; all clones share one committer.
pub struct Wal<R> {
    owner: Arc<Owner>,
    _record: PhantomData<fn(R) -> R>,
}

impl<R> Clone for Wal<R> {
    fn clone(&self) -> Self {
        Wal {
            owner: self.owner.clone(),
            _record: PhantomData,
        }
    }
}

/// What opening the log found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    /// LSN of the oldest record still stored (or of the next one, if none is).
    pub first_lsn: Lsn,
    /// LSN the next append gets.
    pub next_lsn: Lsn,
    pub segments: usize,
    /// Bytes cut from the end of the newest segment: a write that a crash interrupted. They
    /// were never acknowledged; they are quarantined all the same.
    pub torn_tail_bytes: u64,
    /// Damage found in the newest segment other than the torn tail (quarantined).
    pub damage: Vec<Damage>,
    /// Quarantined regions in total, over the life of the data directory.
    pub quarantined: u64,
}

/// What [`Wal::verify`] found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub bytes: u64,
    pub first_lsn: Option<Lsn>,
    pub last_lsn: Option<Lsn>,
    /// Damaged regions (each quarantined), with the segment they are in.
    pub damage: Vec<(PathBuf, Damage)>,
    /// Ranges of LSNs missing between the first and last record.
    pub gaps: Vec<RangeInclusive<Lsn>>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.damage.is_empty() && self.gaps.is_empty()
    }
}

/// Counters for metrics and `/v1/support`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    pub first_lsn: Lsn,
    pub durable_lsn: Lsn,
    pub next_lsn: Lsn,
    pub segments: u64,
    /// Bytes in the segment files.
    pub bytes: u64,
    pub fsyncs: u64,
    pub quarantined: u64,
}

/// A queued append. Its records are durable once [`Ticket::wait`] or [`Ticket::durable`]
/// returns `Ok`.
#[must_use = "an append is not durable until its ticket is waited for"]
pub struct Ticket {
    lsns: RangeInclusive<Lsn>,
    inner: Arc<Inner>,
}

impl Ticket {
    /// The LSNs the records got, in the order they were given.
    pub fn lsns(&self) -> RangeInclusive<Lsn> {
        self.lsns.clone()
    }

    /// Blocks until the records are durable.
    pub fn wait(&self) -> Result<()> {
        let last = *self.lsns.end();
        let mut q = self.inner.lock();
        loop {
            if q.durable >= last {
                return Ok(());
            }
            if let Some(why) = &q.poisoned {
                return Err(WalError::Poisoned(why.to_string()));
            }
            q = self.inner.durable_cv.wait(q).expect("wal queue lock poisoned");
        }
    }

    /// Waits, without blocking a thread, until the records are durable.
    pub async fn durable(&self) -> Result<()> {
        let last = *self.lsns.end();
        let mut rx = self.inner.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.durable >= last || p.failure.is_some())
            .await
            .map_err(|_| WalError::Closed)?
            .clone();
        match progress.failure {
            Some(why) if progress.durable < last => Err(WalError::Poisoned(why.to_string())),
            _ => Ok(()),
        }
    }
}

impl<R: Serialize + DeserializeOwned> Wal<R> {
    /// Opens (creating if needed) the log in `config.dir` and recovers its end: a torn write
    /// at the end of the newest segment is quarantined and cut off; other damage in it is
    /// quarantined and reported. Older segments are checked by [`Wal::verify`] and on read.
    pub fn open(config: WalConfig) -> Result<(Wal<R>, OpenReport)> {
        if config.segment_bytes == 0 || config.max_record_bytes == 0 || config.max_pending_bytes == 0 {
            return Err(WalError::Config(
                "segment_bytes, max_record_bytes and max_pending_bytes must be positive".into(),
            ));
        }
        fs::create_dir_all(&config.dir).map_err(WalError::io(&config.dir))?;
        let segments = segments::list(&config.dir)?;
        let quarantine = Quarantine::new(config.quarantine_dir.clone());
        let existing_bytes: u64 = segments
            .values()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum();
        let (progress, _) = watch::channel(Progress {
            durable: 0,
            failure: None,
        });
        let inner = Arc::new(Inner {
            config,
            queue: Mutex::new(Queue {
                buf: Vec::new(),
                buf_first: 1,
                next_lsn: 1,
                durable: 0,
                poisoned: None,
                closed: false,
                urgent: false,
                lazy_since: None,
            }),
            work: Condvar::new(),
            space: Condvar::new(),
            durable_cv: Condvar::new(),
            progress,
            segments: Mutex::new(segments.clone()),
            stats: Counters::default(),
            quarantine,
        });
        inner.stats.bytes.store(existing_bytes, Ordering::Relaxed);

        let (writer, next_lsn, torn_tail_bytes, damage) = match segments.last_key_value() {
            None => (committer::create_segment(&inner, 1)?, 1, 0, Vec::new()),
            Some((&first, path)) => Self::recover_newest(&inner, first, path.clone())?,
        };
        {
            let mut q = inner.lock();
            q.next_lsn = next_lsn;
            q.buf_first = next_lsn;
            q.durable = next_lsn - 1;
        }
        inner.progress.send_modify(|p| p.durable = next_lsn - 1);
        let first_lsn = *inner
            .segments
            .lock()
            .expect("segments lock")
            .keys()
            .next()
            .unwrap_or(&next_lsn);
        let report = OpenReport {
            first_lsn,
            next_lsn,
            segments: inner.segments.lock().expect("segments lock").len(),
            torn_tail_bytes,
            damage,
            quarantined: inner.quarantine.count(),
        };
        let thread_inner = inner.clone();
        let handle = std::thread::Builder::new()
            .name("wal-committer".into())
            .spawn(move || committer::run(thread_inner, writer))
            .map_err(WalError::io(&inner.config.dir))?;
        let owner = Arc::new(Owner {
            inner,
            committer: Mutex::new(Some(handle)),
        });
        Ok((
            Wal {
                owner,
                _record: PhantomData,
            },
            report,
        ))
    }

    /// Scans the newest segment, quarantines damage, cuts a torn tail and returns the writer
    /// positioned at its end with the next LSN.
    fn recover_newest(inner: &Inner, first: Lsn, path: PathBuf) -> Result<(SegmentWriter, Lsn, u64, Vec<Damage>)> {
        let bytes = fs::read(&path).map_err(WalError::io(&path))?;
        let scan = segments::scan(&bytes, inner.config.max_record_bytes, first, &|b| {
            postcard::from_bytes::<R>(b).is_ok()
        });
        let mut torn_tail_bytes = 0;
        let mut damage = Vec::new();
        for d in scan.damage {
            let end = (d.offset + d.len) as usize;
            inner
                .quarantine
                .keep(&path, d.offset, &bytes[d.offset as usize..end], &d.reason)?;
            if d.torn_tail {
                torn_tail_bytes = d.len;
            } else {
                damage.push(d);
            }
        }
        if torn_tail_bytes > 0 {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(WalError::io(&path))?;
            file.set_len(scan.valid_end as u64).map_err(WalError::io(&path))?;
            inner.config.fs.sync_data(&file).map_err(WalError::io(&path))?;
            inner.stats.bytes.fetch_sub(torn_tail_bytes, Ordering::Relaxed);
            tracing::warn!(segment = %path.display(), bytes = torn_tail_bytes, "wal: cut a torn tail left by a crash");
        }
        let next_lsn = scan.frames.last().map_or(first, |&(lsn, _, _)| lsn + 1);
        let writer = SegmentWriter::open_existing(path, scan.valid_end as u64)?;
        Ok((writer, next_lsn, torn_tail_bytes, damage))
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.owner.inner
    }

    /// Queues `records` for the next group commit and returns at once. They get consecutive
    /// LSNs, in order, and become durable together when the ticket resolves.
    pub fn submit(&self, records: &[R]) -> Result<Ticket> {
        self.submit_prepared(&self.prepare(records)?, Urgency::Now)
    }

    /// Like [`Wal::submit`], for records nobody waits for: they are committed with the next
    /// urgent submission or within `lazy_sync_after`, whichever comes first. A crash may lose
    /// the ones not yet committed.
    pub fn submit_lazy(&self, records: &[R]) -> Result<Ticket> {
        self.submit_prepared(&self.prepare(records)?, Urgency::Lazy)
    }

    fn prepare(&self, records: &[R]) -> Result<Vec<PreparedBody>> {
        let max = self.inner().config.max_record_bytes;
        let mut bodies = Vec::with_capacity(records.len());
        for record in records {
            let bytes = postcard::to_stdvec(record)?;
            if bytes.len() > max {
                return Err(WalError::RecordTooLarge { len: bytes.len(), max });
            }
            bodies.push(PreparedBody::new(bytes));
        }
        Ok(bodies)
    }

    fn submit_prepared(&self, bodies: &[PreparedBody], urgency: Urgency) -> Result<Ticket> {
        let inner = self.inner();
        let mut q = inner.lock();
        loop {
            if let Some(why) = &q.poisoned {
                return Err(WalError::Poisoned(why.to_string()));
            }
            if q.closed {
                return Err(WalError::Closed);
            }
            if q.buf.len() < inner.config.max_pending_bytes {
                break;
            }
            q = inner.space.wait(q).expect("wal queue lock poisoned");
        }
        let first = q.next_lsn;
        for body in bodies {
            let lsn = q.next_lsn;
            frame::encode_into(&mut q.buf, frame::FORMAT_POSTCARD_V1, lsn, body);
            q.next_lsn += 1;
        }
        let last = q.next_lsn - 1;
        // Wake the committer when there is something new for it to decide: an urgent commit,
        // or the first lazy frame (which starts its timer). An empty submit on an empty buffer
        // has nothing to commit: marking it urgent would leave the flag set with nothing to
        // take, and the next urgent submit would not wake the committer.
        let wake = !q.buf.is_empty()
            && match urgency {
                Urgency::Now => !std::mem::replace(&mut q.urgent, true),
                Urgency::Lazy => {
                    let first_lazy = q.lazy_since.is_none();
                    if first_lazy {
                        q.lazy_since = Some(Instant::now());
                    }
                    first_lazy && !q.urgent
                }
            };
        drop(q);
        if wake {
            inner.work.notify_one();
        }
        // An empty submit gets an empty range ending at the last queued LSN: a barrier.
        Ok(Ticket {
            lsns: first..=last,
            inner: inner.clone(),
        })
    }

    /// Appends `records` and blocks until they are durable.
    pub fn append(&self, records: &[R]) -> Result<RangeInclusive<Lsn>> {
        let ticket = self.submit(records)?;
        ticket.wait()?;
        Ok(ticket.lsns())
    }

    /// Appends `records` and waits, without blocking a thread, until they are durable.
    pub async fn append_async(&self, records: &[R]) -> Result<RangeInclusive<Lsn>> {
        let ticket = self.submit(records)?;
        ticket.durable().await?;
        Ok(ticket.lsns())
    }

    /// Reads durable records with LSN ≥ `from`, in order. Records already truncated are
    /// skipped; the reader follows the log as it grows.
    pub fn read_from(&self, from: Lsn) -> Reader<R> {
        Reader::new(self.inner().clone(), from)
    }

    /// The highest LSN known durable.
    pub fn durable_lsn(&self) -> Lsn {
        self.inner().durable()
    }

    /// Why the log refuses appends, once a write or sync failed (`None` while healthy).
    pub fn failure(&self) -> Option<Arc<str>> {
        self.inner().lock().poisoned.clone()
    }

    /// Resolves once a write or sync has failed, with the reason: the log will never accept
    /// another append, so the process should stop and let a restart recover. Pending forever
    /// while the log stays healthy (also after it is closed).
    pub async fn failed(&self) -> Arc<str> {
        let mut rx = self.inner().progress.subscribe();
        let failure = match rx.wait_for(|p| p.failure.is_some()).await {
            Ok(progress) => progress.failure.clone(),
            Err(_) => None,
        };
        match failure {
            Some(why) => why,
            None => std::future::pending().await,
        }
    }

    /// Deletes whole segments whose records all have LSN < `lsn`. The newest segment is never
    /// deleted. Returns the number of records' segments removed.
    pub fn truncate_below(&self, lsn: Lsn) -> Result<usize> {
        let inner = self.inner();
        let doomed: Vec<(Lsn, PathBuf)> = {
            let segs = inner.segments.lock().expect("segments lock");
            let firsts: Vec<Lsn> = segs.keys().copied().collect();
            firsts
                .windows(2)
                .filter(|w| w[1] <= lsn)
                .map(|w| (w[0], segs[&w[0]].clone()))
                .collect()
        };
        for (first, path) in &doomed {
            let len = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
            // Readers holding the file open keep reading it; unlink is safe under them.
            inner.segments.lock().expect("segments lock").remove(first);
            fs::remove_file(path).map_err(WalError::io(path))?;
            inner.stats.bytes.fetch_sub(len, Ordering::Relaxed);
        }
        if !doomed.is_empty() {
            inner
                .config
                .fs
                .sync_dir(&inner.config.dir)
                .map_err(WalError::io(&inner.config.dir))?;
        }
        Ok(doomed.len())
    }

    /// Scans every segment, checks every frame and the LSN sequence, quarantines damage and
    /// reports. Safe while appends go on: the unfinished end of the newest segment is ignored.
    pub fn verify(&self) -> Result<VerifyReport> {
        let inner = self.inner();
        let durable = inner.durable();
        let segs: Vec<(Lsn, PathBuf)> = inner
            .segments
            .lock()
            .expect("segments lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut report = VerifyReport {
            segments: segs.len(),
            ..VerifyReport::default()
        };
        let mut expected: Option<Lsn> = None;
        for (i, (first, path)) in segs.iter().enumerate() {
            let newest = i + 1 == segs.len();
            let bytes = fs::read(path).map_err(WalError::io(path))?;
            report.bytes += bytes.len() as u64;
            let scan = segments::scan(&bytes, inner.config.max_record_bytes, *first, &|b| {
                postcard::from_bytes::<R>(b).is_ok()
            });
            for d in scan.damage {
                if newest && d.torn_tail {
                    continue; // an append in progress
                }
                let end = (d.offset + d.len) as usize;
                inner
                    .quarantine
                    .keep(path, d.offset, &bytes[d.offset as usize..end], &d.reason)?;
                report.damage.push((path.clone(), d));
            }
            for &(lsn, _, _) in scan.frames.iter().filter(|f| f.0 <= durable) {
                if let Some(e) = expected
                    && lsn > e
                {
                    report.gaps.push(e..=lsn - 1);
                }
                report.first_lsn.get_or_insert(lsn);
                report.last_lsn = Some(lsn);
                report.records += 1;
                expected = Some(lsn + 1);
            }
        }
        Ok(report)
    }

    pub fn stats(&self) -> WalStats {
        let inner = self.inner();
        let (durable, next) = {
            let q = inner.lock();
            (q.durable, q.next_lsn)
        };
        let segs = inner.segments.lock().expect("segments lock");
        WalStats {
            first_lsn: *segs.keys().next().unwrap_or(&next),
            durable_lsn: durable,
            next_lsn: next,
            segments: segs.len() as u64,
            bytes: inner.stats.bytes.load(Ordering::Relaxed),
            fsyncs: inner.stats.fsyncs.load(Ordering::Relaxed),
            quarantined: inner.quarantine.count(),
        }
    }

    /// Waits for everything queued to become durable, then stops the committer. Appends after
    /// this fail with [`WalError::Closed`].
    pub fn close(&self) {
        self.owner.close();
    }
}
