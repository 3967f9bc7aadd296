//! Crash test of the log: a child process appends under load and prints each acknowledged LSN;
//! the parent SIGKILLs it at random moments, reopens the log and checks that every acknowledged
//! record is present at its LSN and intact, that LSNs run gap-free from 1 and continue across
//! kills, and that recovery found nothing worse than a torn tail.
//!
//! The child is this test binary re-executed (as in sled's crash harness): with
//! `COREQ_WAL_CRASH_CHILD=<dir>` set, the test function plays the child instead of the parent.
//! Every record's content is a function of its `(writer, counter)` pair, so the parent rebuilds
//! and compares every record it reads, acknowledged or not.
//!
//! A kill from outside lands inside the committer's `write` only by rare luck (the write is
//! microseconds, the fdatasync after it milliseconds), so torn tails would hardly ever be seen.
//! Hence, after every third round in which the parent kills, one torn-write round: the child's
//! [`FileSystem`] seam, at a random sync, cuts the batch just written (never acknowledged: the
//! committer publishes durability only after the sync returns) at a random byte and SIGKILLs
//! its own process, which is what a kill in the middle of that `write` leaves behind.
//!
//! What this covers and what it does not: SIGKILL loses no page cache, so this proves that an
//! append is acknowledged only after its frames were written, and that recovery keeps every
//! written record and cuts nothing but a torn tail. It does not prove that the disk honours
//! fdatasync (power loss).
//!
//! Environment (parent): `COREQ_CRASH_ROUNDS`, rounds in which the parent kills the child
//! (default 30, at least 25; a third as many torn-write rounds come on top), `COREQ_CRASH_SEED`
//! (fixes the kill schedule; printed at start). Kill timing also depends on the scheduler and
//! the disk, so a seed reproduces the schedule, not the exact interleaving.

#![cfg(unix)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::ops::RangeInclusive;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coreq_wal::{FileSystem, Lsn, Wal, WalConfig};
use serde::{Deserialize, Serialize};

/// The test function's name, which the child is started with (`--exact`).
const TEST_NAME: &str = "sigkill_at_random_moments_loses_no_acknowledged_record";
/// Set for the child only: the directory holding the log (and its quarantine).
const CHILD_DIR_ENV: &str = "COREQ_WAL_CRASH_CHILD";
/// Set for the child only: the round number, the high half of every counter it writes.
const CHILD_ROUND_ENV: &str = "COREQ_WAL_CRASH_ROUND";
/// Set for the child in a torn-write round only: `<sync number> <seed>`, see [`TearingFs`].
const CHILD_TEAR_ENV: &str = "COREQ_WAL_CRASH_TEAR";

const DEFAULT_ROUNDS: u64 = 30;
const MIN_ROUNDS: u64 = 25;
const MAX_ROUNDS: u64 = 10_000;
/// Appender threads in the child.
const WRITERS: u32 = 16;
/// Small segments, so that several roll over in every round.
const SEGMENT_BYTES: u64 = 1 << 20;
/// A small group-commit buffer, so that appenders also wait for space.
const MAX_PENDING_BYTES: usize = 4 << 20;
/// The child stops on its own after this long (it is normally killed within a second).
const CHILD_MAX_RUN: Duration = Duration::from_secs(30);
/// The child's appenders stop after this many records each (the low half of a counter).
const MAX_RECORDS_PER_WRITER: u64 = 1 << 24;
/// How long the parent waits for the child to open the log.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// The kill comes this long after the child reported ready …
const KILL_DELAY_MS: RangeInclusive<u64> = 20..=300;
/// … or once it has acknowledged this many records, whichever is first. The bound keeps the log,
/// which the parent rereads whole after every kill, small on a fast disk.
const KILL_AT_ACK: RangeInclusive<u64> = 1..=3000;
/// How often the parent looks at the child's ack count while waiting to kill.
const KILL_POLL: Duration = Duration::from_micros(500);
/// One round in this many kills the child 0..=EARLY_KILL_MS after spawning it, without waiting
/// for it to be ready: a kill during start-up or while the log is being opened.
const EARLY_KILL_ONE_IN: u64 = 8;
const EARLY_KILL_MS: u64 = 20;
/// Bytes of the child's stderr kept for a failure message.
const STDERR_KEEP_BYTES: u64 = 64 << 10;
/// A torn-write round follows every this many rounds in which the parent kills.
const TEAR_EVERY: u64 = 3;
/// The sync at which the child of a torn-write round tears its write.
const TEAR_AT_SYNC: RangeInclusive<u64> = 1..=150;
/// How long the parent waits for the child of a torn-write round to kill itself.
const TEAR_TIMEOUT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Records.

/// One record. `payload` and `crc` (its CRC-32) are functions of `(writer, counter)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Rec {
    writer: u32,
    counter: u64,
    crc: u32,
    payload: Payload,
}

/// Bytes encoded as one length-prefixed run (serde's `bytes`), not as a sequence of `u8`s:
/// decoding is one copy, which keeps the parent's rereading of the log fast in debug builds.
#[derive(Clone, PartialEq, Eq)]
struct Payload(Vec<u8>);

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Payload({} bytes)", self.0.len())
    }
}

impl Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Payload {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Payload, D::Error> {
        struct Bytes;
        impl serde::de::Visitor<'_> for Bytes {
            type Value = Payload;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("payload bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Payload, E> {
                Ok(Payload(v.to_vec()))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Payload, E> {
                Ok(Payload(v))
            }
        }
        d.deserialize_byte_buf(Bytes)
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn key(writer: u32, counter: u64) -> u64 {
    splitmix(counter ^ (u64::from(writer) << 56) ^ splitmix(u64::from(writer)))
}

/// Payload size: mostly about 256 B, one in twenty 1–8 KiB, one in a thousand about 200 KiB (a
/// fifth of a segment, so big frames often straddle the roll-over point). Small on average
/// because the parent rereads the whole log after every kill.
fn payload_len(h: u64) -> usize {
    let r = (h >> 20) as usize;
    match h % 1000 {
        0 => (192 << 10) + r % (16 << 10),
        1..50 => 1024 + r % (7 << 10),
        _ if h & (1 << 40) != 0 => 256,
        _ => r % 512,
    }
}

/// The payload of `(writer, counter)`: a 256-byte block derived from the key, repeated, each
/// repetition's first 8 bytes numbered, so that a dropped, repeated or misplaced piece shows as
/// clearly as a flipped bit.
fn payload(writer: u32, counter: u64) -> Vec<u8> {
    let key = key(writer, counter);
    let len = payload_len(key);
    let mut block = [0u8; 256];
    let mut state = key | 1;
    for word in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let mut payload = Vec::with_capacity(len);
    for piece in 0u64.. {
        if payload.len() == len {
            break;
        }
        block[..8].copy_from_slice(&(key ^ piece).to_le_bytes());
        payload.extend_from_slice(&block[..(len - payload.len()).min(block.len())]);
    }
    payload
}

/// The record `(writer, counter)` must be, byte for byte.
fn record(writer: u32, counter: u64) -> Rec {
    let payload = payload(writer, counter);
    Rec {
        writer,
        counter,
        crc: crc32fast::hash(&payload),
        payload: Payload(payload),
    }
}

/// Records per append: mostly one, one in ten a batch of 2–4.
fn batch_len(writer: u32, counter: u64) -> u64 {
    let h = splitmix(key(writer, counter));
    if h.is_multiple_of(10) { 2 + (h >> 32) % 3 } else { 1 }
}

fn counter_of(round: u64, i: u64) -> u64 {
    (round << 32) | i
}

fn config(dir: &Path) -> WalConfig {
    let mut cfg = WalConfig::new(dir.join("wal"), dir.join("quarantine"));
    cfg.segment_bytes = SEGMENT_BYTES;
    cfg.max_pending_bytes = MAX_PENDING_BYTES;
    cfg
}

/// The child's files in a torn-write round: at the `at_sync`-th segment sync, the bytes written
/// since the segment's previous sync (one batch, not yet acknowledged) are cut at a random
/// offset, and the process SIGKILLs itself before the sync would have made them durable.
struct TearingFs {
    at_sync: u64,
    seed: u64,
    syncs: AtomicU64,
    /// Each segment's length (by inode) at its last sync, or at start-up. A segment not in the
    /// map was created since, empty.
    synced_len: Mutex<HashMap<u64, u64>>,
}

impl TearingFs {
    fn new(wal_dir: &Path, at_sync: u64, seed: u64) -> TearingFs {
        let lens = match std::fs::read_dir(wal_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| (m.ino(), m.len()))
                .collect(),
            Err(_) => HashMap::new(),
        };
        TearingFs {
            at_sync,
            seed,
            syncs: AtomicU64::new(0),
            synced_len: Mutex::new(lens),
        }
    }
}

impl FileSystem for TearingFs {
    fn sync_data(&self, file: &File) -> std::io::Result<()> {
        let meta = file.metadata()?;
        let len = meta.len();
        let before = self
            .synced_len
            .lock()
            .expect("lengths lock")
            .insert(meta.ino(), len)
            .unwrap_or(0);
        let nth = self.syncs.fetch_add(1, Ordering::Relaxed) + 1;
        if nth >= self.at_sync && len > before + 1 {
            // A cut strictly inside the new bytes: some of the batch stays, some is gone.
            file.set_len(before + 1 + splitmix(self.seed) % (len - before - 1))?;
            // SAFETY: kill(2) takes no pointers. SIGKILL to our own process cannot be blocked
            // and is delivered before kill returns: nothing after this line runs.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            std::process::abort();
        }
        file.sync_data()
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    if let Some(dir) = std::env::var_os(CHILD_DIR_ENV) {
        let round = std::env::var(CHILD_ROUND_ENV).expect("child: round");
        child(Path::new(&dir), round.parse().expect("child: round number"));
        return;
    }
    parent();
}

// ---------------------------------------------------------------------------------------------
// The child: appends from many threads until killed, printing `ack <lsn> <writer> <counter>`
// for each record only after its append returned.

fn child(dir: &Path, round: u64) {
    let mut cfg = config(dir);
    if let Ok(tear) = std::env::var(CHILD_TEAR_ENV) {
        let (at_sync, seed) = tear.split_once(' ').expect("child: <sync> <seed>");
        let (at_sync, seed) = (
            at_sync.parse().expect("child: sync"),
            seed.parse().expect("child: seed"),
        );
        cfg.fs = Arc::new(TearingFs::new(&cfg.dir, at_sync, seed));
    }
    let (wal, report) = Wal::<Rec>::open(cfg).expect("child: open");
    let out = Mutex::new(std::io::stdout());
    {
        let mut out = out.lock().expect("stdout lock");
        let damage = report.damage.len();
        // libtest has printed `test <name> ... ` without a newline: start a line of our own.
        writeln!(out, "\nready {} {} {damage}", report.next_lsn, report.torn_tail_bytes)
            .and_then(|()| out.flush())
            .expect("child: stdout");
    }
    let deadline = Instant::now() + CHILD_MAX_RUN;
    thread::scope(|s| {
        for writer in 0..WRITERS {
            let (wal, out) = (&wal, &out);
            s.spawn(move || appender(wal, writer, round, deadline, out));
        }
    });
}

fn appender(wal: &Wal<Rec>, writer: u32, round: u64, deadline: Instant, out: &Mutex<std::io::Stdout>) {
    let mut i = 0;
    let mut lines = String::new();
    while i < MAX_RECORDS_PER_WRITER && Instant::now() < deadline {
        let n = batch_len(writer, counter_of(round, i));
        let counters: Vec<u64> = (i..i + n).map(|i| counter_of(round, i)).collect();
        let records: Vec<Rec> = counters.iter().map(|&c| record(writer, c)).collect();
        let lsns = wal.append(&records).expect("child: append");
        assert_eq!(lsns.clone().count(), records.len(), "child: one LSN per record");
        lines.clear();
        for (lsn, counter) in lsns.zip(&counters) {
            use std::fmt::Write as _;
            writeln!(lines, "ack {lsn} {writer} {counter}").expect("format");
        }
        let mut out = out.lock().expect("stdout lock");
        out.write_all(lines.as_bytes())
            .and_then(|()| out.flush())
            .expect("child: stdout");
        i += n;
    }
}

// ---------------------------------------------------------------------------------------------
// The parent: runs the rounds and checks the log after every kill.

/// xorshift64, for the kill schedule.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn in_range(&mut self, range: RangeInclusive<u64>) -> u64 {
        range.start() + self.next() % (range.end() - range.start() + 1)
    }
}

struct Ack {
    lsn: Lsn,
    writer: u32,
    counter: u64,
}

/// What the child said once it had opened the log.
#[derive(Debug, Clone, Copy)]
struct Ready {
    next_lsn: Lsn,
    torn_tail_bytes: u64,
    damage: usize,
}

/// When to kill the child.
#[derive(Debug, Clone, Copy)]
enum KillPlan {
    /// This long after spawning it, ready or not.
    Early { after: Duration },
    /// This long after it reported ready, or once it acknowledged this many records.
    UnderLoad { delay: Duration, at_ack: usize },
    /// A torn-write round: the child kills itself, see [`TearingFs`].
    Tear { at_sync: u64, seed: u64 },
}

impl KillPlan {
    fn draw(rng: &mut Rng, tear: bool) -> KillPlan {
        if tear {
            KillPlan::Tear {
                at_sync: rng.in_range(TEAR_AT_SYNC),
                seed: rng.next(),
            }
        } else if rng.next().is_multiple_of(EARLY_KILL_ONE_IN) {
            KillPlan::Early {
                after: Duration::from_millis(rng.in_range(0..=EARLY_KILL_MS)),
            }
        } else {
            let delay = Duration::from_millis(rng.in_range(KILL_DELAY_MS));
            KillPlan::UnderLoad {
                delay,
                at_ack: rng.in_range(KILL_AT_ACK) as usize,
            }
        }
    }
}

struct ChildOutput {
    ready: Option<Ready>,
    acks: Vec<Ack>,
    /// How the kill came, for the log line.
    killed: String,
}

/// What the log held at one LSN: `(writer, counter, crc)`.
type Entry = (u32, u64, u32);

/// What the log must hold, as learnt so far.
#[derive(Default)]
struct History {
    /// The record at each LSN (index `lsn - 1`) as found by the last check: a record recovered
    /// once must stay, acknowledged or not.
    log: Vec<Entry>,
    /// Every acknowledged record of every round: LSN → `(writer, counter)`.
    acks: BTreeMap<Lsn, (u32, u64)>,
    /// Torn tails cut after a kill by the parent, and after a torn-write round.
    torn_tails: u64,
    torn_tails_injected: u64,
    torn_tails_not_quarantined: u64,
    quarantined: u64,
    parent_kills: u64,
    tear_rounds: u64,
    early_kills: u64,
    kills_before_ready: u64,
    max_round_acks: usize,
}

fn parent() {
    let rounds = env_u64("COREQ_CRASH_ROUNDS").unwrap_or(DEFAULT_ROUNDS);
    assert!(
        (MIN_ROUNDS..=MAX_ROUNDS).contains(&rounds),
        "COREQ_CRASH_ROUNDS must be in {MIN_ROUNDS}..={MAX_ROUNDS}"
    );
    let seed = env_u64("COREQ_CRASH_SEED")
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as u64);
    let base = data_base_dir();
    let dir = tempfile::Builder::new()
        .prefix("coreq-wal-crash-")
        .tempdir_in(&base)
        .expect("tempdir");
    println!(
        "wal crash test: seed {seed} (COREQ_CRASH_SEED), {rounds} rounds, data in {}",
        dir.path().display()
    );
    let started = Instant::now();
    let mut rng = Rng(splitmix(seed) | 1);
    let mut history = History::default();
    let total = rounds + rounds / TEAR_EVERY;
    for round in 0..total {
        let tear = (round + 1).is_multiple_of(TEAR_EVERY + 1);
        if let Err(why) = run_round(dir.path(), round, KillPlan::draw(&mut rng, tear), &mut history) {
            let kept = dir.keep();
            panic!(
                "crash test failed in round {round} of {total} (seed {seed}; rerun with \
                 COREQ_CRASH_SEED={seed}): {why}\n(data directory kept: {})",
                kept.display()
            );
        }
    }
    assert_eq!(
        history.parent_kills, rounds,
        "every non-tearing round ended in the parent's SIGKILL"
    );
    print_summary(dir.path(), seed, started, &history);
}

fn print_summary(dir: &Path, seed: u64, started: Instant, history: &History) {
    let (segments, bytes) = log_size(dir);
    println!(
        "wal crash test passed: {} SIGKILLs by the parent ({} early, {} before the child was \
         ready), {} torn-write rounds; {} records acknowledged (at most {} in one round); torn \
         tails cut: {} after the parent's kills, {} after torn writes ({} not quarantined anew); \
         {} quarantined files; {} records in the log, {segments} segments, {:.1} MiB; {:.1} s; \
         seed {seed}",
        history.parent_kills,
        history.early_kills,
        history.kills_before_ready,
        history.tear_rounds,
        history.acks.len(),
        history.max_round_acks,
        history.torn_tails,
        history.torn_tails_injected,
        history.torn_tails_not_quarantined,
        history.quarantined,
        history.log.len(),
        bytes as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64(),
    );
}

fn run_round(dir: &Path, round: u64, plan: KillPlan, history: &mut History) -> Result<(), String> {
    let out = run_child(dir, round, plan)?;
    let tear = matches!(plan, KillPlan::Tear { .. });
    history.tear_rounds += u64::from(tear);
    history.parent_kills += u64::from(!tear);
    history.early_kills += u64::from(matches!(plan, KillPlan::Early { .. }));
    history.kills_before_ready += u64::from(out.ready.is_none());
    history.max_round_acks = history.max_round_acks.max(out.acks.len());
    let last_before = history.log.len() as Lsn;
    if let Some(ready) = out.ready {
        let clean = ready.torn_tail_bytes == 0 && ready.damage == 0;
        if ready.next_lsn != last_before + 1 || !clean {
            return Err(format!(
                "the child opened the log at next LSN {} (torn tail {} B, {} damaged regions); \
                 the parent's reopen had left it at next LSN {} and clean",
                ready.next_lsn,
                ready.torn_tail_bytes,
                ready.damage,
                last_before + 1
            ));
        }
    }
    let acked = out.acks.len();
    record_acks(history, round, out.acks)?;
    let check_started = Instant::now();
    let torn = check_log(dir, history)?;
    match (torn > 0, tear) {
        (true, true) => history.torn_tails_injected += 1,
        (true, false) => history.torn_tails += 1,
        (false, _) => {}
    }
    println!(
        "round {round:3}: killed {:<34} {acked:5} acks, torn tail {torn:7} B, log 1..={:<7} \
         (checked in {} ms)",
        out.killed,
        history.log.len(),
        check_started.elapsed().as_millis()
    );
    Ok(())
}

/// Adds a round's acknowledgements, checking that LSNs continue past everything the log held
/// before the round and that no LSN is acknowledged twice.
fn record_acks(history: &mut History, round: u64, acks: Vec<Ack>) -> Result<(), String> {
    let last_before = history.log.len() as Lsn;
    for ack in acks {
        if ack.lsn <= last_before {
            return Err(format!(
                "LSNs do not continue across the kill: the child acknowledged LSN {} (writer {}, \
                 counter {}) but the log already held LSNs 1..={last_before} before this round",
                ack.lsn, ack.writer, ack.counter
            ));
        }
        if ack.counter >> 32 != round || ack.writer >= WRITERS {
            return Err(format!(
                "the ack of LSN {} names writer {} and counter {}, not one of round {round}",
                ack.lsn, ack.writer, ack.counter
            ));
        }
        if let Some(prev) = history.acks.insert(ack.lsn, (ack.writer, ack.counter)) {
            return Err(format!(
                "LSN {} acknowledged twice: for (writer {}, counter {}) and for (writer {}, counter {})",
                ack.lsn, prev.0, prev.1, ack.writer, ack.counter
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running and killing one child.

fn run_child(dir: &Path, round: u64, plan: KillPlan) -> Result<ChildOutput, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut command = Command::new(exe);
    command
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_ROUND_ENV, round.to_string());
    if let KillPlan::Tear { at_sync, seed } = plan {
        command.env(CHILD_TEAR_ENV, format!("{at_sync} {seed}"));
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning the child: {e}"))?;
    let spawned = Instant::now();
    let (ready_tx, ready_rx) = mpsc::channel();
    let acks_seen = Arc::new(AtomicUsize::new(0));
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let seen = acks_seen.clone();
    let stdout_reader = thread::spawn(move || read_child_stdout(stdout, &ready_tx, &seen));
    let stderr_reader = thread::spawn(move || read_child_stderr(stderr));

    let (waited, killed) = if let KillPlan::Tear { at_sync, .. } = plan {
        let died = wait_for_self_kill(&mut child);
        let how = format!("itself at sync {at_sync}+, {} ms in", spawned.elapsed().as_millis());
        (Ok(how), died)
    } else {
        let waited = wait_for_kill_moment(plan, spawned, &ready_rx, &acks_seen);
        (waited, sigkill_and_wait(&mut child))
    };
    let stdout = stdout_reader
        .join()
        .map_err(|_| "the stdout reader panicked".to_string())?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let outcome = waited.and_then(|how| killed.map(|()| how));
    match (outcome, stdout) {
        (Ok(killed), Ok((ready, acks))) => Ok(ChildOutput { ready, acks, killed }),
        (Err(why), _) | (_, Err(why)) => Err(format!("{why}\n--- child stderr ---\n{stderr}")),
    }
}

/// Waits as `plan` says; returns how the moment came, for the log line.
fn wait_for_kill_moment(
    plan: KillPlan,
    spawned: Instant,
    ready_rx: &mpsc::Receiver<Ready>,
    acks_seen: &AtomicUsize,
) -> Result<String, String> {
    let (delay, at_ack) = match plan {
        KillPlan::Early { after } => {
            thread::sleep(after);
            return Ok(format!("{} ms after spawn", spawned.elapsed().as_millis()));
        }
        KillPlan::UnderLoad { delay, at_ack } => (delay, at_ack),
        KillPlan::Tear { .. } => unreachable!("a torn-write round is not killed by the parent"),
    };
    match ready_rx.recv_timeout(READY_TIMEOUT) {
        Ok(_) => {}
        Err(RecvTimeoutError::Timeout) => {
            return Err(format!("the child was not ready within {READY_TIMEOUT:?}"));
        }
        Err(RecvTimeoutError::Disconnected) => {
            return Err("the child closed its stdout before it was ready".to_string());
        }
    }
    let ready = Instant::now();
    // Bounded by `delay` (at most the top of KILL_DELAY_MS).
    while ready.elapsed() < delay {
        let seen = acks_seen.load(Ordering::Relaxed);
        if seen >= at_ack {
            return Ok(format!("at ack {seen}, {} ms after ready", ready.elapsed().as_millis()));
        }
        thread::sleep(KILL_POLL);
    }
    Ok(format!("{} ms after ready", ready.elapsed().as_millis()))
}

/// Sends SIGKILL and reaps the child; fails if it had ended any other way.
fn sigkill_and_wait(child: &mut Child) -> Result<(), String> {
    let pid = libc::pid_t::try_from(child.id()).map_err(|e| format!("child pid: {e}"))?;
    // SAFETY: kill(2) takes no pointers. The pid is our own child's and it has not been waited
    // for, so it cannot have been reused (an exited child stays a zombie until reaped).
    let rc = unsafe { libc::kill(pid, libc::SIGKILL) };
    if rc != 0 {
        return Err(format!("kill({pid}, SIGKILL): {}", std::io::Error::last_os_error()));
    }
    let status = child.wait().map_err(|e| format!("waiting for the child: {e}"))?;
    match status.signal() {
        Some(libc::SIGKILL) => Ok(()),
        _ => Err(format!("the child ended by itself before the kill: {status}")),
    }
}

/// Waits for the child of a torn-write round to SIGKILL itself.
fn wait_for_self_kill(child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + TEAR_TIMEOUT;
    // Bounded by TEAR_TIMEOUT.
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.signal() == Some(libc::SIGKILL) => return Ok(()),
            Ok(Some(status)) => return Err(format!("the child of a torn-write round ended with {status}")),
            Ok(None) if Instant::now() >= deadline => {
                sigkill_and_wait(child)?;
                return Err(format!("the child did not tear a write within {TEAR_TIMEOUT:?}"));
            }
            Ok(None) => thread::sleep(Duration::from_millis(1)),
            Err(e) => return Err(format!("waiting for the child: {e}")),
        }
    }
}

type StdoutResult = Result<(Option<Ready>, Vec<Ack>), String>;

/// Collects `ready` and every complete `ack` line; a line the kill cut short is dropped, other
/// lines (libtest's) are ignored.
fn read_child_stdout(stdout: ChildStdout, ready_tx: &mpsc::Sender<Ready>, acks_seen: &AtomicUsize) -> StdoutResult {
    let mut reader = BufReader::with_capacity(64 << 10, stdout);
    let mut line = Vec::new();
    let (mut ready, mut acks) = (None, Vec::new());
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| format!("reading the child's stdout: {e}"))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((ready, acks));
        }
        let text = String::from_utf8_lossy(&line);
        let fields: Vec<&str> = text.split_ascii_whitespace().collect();
        let bad = || format!("malformed line from the child: {:?}", text.trim_end());
        match fields.as_slice() {
            ["ack", lsn, writer, counter] => {
                acks.push(Ack {
                    lsn: lsn.parse().map_err(|_| bad())?,
                    writer: writer.parse().map_err(|_| bad())?,
                    counter: counter.parse().map_err(|_| bad())?,
                });
                acks_seen.store(acks.len(), Ordering::Relaxed);
            }
            ["ready", next, torn, damage] => {
                let r = Ready {
                    next_lsn: next.parse().map_err(|_| bad())?,
                    torn_tail_bytes: torn.parse().map_err(|_| bad())?,
                    damage: damage.parse().map_err(|_| bad())?,
                };
                ready = Some(r);
                let _ = ready_tx.send(r);
            }
            ["ack", ..] | ["ready", ..] => return Err(bad()),
            _ => {}
        }
    }
}

fn read_child_stderr(mut stderr: ChildStderr) -> String {
    let mut kept = Vec::new();
    let _ = (&mut stderr).take(STDERR_KEEP_BYTES).read_to_end(&mut kept);
    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    String::from_utf8_lossy(&kept).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Checking the log after a kill.

/// Reopens the log and checks it against `history`; returns the size of the torn tail cut.
fn check_log(dir: &Path, history: &mut History) -> Result<u64, String> {
    let (wal, report) =
        Wal::<Rec>::open(config(dir)).map_err(|e| format!("reopening the log after the kill failed: {e}"))?;
    if !report.damage.is_empty() {
        return Err(format!("reopening found damage other than a torn tail: {report:?}"));
    }
    if report.torn_tail_bytes > 0 && report.quarantined == history.quarantined {
        history.torn_tails_not_quarantined += 1;
    }
    history.quarantined = report.quarantined;
    let last = read_and_check_all(&wal, history)?;
    if report.first_lsn != 1 || report.next_lsn != last + 1 {
        return Err(format!(
            "open reported LSNs {}..{} but the log reads 1..={last}: {report:?}",
            report.first_lsn, report.next_lsn
        ));
    }
    let verify = wal.verify().map_err(|e| format!("verify failed: {e}"))?;
    let ends = if last == 0 { (None, None) } else { (Some(1), Some(last)) };
    if !verify.is_clean() || verify.records != last || (verify.first_lsn, verify.last_lsn) != ends {
        return Err(format!(
            "verify is not clean or disagrees with the read of 1..={last}: {verify:?}"
        ));
    }
    let stats = wal.stats();
    if (stats.first_lsn, stats.durable_lsn, stats.next_lsn) != (1, last, last + 1) {
        return Err(format!("stats disagree with the read of 1..={last}: {stats:?}"));
    }
    Ok(report.torn_tail_bytes)
}

/// Reads the whole log. LSNs must run 1, 2, 3, … without a gap; every record must be intact
/// (its payload the one its `(writer, counter)` names, its CRC field that payload's) and
/// unique; every record an earlier check found must still be there; every acknowledged record
/// must be at its LSN. Returns the last LSN.
fn read_and_check_all(wal: &Wal<Rec>, history: &mut History) -> Result<Lsn, String> {
    let mut seen = HashSet::with_capacity(history.log.len() + 4096);
    let mut log: Vec<Entry> = Vec::with_capacity(history.log.len() + 4096);
    for item in wal.read_from(1) {
        let due = log.len() as Lsn + 1;
        let (lsn, rec) = item.map_err(|e| format!("reading LSN {due} failed: {e}"))?;
        if lsn != due {
            return Err(format!(
                "the read yielded LSN {lsn} where LSN {due} was due (a gap or reorder)"
            ));
        }
        let id = (rec.writer, rec.counter);
        if rec.writer >= WRITERS || rec.payload.0 != payload(rec.writer, rec.counter) {
            return Err(format!("LSN {lsn} holds a damaged record: {rec:?}"));
        }
        // The CRC of a record already checked is known; only new records are hashed.
        let crc = match history.log.get(log.len()) {
            Some(&(w, c, crc)) if (w, c) == id => crc,
            Some(&(w, c, _)) => {
                return Err(format!(
                    "LSN {lsn} held (writer {w}, counter {c}) at the last check and now {id:?}"
                ));
            }
            None => crc32fast::hash(&rec.payload.0),
        };
        if rec.crc != crc {
            return Err(format!(
                "LSN {lsn} holds a wrong CRC field {:#x}, not {crc:#x}: {rec:?}",
                rec.crc
            ));
        }
        if !seen.insert(id) {
            return Err(format!(
                "LSN {lsn} repeats (writer {}, counter {}), found at an earlier LSN too",
                id.0, id.1
            ));
        }
        if let Some(&acked) = history.acks.get(&lsn)
            && acked != id
        {
            return Err(format!("LSN {lsn} was acknowledged for {acked:?} but holds {id:?}"));
        }
        log.push((id.0, id.1, crc));
    }
    let last = log.len() as Lsn;
    if log.len() < history.log.len() {
        return Err(format!(
            "the log shrank: it held LSNs 1..={} at the last check, now 1..={last}",
            history.log.len()
        ));
    }
    if let Some((&lsn, id)) = history.acks.range(last + 1..).next() {
        return Err(format!(
            "acknowledged LSN {lsn} {id:?} is missing: the log ends at LSN {last} ({} acknowledged \
             LSNs past its end)",
            history.acks.range(last + 1..).count()
        ));
    }
    history.log = log;
    Ok(last)
}

// ---------------------------------------------------------------------------------------------
// Environment.

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

/// A directory on a real disk: the system temp dir, unless that is tmpfs.
fn data_base_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if is_tmpfs(&tmp) {
        println!(
            "{} is tmpfs; using {} instead",
            tmp.display(),
            env!("CARGO_TARGET_TMPDIR")
        );
        return PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    }
    tmp
}

#[cfg(target_os = "linux")]
fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c_path` is NUL-terminated and `st` points to a writable, zeroed `statfs`.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), st.as_mut_ptr()) };
    // SAFETY: zeroed is a valid `statfs` (plain integers), filled in when statfs returned 0.
    let st = unsafe { st.assume_init() };
    // The casts are no-ops on x86_64 glibc, not on every target libc supports.
    #[allow(clippy::unnecessary_cast)]
    let tmpfs = st.f_type as i64 == libc::TMPFS_MAGIC as i64;
    rc == 0 && tmpfs
}

#[cfg(not(target_os = "linux"))]
fn is_tmpfs(_path: &Path) -> bool {
    false
}

fn log_size(dir: &Path) -> (usize, u64) {
    let Ok(entries) = std::fs::read_dir(dir.join("wal")) else {
        return (0, 0);
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .fold((0, 0), |(n, bytes), m| (n + 1, bytes + m.len()))
}
