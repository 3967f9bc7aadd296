//! The mirror (spec §10) against the real local PostgreSQL and MariaDB: after a mixed workload
//! and the faults an operator meets (a session killed mid-batch, the database down for a while,
//! coreq SIGKILLed), `coreq mirror verify` finds the mirror equal to the local state.
//!
//! Every test runs the real binary with the `sim` gateway, a recording webhook and its own
//! table prefix; each scenario runs once per engine.

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::hook::{Answer, Hook};
use crate::http::{self, request, try_request};
use crate::mirror_db::{Db, Engine, FaultProxy};
use crate::rng::{self, Rng};
use crate::server::spawn_binary_with;
use crate::session;

const TEXT: &str = r#"{"to":"15551234567","text":{"body":"hello"}}"#;

/// How coreq reaches the database.
#[derive(Clone, Copy, PartialEq)]
enum Link {
    Direct,
    Proxy,
    /// Through the proxy, which refuses connections until `up()`.
    ProxyDown,
}

/// coreq mirroring into one database, optionally through a [`FaultProxy`].
struct Mirrored {
    child: Option<Child>,
    addr: SocketAddr,
    dir: tempfile::TempDir,
    admin: String,
    hook: Hook,
    proxy: Option<FaultProxy>,
    db: Db,
}

impl Mirrored {
    fn start(engine: Engine, link: Link) -> Option<Mirrored> {
        let db = Db::open(engine)?;
        let proxy = (link != Link::Direct).then(|| FaultProxy::start(db.server_addr()));
        if link == Link::ProxyDown {
            proxy.as_ref().unwrap().down();
        }
        // Every 5th of the first 200 webhook requests fails, so failure counts are mirrored
        // too (a failure holds the line for its backoff: more would slow the tests' drains).
        let requests = AtomicU64::new(0);
        let hook = Hook::http_unrecorded(move |_| {
            let n = requests.fetch_add(1, Ordering::Relaxed);
            if n % 5 == 4 && n < 200 {
                Answer::Status(500)
            } else {
                Answer::Status(200)
            }
        });
        let mut service = Mirrored {
            child: None,
            addr: http::free_addr(),
            dir: tempfile::tempdir().unwrap(),
            admin: String::new(),
            hook,
            proxy,
            db,
        };
        service.spawn();
        service.admin = session::admin(service.addr);
        service.set_webhook(&service.hook.url());
        Some(service)
    }

    fn database_url(&self) -> String {
        match &self.proxy {
            Some(proxy) => self.db.url_via(proxy.addr),
            None => self.db.url.to_string(),
        }
    }

    fn spawn(&mut self) {
        let url = self.database_url();
        let envs = [
            ("COREQ_ADMIN_PASSWORD", session::ADMIN_PASSWORD),
            ("COREQ_ALLOW_HTTP_WEBHOOKS", "1"),
            ("COREQ_DATABASE_URL", url.as_str()),
            ("WA_DB_NAME_PREFIX", self.db.prefix.as_str()),
            ("COREQ_GATEWAY", "sim"),
            ("COREQ_SIM_DELAY_MS", "10"),
            ("COREQ_GATEWAY_BACKOFF_MS", "50"),
            ("COREQ_MESSAGE_RETENTION_SECS", "1"),
            ("COREQ_MIRROR_BACKOFF_MS", "100"),
            ("COREQ_MIRROR_MAX_BACKOFF_MS", "300"),
            ("COREQ_MIRROR_BATCH_RECORDS", "64"),
            ("COREQ_WAL_SEGMENT_MB", "1"),
            ("COREQ_CHECKPOINT_INTERVAL_MS", "100"),
        ];
        self.child = Some(spawn_binary_with(self.dir.path(), self.addr, &envs));
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for a clean exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().unwrap();
        assert!(status.success(), "coreq exited with {status}");
    }

    fn call(&self, method: &str, path: &str, body: &str) -> http::Reply {
        request(self.addr, method, path, &[("Authorization", &self.admin)], body)
    }

    fn set_webhook(&self, url: &str) {
        let settings = json!({
            "webhooks": { "url": url },
            "callback_backoff_delay_ms": 100,
            "max_callback_backoff_delay_ms": 200,
        });
        let reply = self.call("PATCH", "/v1/settings/application", &settings.to_string());
        assert_eq!(reply.status, 200, "{}", reply.body);
    }

    /// `posts` POSTs of 5 callbacks of about `bytes` each.
    fn enqueue(&self, posts: usize, bytes: usize) {
        for i in 0..posts {
            let one = json!({ "n": i, "pad": "x".repeat(bytes) });
            let body = json!({ "callbacks": [one, one, one, one, one] });
            let reply = self.call("POST", "/v1/callbacks", &body.to_string());
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }

    fn send_messages(&self, n: usize) {
        for _ in 0..n {
            let reply = self.call("POST", "/v1/messages", TEXT);
            assert_eq!(reply.status, 201, "{}", reply.body);
        }
    }

    fn support(&self) -> Value {
        let reply = self.call("GET", "/v1/support", "");
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["support"].clone()
    }

    /// Polls `/v1/support` until `done` holds (at most 60 s).
    fn wait_support(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let support = self.support();
            if done(&support) {
                return support;
            }
            assert!(Instant::now() < deadline, "waiting for {what}: {support:#}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until nothing is pending (messages through the sim, callbacks to the webhook)
    /// and the mirror has applied every durable record; returns the mirrored LSN.
    fn wait_quiet(&self) -> u64 {
        let settled = |s: &Value| {
            s["callbacks"]["pending"] == 0
                && s["replication"]["connected"] == true
                && s["replication"]["lag_records"] == 0
        };
        let support = self.wait_support("the mirror to catch up", |s| {
            let stats = self.call("GET", "/v1/stats/db", "").json();
            let pending = &stats["stats"]["db"]["db_pending_messages"]["data"][0]["value"];
            settled(s) && pending.as_f64() == Some(0.0)
        });
        support["replication"]["mirrored_lsn"].as_u64().unwrap()
    }

    /// Waits until the mirror's `table` holds `n` rows (at most 60 s).
    fn wait_rows(&self, table: &str, n: i64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.rows(table) != n {
            assert!(
                Instant::now() < deadline,
                "{table} never held {n} rows: {}",
                self.rows(table)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Once the `messages` sent have reached `read` (three statuses each) and aged past the
    /// retention (1 s), collects them.
    fn collect_garbage(&self, messages: i64) {
        self.wait_rows("message_statuses", 3 * messages);
        std::thread::sleep(Duration::from_millis(1100));
        let reply = self.call("PUT", "/v1/services/message/gc", "");
        assert_eq!(reply.status, 200, "{}", reply.body);
        self.wait_quiet();
    }

    /// `coreq mirror verify` on the stopped service's data directory: (success, output).
    fn verify(&self) -> (bool, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_coreq"))
            .args(["mirror", "verify", "--data-dir"])
            .arg(self.dir.path())
            .env("COREQ_DATABASE_URL", self.db.url.as_str())
            .env("WA_DB_NAME_PREFIX", &self.db.prefix)
            .env_remove("COREQ_LOG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Stops the service and asserts that verify finds no difference.
    fn stop_and_verify(&mut self) -> String {
        self.stop();
        let (equal, report) = self.verify();
        assert!(equal, "mirror verify found differences:\n{report}");
        assert!(report.contains("differences 0"), "{report}");
        report
    }

    fn rows(&self, table: &str) -> i64 {
        self.db.count(&format!("SELECT COUNT(*) FROM {}", self.db.table(table)))
    }
}

impl Drop for Mirrored {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A background client that keeps enqueueing callbacks and sending messages, ignoring
/// connection errors (the service may be killed under it), until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Load {
    fn start(addr: SocketAddr, admin: String) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut acked = 0;
            for i in 0u64.. {
                if flag.load(Ordering::Relaxed) || i > 100_000 {
                    break;
                }
                let (path, body) = if i % 3 == 0 {
                    ("/v1/messages", TEXT.to_owned())
                } else {
                    (
                        "/v1/callbacks",
                        json!({ "callbacks": [{ "i": i }, { "i": i }] }).to_string(),
                    )
                };
                let headers = [("Authorization", admin.as_str()), ("Content-Type", "application/json")];
                match try_request(addr, "POST", path, &headers, body.as_bytes()) {
                    Ok(reply) if reply.status == 201 => acked += 1,
                    _ => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            acked
        });
        Load {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the client; returns how many of its requests were acknowledged.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap())
    }
}

/// Runs `scenario` once for PostgreSQL and once for MariaDB.
macro_rules! on_both_engines {
    ($name:ident, $scenario:expr) => {
        mod $name {
            use super::*;

            #[test]
            fn postgres() {
                $scenario(Engine::Postgres)
            }

            #[test]
            fn mysql() {
                $scenario(Engine::Mysql)
            }
        }
    };
}

on_both_engines!(a_mixed_workload_is_mirrored_exactly, |engine| {
    let Some(mut service) = Mirrored::start(engine, Link::Direct) else {
        return;
    };
    service.enqueue(20, 200);
    service.send_messages(30);
    service.collect_garbage(30);
    service.wait_rows("messages", 0);
    service.send_messages(10);
    service.wait_rows("message_statuses", 30);
    service.wait_quiet();
    // Callbacks left pending, with failures, at the end.
    service.set_webhook("http://127.0.0.1:9/down");
    service.enqueue(4, 50);
    service.wait_support("failed attempts", |s| {
        s["callbacks"]["head"]["attempts"].as_u64() >= Some(2)
    });
    // The service's own replicator caught up (verify below would catch up by itself).
    service.wait_quiet_callbacks_pending();
    assert_eq!(service.rows("callbacks"), 20);
    assert_eq!(service.rows("messages"), 10);
    assert_eq!(service.rows("message_statuses"), 30);
    assert_eq!(service.rows("settings"), 1);
    service.stop_and_verify();
});

impl Mirrored {
    /// Like [`Mirrored::wait_quiet`], with callbacks left pending on purpose.
    fn wait_quiet_callbacks_pending(&self) {
        self.wait_support("the mirror to catch up", |s| {
            s["replication"]["connected"] == true && s["replication"]["lag_records"] == 0
        });
    }
}

on_both_engines!(verify_reports_a_row_changed_in_the_mirror, |engine| {
    let Some(mut service) = Mirrored::start(engine, Link::Direct) else {
        return;
    };
    service.enqueue(2, 10);
    service.wait_quiet();
    service.stop();
    service.db.run(&format!("DELETE FROM {}", service.db.table("settings")));
    let (equal, report) = service.verify();
    assert!(!equal, "{report}");
    assert!(
        report.contains(r#"settings "application": missing from the mirror"#),
        "{report}"
    );
});

on_both_engines!(sessions_killed_mid_batch_leave_nothing_missing_or_doubled, |engine| {
    let Some(mut service) = Mirrored::start(engine, Link::Proxy) else {
        return;
    };
    let load = Load::start(service.addr, service.admin.clone());
    let mut killed = 0;
    for _ in 0..15 {
        std::thread::sleep(Duration::from_millis(150));
        let ports = service.proxy.as_ref().unwrap().upstream_ports();
        killed += service.db.kill_sessions(&ports);
    }
    assert!(load.stop() > 0, "the load was acknowledged");
    assert!(killed > 0, "no database session was killed");
    service.wait_quiet();
    let metrics = service.call("GET", "/metrics?format=prometheus", "").body;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("coreq_mirror_errors_total ") && !l.ends_with(" 0")),
        "the kills were seen as errors:\n{metrics}"
    );
    service.stop_and_verify();
});

on_both_engines!(the_database_down_holds_the_wal_until_the_mirror_catches_up, |engine| {
    let Some(mut service) = Mirrored::start(engine, Link::Proxy) else {
        return;
    };
    // Up: records are mirrored and the WAL is truncated behind them (1 MiB segments).
    service.enqueue(300, 1000);
    service.wait_quiet();
    let up = service.wait_support("the WAL to be truncated", |s| s["wal"]["first_lsn"].as_u64() > Some(1));
    let mirrored_before = up["replication"]["mirrored_lsn"].as_u64().unwrap();

    // Down: acknowledgements go on, the lag grows, the WAL keeps everything after the mirror.
    service.proxy.as_ref().unwrap().down();
    service.enqueue(300, 1000);
    let down = service.wait_support("the outage to show", |s| {
        s["replication"]["connected"] == false
            && s["replication"]["last_error"].is_string()
            && s["callbacks"]["pending"] == 0
    });
    let mirrored_down = down["replication"]["mirrored_lsn"].as_u64().unwrap();
    assert!(down["replication"]["lag_records"].as_u64() > Some(300), "{down:#}");
    assert!(down["wal"]["first_lsn"].as_u64() <= Some(mirrored_down + 1), "{down:#}");
    assert!(down["wal"]["bytes"].as_u64() > up["wal"]["bytes"].as_u64(), "{down:#}");
    assert!(mirrored_down >= mirrored_before);

    // Back: it catches up, and the WAL is truncated past the outage.
    service.proxy.as_ref().unwrap().up();
    service.wait_quiet();
    service.wait_support("the WAL to be truncated past the outage", |s| {
        s["wal"]["first_lsn"].as_u64() > Some(mirrored_down + 1)
    });
    service.stop_and_verify();
});

on_both_engines!(sigkills_between_commit_and_checkpoint_converge, |engine| {
    let Some(mut service) = Mirrored::start(engine, Link::Direct) else {
        return;
    };
    let seed = rng::seed();
    eprintln!("mirror crash test seed {seed} (COREQ_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let mut acked = 0;
    for _ in 0..8 {
        let load = Load::start(service.addr, service.admin.clone());
        std::thread::sleep(rng.millis(200, 1200));
        service.kill();
        acked += load.stop();
        service.spawn();
    }
    assert!(acked > 0);
    service.wait_quiet();
    service.stop_and_verify();
});

on_both_engines!(a_mirror_that_arrives_under_load_is_rebuilt_exactly, |engine| {
    // The database is unreachable from the start: coreq serves anyway and keeps every record.
    let Some(mut service) = Mirrored::start(engine, Link::ProxyDown) else {
        return;
    };
    service.enqueue(40, 100);
    service.send_messages(200);
    let down = service.support();
    assert_eq!(down["replication"]["connected"], false, "{down:#}");
    assert_eq!(
        down["wal"]["first_lsn"], 1,
        "nothing mirrored, nothing truncated: {down:#}"
    );
    // It arrives while messages are accepted, handed over and reported: the rebuild reads a
    // local state that moves under it, and the records after its position must still land.
    let load = Load::start(service.addr, service.admin.clone());
    service.proxy.as_ref().unwrap().up();
    service.wait_support("the mirror to connect", |s| s["replication"]["connected"] == true);
    std::thread::sleep(Duration::from_millis(500));
    assert!(load.stop() > 0);
    service.wait_quiet();
    service.stop_and_verify();
});
