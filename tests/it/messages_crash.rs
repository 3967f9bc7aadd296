//! Crash torture of outgoing messages (spec §7–§9), with the real binary and the `sim` gateway:
//! a client posts messages without pause, the simulated link flaps between connected and
//! disconnected (some runs start disconnected), and coreq is SIGKILLed at random moments (at
//! least 25 times) and restarted each time. The webhook answers 200, except that one callback in
//! twenty fails its first attempt, so retries cross the kills too. At the end, with the link up,
//! every message is drained, and a checker asserts:
//!
//! - every acknowledged message was delivered: its history holds `sent`, `delivered` and `read`,
//!   each once, and the webhook answered 200 to a callback of each;
//! - the gateway accepted each id once after de-duplication: its journal holds one record per
//!   accepted id, at least one per acknowledged message and no more than the posts that might
//!   have been accepted;
//! - no status callback was produced twice for one message and status: every request for a
//!   (message, status) carries the same `X-Coreq-Callback-Id`, repeats are redeliveries of that
//!   one callback (at-least-once around a kill);
//! - no callback names a message that does not exist (a post cut by a kill may have been
//!   accepted unseen: such ids must read back).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hook::{Answer, Hook};
use crate::http::{Reply, free_addr, request, try_request};
use crate::rng::{Rng, seed};
use crate::server::spawn_binary_with;
use crate::session::{ADMIN_PASSWORD, admin};

const KILLS: usize = 28;
const STATUSES: [&str; 3] = ["sent", "delivered", "read"];
/// How long the last run may take to deliver everything once the link stays up.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);
/// One callback in this many fails its first attempt.
const FIRST_ATTEMPT_FAILS_ONE_IN: u64 = 20;

/// The real binary with the `sim` gateway (short delays and backoff), `http://` webhooks
/// allowed and the admin password set.
fn spawn_sim(dir: &std::path::Path, addr: SocketAddr) -> Running {
    let envs = [
        ("COREQ_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("COREQ_ALLOW_HTTP_WEBHOOKS", "1"),
        ("COREQ_GATEWAY", "sim"),
        ("COREQ_SIM_DELAY_MS", "10"),
        ("COREQ_GATEWAY_BACKOFF_MS", "20"),
        ("COREQ_GATEWAY_MAX_BACKOFF_MS", "200"),
        ("COREQ_GATEWAY_CONCURRENCY", "16"),
    ];
    Running(spawn_binary_with(dir, addr, &envs))
}

fn configure_webhook(addr: SocketAddr, admin: &str, url: &str) {
    let settings = serde_json::json!({
        "webhooks": { "url": url, "max_concurrent_requests": 6 },
        "callback_backoff_delay_ms": 20,
        "max_callback_backoff_delay_ms": 200,
    });
    let reply = request(
        addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", admin)],
        &settings.to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// A request that may meet a killed or starting server.
fn call(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> std::io::Result<Reply> {
    let headers = [("Authorization", token), ("Content-Type", "application/json")];
    try_request(addr, method, path, &headers, body.as_bytes())
}

fn get_json(addr: SocketAddr, path: &str, token: &str) -> Option<Value> {
    let reply = call(addr, "GET", path, token, "").ok()?;
    (reply.status == 200).then(|| reply.json())
}

fn error_code(reply: &Reply) -> Option<i64> {
    serde_json::from_str::<Value>(&reply.body).ok()?["errors"][0]["code"].as_i64()
}

fn set_link(addr: SocketAddr, admin: &str, connected: bool) {
    let status = if connected { "connected" } else { "disconnected" };
    let _ = call(
        addr,
        "PUT",
        "/v1/sim/gateway",
        admin,
        &format!(r#"{{"status":"{status}"}}"#),
    );
}

fn sim_stats(addr: SocketAddr, token: &str) -> Option<Value> {
    Some(get_json(addr, "/v1/sim/gateway", token)?["gateway"].clone())
}

/// FNV-1a of a callback's body: picks the callbacks whose first attempt fails.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// Per callback body: (requests seen, requests answered 200).
type Answers = Arc<Mutex<HashMap<String, (u32, u32)>>>;

fn webhook(answers: Answers) -> Hook {
    Hook::http(move |body| {
        let fails_first = fnv(body).is_multiple_of(FIRST_ATTEMPT_FAILS_ONE_IN);
        let mut answers = answers.lock().unwrap();
        let seen = answers.entry(String::from_utf8_lossy(body).into_owned()).or_default();
        seen.0 += 1;
        if fails_first && seen.0 == 1 {
            return Answer::Status(500);
        }
        seen.1 += 1;
        Answer::Status(200)
    })
}

/// What the client's posts came to.
#[derive(Default)]
struct Posted {
    /// Ids answered 201, in order.
    acked: Vec<String>,
    /// Posts cut by a kill, or answered 5xx: they may or may not have been accepted.
    uncertain: u64,
    /// Posts answered 503/1011 (recovering).
    not_ready: u64,
    /// Posts answered 4xx (none expected).
    rejected: Vec<String>,
}

/// Posts text messages until `stop` (at most 5 minutes), through kills and restarts.
fn post_messages(addr: SocketAddr, token: String, stop: Arc<AtomicBool>, posted: Arc<Mutex<Posted>>, seed: u64) {
    let mut rng = Rng(seed);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        n += 1;
        // Never ending in 0000 (the sim fails those).
        let body = format!(
            r#"{{"to":"1555{:06}1","type":"text","text":{{"body":"crash test {n}"}}}}"#,
            n % 1_000_000
        );
        let outcome = call(addr, "POST", "/v1/messages", &token, &body);
        let mut posted = posted.lock().unwrap();
        match outcome {
            Ok(reply) if reply.status == 201 => {
                let id = reply.json()["messages"][0]["id"].as_str().expect("an id").to_owned();
                posted.acked.push(id);
            }
            // Still recovering: refused before any handler ran.
            Ok(reply) if reply.status == 503 && error_code(&reply) == Some(1011) => {
                posted.not_ready += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(reply) if reply.status == 0 || reply.status >= 500 => posted.uncertain += 1,
            Ok(reply) => posted.rejected.push(format!("{} {}", reply.status, reply.body)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(_) => posted.uncertain += 1,
        }
        drop(posted);
        std::thread::sleep(Duration::from_millis(rng.below(5)));
    }
}

/// Stops the client when dropped (also when the test panics).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Flaps the simulated link for `run_for`; some runs start with it down.
fn flap(addr: SocketAddr, admin: &str, rng: &mut Rng, run_for: Duration) {
    let until = Instant::now() + run_for;
    let mut connected = rng.below(3) != 0;
    set_link(addr, admin, connected);
    loop {
        let left = until.saturating_duration_since(Instant::now());
        std::thread::sleep(rng.millis(10, 150).min(left));
        if Instant::now() >= until {
            return;
        }
        connected = !connected;
        set_link(addr, admin, connected);
    }
}

/// A running binary, SIGKILLed when dropped (also when the test panics).
struct Running(Child);

impl Running {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until every acknowledged message reads `read` and no callback is pending; returns
/// each message as `GET /v1/messages/{id}` last showed it.
fn drain(addr: SocketAddr, token: &str, acked: &[String]) -> HashMap<String, Value> {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut views = HashMap::new();
    let mut unread: Vec<&String> = acked.iter().collect();
    loop {
        unread.retain(|id| {
            let Ok(reply) = call(addr, "GET", &format!("/v1/messages/{id}"), token, "") else {
                return true;
            };
            assert_ne!(reply.status, 404, "acknowledged message {id} was lost: {}", reply.body);
            if reply.status != 200 {
                return true;
            }
            let message = reply.json()["messages"][0].clone();
            let read = message["status"] == "read";
            views.insert((*id).clone(), message);
            !read
        });
        let pending = get_json(addr, "/v1/callbacks?state=pending&limit=5", token)
            .and_then(|v| v["callbacks"].as_array().cloned());
        if unread.is_empty() && pending.as_ref().is_some_and(Vec::is_empty) {
            return views;
        }
        if Instant::now() > deadline {
            let sample: Vec<_> = unread.iter().take(5).map(|id| (id, views.get(*id))).collect();
            panic!(
                "not drained within {DRAIN_LIMIT:?}: {} of {} acknowledged messages not read, e.g. {sample:?}; \
                 pending callbacks: {pending:?}",
                unread.len(),
                acked.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (message id, status) of a status callback.
fn status_of(body: &[u8]) -> (String, String) {
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let status = &value["statuses"][0];
    match (status["id"].as_str(), status["status"].as_str()) {
        (Some(id), Some(s)) => (id.to_owned(), s.to_owned()),
        _ => panic!("a callback that is not a status: {}", String::from_utf8_lossy(body)),
    }
}

#[test]
fn accepted_messages_survive_sigkills_and_each_status_is_called_back_once() {
    let seed = seed();
    eprintln!("messages crash test: seed {seed} (COREQ_CRASH_SEED to repeat)");
    let started = Instant::now();
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let answers: Answers = Arc::default();
    let hook = webhook(answers.clone());
    let mut child = spawn_sim(dir.path(), addr);
    let admin = admin(addr);
    configure_webhook(addr, &admin, &hook.url());

    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let posted = Arc::new(Mutex::new(Posted::default()));
    let client = {
        let (stop, posted, token) = (stop.0.clone(), posted.clone(), admin.clone());
        let client_seed = rng.below(u64::MAX) | 1;
        std::thread::spawn(move || post_messages(addr, token, stop, posted, client_seed))
    };
    let mut resends = 0;
    for _ in 0..KILLS {
        let run_for = rng.millis(100, 700);
        flap(addr, &admin, &mut rng, run_for);
        // Resends this run made of ids the gateway had accepted before the last kill.
        resends += sim_stats(addr, &admin).map_or(0, |s| s["duplicates"].as_u64().unwrap_or(0));
        child.kill();
        child = spawn_sim(dir.path(), addr);
    }
    stop.0.store(true, Ordering::SeqCst);
    client.join().expect("client thread");
    set_link(addr, &admin, true);

    let posted = std::mem::take(&mut *posted.lock().unwrap());
    let views = drain(addr, &admin, &posted.acked);
    let stats = sim_stats(addr, &admin).expect("GET /v1/sim/gateway");
    let arrivals = arrivals(&hook);
    let answers = answers.lock().unwrap().clone();
    let report = Report {
        posted: &posted,
        views: &views,
        stats: &stats,
        arrivals: &arrivals,
        answers: &answers,
    };
    let unknown = report.unknown_ids(addr, &admin);
    child.kill();
    report.check(&unknown);
    resends += stats["duplicates"].as_u64().unwrap_or(0);
    eprintln!(
        "messages crash test: {KILLS} kills in {:?}; {}",
        started.elapsed(),
        report.summary(unknown.len(), resends)
    );
}

/// (message id, status, callback id) of every request the webhook received, in order.
fn arrivals(hook: &Hook) -> Vec<(String, String, String)> {
    hook.seen()
        .into_iter()
        .map(|seen| {
            let (id, status) = status_of(&seen.body);
            let callback = seen
                .headers
                .iter()
                .find(|(k, _)| k == "x-coreq-callback-id")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("no X-Coreq-Callback-Id on the callback for {id} {status}"));
            (id, status, callback)
        })
        .collect()
}

/// Everything the checker looks at.
struct Report<'a> {
    posted: &'a Posted,
    /// Acknowledged id → its last `GET /v1/messages/{id}` view.
    views: &'a HashMap<String, Value>,
    /// `GET /v1/sim/gateway` after the drain.
    stats: &'a Value,
    /// (message id, status, callback id) of every webhook request, in arrival order.
    arrivals: &'a [(String, String, String)],
    /// Callback body → (requests, answered 200).
    answers: &'a HashMap<String, (u32, u32)>,
}

impl Report<'_> {
    fn check(&self, unknown: &BTreeSet<String>) {
        assert!(
            self.posted.rejected.is_empty(),
            "posts refused with 4xx: {:?}",
            self.posted.rejected
        );
        assert!(
            self.posted.acked.len() >= 200,
            "too little load to mean anything: {} messages acknowledged",
            self.posted.acked.len()
        );
        self.check_histories();
        self.check_gateway(unknown.len() as u64);
        self.check_callbacks();
    }

    fn summary(&self, unknown: usize, resends: u64) -> String {
        let answers = self.answers.values();
        let first_failed = answers.clone().filter(|(seen, ok)| seen > ok).count();
        let redelivered: u32 = answers.map(|(_, ok)| ok.saturating_sub(1)).sum();
        format!(
            "{} messages acknowledged, {} posts cut by kills or 5xx, {} refused while recovering, \
             {unknown} accepted unseen; sim accepted {} ids, de-duplicated {resends} resends; \
             {} callback requests for {} statuses, {first_failed} first attempts answered 500, \
             {redelivered} redeliveries after a 200",
            self.posted.acked.len(),
            self.posted.uncertain,
            self.posted.not_ready,
            self.stats["accepted"],
            self.arrivals.len(),
            self.groups().len(),
        )
    }

    /// Every acknowledged message was sent, delivered and read, each status recorded once.
    fn check_histories(&self) {
        for id in &self.posted.acked {
            let view = &self.views[id];
            let history: Vec<&str> = view["statuses"]
                .as_array()
                .map(|a| a.iter().filter_map(|s| s["status"].as_str()).collect())
                .unwrap_or_default();
            assert_eq!(
                history, STATUSES,
                "acknowledged message {id} should have been sent, delivered and read, each once: {view}"
            );
        }
    }

    /// The gateway accepted each id once: one journal record per id, every acknowledged id
    /// among them, and no more ids than posts that may have been accepted.
    fn check_gateway(&self, unknown: u64) {
        let accepted = self.stats["accepted"].as_u64().expect("accepted");
        let records = self.stats["journal_records"].as_u64().expect("journal_records");
        let acked = self.posted.acked.len() as u64;
        assert_eq!(
            records, accepted,
            "the gateway's journal holds {records} records for {accepted} distinct ids: de-duplication failed ({})",
            self.stats
        );
        assert!(
            accepted >= acked,
            "the gateway accepted {accepted} ids, fewer than the {acked} acknowledged messages"
        );
        assert!(
            accepted <= acked + self.posted.uncertain,
            "the gateway accepted {accepted} ids, more than {acked} acknowledged + {} posts cut or answered 5xx",
            self.posted.uncertain
        );
        assert!(
            unknown <= accepted - acked,
            "{unknown} callbacks name messages never acknowledged, but only {} such ids reached the gateway",
            accepted - acked
        );
    }

    /// (message id, status) → the callback ids of its requests.
    fn groups(&self) -> BTreeMap<(&str, &str), BTreeSet<&str>> {
        let mut groups: BTreeMap<(&str, &str), BTreeSet<&str>> = BTreeMap::new();
        for (id, status, callback) in self.arrivals {
            groups.entry((id, status)).or_default().insert(callback);
        }
        groups
    }

    /// One callback per (message, status), answered 200 at least once for every acknowledged
    /// message.
    fn check_callbacks(&self) {
        let twice: Vec<_> = self.groups().into_iter().filter(|(_, ids)| ids.len() > 1).collect();
        assert!(
            twice.is_empty(),
            "{} statuses were called back by more than one callback ((message, status) → callback ids), e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(10)]
        );
        let delivered: HashSet<(String, String)> = self
            .answers
            .iter()
            .filter(|(_, (_, ok))| *ok > 0)
            .map(|(body, _)| status_of(body.as_bytes()))
            .collect();
        let missing: Vec<(&str, &str)> = self
            .posted
            .acked
            .iter()
            .flat_map(|id| STATUSES.iter().map(move |s| (id.as_str(), *s)))
            .filter(|(id, s)| !delivered.contains(&((*id).to_owned(), (*s).to_owned())))
            .collect();
        assert!(
            missing.is_empty(),
            "{} status callbacks of acknowledged messages never answered 200, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
    }

    /// Ids called back that the client never saw acknowledged; each must exist (a post cut by a
    /// kill after its record was durable).
    fn unknown_ids(&self, addr: SocketAddr, token: &str) -> BTreeSet<String> {
        let acked: HashSet<&String> = self.posted.acked.iter().collect();
        let unknown: BTreeSet<String> = self
            .arrivals
            .iter()
            .filter(|(id, _, _)| !acked.contains(id))
            .map(|(id, _, _)| id.clone())
            .collect();
        for id in &unknown {
            let reply = call(addr, "GET", &format!("/v1/messages/{id}"), token, "").expect("GET a message");
            assert_eq!(
                reply.status, 200,
                "a status callback names message {id}, which was never acknowledged and does not exist: {}",
                reply.body
            );
        }
        unknown
    }
}
