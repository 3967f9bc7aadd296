//! The sled backend: the state in one sled tree with prefixed, big-endian keys, so range scans
//! come out in queue order.
//!
//! | prefix | key | value |
//! |---|---|---|
//! | `p` | first callback seq of an enqueue record | enqueue time and bodies (a page, see `callbacks.rs`) |
//! | `d` | first callback seq of a page | bitmap of the page's callbacks gone (delivered or deleted) |
//! | `a` | callback seq | [`Attempts`] (kept apart so a retry does not rewrite the bodies) |
//! | `m` | message id | [`Message`] |
//! | `s` | send seq | message id (the outbound send queue) |
//! | `k` | setting name | setting value |
//! | `u` | user name | [`User`] |
//! | `t` | token hash | [`Token`] |
//! | `r` | cursor name | u64 |
//! | `!checkpoint` | | [`Checkpoint`] |
//!
//! Durability: the WAL is the source of truth. sled's own background flush may persist any
//! prefix of what was applied; only [`State::checkpoint`] promises anything, and it promises it
//! with `flush()` (which on Linux only issues `sync_file_range`), an fsync of every file sled
//! wrote under `blobs/` (sled never syncs those) and an `fdatasync` of sled's `db` file through
//! a handle of our own.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;

mod callbacks;

use crate::change::Change;
use crate::error::{Result, StorageError};
use crate::model::{Attempts, CallbackSeq, Message, PendingCallback, SendSeq, Token, User};
use crate::state::{Checkpoint, State};

const CHECKPOINT_KEY: &[u8] = b"!checkpoint";

/// How sled is set up. Nothing here is left to sled's defaults.
#[derive(Debug, Clone)]
pub struct SledConfig {
    pub path: PathBuf,
    /// sled's page cache, in bytes (default 64 MiB).
    pub cache_capacity_bytes: u64,
    /// sled's background flush interval (default 1000 ms). Only bounds replay work after a
    /// crash; durability comes from the WAL and checkpoints.
    pub flush_every_ms: u64,
}

impl SledConfig {
    pub fn new(path: impl Into<PathBuf>) -> SledConfig {
        SledConfig {
            path: path.into(),
            cache_capacity_bytes: 64 << 20,
            flush_every_ms: 1000,
        }
    }
}

/// The embedded engine and its pinned version, as `/v1/support` reports it.
pub const ENGINE: &str = "sled 0.34.7";

pub struct SledState {
    db: sled::Db,
    path: PathBuf,
    /// Our own handle on sled's data file, for the fdatasync sled does not do.
    data_file: File,
    /// Blob files already fsynced (sled never rewrites a blob file in place).
    synced_blobs: Mutex<HashSet<PathBuf>>,
    pending_callbacks: AtomicU64,
    send_queue: AtomicU64,
    messages: AtomicU64,
    /// The seqs that have an attempts record (`a` key), mirrored in memory so that delivering
    /// or loading a callback that never failed costs no second tree lookup. Few: only attempted
    /// callbacks that failed, which the hold rule keeps to about the in-flight limit.
    with_attempts: Mutex<HashSet<CallbackSeq>>,
    /// Serializes the read-modify-writes of the callback bitmaps (see `callbacks.rs`).
    marks: Mutex<()>,
}

fn key(prefix: u8, id: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + id.len());
    k.push(prefix);
    k.extend_from_slice(id);
    k
}

fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [prefix; 9];
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn seq_of(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[1..9].try_into().expect("queue keys are prefix + 8 bytes"))
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Invariant: our model types serialize infallibly with postcard (no maps with non-string
    // keys, no unsupported serde features).
    postcard::to_stdvec(value).expect("model types serialize")
}

fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    postcard::from_bytes(bytes).map_err(|source| StorageError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// sled 0.34.7 writes a snapshot at every open to `snap.<n>.generating`, fsyncs it, then renames
/// it. A kill before the rename leaves the partial file, and sled's next open takes it for the
/// newest snapshot and fails with "Read corrupted data" forever after (sled #1527, #1533; found
/// by our store crash test). Such a file is never needed: the previous snapshot and sled's log
/// recover the tree, and our WAL replays from the checkpoint anyway. So it is removed first.
fn remove_unfinished_snapshots(dir: &Path) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { path, source }
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut removed = false;
    for entry in entries {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("snap.") && name.ends_with(".generating") {
            tracing::warn!(file = %path.display(), "storage: removing an unfinished sled snapshot left by a crash");
            std::fs::remove_file(&path).map_err(io(&path))?;
            removed = true;
        }
    }
    if removed {
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    }
    Ok(())
}

/// Opens sled, waiting if its file lock is still held: sled releases the lock from a background
/// thread after the previous handle was dropped (about 1 ms when idle, seconds on a loaded
/// machine whose flusher is in an fsync).
fn open_db(config: &SledConfig) -> Result<sled::Db> {
    const LOCK_RETRIES: u32 = 500; // × 20 ms
    let mut attempt = 0;
    loop {
        let opened = sled::Config::new()
            .path(&config.path)
            .cache_capacity(config.cache_capacity_bytes)
            .flush_every_ms(Some(config.flush_every_ms))
            .mode(sled::Mode::HighThroughput)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if lock_held(&e) && attempt < LOCK_RETRIES => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// sled reports a held lock either as `WouldBlock` or, from its own lock code, as an `Other`
/// error whose text carries the `WouldBlock` it wraps.
fn lock_held(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("could not acquire lock")
}

/// A cursor value: 8 big-endian bytes. Anything else is damage, reported rather than read as 0.
fn be_u64(key: &[u8], value: &[u8]) -> Result<u64> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| {
        StorageError::Invalid(format!(
            "cursor {} holds {} bytes, not 8",
            String::from_utf8_lossy(key),
            value.len()
        ))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl SledState {
    pub fn open(config: &SledConfig) -> Result<SledState> {
        remove_unfinished_snapshots(&config.path)?;
        let db = open_db(config)?;
        let data_path = config.path.join("db");
        let data_file = File::open(&data_path).map_err(|source| StorageError::Io {
            path: data_path,
            source,
        })?;
        let state = SledState {
            db,
            path: config.path.clone(),
            data_file,
            synced_blobs: Mutex::new(HashSet::new()),
            pending_callbacks: AtomicU64::new(0),
            send_queue: AtomicU64::new(0),
            messages: AtomicU64::new(0),
            with_attempts: Mutex::new(HashSet::new()),
            marks: Mutex::new(()),
        };
        state.migrate_legacy_callbacks()?;
        state
            .pending_callbacks
            .store(state.count_pending_callbacks()?, Ordering::Relaxed);
        state.send_queue.store(state.count_prefix(b's')?, Ordering::Relaxed);
        state.messages.store(state.count_prefix(b'm')?, Ordering::Relaxed);
        let with_attempts = state.seqs_with_attempts()?;
        *state.attempted() = with_attempts;
        Ok(state)
    }

    fn count_prefix(&self, prefix: u8) -> Result<u64> {
        let mut n = 0;
        for kv in self.db.scan_prefix([prefix]) {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    fn attempted(&self) -> std::sync::MutexGuard<'_, HashSet<CallbackSeq>> {
        // The set is only ever inserted into or removed from: a panic elsewhere cannot leave
        // it half-changed.
        self.with_attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Bytes sled occupies on disk (for support and metrics: sled amplifies space).
    pub fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.db.get(key)?.map(|v| decode(key, &v)).transpose()
    }

    /// Read-modify-write of one message, atomic against concurrent updates of it.
    fn update_message(&self, id: &str, f: impl Fn(&mut Message)) -> Result<()> {
        let k = key(b'm', id.as_bytes());
        let mut decode_error = None;
        self.db.update_and_fetch(&k, |old| {
            let old = old?;
            match postcard::from_bytes::<Message>(old) {
                Ok(mut msg) => {
                    f(&mut msg);
                    Some(encode(&msg))
                }
                Err(e) => {
                    decode_error = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        match decode_error {
            Some(source) => Err(StorageError::Decode {
                key: format!("m{id}"),
                source,
            }),
            None => Ok(()),
        }
    }

    fn apply_message_accepted(&self, message: &Message) -> Result<()> {
        let k = key(b'm', message.id.as_bytes());
        let fresh = self
            .db
            .compare_and_swap(&k, None as Option<&[u8]>, Some(encode(message)))?
            .is_ok();
        if fresh {
            self.messages.fetch_add(1, Ordering::Relaxed);
            if !message.handed_to_gateway
                && self
                    .db
                    .insert(seq_key(b's', message.send_seq), message.id.as_bytes())?
                    .is_none()
            {
                self.send_queue.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    fn remove_from_send_queue(&self, send_seq: SendSeq) -> Result<()> {
        if self.db.remove(seq_key(b's', send_seq))?.is_some() {
            self.send_queue.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn delete_messages(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            if let Some(old) = self.db.remove(key(b'm', id.as_bytes()))? {
                self.messages.fetch_sub(1, Ordering::Relaxed);
                let msg: Message = decode(id.as_bytes(), &old)?;
                self.remove_from_send_queue(msg.send_seq)?;
            }
        }
        Ok(())
    }

    fn delete_user(&self, name: &str) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.remove(key(b'u', name.as_bytes()));
        for kv in self.db.scan_prefix([b't']) {
            let (k, v) = kv?;
            let token: Token = decode(&k, &v)?;
            if token.user == name {
                batch.remove(k);
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn put_settings(&self, entries: &[(String, Option<Vec<u8>>)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (name, value) in entries {
            let k = key(b'k', name.as_bytes());
            match value {
                Some(v) => batch.insert(k, v.as_slice()),
                None => batch.remove(k),
            }
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// fsyncs every blob file sled wrote since the last call, then the blob directory.
    fn sync_blobs(&self) -> Result<()> {
        let dir = self.path.join("blobs");
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StorageError::Io { path, source }
        };
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock");
        let mut any = false;
        for entry in entries {
            let path = entry.map_err(io(&dir))?.path();
            if synced.contains(&path) {
                continue;
            }
            match File::open(&path) {
                Ok(f) => f.sync_all().map_err(io(&path))?,
                // sled removes blobs it no longer needs; one gone since the listing needs nothing.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(&path)(e)),
            }
            synced.insert(path);
            any = true;
        }
        synced.retain(|p| p.exists());
        if any {
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        }
        Ok(())
    }
}

impl State for SledState {
    /// Runs of deliveries and deletions are applied together: one bitmap update per page.
    fn apply_all(&self, changes: &[Change]) -> Result<()> {
        let mut gone = Vec::new();
        for change in changes {
            match change {
                Change::CallbackDelivered { seq } | Change::CallbackDeleted { seq } => gone.push(*seq),
                other => {
                    self.remove_callbacks(&mut gone)?;
                    gone.clear();
                    self.apply(other)?;
                }
            }
        }
        self.remove_callbacks(&mut gone)
    }

    fn apply(&self, change: &Change) -> Result<()> {
        match change {
            Change::CallbacksEnqueued {
                first_seq,
                enqueued_at,
                bodies,
            } => self.insert_page(*first_seq, *enqueued_at, bodies)?,
            Change::CallbackFailed {
                seq,
                failures,
                error,
                at,
                next_attempt_at,
            } => {
                let attempts = Attempts::failed(*failures, error, *at, *next_attempt_at);
                self.record_attempts(*seq, &attempts)?;
            }
            Change::CallbackDelivered { seq } | Change::CallbackDeleted { seq } => {
                self.remove_callbacks(&mut [*seq])?
            }
            Change::MessageAccepted { message } => self.apply_message_accepted(message)?,
            Change::MessageHanded { id, send_seq } => {
                self.remove_from_send_queue(*send_seq)?;
                self.update_message(id, |m| m.handed_to_gateway = true)?;
            }
            Change::MessageStatus { id, status, at, errors } => {
                self.update_message(id, |m| crate::record_status(m, status, *at, errors))?;
            }
            Change::MessagesDeleted { ids } => self.delete_messages(ids)?,
            Change::SettingsPut { entries } => self.put_settings(entries)?,
            Change::UserPut { user } => {
                self.db.insert(key(b'u', user.name.as_bytes()), encode(user))?;
            }
            Change::UserDeleted { name } => self.delete_user(name)?,
            Change::TokenPut { token } => {
                self.db.insert(key(b't', &token.hash), encode(token))?;
            }
            Change::TokenRevoked { hash } => {
                self.db.remove(key(b't', hash))?;
            }
            Change::CursorSet { name, value } => {
                self.db.insert(key(b'r', name.as_bytes()), &value.to_be_bytes())?;
            }
            // Applied one after the other: replay applies the whole record again after a crash
            // between its parts, and every part is idempotent.
            Change::Together { changes } => self.apply_all(changes)?,
        }
        Ok(())
    }

    fn checkpoint(&self, checkpoint: Checkpoint) -> Result<()> {
        self.db.insert(CHECKPOINT_KEY, encode(&checkpoint))?;
        self.db.flush()?;
        self.sync_blobs()?;
        let data = self.path.join("db");
        self.data_file
            .sync_data()
            .map_err(|source| StorageError::Io { path: data, source })?;
        Ok(())
    }

    fn last_checkpoint(&self) -> Result<Checkpoint> {
        Ok(self.get(CHECKPOINT_KEY)?.unwrap_or_default())
    }

    fn pending_callbacks(&self, after: Option<CallbackSeq>, limit: usize) -> Result<Vec<PendingCallback>> {
        self.list_callbacks(after.map_or(0, |a| a.saturating_add(1)), limit)
    }

    fn pending_callback(&self, seq: CallbackSeq) -> Result<Option<PendingCallback>> {
        Ok(self.list_callbacks(seq, 1)?.into_iter().find(|cb| cb.seq == seq))
    }

    fn pending_callback_count(&self) -> u64 {
        self.pending_callbacks.load(Ordering::Relaxed)
    }

    fn message(&self, id: &str) -> Result<Option<Message>> {
        self.get(&key(b'm', id.as_bytes()))
    }

    fn send_queue(&self, after: Option<SendSeq>, limit: usize) -> Result<Vec<Message>> {
        let from = seq_key(b's', after.map_or(0, |a| a + 1));
        let mut out = Vec::new();
        for kv in self.db.range(from..seq_key(b's', u64::MAX)).take(limit) {
            let (_, id) = kv?;
            if let Some(msg) = self.get(&key(b'm', &id))? {
                out.push(msg);
            }
        }
        Ok(out)
    }

    fn send_queue_len(&self) -> u64 {
        self.send_queue.load(Ordering::Relaxed)
    }

    fn message_count(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    fn message_ids(&self, after: Option<&str>, limit: usize) -> Result<Vec<String>> {
        let start = match after {
            Some(a) => std::ops::Bound::Excluded(key(b'm', a.as_bytes())),
            None => std::ops::Bound::Included(vec![b'm']),
        };
        let mut out = Vec::new();
        for kv in self
            .db
            .range::<Vec<u8>, _>((start, std::ops::Bound::Excluded(vec![b'm' + 1])))
            .take(limit)
        {
            let (k, _) = kv?;
            out.push(String::from_utf8_lossy(&k[1..]).into_owned());
        }
        Ok(out)
    }

    fn setting(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(key(b'k', name.as_bytes()))?.map(|v| v.to_vec()))
    }

    fn settings(&self) -> Result<Vec<(String, Vec<u8>)>> {
        self.db
            .scan_prefix([b'k'])
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k[1..]).into_owned(), v.to_vec()))
            })
            .collect()
    }

    fn user(&self, name: &str) -> Result<Option<User>> {
        self.get(&key(b'u', name.as_bytes()))
    }

    fn users(&self) -> Result<Vec<User>> {
        self.db
            .scan_prefix([b'u'])
            .map(|kv| {
                let (k, v) = kv?;
                decode(&k, &v)
            })
            .collect()
    }

    fn token(&self, hash: &[u8]) -> Result<Option<Token>> {
        self.get(&key(b't', hash))
    }

    fn cursor(&self, name: &str) -> Result<Option<u64>> {
        let k = key(b'r', name.as_bytes());
        self.db.get(&k)?.map(|v| be_u64(&k, &v)).transpose()
    }

    fn cursors(&self) -> Result<Vec<(String, u64)>> {
        self.db
            .scan_prefix([b'r'])
            .map(|kv| {
                let (k, v) = kv?;
                Ok((String::from_utf8_lossy(&k[1..]).into_owned(), be_u64(&k, &v)?))
            })
            .collect()
    }
}
