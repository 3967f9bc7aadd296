//! The error type of the `coreq` service crate (not of the HTTP API: `api::error` maps
//! everything a request can meet to the On-Premises envelope).

use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("storage: {0}")]
    Storage(#[from] coreq_storage::StorageError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Webhook(#[from] crate::delivery::webhook::WebhookSetupError),
    /// A background task ended abnormally (panicked or was cancelled).
    #[error("task failed: {0}")]
    Task(String),
    /// A configured capability this build does not provide yet.
    #[error("not supported yet: {0}")]
    Unsupported(&'static str),
}
