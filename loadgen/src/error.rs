//! The crate's one error type. (The receiver's own API answers `std::io::Result`, as its
//! callers expect; those errors arrive here as `Receiver`.)

/// Why a load run could not be carried out. Problems *found* by a run (duplicates, order
/// violations, lost callbacks) are not errors: they are in the report.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or a combination of flags that cannot work.
    #[error("{0}")]
    Usage(String),
    /// Starting the receiver or handling its CA.
    #[error("receiver: {0}")]
    Receiver(#[from] std::io::Error),
    /// No usable answer from coreq (connection, timeout, unreadable body).
    #[error("{what}: {detail}")]
    Http { what: &'static str, detail: String },
    /// coreq answered, but not with success.
    #[error("{what}: HTTP {status}: {body}")]
    Refused {
        what: &'static str,
        status: u16,
        body: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
