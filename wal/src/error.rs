//! The one error type of `coreq-wal`.

use std::path::PathBuf;

use crate::Lsn;

/// Everything that can go wrong in the log. Expected outcomes (end of log, an empty range) are
/// values, not errors.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    /// An I/O call on a log file failed. Fatal when it happened on the write path.
    #[error("wal i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A write or fdatasync failed earlier: the log refuses every further append. After a failed
    /// fsync the kernel may have dropped the dirty pages, so retrying on the same handle could
    /// report success for data that is gone (PostgreSQL's 2018 lesson). Restart and recover.
    #[error("wal is poisoned by an earlier write or sync failure: {0}")]
    Poisoned(String),
    /// The log was closed; no further appends are accepted.
    #[error("wal is closed")]
    Closed,
    /// A record larger than the configured limit was offered.
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    /// A record could not be encoded.
    #[error("record encoding failed: {0}")]
    Encode(#[from] postcard::Error),
    /// A stored record failed its checksum or did not decode; it has been copied to quarantine.
    #[error("corrupt record in {segment} at offset {offset} (after lsn {after}): {reason}")]
    Corruption {
        segment: PathBuf,
        offset: u64,
        after: Lsn,
        reason: String,
    },
    /// The configuration was rejected before anything was opened.
    #[error("invalid wal configuration: {0}")]
    Config(String),
}

impl WalError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> WalError {
        let path = path.into();
        move |source| WalError::Io { path, source }
    }
}

pub type Result<T, E = WalError> = std::result::Result<T, E>;
