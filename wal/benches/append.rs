//! WAL append throughput and latency, against the raw group-commit ceiling and against sled as
//! the log, in one run on the same disk.
//!
//! `cargo bench -p coreq-wal --bench append`
//!
//! For each number of concurrent appenders (OS threads, each looping: append ONE 256-byte
//! record, wait until it is durable) and each run, three targets are measured one after the
//! other, each for a fixed time:
//!
//! - `coreq`: `Wal::<Vec<u8>>::append(&[record])` (our own segment files, group commit).
//! - `raw`: the ideal group commit. Appenders push the record bytes into a shared buffer; one
//!   writer thread swaps the buffer out, `write`s it to a plain file and `fdatasync`s it, then
//!   publishes the group number with one futex wake-all; the woken check an atomic, with no
//!   mutex to fight over. No framing, no encoding, no checksum.
//! - `sled-log`: sled 0.34.7 as the log. Each appender does `tree.insert(lsn_be, value)`, then
//!   waits until a flush that started after its insert has completed; one flusher thread calls
//!   `db.flush()` and then `fdatasync` on `<dir>/db` through its own handle. Never `flush_async`.
//!
//! Every append's latency (submit to durable) is recorded; the table shows the median over runs
//! of appends/s, p50 and p99.
//!
//! Environment (all optional):
//! - `COREQ_BENCH_SECS` measured seconds per point (default 3)
//! - `COREQ_BENCH_RUNS` runs per point; the median is reported (default 3)
//! - `COREQ_BENCH_WARMUP_MS` unmeasured warm-up per point (default 300)
//! - `COREQ_BENCH_APPENDERS` comma-separated appender counts (default `1,8,64,512`)
//! - `COREQ_BENCH_TARGETS` comma-separated subset of `coreq,raw,sled` (default all)
//! - `COREQ_BENCH_DIR` where the temporary files go (default: the cargo target directory; never
//!   `/tmp`, which may be tmpfs). A tmpfs directory is refused.
//!
//! Bounds: each point runs for warm-up + duration; a watchdog aborts the process if a point has
//! not finished 60 s after that. At most `MAX_SAMPLES_PER_POINT` latencies are kept per point.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Barrier, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use coreq_wal::{Wal, WalConfig};

/// Size of every appended record (the payload; coreq adds its frame and postcard length).
const RECORD_BYTES: usize = 256;
/// Latency samples kept per point, over all appenders (8 bytes each).
const MAX_SAMPLES_PER_POINT: usize = 8 << 20;
/// Stack of each appender thread; they only loop over one call.
const APPENDER_STACK: usize = 256 << 10;
/// Extra time a point may take beyond warm-up + duration before the watchdog aborts.
const WATCHDOG_GRACE: Duration = Duration::from_secs(60);

const PHASE_WARMUP: u8 = 0;
const PHASE_MEASURE: u8 = 1;
const PHASE_STOP: u8 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Coreq,
    Raw,
    Sled,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Coreq, Kind::Raw, Kind::Sled];

    fn name(self) -> &'static str {
        match self {
            Kind::Coreq => "coreq",
            Kind::Raw => "raw",
            Kind::Sled => "sled",
        }
    }

    fn open(self, dir: &Path) -> Box<dyn Target> {
        match self {
            Kind::Coreq => Box::new(CoreqLog::open(dir)),
            Kind::Raw => Box::new(RawLog::open(dir)),
            Kind::Sled => Box::new(SledLog::open(dir)),
        }
    }
}

/// Something appenders append to, one record at a time, waiting for durability.
trait Target: Send + Sync {
    /// Appends the one record in `one` and returns once it is durable.
    fn append(&self, one: &[Vec<u8>]);
    /// Durability syncs (fdatasync) issued so far.
    fn syncs(&self) -> u64;
    /// Drains and stops background threads.
    fn close(&self);
}

// ---------------------------------------------------------------------------------------------
// coreq-wal

struct CoreqLog {
    wal: Wal<Vec<u8>>,
}

impl CoreqLog {
    fn open(dir: &Path) -> CoreqLog {
        let (wal, _) = Wal::open(WalConfig::new(dir.join("wal"), dir.join("quarantine"))).expect("open coreq wal");
        CoreqLog { wal }
    }
}

impl Target for CoreqLog {
    fn append(&self, one: &[Vec<u8>]) {
        self.wal.append(one).expect("coreq append");
    }

    fn syncs(&self) -> u64 {
        self.wal.stats().fsyncs
    }

    fn close(&self) {
        self.wal.close();
    }
}

// ---------------------------------------------------------------------------------------------
// Waking the appenders of a group: the ideal. A counter published with one futex wake-all; the
// woken only read an atomic, so they do not fight over a mutex on their way out.

/// A monotonic counter ("highest durable group") that threads can sleep on.
struct Progress {
    value: AtomicU64,
    /// Bumped on every publish; the futex word sleepers wait on.
    word: AtomicU32,
}

impl Progress {
    fn new() -> Progress {
        Progress {
            value: AtomicU64::new(0),
            word: AtomicU32::new(0),
        }
    }

    /// Sleeps until the counter is at least `target`.
    fn wait_for(&self, target: u64) {
        loop {
            let seen = self.word.load(Ordering::Acquire);
            if self.value.load(Ordering::Acquire) >= target {
                return;
            }
            futex::wait(&self.word, seen);
        }
    }

    fn publish(&self, value: u64) {
        self.value.store(value, Ordering::Release);
        self.word.fetch_add(1, Ordering::Release);
        futex::wake_all(&self.word);
    }
}

#[cfg(target_os = "linux")]
mod futex {
    use std::sync::atomic::AtomicU32;

    /// Sleeps while `word` holds `expected` (returns at once if it does not; may return early).
    pub fn wait(word: &AtomicU32, expected: u32) {
        // SAFETY: FUTEX_WAIT on a valid, aligned u32 that outlives the call; no timeout.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                expected,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }

    pub fn wake_all(word: &AtomicU32) {
        // SAFETY: FUTEX_WAKE on a valid, aligned u32; wakes every sleeper, touches no memory.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod futex {
    //! Portable stand-in: poll. Numbers from other systems are not comparable with Linux ones.
    use std::sync::atomic::{AtomicU32, Ordering};

    pub fn wait(word: &AtomicU32, expected: u32) {
        while word.load(Ordering::Acquire) == expected {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }

    pub fn wake_all(_word: &AtomicU32) {}
}

// ---------------------------------------------------------------------------------------------
// The ceiling: a plain file, one fdatasync per group, no framing.

struct RawQueue {
    buf: Vec<u8>,
    /// Number of the group now being filled; groups are numbered from 1.
    group: u64,
    writer_idle: bool,
    stop: bool,
}

struct RawShared {
    queue: Mutex<RawQueue>,
    work: Condvar,
    /// Highest group written and fdatasynced.
    durable: Progress,
    syncs: AtomicU64,
}

impl RawShared {
    fn lock(&self) -> MutexGuard<'_, RawQueue> {
        self.queue.lock().expect("raw queue lock")
    }
}

struct RawLog {
    shared: Arc<RawShared>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl RawLog {
    fn open(dir: &Path) -> RawLog {
        fs::create_dir_all(dir).expect("create raw dir");
        let path = dir.join("raw.log");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open raw file");
        // Make the new file's name durable, as coreq does for a new segment.
        File::open(dir).and_then(|d| d.sync_all()).expect("fsync raw dir");
        let shared = Arc::new(RawShared {
            queue: Mutex::new(RawQueue {
                buf: Vec::new(),
                group: 1,
                writer_idle: false,
                stop: false,
            }),
            work: Condvar::new(),
            durable: Progress::new(),
            syncs: AtomicU64::new(0),
        });
        let writer_shared = shared.clone();
        let writer = thread::Builder::new()
            .name("raw-writer".into())
            .spawn(move || raw_writer(&writer_shared, file))
            .expect("spawn raw writer");
        RawLog {
            shared,
            writer: Mutex::new(Some(writer)),
        }
    }
}

fn raw_writer(shared: &RawShared, mut file: File) {
    let mut spare_buf = Vec::new();
    loop {
        let (bytes, group) = {
            let mut q = shared.lock();
            while q.buf.is_empty() {
                if q.stop {
                    return;
                }
                q.writer_idle = true;
                q = shared.work.wait(q).expect("raw queue lock");
                q.writer_idle = false;
            }
            let bytes = std::mem::replace(&mut q.buf, std::mem::take(&mut spare_buf));
            let group = q.group;
            q.group += 1;
            (bytes, group)
        };
        file.write_all(&bytes).expect("raw write");
        file.sync_data().expect("raw fdatasync");
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared.durable.publish(group);
        spare_buf = bytes;
        spare_buf.clear();
    }
}

impl Target for RawLog {
    fn append(&self, one: &[Vec<u8>]) {
        let shared = &*self.shared;
        let (group, wake) = {
            let mut q = shared.lock();
            for record in one {
                q.buf.extend_from_slice(record);
            }
            (q.group, q.writer_idle)
        };
        if wake {
            shared.work.notify_one();
        }
        shared.durable.wait_for(group);
    }

    fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(writer) = self.writer.lock().expect("raw writer handle").take() {
            writer.join().expect("raw writer panicked");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// sled 0.34.7 as the log: insert, then wait for a flush() + fdatasync that started after it.

struct FlushQueue {
    /// Appenders that inserted and wait for a flush to start.
    waiting: usize,
    /// Flushes started so far; the next one gets number `started + 1`.
    started: u64,
    flusher_idle: bool,
    stop: bool,
}

struct SledShared {
    db: sled::Db,
    next_lsn: AtomicU64,
    queue: Mutex<FlushQueue>,
    work: Condvar,
    /// Number of the last flush completed (flush() and fdatasync returned).
    completed: Progress,
    syncs: AtomicU64,
}

impl SledShared {
    fn lock(&self) -> MutexGuard<'_, FlushQueue> {
        self.queue.lock().expect("sled flush queue lock")
    }
}

struct SledLog {
    shared: Arc<SledShared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl SledLog {
    fn open(dir: &Path) -> SledLog {
        let path = dir.join("sled");
        let db = sled::Config::new()
            .path(&path)
            .flush_every_ms(Some(500))
            .cache_capacity(64 << 20)
            .open()
            .expect("open sled");
        let data = OpenOptions::new()
            .read(true)
            .open(path.join("db"))
            .expect("open sled's db file");
        let shared = Arc::new(SledShared {
            db,
            next_lsn: AtomicU64::new(1),
            queue: Mutex::new(FlushQueue {
                waiting: 0,
                started: 0,
                flusher_idle: false,
                stop: false,
            }),
            work: Condvar::new(),
            completed: Progress::new(),
            syncs: AtomicU64::new(0),
        });
        let flusher_shared = shared.clone();
        let flusher = thread::Builder::new()
            .name("sled-flusher".into())
            .spawn(move || sled_flusher(&flusher_shared, &data))
            .expect("spawn sled flusher");
        SledLog {
            shared,
            flusher: Mutex::new(Some(flusher)),
        }
    }
}

fn sled_flusher(shared: &SledShared, data: &File) {
    loop {
        let number = {
            let mut q = shared.lock();
            while q.waiting == 0 {
                if q.stop {
                    return;
                }
                q.flusher_idle = true;
                q = shared.work.wait(q).expect("sled flush queue lock");
                q.flusher_idle = false;
            }
            // Every waiter taken here inserted before this flush starts.
            q.started += 1;
            q.waiting = 0;
            q.started
        };
        shared.db.flush().expect("sled flush");
        data.sync_data().expect("fdatasync sled db");
        shared.syncs.fetch_add(1, Ordering::Relaxed);
        shared.completed.publish(number);
    }
}

impl Target for SledLog {
    fn append(&self, one: &[Vec<u8>]) {
        let shared = &*self.shared;
        for record in one {
            let lsn = shared.next_lsn.fetch_add(1, Ordering::Relaxed);
            shared
                .db
                .insert(lsn.to_be_bytes(), record.as_slice())
                .expect("sled insert");
        }
        let (ticket, wake) = {
            let mut q = shared.lock();
            q.waiting += 1;
            (q.started + 1, q.flusher_idle)
        };
        if wake {
            shared.work.notify_one();
        }
        shared.completed.wait_for(ticket);
    }

    fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    fn close(&self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_one();
        if let Some(flusher) = self.flusher.lock().expect("sled flusher handle").take() {
            flusher.join().expect("sled flusher panicked");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driving one point

/// What one measurement of one target at one concurrency produced.
struct Sample {
    appends: u64,
    elapsed: Duration,
    syncs: u64,
    /// CPU time (user + system) of the whole process during the window: less sensitive than
    /// appends/s to other tenants of a shared machine.
    cpu: Duration,
    /// Sorted latencies in nanoseconds (possibly capped, see `MAX_SAMPLES_PER_POINT`).
    latencies: Vec<u64>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.appends as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        // Nearest rank.
        let rank = ((p / 100.0) * self.latencies.len() as f64).ceil() as usize;
        Duration::from_nanos(self.latencies[rank.clamp(1, self.latencies.len()) - 1])
    }

    fn cpu_us_per_append(&self) -> f64 {
        if self.appends == 0 {
            0.0
        } else {
            self.cpu.as_secs_f64() * 1e6 / self.appends as f64
        }
    }

    fn per_sync(&self) -> f64 {
        if self.syncs == 0 {
            0.0
        } else {
            self.appends as f64 / self.syncs as f64
        }
    }
}

fn measure(target: Arc<dyn Target>, appenders: usize, warmup: Duration, duration: Duration) -> Sample {
    let phase = Arc::new(AtomicU8::new(PHASE_WARMUP));
    let ready = Arc::new(Barrier::new(appenders + 1));
    let cap = (MAX_SAMPLES_PER_POINT / appenders).max(1);
    let threads: Vec<JoinHandle<(u64, Vec<u64>)>> = (0..appenders)
        .map(|i| {
            let target = target.clone();
            let phase = phase.clone();
            let ready = ready.clone();
            thread::Builder::new()
                .name(format!("appender-{i}"))
                .stack_size(APPENDER_STACK)
                .spawn(move || {
                    let one = [vec![(i % 251) as u8; RECORD_BYTES]];
                    let mut latencies = Vec::with_capacity(cap.min(1 << 16));
                    let mut appends = 0u64;
                    ready.wait();
                    loop {
                        if phase.load(Ordering::Relaxed) == PHASE_STOP {
                            break;
                        }
                        let start = Instant::now();
                        target.append(&one);
                        let took = start.elapsed();
                        // Counted when it completes inside the measured window.
                        if phase.load(Ordering::Relaxed) == PHASE_MEASURE {
                            appends += 1;
                            if latencies.len() < cap {
                                latencies.push(took.as_nanos() as u64);
                            }
                        }
                    }
                    (appends, latencies)
                })
                .expect("spawn appender")
        })
        .collect();
    ready.wait();
    thread::sleep(warmup);
    let syncs_before = target.syncs();
    let cpu_before = process_cpu();
    let started = Instant::now();
    phase.store(PHASE_MEASURE, Ordering::Relaxed);
    thread::sleep(duration);
    phase.store(PHASE_STOP, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let syncs = target.syncs() - syncs_before;
    let mut appends = 0;
    let mut latencies = Vec::new();
    for t in threads {
        let (n, lat) = t.join().expect("appender panicked");
        appends += n;
        latencies.extend_from_slice(&lat);
    }
    latencies.sort_unstable();
    Sample {
        appends,
        elapsed,
        syncs,
        cpu,
        latencies,
    }
}

/// User + system CPU time of this process so far.
fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `f`, aborting the whole process if it takes longer than `limit`.
fn with_watchdog<T>(limit: Duration, what: String, f: impl FnOnce() -> T) -> T {
    let (done, wait) = mpsc::channel::<()>();
    let dog = thread::spawn(move || {
        if let Err(RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("append bench: {what} did not finish within {limit:?}; aborting");
            std::process::exit(2);
        }
    });
    let out = f();
    drop(done);
    dog.join().expect("watchdog");
    out
}

fn run_point(kind: Kind, appenders: usize, run: usize, settings: &Settings) -> Sample {
    let dir = settings.dir.join(format!("{}-{appenders}-{run}", kind.name()));
    let limit = settings.warmup + settings.duration + WATCHDOG_GRACE;
    let what = format!("{} with {appenders} appenders (run {run})", kind.name());
    let sample = with_watchdog(limit, what, || {
        let target: Arc<dyn Target> = Arc::from(kind.open(&dir));
        let sample = measure(target.clone(), appenders, settings.warmup, settings.duration);
        target.close();
        sample
    });
    fs::remove_dir_all(&dir).expect("remove point dir");
    sample
}

// ---------------------------------------------------------------------------------------------
// Settings, machine, report

struct Settings {
    duration: Duration,
    warmup: Duration,
    runs: usize,
    appenders: Vec<usize>,
    kinds: Vec<Kind>,
    dir: PathBuf,
    _tempdir: tempfile::TempDir,
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} does not parse")),
        Err(_) => default,
    }
}

fn env_list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

impl Settings {
    fn from_env() -> Settings {
        let secs: f64 = env_or("COREQ_BENCH_SECS", 3.0);
        assert!(secs > 0.0 && secs <= 600.0, "COREQ_BENCH_SECS must be in (0, 600]");
        let runs: usize = env_or("COREQ_BENCH_RUNS", 3);
        assert!((1..=50).contains(&runs), "COREQ_BENCH_RUNS must be in 1..=50");
        let warmup_ms: u64 = env_or("COREQ_BENCH_WARMUP_MS", 300);
        let appenders: Vec<usize> = env_list("COREQ_BENCH_APPENDERS")
            .map(|l| {
                l.iter()
                    .map(|s| s.parse().expect("COREQ_BENCH_APPENDERS: numbers"))
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 8, 64, 512]);
        assert!(
            appenders.iter().all(|&n| (1..=4096).contains(&n)),
            "appenders must be in 1..=4096"
        );
        let kinds: Vec<Kind> = env_list("COREQ_BENCH_TARGETS")
            .map(|l| {
                l.iter()
                    .map(|s| {
                        *Kind::ALL
                            .iter()
                            .find(|k| k.name() == s)
                            .unwrap_or_else(|| panic!("unknown target {s:?}"))
                    })
                    .collect()
            })
            .unwrap_or_else(|| Kind::ALL.to_vec());
        let base = match std::env::var_os("COREQ_BENCH_DIR") {
            Some(d) => PathBuf::from(d),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target"))
                .join("coreq-bench"),
        };
        fs::create_dir_all(&base).expect("create bench base dir");
        let tempdir = tempfile::Builder::new()
            .prefix("append-")
            .tempdir_in(&base)
            .expect("bench temp dir");
        Settings {
            duration: Duration::from_secs_f64(secs),
            warmup: Duration::from_millis(warmup_ms),
            runs,
            appenders,
            kinds,
            dir: tempdir.path().to_path_buf(),
            _tempdir: tempdir,
        }
    }
}

struct Mount {
    device: String,
    point: PathBuf,
    fstype: String,
}

/// The mount holding `dir`, from /proc/self/mounts (longest matching mount point).
fn mount_of(dir: &Path) -> Option<Mount> {
    let dir = fs::canonicalize(dir).ok()?;
    let table = fs::read_to_string("/proc/self/mounts").ok()?;
    table
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let device = f.next()?.to_string();
            let point = PathBuf::from(f.next()?.replace("\\040", " "));
            let fstype = f.next()?.to_string();
            Some(Mount { device, point, fstype })
        })
        .filter(|m| dir.starts_with(&m.point))
        .max_by_key(|m| m.point.components().count())
}

fn first_line_with(path: &str, prefix: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The 1-minute load average: this machine is shared, so every line says how busy it was.
fn load1() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn print_machine(settings: &Settings) {
    let nproc = thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = first_line_with("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown".into());
    let mount = mount_of(&settings.dir);
    let (fstype, device, point) = match &mount {
        Some(m) => (m.fstype.as_str(), m.device.as_str(), m.point.display().to_string()),
        None => ("unknown", "unknown", String::new()),
    };
    println!("# coreq-wal append bench");
    println!(
        "machine: nproc {nproc}, cpu {cpu}, kernel {kernel}, load average (1 min) {}",
        load1()
    );
    println!(
        "bench dir: {} (filesystem {fstype} on {device}, mounted at {point})",
        settings.dir.display()
    );
    println!(
        "settings: {} s per point after {} ms warm-up, {} run(s), median reported; {}-byte records, one per append",
        settings.duration.as_secs_f64(),
        settings.warmup.as_millis(),
        settings.runs,
        RECORD_BYTES
    );
    if matches!(fstype, "tmpfs" | "ramfs") {
        eprintln!(
            "append bench: {} is on {fstype}; fdatasync is free there. Set COREQ_BENCH_DIR.",
            settings.dir.display()
        );
        std::process::exit(2);
    }
}

/// Median of the runs, per figure.
#[derive(Clone, Copy, Default)]
struct Summary {
    rate: f64,
    p50: Duration,
    p99: Duration,
    per_sync: f64,
    syncs_per_s: f64,
    cpu_us: f64,
}

fn median_f64(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summarize(samples: &[Sample]) -> Summary {
    let of = |f: &dyn Fn(&Sample) -> f64| median_f64(samples.iter().map(f).collect());
    Summary {
        rate: of(&|s| s.rate()),
        p50: Duration::from_secs_f64(of(&|s| s.percentile(50.0).as_secs_f64())),
        p99: Duration::from_secs_f64(of(&|s| s.percentile(99.0).as_secs_f64())),
        per_sync: of(&|s| s.per_sync()),
        syncs_per_s: of(&|s| s.syncs as f64 / s.elapsed.as_secs_f64()),
        cpu_us: of(&|s| s.cpu_us_per_append()),
    }
}

struct Ms(Duration);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.2}", self.0.as_secs_f64() * 1e3)
    }
}

fn ratio(a: Option<&Summary>, b: Option<&Summary>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.rate > 0.0 => format!("{:.2}", a.rate / b.rate),
        _ => "-".into(),
    }
}

fn cell(s: Option<&Summary>) -> String {
    match s {
        Some(s) => format!("{:.0} | {} | {}", s.rate, Ms(s.p50), Ms(s.p99)),
        None => "- | - | -".into(),
    }
}

fn main() {
    let settings = Settings::from_env();
    print_machine(&settings);
    let started = Instant::now();

    // samples[point][kind] = one Sample per run. Runs are interleaved (run 1 of every point,
    // then run 2, ...) and the targets alternate within a point, so that a noisy stretch on this
    // shared machine does not land on one target or one point only.
    let mut samples: Vec<Vec<Vec<Sample>>> = settings
        .appenders
        .iter()
        .map(|_| settings.kinds.iter().map(|_| Vec::new()).collect())
        .collect();
    println!();
    println!("run | appenders | target | appends/s | p50 ms | p99 ms | appends/fsync | cpu us/append | load1 after");
    for run in 1..=settings.runs {
        for (pi, &n) in settings.appenders.iter().enumerate() {
            for (ki, &kind) in settings.kinds.iter().enumerate() {
                let s = run_point(kind, n, run, &settings);
                println!(
                    "{run} | {n} | {} | {:.0} | {} | {} | {:.1} | {:.1} | {}",
                    kind.name(),
                    s.rate(),
                    Ms(s.percentile(50.0)),
                    Ms(s.percentile(99.0)),
                    s.per_sync(),
                    s.cpu_us_per_append(),
                    load1()
                );
                samples[pi][ki].push(s);
            }
        }
    }

    let find = |pi: usize, kind: Kind| -> Option<Summary> {
        let ki = settings.kinds.iter().position(|&k| k == kind)?;
        Some(summarize(&samples[pi][ki]))
    };
    println!();
    println!(
        "## median of {} run(s), {} s each (latencies in ms)",
        settings.runs,
        settings.duration.as_secs_f64()
    );
    println!();
    println!(
        "| appenders | coreq appends/s | p50 | p99 | raw appends/s | p50 | p99 | sled-log appends/s | p50 | p99 | coreq/raw | sled/raw |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (pi, &n) in settings.appenders.iter().enumerate() {
        let (c, r, s) = (find(pi, Kind::Coreq), find(pi, Kind::Raw), find(pi, Kind::Sled));
        println!(
            "| {n} | {} | {} | {} | {} | {} |",
            cell(c.as_ref()),
            cell(r.as_ref()),
            cell(s.as_ref()),
            ratio(c.as_ref(), r.as_ref()),
            ratio(s.as_ref(), r.as_ref())
        );
    }
    println!();
    println!("## group commit: appends per fdatasync, fdatasyncs/s, process CPU us per append (medians)");
    println!();
    println!(
        "| appenders | coreq appends/sync | syncs/s | cpu us | raw appends/sync | syncs/s | cpu us | sled-log appends/sync | syncs/s | cpu us |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (pi, &n) in settings.appenders.iter().enumerate() {
        let row: Vec<String> = Kind::ALL
            .iter()
            .map(|&k| match find(pi, k) {
                Some(s) => format!("{:.1} | {:.0} | {:.1}", s.per_sync, s.syncs_per_s, s.cpu_us),
                None => "- | - | -".into(),
            })
            .collect();
        println!("| {n} | {} |", row.join(" | "));
    }
    println!();
    println!("## per-run ratios of appends/s (same run, same point, measured back to back): min / median / max");
    println!();
    println!("| appenders | coreq/raw | sled/raw |");
    println!("|---:|---:|---:|");
    let per_run = |pi: usize, kind: Kind| -> String {
        let (Some(ki), Some(ri)) = (
            settings.kinds.iter().position(|&k| k == kind),
            settings.kinds.iter().position(|&k| k == Kind::Raw),
        ) else {
            return "-".into();
        };
        let mut r: Vec<f64> = samples[pi][ki]
            .iter()
            .zip(&samples[pi][ri])
            .map(|(a, b)| a.rate() / b.rate().max(1e-9))
            .collect();
        r.sort_by(|a, b| a.total_cmp(b));
        format!("{:.2} / {:.2} / {:.2}", r[0], median_f64(r.clone()), r[r.len() - 1])
    };
    for (pi, &n) in settings.appenders.iter().enumerate() {
        println!("| {n} | {} | {} |", per_run(pi, Kind::Coreq), per_run(pi, Kind::Sled));
    }
    println!();
    println!(
        "total time {:.0} s, load average (1 min) at the end {}",
        started.elapsed().as_secs_f64(),
        load1()
    );
}
