//! `log_level` and `verbose_logging` (spec §4) drive the log filter of the real binary live:
//! no restart, and `COREQ_LOG` unset.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::http::{free_addr, request};
use crate::server::spawn_binary_with;
use crate::session::{self, ADMIN_PASSWORD};

/// Debug lines for requests to `/livez` in the log file.
fn livez_debug_lines(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("logs").join("coreq.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains("route=/livez"))
        .count()
}

/// Waits (bounded) until the log file holds at least `n` such lines; the writer is buffered
/// by nothing but the OS, so this is quick.
fn wait_for_lines(dir: &Path, n: usize) -> usize {
    let start = Instant::now();
    while livez_debug_lines(dir) < n && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    livez_debug_lines(dir)
}

#[test]
fn verbose_logging_turns_debug_request_logs_on_and_log_level_error_turns_them_off_live() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mut child = spawn_binary_with(dir.path(), addr, &[("COREQ_ADMIN_PASSWORD", ADMIN_PASSWORD)]);
    let admin = session::admin(addr);
    let patch = |body: &str| {
        let reply = request(
            addr,
            "PATCH",
            "/v1/settings/application",
            &[("Authorization", &admin)],
            body,
        );
        assert_eq!(reply.status, 200, "{}", reply.body);
    };
    request(addr, "GET", "/livez", &[], "");
    assert_eq!(livez_debug_lines(dir.path()), 0, "debug lines at the default level");

    patch(r#"{"verbose_logging": true}"#);
    request(addr, "GET", "/livez", &[], "");
    let verbose = wait_for_lines(dir.path(), 1);
    assert_eq!(verbose, 1, "no debug line after verbose_logging=true");

    patch(r#"{"verbose_logging": false, "log_level": "error"}"#);
    request(addr, "GET", "/livez", &[], "");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        livez_debug_lines(dir.path()),
        verbose,
        "debug line after log_level=error"
    );
    let _ = child.kill();
    let _ = child.wait();
}
