//! The replicator: mirrors committed state into PostgreSQL or MySQL/MariaDB (spec §10).
//!
//! It tails the WAL from the mirrored LSN and applies records in LSN order, a batch at a time.
//! Each batch and the new mirrored LSN are written in one SQL transaction, so a batch takes
//! effect exactly once even if the connection, the database or coreq dies half-way: the next
//! attempt reads the position back and starts after it. It runs beside the service and never
//! holds up an acknowledgement; while the database is away it retries with a linear backoff,
//! the WAL keeps the records (truncation stops at the local `mirror` cursor, written only
//! after the database confirmed a position), and it catches up when the database returns.
//!
//! Only this module knows SQL. Engine-specific statements live in `postgres.rs` and
//! `mysql.rs`; what a run of records does to the rows (`rows.rs`), the loop, the checks and
//! `mirror verify` (`verify.rs`) are shared.
//!
//! Invariants:
//! - The database's position is the truth; the local `mirror` cursor only lags it.
//! - The position carries the data directory's `origin` id: a mirror written from another
//!   data directory is refused, never overwritten.
//! - When the WAL no longer holds the records after the position (the mirror was added to an
//!   existing data directory, or the tables were emptied), the mirror is rebuilt from the local
//!   state in one transaction, at a position every record up to which the state reflects.

mod decode;
mod mysql;
mod postgres;
pub mod rows;
mod schema;
pub mod verify;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coreq_storage::{Change, StorageError, Store};
use coreq_wal::{Lsn, Reader, WalError};
use tokio::sync::watch;

use crate::config::{DatabaseConfig, DbEngine};
use rows::{Batch, Folder, MirrorState, sql_int};
use schema::Dialect;

/// The store cursor holding the last position the database confirmed: the WAL keeps every
/// record after it.
pub const MIRROR_CURSOR: &str = "mirror";
/// The store cursor holding this data directory's origin id.
const ORIGIN_CURSOR: &str = "mirror.origin";

/// Gauge: the last WAL record the mirror database confirmed.
pub const MIRRORED_LSN: &str = "coreq_mirror_lsn";
/// Gauge: WAL records not yet mirrored.
pub const LAG_RECORDS: &str = "coreq_mirror_lag_records";
/// Gauge: age of the oldest record not yet mirrored.
pub const LAG_SECONDS: &str = "coreq_mirror_lag_seconds";
/// Histogram: seconds to apply one batch (its SQL transaction, commit included).
pub const APPLY_SECONDS: &str = "coreq_mirror_apply_duration_seconds";
/// Counter: WAL records applied to the mirror.
pub const RECORDS_APPLIED: &str = "coreq_mirror_records_total";
/// Counter: failed mirror sessions (connection, statement, schema or position errors).
pub const ERRORS: &str = "coreq_mirror_errors_total";

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("wal: {0}")]
    Wal(#[from] WalError),
    #[error("the mirror's position moved away from lsn {expected} (another writer?)")]
    Moved { expected: i64 },
    #[error(
        "the mirror tables belong to another data directory (origin {found}, ours {ours}); use another WA_DB_NAME_PREFIX or drop the tables"
    )]
    Foreign { found: i64, ours: i64 },
    #[error("the WAL has no record {expected} (next found: {found}); the mirror will be rebuilt")]
    Gap { expected: Lsn, found: Lsn },
    #[error("{0} timed out after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}")]
    Task(String),
}

/// How the replicator talks to the database. Defaults in [`MirrorTuning::default`].
#[derive(Debug, Clone)]
pub struct MirrorTuning {
    /// Most WAL records per SQL transaction.
    pub batch_records: usize,
    /// The n-th consecutive failure waits n times this before reconnecting…
    pub backoff: Duration,
    /// …but never longer than this.
    pub max_backoff: Duration,
    /// Connecting (or taking a pooled connection) gives up after this.
    pub connect_timeout: Duration,
    /// One statement, and one whole batch, give up after this.
    pub statement_timeout: Duration,
    /// Pooled connections idle this long are closed.
    pub idle_timeout: Duration,
    /// The replicator uses one connection; the second serves `mirror verify` reads.
    pub pool_size: u32,
}

impl Default for MirrorTuning {
    fn default() -> MirrorTuning {
        MirrorTuning {
            batch_records: 4096,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            pool_size: 2,
        }
    }
}

/// Where the mirror stands, as the database records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    /// The data directory the mirror was written from.
    pub origin: i64,
    /// The last WAL record applied.
    pub lsn: i64,
}

/// The mirror database, one engine or the other.
enum Mirror {
    Postgres(postgres::PgMirror),
    Mysql(mysql::MySqlMirror),
}

/// Forwards a call to the engine's own implementation.
macro_rules! on_engine {
    ($mirror:expr, $m:ident => $call:expr) => {
        match $mirror {
            Mirror::Postgres($m) => $call,
            Mirror::Mysql($m) => $call,
        }
    };
}

impl Mirror {
    async fn connect(db: &DatabaseConfig, tuning: &MirrorTuning) -> Result<Mirror, MirrorError> {
        let connecting = async {
            Ok(match db.engine {
                DbEngine::Postgres => {
                    Mirror::Postgres(postgres::PgMirror::connect(&db.url, &db.name_prefix, tuning).await?)
                }
                DbEngine::Mysql => Mirror::Mysql(mysql::MySqlMirror::connect(&db.url, &db.name_prefix, tuning).await?),
            })
        };
        within(tuning.connect_timeout, "connecting", connecting).await
    }

    async fn server_version(&self) -> Result<String, MirrorError> {
        on_engine!(self, m => m.server_version().await)
    }

    async fn migrate(&self) -> Result<(), MirrorError> {
        on_engine!(self, m => m.migrate().await)
    }

    async fn position(&self) -> Result<Option<Position>, MirrorError> {
        on_engine!(self, m => m.position().await)
    }

    async fn apply(&self, batch: &Batch, at: Position, to: i64) -> Result<(), MirrorError> {
        on_engine!(self, m => m.apply(batch, at, to, now_ms()).await)
    }

    async fn replace_all(&self, batch: &Batch, at: Position) -> Result<(), MirrorError> {
        on_engine!(self, m => m.replace_all(batch, at, now_ms()).await)
    }

    async fn correct(&self, batch: &Batch) -> Result<(), MirrorError> {
        on_engine!(self, m => m.correct(batch).await)
    }

    async fn attempts_below(&self, below: i64) -> Result<Vec<(i64, rows::AttemptsRow)>, MirrorError> {
        on_engine!(self, m => m.attempts_below(below).await)
    }

    async fn read_state(&self) -> Result<MirrorState, MirrorError> {
        on_engine!(self, m => m.read_state().await)
    }

    async fn close(&self) {
        on_engine!(self, m => m.close().await)
    }
}

fn dialect(engine: DbEngine) -> Dialect {
    match engine {
        DbEngine::Postgres => Dialect::Postgres,
        DbEngine::Mysql => Dialect::Mysql,
    }
}

/// What `/v1/support` and the metrics show about the mirror.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicationStatus {
    /// `PGSQL` or `MYSQL`.
    pub engine: &'static str,
    /// The database URL with credentials masked.
    pub target: String,
    /// The server's name and version, once connected.
    pub server: Option<String>,
    /// The mirror schema version, once migrated.
    pub schema_version: Option<i64>,
    pub connected: bool,
    /// The last position the database confirmed (the local cursor until it answers).
    pub mirrored_lsn: Option<Lsn>,
    pub lag_records: u64,
    pub lag_seconds: f64,
    pub last_error: Option<String>,
}

/// The running replicator, as the rest of coreq sees it. Cheap to clone.
#[derive(Clone)]
pub struct Replicator {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    db: DatabaseConfig,
    tuning: MirrorTuning,
    target: String,
    progress: Mutex<Progress>,
}

#[derive(Default)]
struct Progress {
    server: Option<String>,
    schema_version: Option<i64>,
    connected: bool,
    mirrored: Option<Lsn>,
    last_error: Option<String>,
    lag: LagClock,
}

impl Replicator {
    /// Starts replicating `store` into `db` until `stop` turns true. Never fails: a database
    /// that cannot be reached shows as `last_error` and is retried.
    pub fn start(
        store: Store,
        db: DatabaseConfig,
        tuning: MirrorTuning,
        stop: watch::Receiver<bool>,
    ) -> (Replicator, tokio::task::JoinHandle<()>) {
        let replicator = Replicator::new(store, db, tuning);
        tokio::spawn(replicator.clone().sample_lag(stop.clone()));
        let task = tokio::spawn(replicator.clone().run(stop));
        (replicator, task)
    }

    fn new(store: Store, db: DatabaseConfig, tuning: MirrorTuning) -> Replicator {
        let mirrored = store.cursor(MIRROR_CURSOR).ok().flatten();
        Replicator {
            shared: Arc::new(Shared {
                target: crate::config::masked_url(&db.url).unwrap_or_else(|| "****".into()),
                store,
                db,
                tuning,
                progress: Mutex::new(Progress {
                    mirrored,
                    ..Progress::default()
                }),
            }),
        }
    }

    /// The `db_engine` value of `/v1/support`.
    pub fn engine(&self) -> &'static str {
        match self.shared.db.engine {
            DbEngine::Postgres => "PGSQL",
            DbEngine::Mysql => "MYSQL",
        }
    }

    /// The schema version shipped for this engine (reported once applied).
    pub fn shipped_schema_version(&self) -> i64 {
        schema::latest_version(dialect(self.shared.db.engine))
    }

    pub fn status(&self) -> ReplicationStatus {
        let durable = self.shared.store.durable_lsn();
        let mut progress = self.progress();
        progress.lag.observe(durable);
        let mirrored = progress.mirrored;
        ReplicationStatus {
            engine: self.engine(),
            target: self.shared.target.clone(),
            server: progress.server.clone(),
            schema_version: progress.schema_version,
            connected: progress.connected,
            mirrored_lsn: mirrored,
            lag_records: durable.saturating_sub(mirrored.unwrap_or(0)),
            lag_seconds: progress.lag.seconds_behind(mirrored.unwrap_or(0)),
            last_error: progress.last_error.clone(),
        }
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.shared.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut failures = 0u32;
        let mut reconciled = false;
        loop {
            let session = self.session(&mut failures, &mut reconciled, Until::Stopped);
            let outcome = tokio::select! {
                outcome = session => outcome,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let Err(e) = outcome else { return };
            failures += 1;
            self.failed(&e);
            let wait = self
                .shared
                .tuning
                .backoff
                .saturating_mul(failures)
                .min(self.shared.tuning.max_backoff);
            tokio::select! {
                () = self.wait_observing(wait) => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    fn failed(&self, e: &MirrorError) {
        tracing::warn!(error = %e, "mirror: session failed; retrying");
        metrics::counter!(ERRORS).increment(1);
        let mut progress = self.progress();
        progress.connected = false;
        progress.last_error = Some(e.to_string());
    }

    /// Sleeps `wait`, keeping the lag clock current meanwhile.
    async fn wait_observing(&self, wait: Duration) {
        let until = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < until {
            self.observe_lag();
            tokio::time::sleep_until(until.min(tokio::time::Instant::now() + Duration::from_millis(250))).await;
        }
    }

    /// Samples the durable LSN every 10 ms, whatever the replicator is doing (a slow batch
    /// would otherwise date the records that became durable meanwhile from its end).
    async fn sample_lag(self, mut stop: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.observe_lag(),
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
        }
    }

    /// Notes when the log's current end became durable (the lag clock's sample).
    fn observe_lag(&self) {
        let durable = self.shared.store.durable_lsn();
        self.progress().lag.observe(durable);
    }

    /// Connects, migrates, checks (or rebuilds) the position, then tails the WAL until
    /// `until` holds or something fails.
    async fn session(&self, failures: &mut u32, reconciled: &mut bool, until: Until) -> Result<Mirror, MirrorError> {
        let shared = &self.shared;
        let mirror = Mirror::connect(&shared.db, &shared.tuning).await?;
        let result = self.session_on(&mirror, failures, reconciled, until).await;
        match result {
            Ok(()) => Ok(mirror),
            Err(e) => {
                // Dropping the pool would close its connections in the background; close
                // them now, so a killed server-side session is not left for later.
                mirror.close().await;
                Err(e)
            }
        }
    }

    async fn session_on(
        &self,
        mirror: &Mirror,
        failures: &mut u32,
        reconciled: &mut bool,
        until: Until,
    ) -> Result<(), MirrorError> {
        let limit = self.shared.tuning.statement_timeout;
        let server = within(limit, "reading the server version", mirror.server_version()).await?;
        within(limit, "migrating the mirror schema", mirror.migrate()).await?;
        {
            let mut progress = self.progress();
            progress.server = Some(server);
            progress.schema_version = Some(self.shipped_schema_version());
        }
        let origin = self.origin().await?;
        let found = within(limit, "reading the mirror position", mirror.position()).await?;
        let position = match self.usable(found, origin)? {
            Some(position) => position,
            None => self.rebuild(mirror, origin).await?,
        };
        if !*reconciled {
            self.reconcile_callbacks(mirror).await?;
            *reconciled = true;
        }
        {
            let mut progress = self.progress();
            progress.connected = true;
            progress.mirrored = Some(position.lsn as Lsn);
            progress.last_error = None;
        }
        *failures = 0;
        self.tail(mirror, position, until).await
    }

    /// This data directory's origin id, made once and kept as a store cursor.
    async fn origin(&self) -> Result<i64, MirrorError> {
        let store = &self.shared.store;
        if let Some(origin) = store.cursor(ORIGIN_CURSOR)? {
            return Ok(sql_int(origin));
        }
        let origin = random_origin();
        store.set_cursor(ORIGIN_CURSOR, origin).await?;
        Ok(sql_int(origin))
    }

    /// The database's position if the WAL can continue from it; `None` if the mirror must be
    /// rebuilt (no position yet, records already truncated, or a mirror ahead of our log).
    fn usable(&self, found: Option<Position>, origin: i64) -> Result<Option<Position>, MirrorError> {
        let Some(found) = found else { return Ok(None) };
        if found.origin != origin {
            return Err(MirrorError::Foreign {
                found: found.origin,
                ours: origin,
            });
        }
        let store = &self.shared.store;
        let first = store.wal_stats().map_or(1, |w| w.first_lsn);
        let lsn = found.lsn.max(0) as Lsn;
        if lsn > store.durable_lsn() || lsn + 1 < first {
            tracing::warn!(
                mirrored = lsn,
                wal_first = first,
                "mirror: the WAL cannot continue the mirror; rebuilding it"
            );
            return Ok(None);
        }
        Ok(Some(found))
    }

    /// Writes the whole local state into the mirror, in one transaction.
    async fn rebuild(&self, mirror: &Mirror, origin: i64) -> Result<Position, MirrorError> {
        let store = self.shared.store.clone();
        let (settled, state) = tokio::task::spawn_blocking(move || MirrorState::read_local(&store))
            .await
            .map_err(|e| MirrorError::Task(e.to_string()))??;
        let at = Position {
            origin,
            lsn: sql_int(settled),
        };
        tracing::info!(
            lsn = settled,
            messages = state.messages.len(),
            callbacks = state.callbacks.len(),
            "mirror: rebuilding from the local state"
        );
        let limit = self.shared.tuning.statement_timeout.saturating_mul(10);
        within(
            limit,
            "rebuilding the mirror",
            mirror.replace_all(&Batch::inserting(state), at),
        )
        .await?;
        Ok(at)
    }

    /// Brings the attempts of callbacks enqueued before this process started in line with
    /// the local state. A delivery mark or failure count is written lazily (a crash may lose
    /// its record) while the state may already hold it: the mirror then never gets the record,
    /// and this is where it catches up. Safe at any position: the corrections are absolute,
    /// and any later record of the same callback says the same or newer.
    async fn reconcile_callbacks(&self, mirror: &Mirror) -> Result<(), MirrorError> {
        let store = &self.shared.store;
        let below = sql_int(self.started_callback_seq());
        let limit = self.shared.tuning.statement_timeout;
        let mirrored = within(limit, "reading mirrored callbacks", mirror.attempts_below(below)).await?;
        let mut fix = Batch::default();
        for (seq, attempts) in mirrored {
            match store.pending_callback(seq as u64)? {
                None => fix.deleted_callbacks.push(seq),
                Some(local) => {
                    let local = rows::callback_row(&local).attempts;
                    if local != attempts {
                        fix.attempts.push((seq, local));
                    }
                }
            }
        }
        if fix != Batch::default() {
            tracing::info!(
                deleted = fix.deleted_callbacks.len(),
                updated = fix.attempts.len(),
                "mirror: corrected callbacks whose lazily written records a crash lost"
            );
            within(limit, "correcting mirrored callbacks", mirror.correct(&fix)).await?;
        }
        Ok(())
    }

    /// The first callback seq this process could hand out (callbacks below it existed at
    /// start). Read once, when the replicator is made.
    fn started_callback_seq(&self) -> u64 {
        self.shared.store.next_callback_seq_at_open()
    }

    /// Applies WAL records after `position` until `until` holds.
    async fn tail(&self, mirror: &Mirror, mut position: Position, until: Until) -> Result<(), MirrorError> {
        let store = &self.shared.store;
        let tuning = &self.shared.tuning;
        let mut reader = Some(
            store
                .read_log(position.lsn as Lsn + 1)
                .ok_or_else(|| MirrorError::Task("the store has no WAL to mirror".into()))?,
        );
        let mut cursor = CursorWriter::default();
        loop {
            let durable = store.durable_lsn();
            self.observe_lag();
            if durable <= position.lsn as Lsn {
                if until == Until::CaughtUp {
                    return cursor.flush(store, position.lsn as Lsn).await;
                }
                if cursor.due() {
                    cursor.flush(store, position.lsn as Lsn).await?;
                }
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
            let expected = position.lsn as Lsn + 1;
            let (back, read) = read_batch(
                reader.take().expect("the reader is put back after every read"),
                tuning.batch_records,
            )
            .await?;
            reader = Some(back);
            let read = read?;
            let Some(last) = read.last else {
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            };
            if read.first > expected && read.corrupt == 0 {
                return Err(MirrorError::Gap {
                    expected,
                    found: read.first,
                });
            }
            let started = Instant::now();
            let batch = read.folder_changes_state;
            within(
                tuning.statement_timeout,
                "applying a batch",
                mirror.apply(&read.batch, position, sql_int(last)),
            )
            .await?;
            metrics::histogram!(APPLY_SECONDS).record(started.elapsed().as_secs_f64());
            metrics::counter!(RECORDS_APPLIED).increment(read.records);
            position.lsn = sql_int(last);
            self.progress().mirrored = Some(last);
            cursor.advanced(batch);
            if cursor.due() {
                cursor.flush(store, last).await?;
            }
        }
    }
}

/// How long the tail waits when there is nothing new.
const IDLE_POLL: Duration = Duration::from_millis(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Replicate until the service stops.
    Stopped,
    /// Return once everything durable at the time is mirrored (`mirror verify`).
    CaughtUp,
}

/// Writes the local `mirror` cursor after the database confirmed new state, at most once a
/// second (each write is a WAL record, an fsync and a mirror transaction; writing whenever the
/// mirror caught up cost dozens a second on a mirror that keeps up). A batch holding only
/// cursor records does not ask for another write, so an idle mirror stays idle.
#[derive(Default)]
struct CursorWriter {
    pending: bool,
    last_write: Option<Instant>,
}

impl CursorWriter {
    fn advanced(&mut self, changed_state: bool) {
        self.pending |= changed_state;
    }

    fn due(&self) -> bool {
        self.pending && self.last_write.is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
    }

    async fn flush(&mut self, store: &Store, lsn: Lsn) -> Result<(), MirrorError> {
        if self.pending {
            store.set_cursor(MIRROR_CURSOR, lsn).await?;
            self.pending = false;
            self.last_write = Some(Instant::now());
        }
        Ok(())
    }
}

/// Records read from the WAL, folded into a batch.
struct ReadBatch {
    batch: Batch,
    folder_changes_state: bool,
    first: Lsn,
    last: Option<Lsn>,
    records: u64,
    /// Damaged records the reader skipped (quarantined; recovery skipped them as well).
    corrupt: u64,
}

/// Reads up to `limit` durable records off the async workers (the reader does file I/O).
async fn read_batch(
    mut reader: Reader<Change>,
    limit: usize,
) -> Result<(Reader<Change>, Result<ReadBatch, MirrorError>), MirrorError> {
    tokio::task::spawn_blocking(move || {
        let read = read_records(&mut reader, limit);
        (reader, read)
    })
    .await
    .map_err(|e| MirrorError::Task(e.to_string()))
}

fn read_records(reader: &mut Reader<Change>, limit: usize) -> Result<ReadBatch, MirrorError> {
    let mut folder = Folder::default();
    let (mut first, mut last, mut records, mut corrupt) = (0, None, 0, 0);
    while records < limit as u64 {
        match reader.next() {
            None => break,
            Some(Ok((lsn, change))) => {
                if last.is_none() {
                    first = lsn;
                }
                folder.fold(&change);
                last = Some(lsn);
                records += 1;
            }
            Some(Err(WalError::Corruption { .. })) => corrupt += 1,
            Some(Err(e)) => return Err(e.into()),
        }
    }
    let changes_state = folder.changes_state;
    Ok(ReadBatch {
        batch: folder.into_batch(),
        folder_changes_state: changes_state,
        first,
        last,
        records,
        corrupt,
    })
}

/// When each durable LSN was first seen, to tell how long the oldest unmirrored record has
/// waited. Samples are kept at most every 10 ms and at most [`LagClock::CAPACITY`] of them;
/// when full, new samples are dropped, which keeps the oldest (the one the lag is read from).
#[derive(Default)]
struct LagClock {
    samples: VecDeque<(Lsn, Instant)>,
}

impl LagClock {
    const CAPACITY: usize = 100_000;

    fn observe(&mut self, durable: Lsn) {
        let now = Instant::now();
        match self.samples.back() {
            Some(&(lsn, _)) if lsn >= durable => {}
            Some(&(_, at)) if now.duration_since(at) < Duration::from_millis(10) => {}
            _ if self.samples.len() >= Self::CAPACITY => {}
            _ => self.samples.push_back((durable, now)),
        }
    }

    /// Seconds since the first record after `mirrored` became durable (0 when none).
    fn seconds_behind(&mut self, mirrored: Lsn) -> f64 {
        // A sample (lsn, t) says: records up to lsn were durable at t. The oldest record after
        // `mirrored` became durable at the first sample whose lsn passes `mirrored`.
        while self.samples.len() > 1 && self.samples[1].0 <= mirrored {
            self.samples.pop_front();
        }
        match self.samples.iter().find(|(lsn, _)| *lsn > mirrored) {
            Some((_, at)) => at.elapsed().as_secs_f64(),
            None => 0.0,
        }
    }
}

/// Runs `work`, failing with [`MirrorError::Timeout`] after `limit`.
async fn within<T>(
    limit: Duration,
    what: &'static str,
    work: impl Future<Output = Result<T, MirrorError>>,
) -> Result<T, MirrorError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| MirrorError::Timeout(what, limit))?
}

fn now_ms() -> i64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

/// A random positive id (from the standard library's per-process hash keys and the clock).
fn random_origin() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    (hasher.finish() >> 1).max(1)
}
