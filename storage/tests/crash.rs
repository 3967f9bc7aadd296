//! Crash test of the whole durable store: the WAL plus sled's derived state. A child process
//! enqueues callbacks from many tasks, delivers some of them, writes a setting and checkpoints
//! (sled flush + fsyncs + WAL truncation) all the time; the parent SIGKILLs it at a random moment,
//! reopens the store itself and checks the result against the history of every round so far.
//!
//! The child is this test binary re-executed (as in sled's crash harness): with
//! `COREQ_STORE_CRASH_CHILD=<dir>` set, the test function plays the child instead of the parent.
//! The child prints what it did on stdout, one line per fact, each only after the fact:
//! - `opening` before it opens (recovers) the store, `ready <checkpoint lsn> <replayed>` after;
//! - `submit <round> <task> <counter> <n>` before an enqueue of `n` bodies is called;
//! - `ack <seq> <digest>` after `enqueue_callbacks` returned (one line per seq);
//! - `deliver <seq>` before `mark_delivered_lazy`, and `delivered <seq>` after it returned (a
//!   lazy mark can become durable before the second line is printed, so absence is allowed once
//!   the first one is out);
//! - `setting <value>` after `put_settings` returned;
//! - `checkpointing` before `checkpoint` is called, `checkpoint <lsn> <first wal lsn> <segments>
//!   <micros>` after it returned;
//! - `fail <why>` when anything in the child went wrong.
//!
//! Every body is a function of its header `(round, task, counter, index, padding)`, so the parent
//! can tell one of ours, byte for byte, from anything else, acknowledged or not.
//!
//! What the parent checks after each kill: the store reopens (sled and the WAL); recovery met no
//! damage but a torn tail; the log verifies clean; every callback acknowledged, or shown pending
//! by an earlier recovery, is pending with its own body unless its delivery was started in the
//! round just killed; every other pending callback was submitted in that round and is ours; seqs
//! are never reused; the acknowledged setting survived and never goes backwards; the checkpoint
//! recovery starts from is at least the last one the child was told about; the quarantine holds
//! nothing but the torn tails recovery reported.
//!
//! Kill schedule: half the rounds 30–400 ms after the child reported ready (under load, with
//! checkpoints and truncations going on); a third inside one of its first checkpoints (sled
//! flush, blob and data-file fsyncs, WAL truncation); one in six inside its recovery (its
//! `Store::open`: sled's own recovery, the WAL's, the replay and the checkpoint after it).
//!
//! Not covered: SIGKILL loses no page cache, so this says nothing about power loss (the fsyncs).
//! A kill lands inside a `write` only now and then, so torn tails are rare here; the WAL's own
//! tests cover them deterministically.
//!
//! Environment (parent): `COREQ_CRASH_ROUNDS` (default 30, at least 25), `COREQ_CRASH_SEED`
//! (fixes the kill schedule and the child's choices; printed at start). Timing depends on the
//! scheduler and the disk, so a seed reproduces the schedule, not the exact interleaving.

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeInclusive;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coreq_storage::{PendingCallback, Store, StoreConfig};

/// The test function's name, which the child is started with (`--exact`).
const TEST_NAME: &str = "sigkill_during_enqueue_delivery_and_checkpoints_loses_no_acknowledged_callback";
/// Set for the child only: the store's data directory.
const CHILD_DIR_ENV: &str = "COREQ_STORE_CRASH_CHILD";
/// Set for the child only: the round number and the seed of its choices.
const CHILD_ROUND_ENV: &str = "COREQ_STORE_CRASH_ROUND";
const CHILD_SEED_ENV: &str = "COREQ_STORE_CRASH_CHILD_SEED";

const DEFAULT_ROUNDS: u64 = 30;
const MIN_ROUNDS: u64 = 25;
const MAX_ROUNDS: u64 = 10_000;
/// Small segments, so that they roll and checkpoints truncate the log in every round.
const SEGMENT_BYTES: u64 = 256 << 10;
/// sled's `(flush_every_ms, cache_capacity_bytes)`, by round: the defaults, and variants that
/// flush often (kills land in sled's own flushes) or cache little (sled pages out all the time).
const SLED_VARIANTS: [(u64, u64); 4] = [(1000, 64 << 20), (10, 64 << 20), (1000, 1 << 20), (10, 1 << 20)];
const CHILD_WORKERS: usize = 4;
const ENQUEUERS: u64 = 16;
const MAX_BATCH: u64 = 20;
/// Bounds on the child, which is normally killed within half a second.
const MAX_BATCHES_PER_ENQUEUER: u64 = 1 << 20;
const CHILD_MAX_RUN: Duration = Duration::from_secs(20);
/// One body in this many is about 100 KiB (sled keeps it as a blob); the rest are < 300 bytes …
const LARGE_BODY_ONE_IN: u64 = 256;
/// … except in one batch in this many: `MAX_BATCH` bodies of about 240 KiB, over the store's
/// 4 MiB record limit, so the store splits it into several WAL records committed together.
const HUGE_BATCH_ONE_IN: u64 = 500;
const HUGE_BODY_BYTES: RangeInclusive<u64> = (220 << 10)..=(260 << 10);
const DELIVER_WINDOW: usize = 50;
/// Share of a window the deliverer marks delivered; it records a failure for half of the rest.
const DELIVER_PERCENT: u64 = 80;
/// Each enqueuer pauses this long between batches …
const ENQUEUE_PAUSE_MS: RangeInclusive<u64> = 0..=8;
/// … and while the queue holds more than this many callbacks (back-pressure, as the service
/// has), so that the queue, which every recovery and every check reads whole, stays small.
const QUEUE_LIMIT: u64 = 2000;
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(5);
const CHECKPOINT_EVERY_MS: RangeInclusive<u64> = 20..=50;
const SETTING_EVERY_MS: RangeInclusive<u64> = 5..=15;
const SETTING: &str = "round";
/// The kill comes this long after the child reported ready (recovered) …
const KILL_DELAY_MS: RangeInclusive<u64> = 30..=400;
/// … except in one round in six, where it comes at a random moment of the child's recovery (its
/// `Store::open`: sled's own recovery, the WAL's, the replay and the checkpoint after it), up to
/// the last recovery's length after its `opening` line …
const RECOVERY_KILL_MIN_US: u64 = 1_000;
/// … and in two rounds in six, where it comes inside one of the child's first checkpoints: a
/// random moment up to twice the mean checkpoint's length after its `checkpointing` line.
const CHECKPOINT_KILL_NTH: RangeInclusive<u64> = 1..=4;
const CHECKPOINT_KILL_MIN_US: u64 = 5_000;
/// How long the parent waits for the child to recover and report ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the parent looks whether the child ended on its own while waiting to kill it.
const KILL_POLL: Duration = Duration::from_millis(5);
/// The parent reads the queue back in pages of this many, at most this many pages.
const SCAN_PAGE: usize = 1000;
const MAX_SCAN_PAGES: usize = 100_000;
const STDERR_TAIL_BYTES: usize = 4096;
/// How long the parent waits for sled to let go of its lock after the store was dropped.
const SLED_UNLOCK_TIMEOUT: Duration = Duration::from_secs(10);
const SLED_UNLOCK_POLL: Duration = Duration::from_millis(1);

#[test]
fn sigkill_during_enqueue_delivery_and_checkpoints_loses_no_acknowledged_callback() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        child(PathBuf::from(dir));
        return;
    }
    parent();
}

// ---------------------------------------------------------------------------------------------
// Bodies and randomness.

/// What a callback body is made of; the body is a function of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    round: u64,
    task: u64,
    counter: u64,
    index: u64,
    pad: u64,
}

impl Key {
    /// `coreq-crash r<round> t<task> c<counter> i<index> p<pad>|` and `pad` bytes derived from it.
    fn body(&self) -> Vec<u8> {
        let Key {
            round,
            task,
            counter,
            index,
            pad,
        } = self;
        let mut body = format!("coreq-crash r{round} t{task} c{counter} i{index} p{pad}|").into_bytes();
        let end = body.len() + *pad as usize;
        let mut x = fnv1a(&body) | 1;
        while body.len() < end {
            x = xorshift(x);
            let take = (end - body.len()).min(8);
            body.extend_from_slice(&x.to_le_bytes()[..take]);
        }
        body
    }

    /// The key a body claims to be made of (its header), if it has one.
    fn parse(body: &[u8]) -> Option<Key> {
        let end = body.iter().position(|&b| b == b'|')?;
        let mut fields = std::str::from_utf8(&body[..end]).ok()?.split(' ');
        if fields.next()? != "coreq-crash" {
            return None;
        }
        let mut num = |prefix: char| fields.next()?.strip_prefix(prefix)?.parse::<u64>().ok();
        let key = Key {
            round: num('r')?,
            task: num('t')?,
            counter: num('c')?,
            index: num('i')?,
            pad: num('p')?,
        };
        fields.next().is_none().then_some(key)
    }

    /// The key of `body` if `body` is exactly the body of that key: one of ours, undamaged.
    fn of(body: &[u8]) -> Option<Key> {
        Key::parse(body).filter(|k| k.body() == body)
    }

    /// Whether `body` has one of our headers and the length it announces: the child's cheap
    /// check (regenerating large bodies in a debug build would slow its deliverer to a crawl on
    /// a busy machine); the parent checks every byte.
    fn plausible(body: &[u8]) -> bool {
        let header = body.iter().position(|&b| b == b'|').map_or(0, |i| i + 1);
        Key::parse(body).is_some_and(|k| (header as u64).checked_add(k.pad) == Some(body.len() as u64))
    }

    /// The `enqueued_at` the child passes with the batch (checked on the way back).
    fn enqueued_at(&self) -> u64 {
        (self.round << 40) | (self.task << 32) | self.counter
    }
}

fn pad_len(rng: &mut Rng) -> u64 {
    if rng.below(LARGE_BODY_ONE_IN) == 0 {
        (96 << 10) + rng.below(16 << 10)
    } else {
        rng.below(300)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^ (x << 17)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(splitmix(seed) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 = xorshift(self.0);
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn in_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        range.start() + self.below(range.end() - range.start() + 1)
    }
}

fn store_config(dir: &Path, round: u64) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    config.wal.segment_bytes = SEGMENT_BYTES;
    (config.sled.flush_every_ms, config.sled.cache_capacity_bytes) = SLED_VARIANTS[(round % 4) as usize];
    config
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

// ---------------------------------------------------------------------------------------------
// The child: works on the store until killed, printing each fact once it is one.

fn child(dir: PathBuf) {
    let round = env_u64(CHILD_ROUND_ENV).expect("child: round");
    let seed = env_u64(CHILD_SEED_ENV).expect("child: seed");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(CHILD_WORKERS)
        .enable_all()
        .build()
        .expect("child: runtime");
    runtime.block_on(child_main(dir, round, seed));
}

/// Writes `text` (whole lines) to stdout at once, under its lock, and flushes it.
fn emit(text: &str) {
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).and_then(|()| out.flush()).is_err() {
        std::process::exit(3);
    }
}

fn child_fail(why: String) -> ! {
    emit(&format!("fail {}\n", why.replace('\n', " | ")));
    std::process::exit(2);
}

async fn child_main(dir: PathBuf, round: u64, seed: u64) {
    // libtest has printed `test <name> ... ` without a newline: start a line of our own.
    emit("\nopening\n");
    let (store, report) = Store::open(store_config(&dir, round)).unwrap_or_else(|e| child_fail(format!("open: {e}")));
    emit(&format!("ready {} {}\n", report.checkpoint_lsn, report.replayed));
    let deadline = Instant::now() + CHILD_MAX_RUN;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..ENQUEUERS {
        tasks.spawn(enqueuer(store.clone(), round, task, seed, deadline));
    }
    tasks.spawn(deliverer(store.clone(), seed, deadline));
    tasks.spawn(checkpointer(store.clone(), seed, deadline));
    tasks.spawn(setter(store, round, seed, deadline));
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = done {
            child_fail(format!("task: {e}"));
        }
    }
}

async fn enqueuer(store: Store, round: u64, task: u64, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed ^ splitmix(task + 1));
    for counter in 0..MAX_BATCHES_PER_ENQUEUER {
        if Instant::now() >= deadline {
            return;
        }
        if store.pending_callback_count() > QUEUE_LIMIT {
            tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            continue;
        }
        let huge = rng.below(HUGE_BATCH_ONE_IN) == 0;
        let n = if huge { MAX_BATCH } else { 1 + rng.below(MAX_BATCH) };
        let keys: Vec<Key> = (0..n)
            .map(|index| {
                let pad = if huge {
                    rng.in_range(HUGE_BODY_BYTES)
                } else {
                    pad_len(&mut rng)
                };
                Key {
                    round,
                    task,
                    counter,
                    index,
                    pad,
                }
            })
            .collect();
        let bodies: Vec<Vec<u8>> = keys.iter().map(Key::body).collect();
        let digests: Vec<u64> = bodies.iter().map(|b| fnv1a(b)).collect();
        emit(&format!("submit {round} {task} {counter} {n}\n"));
        let seqs = match store.enqueue_callbacks(bodies, keys[0].enqueued_at()).await {
            Ok(seqs) => seqs,
            Err(e) => child_fail(format!("enqueue: {e}")),
        };
        if seqs.len() != digests.len() {
            child_fail(format!("enqueue of {n} bodies returned {} seqs", seqs.len()));
        }
        let mut acks = String::new();
        for (seq, digest) in seqs.iter().zip(&digests) {
            let _ = writeln!(acks, "ack {seq} {digest:016x}");
        }
        emit(&acks);
        tokio::time::sleep(Duration::from_millis(rng.in_range(ENQUEUE_PAUSE_MS))).await;
    }
}

/// Walks the queue in windows, marking most callbacks delivered and recording failures for some.
async fn deliverer(store: Store, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed ^ 0xde11_4e7e);
    let mut after = None;
    while Instant::now() < deadline {
        let window = store
            .pending_callbacks(after, DELIVER_WINDOW)
            .unwrap_or_else(|e| child_fail(format!("window: {e}")));
        let Some(last) = window.last() else {
            after = None;
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        };
        after = Some(last.seq);
        let mut chosen = Vec::new();
        for cb in &window {
            if !Key::plausible(&cb.body) {
                child_fail(format!("pending callback {} holds a body that is not ours", cb.seq));
            }
            if rng.below(100) < DELIVER_PERCENT {
                chosen.push(cb.seq);
            } else if rng.below(2) == 0 {
                let failures = cb.attempts.failures + 1;
                store
                    .record_failure_lazy(cb.seq, failures, "crash test".into(), 1, 2)
                    .unwrap_or_else(|e| child_fail(format!("record failure: {e}")));
            }
        }
        if !chosen.is_empty() {
            emit(&chosen.iter().map(|s| format!("deliver {s}\n")).collect::<String>());
            for &seq in &chosen {
                store
                    .mark_delivered_lazy(seq)
                    .unwrap_or_else(|e| child_fail(format!("mark delivered: {e}")));
            }
            emit(&chosen.iter().map(|s| format!("delivered {s}\n")).collect::<String>());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn checkpointer(store: Store, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed ^ 0xc4ec_4901);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.in_range(CHECKPOINT_EVERY_MS))).await;
        let s = store.clone();
        emit("checkpointing\n");
        let started = Instant::now();
        let done = tokio::task::spawn_blocking(move || s.checkpoint().map(|c| (c, s.wal_stats()))).await;
        let micros = started.elapsed().as_micros();
        match done {
            Ok(Ok((c, Some(wal)))) => emit(&format!(
                "checkpoint {} {} {} {micros}\n",
                c.lsn, wal.first_lsn, wal.segments
            )),
            Ok(Ok((_, None))) => child_fail("the durable store has no WAL".into()),
            Ok(Err(e)) => child_fail(format!("checkpoint: {e}")),
            Err(e) => child_fail(format!("checkpoint task: {e}")),
        }
    }
}

/// Fixed-width, so that string order is numeric order.
fn setting_value(round: u64, k: u64) -> String {
    format!("{round:06}-{k:08}")
}

async fn setter(store: Store, round: u64, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed ^ 0x5e77_1465);
    let mut k = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.in_range(SETTING_EVERY_MS))).await;
        k += 1;
        let value = setting_value(round, k);
        if let Err(e) = store
            .put_settings(vec![(SETTING.into(), Some(value.clone().into_bytes()))])
            .await
        {
            child_fail(format!("put setting: {e}"));
        }
        emit(&format!("setting {value}\n"));
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the rounds and keeps the history.

fn parent() {
    let rounds = env_u64("COREQ_CRASH_ROUNDS")
        .unwrap_or(DEFAULT_ROUNDS)
        .clamp(MIN_ROUNDS, MAX_ROUNDS);
    let seed = env_u64("COREQ_CRASH_SEED").unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        splitmix(nanos as u64 ^ u64::from(std::process::id()))
    });
    let root = data_root();
    println!(
        "store crash test: COREQ_CRASH_SEED={seed}, {rounds} rounds, data under {}",
        root.path().display()
    );
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let mut history = History::default();
    for round in 1..=rounds {
        if let Err(why) = run_round(root.path(), round, &mut rng, &mut history) {
            let kept = root.keep();
            panic!(
                "round {round} of {rounds} (COREQ_CRASH_SEED={seed} COREQ_CRASH_ROUNDS={rounds}): {why}\n  \
                 kept for inspection: the store in {}, each child's stderr in {}/child-<round>.stderr",
                kept.join("data").display(),
                kept.display()
            );
        }
    }
    let t = &history.totals;
    println!(
        "store crash test: {rounds} rounds in {:.1} s: acked {}, delivered marks {}, came back pending {}, \
         unacked but durable {}, max replayed {}, torn tails {} ({} B), child checkpoints {}, \
         highest wal first lsn {}, killed before ready {} (in recovery {}), longest start-up {} ms, \
         killed in a checkpoint {}, longest checkpoint {} ms, longest wait for sled's lock {} µs",
        started.elapsed().as_secs_f64(),
        t.acked,
        t.delivered,
        t.came_back,
        t.unacked_durable,
        t.max_replayed,
        t.torn_tails,
        t.torn_bytes,
        t.checkpoints,
        t.max_wal_first_lsn,
        t.killed_before_ready,
        t.killed_in_recovery,
        t.max_ready_ms,
        t.killed_in_checkpoint,
        t.max_checkpoint_us / 1000,
        t.max_unlock_wait_us,
    );
    // Not a test that passes by doing nothing: the load reached every part it is meant to.
    assert!(
        t.acked > 0 && t.delivered > 0,
        "the children acknowledged or delivered nothing"
    );
    assert!(
        t.checkpoints > 0 && t.max_wal_first_lsn > 1,
        "no checkpoint truncated the WAL"
    );
}

/// A fresh directory on a real disk: the system temp dir unless it is a tmpfs.
fn data_root() -> tempfile::TempDir {
    let tmp = std::env::temp_dir();
    let base = if is_tmpfs(&tmp) {
        PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
    } else {
        tmp
    };
    tempfile::Builder::new()
        .prefix("coreq-store-crash-")
        .tempdir_in(&base)
        .expect("temp dir")
}

#[cfg(target_os = "linux")]
fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c_path` is a valid C string and `stat` a writable statfs, both live for the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let ok = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } == 0;
    // The field's integer type differs between targets.
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = stat.f_type as i64 == libc::TMPFS_MAGIC as i64;
    ok && tmpfs
}

#[cfg(not(target_os = "linux"))]
fn is_tmpfs(_: &Path) -> bool {
    false
}

/// One seq the store must keep until its delivery is started.
struct Live {
    digest: u64,
    acked: bool,
    /// The round that acknowledged it, or after which recovery first showed it.
    round: u64,
}

#[derive(Default)]
struct Totals {
    acked: u64,
    delivered: u64,
    came_back: u64,
    unacked_durable: u64,
    max_replayed: u64,
    torn_tails: u64,
    torn_bytes: u64,
    checkpoints: u64,
    max_wal_first_lsn: u64,
    killed_before_ready: u64,
    /// Killed after it began to open the store and before it was ready: during recovery.
    killed_in_recovery: u64,
    max_ready_ms: u64,
    last_recovery_us: u64,
    /// Killed while a checkpoint (sled flush, fsyncs, WAL truncation) was running.
    killed_in_checkpoint: u64,
    max_checkpoint_us: u64,
    checkpoint_us_total: u64,
    /// The longest sled kept its lock after the parent dropped the store.
    max_unlock_wait_us: u64,
}

#[derive(Default)]
struct History {
    /// Every callback acknowledged, or shown pending by a recovery, and not yet seen gone after
    /// its delivery was started: seq → digest of its body.
    live: BTreeMap<u64, Live>,
    /// Highest seq acknowledged or seen so far; the next round's seqs must all be above it.
    max_seq: u64,
    /// The highest setting value acknowledged, and the one the last recovery found.
    setting_acked: Option<String>,
    setting_stored: Option<String>,
    /// The highest checkpoint LSN any `checkpoint()` returned.
    checkpoint_claimed: u64,
    totals: Totals,
}

/// What one child printed (complete lines only).
#[derive(Default)]
struct RoundLog {
    /// The child got as far as opening the store.
    opening: bool,
    submits: HashMap<(u64, u64, u64), u64>,
    acks: Vec<(u64, u64)>,
    deliver: HashSet<u64>,
    delivered: HashSet<u64>,
    settings: Vec<String>,
    /// Checkpoints begun, and `(lsn, first wal lsn, micros)` of those that returned.
    checkpointing: u64,
    checkpoints: Vec<(u64, u64, u64)>,
    fails: Vec<String>,
}

/// When the parent kills the child.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// This long after the child reported ready: under load.
    AfterReady(Duration),
    /// This long after the child began to open (recover) the store.
    InRecovery(Duration),
    /// This long after the child began its `nth` checkpoint (counted from ready).
    InCheckpoint { nth: u64, delay: Duration },
}

/// Lines of the child's the parent times the kill by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Opening,
    Ready,
    Checkpointing,
}

/// When the events the parent waits for arrived.
#[derive(Default)]
struct Seen {
    opening: Option<Instant>,
    ready: Option<Instant>,
    checkpoints: u64,
}

impl Seen {
    fn note(&mut self, (event, at): (Event, Instant)) {
        match event {
            Event::Opening => self.opening = Some(at),
            Event::Ready => self.ready = Some(at),
            Event::Checkpointing => self.checkpoints += 1,
        }
    }
}

/// What one child left behind.
struct ChildRun {
    /// Its stdout, complete lines only.
    text: String,
    /// How long after the spawn it reported ready, and how long its recovery took, if it did.
    ready_after: Option<Duration>,
    recovery: Option<Duration>,
}

fn run_round(root: &Path, round: u64, rng: &mut Rng, history: &mut History) -> Result<(), String> {
    let t = &history.totals;
    let kill = match rng.below(6) {
        0 => {
            let window = t.last_recovery_us.max(RECOVERY_KILL_MIN_US);
            Kill::InRecovery(Duration::from_micros(window * rng.below(1001) / 1000))
        }
        1 | 2 => {
            let window = (2 * t.checkpoint_us_total / t.checkpoints.max(1)).max(CHECKPOINT_KILL_MIN_US);
            let nth = rng.in_range(CHECKPOINT_KILL_NTH);
            Kill::InCheckpoint {
                nth,
                delay: Duration::from_micros(window * rng.below(1001) / 1000),
            }
        }
        _ => Kill::AfterReady(Duration::from_millis(rng.in_range(KILL_DELAY_MS))),
    };
    let child_seed = rng.next();
    let killed = |e: String| format!("child killed {kill:?}: {e}");
    let run = run_child(root, round, child_seed, kill).map_err(killed)?;
    let log = RoundLog::parse(&run.text).map_err(killed)?;
    let floor = history.absorb(round, &log).map_err(killed)?;
    let checking = Instant::now();
    let pending = history
        .check_store(&root.join("data"), round, floor, &log)
        .map_err(killed)?;
    let check_ms = checking.elapsed().as_millis();
    let ready_ms = run.ready_after.map(|d| d.as_millis() as u64);
    history.totals.max_ready_ms = history.totals.max_ready_ms.max(ready_ms.unwrap_or(0));
    if let Some(recovery) = run.recovery {
        history.totals.last_recovery_us = recovery.as_micros() as u64;
    }
    history.totals.killed_before_ready += u64::from(ready_ms.is_none());
    history.totals.killed_in_recovery += u64::from(ready_ms.is_none() && log.opening);
    println!(
        "round {round:3}: kill {kill:?}, ready after {ready_ms:?} ms, acked {:5}, delivered {:5}, checkpoints {:2}, \
         pending {:5}, max seq {}, checked in {check_ms} ms",
        log.acks.len(),
        log.delivered.len(),
        log.checkpoints.len(),
        pending,
        history.max_seq
    );
    Ok(())
}

/// Spawns the child, SIGKILLs it as `kill` says and returns what it printed.
fn run_child(root: &Path, round: u64, seed: u64, kill: Kill) -> Result<ChildRun, String> {
    let stderr_path = root.join(format!("child-{round:04}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).map_err(|e| format!("{}: {e}", stderr_path.display()))?;
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let spawned = Instant::now();
    let mut child = Command::new(exe)
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, root.join("data"))
        .env(CHILD_ROUND_ENV, round.to_string())
        .env(CHILD_SEED_ENV, seed.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let (events_tx, events) = mpsc::channel();
    let reader = read_lines(child.stdout.take().expect("stdout is piped"), events_tx);
    let mut seen = Seen::default();
    // `None` (not there in time, or its stdout closed): killed at once; the status tells why.
    let kill_at = match kill {
        Kill::InRecovery(delay) => wait_for(&events, &mut seen, |s| s.opening.is_some()).map(|at| at + delay),
        Kill::AfterReady(delay) => wait_for(&events, &mut seen, |s| s.ready.is_some()).map(|at| at + delay),
        Kill::InCheckpoint { nth, delay } => {
            wait_for(&events, &mut seen, |s| s.ready.is_some() && s.checkpoints >= nth).map(|at| at + delay)
        }
    };
    let status = kill_child(&mut child, kill_at)?;
    let bytes = reader
        .join()
        .expect("reader thread")
        .map_err(|e| format!("reading the child's stdout: {e}"))?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    events.try_iter().for_each(|e| seen.note(e));
    let ready_after = seen.ready.map(|at| at - spawned);
    let recovery = seen.ready.zip(seen.opening).map(|(ready, opening)| ready - opening);
    if status.signal() != Some(libc::SIGKILL) {
        let fails: Vec<&str> = text.lines().filter(|l| l.starts_with("fail ")).collect();
        return Err(format!(
            "the child ended on its own ({status}) before the kill; its failures: {fails:?}; stderr tail:\n{}",
            stderr_tail(&stderr_path)
        ));
    }
    if kill_at.is_none() {
        return Err(format!(
            "the child did not get to {kill:?} within {READY_TIMEOUT:?}; stderr tail:\n{}",
            stderr_tail(&stderr_path)
        ));
    }
    Ok(ChildRun {
        text,
        ready_after,
        recovery,
    })
}

/// Takes in the child's events until `done` says that is enough; returns when the last arrived.
fn wait_for(
    events: &mpsc::Receiver<(Event, Instant)>,
    seen: &mut Seen,
    done: impl Fn(&Seen) -> bool,
) -> Option<Instant> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let event = events
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .ok()?;
        seen.note(event);
        if done(seen) {
            return Some(event.1);
        }
    }
}

/// Reads the child's stdout to its end on a thread, keeping complete lines only, and sends the
/// moments the lines the kill is timed by arrived.
fn read_lines(stdout: ChildStdout, events: mpsc::Sender<(Event, Instant)>) -> JoinHandle<std::io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut bytes = Vec::new();
        loop {
            let start = bytes.len();
            if stdout.read_until(b'\n', &mut bytes)? == 0 {
                break;
            }
            if bytes.last() != Some(&b'\n') {
                bytes.truncate(start); // a line the kill cut short
                break;
            }
            let line = &bytes[start..];
            let event = if line == b"opening\n" {
                Some(Event::Opening)
            } else if line.starts_with(b"ready ") {
                Some(Event::Ready)
            } else if line == b"checkpointing\n" {
                Some(Event::Checkpointing)
            } else {
                None
            };
            if let Some(event) = event {
                let _ = events.send((event, Instant::now()));
            }
        }
        Ok(bytes)
    })
}

/// SIGKILLs the child at `at` (at once if `None`) unless it ends before; returns its status.
fn kill_child(child: &mut Child, at: Option<Instant>) -> Result<ExitStatus, String> {
    let wait_err = |e: std::io::Error| format!("waiting for the child: {e}");
    while let Some(left) = at.and_then(|at| at.checked_duration_since(Instant::now())) {
        if let Some(status) = child.try_wait().map_err(wait_err)? {
            return Ok(status);
        }
        std::thread::sleep(left.min(KILL_POLL));
    }
    // SAFETY: kill(2) takes no pointers; the pid is our child's, not yet reaped.
    if unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) } != 0 {
        return Err(format!("kill: {}", std::io::Error::last_os_error()));
    }
    child.wait().map_err(wait_err)
}

/// Waits until nobody holds sled's lock on its `db` file; returns how long that took.
///
/// sled 0.34.7 lets go of the lock asynchronously: after the last handle is dropped, a thread of
/// its global IO pool may still hold the file while it finishes a log write. A child started in
/// that moment would fail to open the store with "could not acquire lock … WouldBlock".
fn wait_for_sled_unlock(db: &Path) -> Result<Duration, String> {
    use std::os::fd::AsRawFd;
    let started = Instant::now();
    let file = std::fs::File::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
    loop {
        // SAFETY: flock(2) takes a descriptor we own (open for the whole call) and no pointers.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(started.elapsed()); // unlocked when `file` is closed
        }
        if started.elapsed() > SLED_UNLOCK_TIMEOUT {
            return Err(format!(
                "sled still holds {} {SLED_UNLOCK_TIMEOUT:?} after the store was dropped",
                db.display()
            ));
        }
        std::thread::sleep(SLED_UNLOCK_POLL);
    }
}

/// `name (bytes)` of each file in `dir`, for a failure message (sled's snapshot files tell much).
fn listing(dir: &Path) -> String {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return format!("{} unreadable", dir.display());
    };
    let mut files: Vec<String> = entries
        .filter_map(|e| e.ok())
        .map(|e| {
            format!(
                "{} ({} B)",
                e.file_name().to_string_lossy(),
                e.metadata().map_or(0, |m| m.len())
            )
        })
        .collect();
    files.sort();
    files.join(", ")
}

fn stderr_tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(STDERR_TAIL_BYTES)..]).into_owned()
}

impl RoundLog {
    fn parse(text: &str) -> Result<RoundLog, String> {
        let mut log = RoundLog::default();
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let num = |i: usize| -> Result<u64, String> {
                fields
                    .get(i)
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| format!("malformed child line {line:?}"))
            };
            match fields[0] {
                "opening" => log.opening = true,
                "submit" => _ = log.submits.insert((num(1)?, num(2)?, num(3)?), num(4)?),
                "ack" => {
                    let digest = fields.get(2).and_then(|d| u64::from_str_radix(d, 16).ok());
                    log.acks
                        .push((num(1)?, digest.ok_or_else(|| format!("malformed child line {line:?}"))?));
                }
                "deliver" => _ = log.deliver.insert(num(1)?),
                "delivered" => _ = log.delivered.insert(num(1)?),
                "setting" => log.settings.push(fields.get(1).unwrap_or(&"").to_string()),
                "checkpointing" => log.checkpointing += 1,
                "checkpoint" => log.checkpoints.push((num(1)?, num(2)?, num(4)?)),
                "fail" => log.fails.push(line.to_owned()),
                _ => {} // libtest's own lines
            }
        }
        Ok(log)
    }
}

impl History {
    /// Takes in what the child acknowledged. Returns the highest seq known before the round.
    fn absorb(&mut self, round: u64, log: &RoundLog) -> Result<u64, String> {
        if let Some(fail) = log.fails.first() {
            return Err(format!("the child reported: {fail}"));
        }
        let floor = self.max_seq;
        for &(seq, digest) in &log.acks {
            if seq <= floor {
                return Err(format!(
                    "acknowledged seq {seq} is not above every earlier seq ({floor}): a seq was reused"
                ));
            }
            if self
                .live
                .insert(
                    seq,
                    Live {
                        digest,
                        acked: true,
                        round,
                    },
                )
                .is_some()
            {
                return Err(format!("seq {seq} was acknowledged twice"));
            }
            self.max_seq = self.max_seq.max(seq);
        }
        if let Some(setting) = log.settings.iter().max() {
            self.setting_acked = self.setting_acked.clone().max(Some(setting.clone()));
        }
        for &(lsn, first_lsn, micros) in &log.checkpoints {
            self.checkpoint_claimed = self.checkpoint_claimed.max(lsn);
            self.totals.max_wal_first_lsn = self.totals.max_wal_first_lsn.max(first_lsn);
            self.totals.max_checkpoint_us = self.totals.max_checkpoint_us.max(micros);
            self.totals.checkpoint_us_total += micros;
        }
        let t = &mut self.totals;
        t.acked += log.acks.len() as u64;
        t.delivered += log.delivered.len() as u64;
        t.checkpoints += log.checkpoints.len() as u64;
        t.killed_in_checkpoint += u64::from(log.checkpointing > log.checkpoints.len() as u64);
        Ok(floor)
    }

    /// Reopens the store and checks it against the history. Returns the number pending.
    fn check_store(&mut self, data: &Path, round: u64, floor: u64, log: &RoundLog) -> Result<usize, String> {
        let (store, report) = Store::open(store_config(data, 0)).map_err(|e| {
            format!(
                "reopening the store failed: {e}; sled's files: {}",
                listing(&data.join("state"))
            )
        })?;
        if report.corrupt_records != 0 || !report.wal.damage.is_empty() {
            return Err(format!("recovery met damage: {report:?}"));
        }
        if report.checkpoint_lsn < self.checkpoint_claimed {
            return Err(format!(
                "recovery started from checkpoint {} but a checkpoint at {} had returned",
                report.checkpoint_lsn, self.checkpoint_claimed
            ));
        }
        let t = &mut self.totals;
        t.max_replayed = t.max_replayed.max(report.replayed);
        t.torn_tails += u64::from(report.wal.torn_tail_bytes > 0);
        t.torn_bytes += report.wal.torn_tail_bytes;
        // At most: a torn tail cut twice at the same segment and offset is one quarantine file.
        if report.wal.quarantined > t.torn_tails {
            return Err(format!(
                "the quarantine holds {} regions but only {} torn tails were cut: {report:?}",
                report.wal.quarantined, t.torn_tails
            ));
        }
        match store.verify_wal() {
            Ok(Some(verify)) if verify.is_clean() => {}
            other => return Err(format!("the WAL does not verify clean after recovery: {other:?}")),
        }
        let pending = self.scan(&store, round, floor, log)?;
        self.check_live(&pending, log)?;
        self.check_setting(&store, round)?;
        let checkpoint = store
            .checkpoint()
            .map_err(|e| format!("checkpoint after recovery: {e}"))?;
        self.checkpoint_claimed = self.checkpoint_claimed.max(checkpoint.lsn);
        drop(store);
        let waited = wait_for_sled_unlock(&data.join("state").join("db"))?;
        self.totals.max_unlock_wait_us = self.totals.max_unlock_wait_us.max(waited.as_micros() as u64);
        Ok(pending.len())
    }

    /// Reads the whole queue back and checks every callback in it.
    fn scan(&mut self, store: &Store, round: u64, floor: u64, log: &RoundLog) -> Result<HashSet<u64>, String> {
        let mut pending = HashSet::new();
        let mut after = None;
        for _ in 0..MAX_SCAN_PAGES {
            let page = store
                .pending_callbacks(after, SCAN_PAGE)
                .map_err(|e| format!("reading the queue: {e}"))?;
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            for cb in &page {
                self.check_pending(cb, round, floor, log)?;
                pending.insert(cb.seq);
            }
        }
        if store.pending_callback_count() != pending.len() as u64 {
            return Err(format!(
                "the queue holds {} callbacks but counts {}",
                pending.len(),
                store.pending_callback_count()
            ));
        }
        Ok(pending)
    }

    fn check_pending(&mut self, cb: &PendingCallback, round: u64, floor: u64, log: &RoundLog) -> Result<(), String> {
        let seq = cb.seq;
        let head = String::from_utf8_lossy(&cb.body[..cb.body.len().min(64)]).into_owned();
        let key = Key::of(&cb.body).ok_or_else(|| {
            format!(
                "pending seq {seq} holds a body that is not ours ({} bytes: {head:?})",
                cb.body.len()
            )
        })?;
        if cb.enqueued_at != key.enqueued_at() {
            return Err(format!(
                "pending seq {seq} ({key:?}) has enqueued_at {} instead of {}",
                cb.enqueued_at,
                key.enqueued_at()
            ));
        }
        let digest = fnv1a(&cb.body);
        match self.live.get(&seq) {
            Some(live) if live.digest != digest => {
                return Err(format!(
                    "pending seq {seq} holds {head:?}, not the body acknowledged for it"
                ));
            }
            Some(_) => {}
            None => {
                if seq <= floor {
                    return Err(format!(
                        "pending seq {seq} ({head:?}) is neither acknowledged nor new (at most {floor}, the \
                         highest seq before this round): a delivered callback came back, or one missing earlier \
                         reappeared"
                    ));
                }
                let submitted = log
                    .submits
                    .get(&(key.round, key.task, key.counter))
                    .is_some_and(|&n| key.index < n);
                if key.round != round || !submitted {
                    return Err(format!(
                        "pending seq {seq} ({head:?}) was never submitted in this round"
                    ));
                }
                self.live.insert(
                    seq,
                    Live {
                        digest,
                        acked: false,
                        round,
                    },
                );
                self.max_seq = self.max_seq.max(seq);
                self.totals.unacked_durable += 1;
            }
        }
        if log.delivered.contains(&seq) {
            self.totals.came_back += 1;
        }
        Ok(())
    }

    /// Every live seq is pending, or its delivery was started in this round (then it is done with).
    fn check_live(&mut self, pending: &HashSet<u64>, log: &RoundLog) -> Result<(), String> {
        let mut lost = Vec::new();
        let mut gone = Vec::new();
        for (&seq, live) in &self.live {
            if pending.contains(&seq) {
                continue;
            }
            if log.deliver.contains(&seq) {
                gone.push(seq);
            } else {
                let how = if live.acked {
                    "acknowledged in"
                } else {
                    "shown pending after"
                };
                lost.push(format!("seq {seq} ({how} round {})", live.round));
            }
        }
        if !lost.is_empty() {
            return Err(format!(
                "{} callbacks LOST (neither pending nor delivered), first ones: {:?}",
                lost.len(),
                &lost[..lost.len().min(20)]
            ));
        }
        for seq in gone {
            self.live.remove(&seq);
        }
        Ok(())
    }

    fn check_setting(&mut self, store: &Store, round: u64) -> Result<(), String> {
        let stored = store
            .setting(SETTING)
            .map_err(|e| format!("reading the setting: {e}"))?;
        let stored = stored.map(|v| String::from_utf8_lossy(&v).into_owned());
        if stored < self.setting_acked || stored < self.setting_stored {
            return Err(format!(
                "setting {SETTING:?} is {stored:?} after recovery, but {:?} was acknowledged and {:?} found before",
                self.setting_acked, self.setting_stored
            ));
        }
        if let Some(value) = &stored {
            let from = value.split_once('-').and_then(|(r, _)| r.parse::<u64>().ok());
            if from.is_none_or(|r| r > round) {
                return Err(format!(
                    "setting {SETTING:?} is {value:?}, not a value written in rounds 1..={round}"
                ));
            }
        }
        self.setting_stored = stored;
        Ok(())
    }
}
