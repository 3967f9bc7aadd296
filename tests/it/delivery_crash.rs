//! Crash torture of webhook delivery (spec §8), with the real binary: a producer enqueues
//! without pause, the receiver flaps between 200, 500 and connection resets, and coreq is
//! SIGKILLed at random moments (at least 25 times) and restarted each time. A checker over the
//! recorded history then asserts: every acknowledged callback was delivered; nothing arrived
//! that was never submitted; a newer callback started while an older one was failing only
//! within the allowance of requests already in flight; duplicates only for callbacks answered
//! 200 just before a kill (the delivery mark rides the next group commit).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::hook::{Answer, Hook};
use crate::http::{free_addr, try_request};
use crate::rng::{Rng, seed};
use crate::server::{Webhook, respawn, spawn_with_webhook};

const KILLS: usize = 25;
const CONCURRENCY: usize = 6;
/// How long before a kill a 200 may have been answered and still be repeated after it: the
/// time for the answer to reach the dispatcher and its mark to ride a group commit, on a
/// loaded 2-core CI machine.
const MARK_GRACE: Duration = Duration::from_secs(3);

/// One request the receiver answered.
#[derive(Clone, Debug)]
struct Arrival {
    at: Instant,
    k: u64,
    ok: bool,
}

fn key_of(body: &[u8]) -> Option<u64> {
    serde_json::from_slice::<serde_json::Value>(body).ok()?["k"].as_u64()
}

/// 0: answer 200, 1: answer 500, 2: reset the connection.
fn flapping_hook(mode: Arc<AtomicU8>, log: Arc<Mutex<Vec<Arrival>>>) -> Hook {
    Hook::http(move |body| {
        let answer = mode.load(Ordering::SeqCst);
        if let Some(k) = key_of(body) {
            log.lock().unwrap().push(Arrival {
                at: Instant::now(),
                k,
                ok: answer == 0,
            });
        }
        match answer {
            0 => Answer::Status(200),
            1 => Answer::Status(500),
            _ => Answer::Reset,
        }
    })
}

/// Enqueues batches of `{"k":N}` until `stop`, through restarts; records acknowledged k → id.
fn produce(
    addr: SocketAddr,
    token: String,
    stop: Arc<AtomicBool>,
    next: Arc<AtomicU64>,
    acked: Arc<Mutex<HashMap<u64, u64>>>,
) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let deadline = Instant::now() + Duration::from_secs(300);
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let n = 1 + rng.below(20);
        let first = next.fetch_add(n, Ordering::SeqCst);
        let ks: Vec<u64> = (first..first + n).collect();
        let body = format!(
            r#"{{"callbacks":[{}]}}"#,
            ks.iter()
                .map(|k| format!(r#"{{"k":{k}}}"#))
                .collect::<Vec<_>>()
                .join(",")
        );
        match try_request(
            addr,
            "POST",
            "/v1/callbacks",
            &[("Authorization", &token)],
            body.as_bytes(),
        ) {
            Ok(reply) if reply.status == 201 => {
                let ids = reply.json()["callbacks"].as_array().unwrap().clone();
                let mut acked = acked.lock().unwrap();
                for (k, id) in ks.iter().zip(ids) {
                    acked.insert(*k, id["id"].as_str().unwrap().parse().unwrap());
                }
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn every_acknowledged_callback_arrives_in_order_through_sigkills() {
    let seed = seed();
    eprintln!("delivery crash test: seed {seed} (COREQ_CRASH_SEED to repeat)");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let addr = free_addr();
    let mode = Arc::new(AtomicU8::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let hook = flapping_hook(mode.clone(), log.clone());
    let webhook = Webhook {
        url: hook.url(),
        concurrency: CONCURRENCY as u64,
        backoff_ms: (20, 200),
    };
    let (mut child, admin) = spawn_with_webhook(dir.path(), addr, &webhook);

    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let producer = {
        let (stop, next, acked, token) = (stop.clone(), next.clone(), acked.clone(), admin.clone());
        std::thread::spawn(move || produce(addr, token, stop, next, acked))
    };
    let mut kills = Vec::new();
    for _ in 0..KILLS {
        let run_for = Duration::from_millis(150 + rng.below(450));
        let flap_until = Instant::now() + run_for;
        while Instant::now() < flap_until {
            mode.store(rng.below(3) as u8, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        }
        child.kill().unwrap();
        kills.push(Instant::now());
        child.wait().unwrap();
        child = respawn(dir.path(), addr);
    }
    stop.store(true, Ordering::SeqCst);
    producer.join().unwrap();
    mode.store(0, Ordering::SeqCst);

    let acked = acked.lock().unwrap().clone();
    let all_delivered = || {
        let log = log.lock().unwrap();
        let delivered: std::collections::HashSet<u64> = log.iter().filter(|a| a.ok).map(|a| a.k).collect();
        acked.keys().all(|k| delivered.contains(k))
    };
    let drained_by = Instant::now() + Duration::from_secs(60);
    while !all_delivered() && Instant::now() < drained_by {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.lock().unwrap().clone();
    check(&log, &acked, next.load(Ordering::SeqCst), &kills);
}

fn check(log: &[Arrival], acked: &HashMap<u64, u64>, submitted: u64, kills: &[Instant]) {
    let mut successes: BTreeMap<u64, Vec<Instant>> = BTreeMap::new();
    for a in log.iter().filter(|a| a.ok) {
        successes.entry(a.k).or_default().push(a.at);
    }
    let lost: Vec<&u64> = acked.keys().filter(|k| !successes.contains_key(k)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged callbacks never delivered: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let unexpected: Vec<&Arrival> = log.iter().filter(|a| a.k >= submitted).collect();
    assert!(
        unexpected.is_empty(),
        "callbacks never submitted arrived: {unexpected:?}"
    );

    let mut duplicates = 0;
    for (k, times) in &successes {
        for pair in times.windows(2) {
            duplicates += 1;
            let (first, again) = (pair[0], pair[1]);
            // Only a kill can bring a callback back: one after its 200 and before the mark was
            // on disk, or one just before the receiver got a request sent by the killed process.
            let around = kills
                .iter()
                .filter(|&&kill| kill <= again)
                .map(|&kill| if kill >= first { kill - first } else { first - kill })
                .min();
            assert!(
                around.is_some_and(|gap| gap <= MARK_GRACE),
                "callback {k} delivered again {:?} later; the nearest earlier kill is {around:?} from its 200",
                again - first
            );
        }
    }
    let holds = check_hold(log, acked, kills);
    eprintln!(
        "delivery crash test: {} kills, {} submitted, {} acknowledged, {} requests, {} duplicates (each around a kill), {} failures checked for hold",
        kills.len(),
        submitted,
        acked.len(),
        log.len(),
        duplicates,
        holds
    );
    assert!(acked.len() > 100, "too little load to mean anything: {}", acked.len());
}

/// Spec §8: from a failure until that callback's success, callbacks newer than it start only
/// if they were already in flight (at most the concurrency, per restart in between).
fn check_hold(log: &[Arrival], acked: &HashMap<u64, u64>, kills: &[Instant]) -> usize {
    let mut first_arrival: HashMap<u64, Instant> = HashMap::new();
    let mut first_failure: HashMap<u64, Instant> = HashMap::new();
    let mut first_success: HashMap<u64, Instant> = HashMap::new();
    for a in log {
        first_arrival.entry(a.k).or_insert(a.at);
        if a.ok {
            first_success.entry(a.k).or_insert(a.at);
        } else {
            first_failure.entry(a.k).or_insert(a.at);
        }
    }
    let mut checked = 0;
    for (k, failed_at) in &first_failure {
        let (Some(id), Some(succeeded_at)) = (acked.get(k), first_success.get(k)) else {
            continue;
        };
        if succeeded_at < failed_at {
            continue; // a repeat after a crash failed, the callback had been delivered before
        }
        let restarts = kills
            .iter()
            .filter(|&&kill| kill > *failed_at && kill < *succeeded_at)
            .count();
        let started_meanwhile = first_arrival
            .iter()
            .filter(|(other, at)| {
                acked.get(other).is_some_and(|other_id| other_id > id) && *at > failed_at && *at < succeeded_at
            })
            .count();
        let allowance = CONCURRENCY * (1 + restarts);
        assert!(
            started_meanwhile <= allowance,
            "callback {k} (id {id}) failed, and {started_meanwhile} newer callbacks started before it succeeded (allowed {allowance})"
        );
        checked += 1;
    }
    checked
}
