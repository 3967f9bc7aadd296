//! The one error type of `coreq-storage`.

use std::path::PathBuf;

/// What can go wrong below the engine. Expected outcomes (an unknown id, an empty queue) are
/// values (`Option`, empty `Vec`), not errors.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] coreq_wal::WalError),
    /// sled refused an operation. On the write path this poisons the store.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A stored value does not decode: the state is damaged (the WAL can rebuild it).
    #[error("stored value under {key} does not decode: {source}")]
    Decode {
        key: String,
        #[source]
        source: postcard::Error,
    },
    /// An earlier write failed half-way; the in-memory view may be ahead of the disk, so every
    /// further write is refused until a restart recovers from the WAL.
    #[error("store is poisoned by an earlier failure: {0}")]
    Poisoned(String),
    /// A request that no backend could satisfy (too large a batch, an empty one).
    #[error("invalid request: {0}")]
    Invalid(String),
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;
