//! `coreq-wal` — coreq's write-ahead log.
//!
//! An append-only log of typed records with monotonically increasing LSNs, stored as
//! checksummed frames (`len | crc32 | format | lsn | postcard(record)`, see [`frame`]) in
//! segment files that this crate writes and fdatasyncs itself. It knows nothing of callbacks,
//! messages or HTTP: it stores whatever serde type the caller names.
//!
//! Invariants:
//! - An append returns (or its [`Ticket`] resolves) only after its frames were written and
//!   `fdatasync`ed, together with every earlier frame. Concurrent appenders share one sync
//!   (group commit): one committer thread writes everything queued since its last sync.
//! - A failed write or sync poisons the log: every waiter and every later append gets
//!   [`WalError::Poisoned`]. Nothing is retried on the same handle.
//! - Damaged bytes are never skipped silently: they are copied to the quarantine directory,
//!   counted, logged, and reported by [`Wal::open`], [`Wal::read_from`] and [`Wal::verify`].
//! - A new segment file's directory entry is fsynced before any frame in it is acknowledged.

mod committer;
mod error;
pub mod frame;
mod log;
mod quarantine;
mod reader;
mod segments;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

pub use error::{Result, WalError};
pub use log::{OpenReport, Ticket, VerifyReport, Wal, WalStats};
pub use reader::Reader;
pub use segments::Damage;

/// Log sequence number. The first record ever appended gets LSN 1; 0 means "none".
pub type Lsn = u64;

/// Where and how the log is kept. Built once by the caller (coreq's `Config`), never read from
/// the environment here.
#[derive(Clone)]
pub struct WalConfig {
    /// Directory holding the segment files.
    pub dir: PathBuf,
    /// Directory damaged bytes are copied to.
    pub quarantine_dir: PathBuf,
    /// A segment is closed and a new one started once it holds this many bytes (default 64 MiB).
    pub segment_bytes: u64,
    /// Largest encoded record body accepted (default 16 MiB).
    pub max_record_bytes: usize,
    /// Appenders wait while this many bytes are queued and not yet written (default 64 MiB):
    /// the bound on the group-commit buffer.
    pub max_pending_bytes: usize,
    /// Longest a lazily submitted record waits for its commit when nothing urgent comes
    /// (default 10 ms): the window of lazy records a crash can lose, traded for one sync per
    /// window instead of one per submission.
    pub lazy_sync_after: std::time::Duration,
    /// The seam through which the committer syncs files, for fault injection in tests.
    pub fs: Arc<dyn FileSystem>,
}

impl WalConfig {
    /// Defaults for a log in `dir`, quarantining into `dir/../quarantine`.
    pub fn new(dir: impl Into<PathBuf>, quarantine_dir: impl Into<PathBuf>) -> WalConfig {
        WalConfig {
            dir: dir.into(),
            quarantine_dir: quarantine_dir.into(),
            segment_bytes: 64 << 20,
            max_record_bytes: 16 << 20,
            max_pending_bytes: 64 << 20,
            lazy_sync_after: std::time::Duration::from_millis(10),
            fs: Arc::new(OsFileSystem),
        }
    }
}

/// How the committer makes bytes durable. The real implementation calls `fdatasync`/`fsync`;
/// tests substitute one that fails to prove that a failed sync is fatal.
pub trait FileSystem: Send + Sync + 'static {
    /// `fdatasync` of a segment file.
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
    /// `fsync` of a directory, making a new or removed entry durable.
    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// The operating system's files, synced for real.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsFileSystem;

impl FileSystem for OsFileSystem {}
