//! Logging: tracing to stderr and to `<log-dir>/coreq.log`, with a filter that follows the
//! `log_level` / `verbose_logging` settings live, unless the operator pinned one with `COREQ_LOG`.

use std::fs::OpenOptions;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// The filter of the installed subscriber, when the settings drive it.
static SETTINGS_FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Installs the global subscriber. `pinned` is the operator's `COREQ_LOG` directive (such as
/// `coreq=debug`); without it the filter starts at `info` and then follows the settings
/// ([`follow_settings`]). Fails, naming the setting, if the log file cannot be opened or the
/// directive does not parse.
pub fn init(log_dir: &Path, pinned: Option<&str>) -> std::io::Result<()> {
    let path = log_dir.join("coreq.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("--log-dir/COREQ_LOG_DIR: {}: {e}", path.display())))?;
    let filter = EnvFilter::try_new(pinned.unwrap_or("info"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("COREQ_LOG: {e}")))?;
    let (filter, handle) = reload::Layer::new(filter);
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false);
    let to_file = tracing_subscriber::fmt::layer()
        .with_writer(Mutex::new(file))
        .with_ansi(false);
    // A second init (tests running several servers in one process) keeps the first.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .with(to_file)
        .try_init()
        .is_ok();
    if installed && pinned.is_none() {
        let _ = SETTINGS_FILTER.set(handle);
    }
    Ok(())
}

/// The filter directive for the On-Premises logging settings: `verbose_logging` wins over
/// `log_level`. tracing has no level above `error`, so `fatal` keeps errors only.
pub fn directive(log_level: &str, verbose: bool) -> &'static str {
    if verbose {
        return "info,coreq=debug,coreq_storage=debug,coreq_wal=debug";
    }
    match log_level {
        "warning" => "warn",
        "error" | "fatal" => "error",
        _ => "info",
    }
}

/// Applies the logging settings to the running subscriber. Does nothing when `COREQ_LOG`
/// pinned the filter or another subscriber was installed first.
pub fn follow_settings(log_level: &str, verbose: bool) {
    let Some(handle) = SETTINGS_FILTER.get() else {
        return;
    };
    let directive = directive(log_level, verbose);
    match EnvFilter::try_new(directive) {
        Ok(filter) => {
            if let Err(e) = handle.reload(filter) {
                tracing::warn!(error = %e, "cannot change the log level");
            }
        }
        // The directives above are constants; a failure here is a bug, not an input problem.
        Err(e) => tracing::error!(error = %e, directive, "log filter does not parse"),
    }
}

#[cfg(test)]
mod tests {
    use super::directive;

    #[test]
    fn verbose_logging_overrides_the_log_level() {
        assert!(directive("error", true).contains("coreq=debug"));
    }

    #[test]
    fn each_on_premises_level_maps_to_a_tracing_level() {
        assert_eq!(directive("info", false), "info");
        assert_eq!(directive("warning", false), "warn");
        assert_eq!(directive("error", false), "error");
        assert_eq!(directive("fatal", false), "error");
    }
}
