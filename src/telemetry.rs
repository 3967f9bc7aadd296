//! Logging: tracing to stderr and to `<log-dir>/coreq.log`.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `filter` is an `EnvFilter` directive such as `info` or
/// `coreq=debug`. Fails, naming the setting, if the log file cannot be opened or the filter
/// does not parse.
pub fn init(log_dir: &Path, filter: &str) -> std::io::Result<()> {
    let path = log_dir.join("coreq.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--log-dir/COREQ_LOG_DIR: {}: {e}", path.display())))?;
    let filter = EnvFilter::try_new(filter)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("COREQ_LOG: {e}")))?;
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(file))
        .with_ansi(false);
    // A second init (tests running several servers in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(to_file)
        .try_init();
    Ok(())
}
