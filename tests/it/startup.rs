//! The real `coreq` binary: configuration errors, signals, recovery at start.

use std::process::{Command, Stdio};

use crate::http;
use crate::server::{seed_callbacks, spawn_binary};

const BIN: &str = env!("CARGO_BIN_EXE_coreq");

/// Runs `coreq serve` with `args` and `env` expecting a refusal; returns (code, stderr).
fn refused(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdout(Stdio::null()).output().expect("run coreq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_naming(stderr: &str, setting: &str) {
    let lines: Vec<_> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    assert!(lines[0].contains(setting), "{:?} does not name {setting}", lines[0]);
}

#[test]
fn short_api_key_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused(dir.path(), &[], &[("WA_API_KEY", "too-short")]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "WA_API_KEY");
}

#[test]
fn unknown_gateway_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused(dir.path(), &[], &[("COREQ_GATEWAY", "pigeon")]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "--gateway");
    assert!(stderr.contains("pigeon"), "{stderr}");
}

#[test]
fn malformed_database_url_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused(dir.path(), &["--database-url", "postgres//nope"], &[]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "COREQ_DATABASE_URL");
}

#[test]
fn unusable_data_dir_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"").unwrap();
    let (code, stderr) = refused(&file.join("below-a-file"), &[], &[]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "COREQ_DATA_DIR");
}

#[test]
fn sigterm_stops_the_server_gracefully_with_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let addr = http::free_addr();
    let mut child = spawn_binary(dir.path(), addr);
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        dir.path().join("logs/coreq.log").exists(),
        "logs go to <data-dir>/logs by default"
    );
}

#[test]
fn a_killed_server_recovers_its_state_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    seed_callbacks(dir.path(), 5);
    let mut child = spawn_binary(dir.path(), http::free_addr());
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (store, report) = coreq_storage::Store::open(coreq_storage::StoreConfig::new(dir.path())).unwrap();
    assert!(report.wal.damage.is_empty(), "{report:?}");
    assert_eq!(store.pending_callback_count(), 5);
}

#[test]
fn the_http_gateway_without_an_upstream_exits_non_zero_naming_gateway_url() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused(dir.path(), &["--gateway", "http"], &[]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "--gateway-url");
}

#[test]
fn invalid_log_filter_exits_non_zero_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = refused(dir.path(), &[], &[("COREQ_LOG", "coreq=loud")]);
    assert_ne!(code, 0);
    assert_one_line_naming(&stderr, "COREQ_LOG");
}
