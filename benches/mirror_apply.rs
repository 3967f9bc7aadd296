//! Mirror apply throughput: WAL records per second the replicator applies to PostgreSQL or
//! MySQL/MariaDB when it catches up a backlog, against a plain queue table written the naive way
//! (one autocommit `INSERT` per row) and batched (4,096-row `INSERT`s), in the same run.
//!
//! `cargo bench --bench mirror_apply`
//!
//! One run, per engine, on a fresh durable store (in a temporary data dir) and fresh tables:
//!
//! 1. Two mirrors of the store are set up under two table prefixes (`…a_`, `…b_`) with
//!    `verify()`; the store is nearly empty, so this is a rebuild of almost nothing.
//! 2. The workload writes about `COREQ_BENCH_RECORDS` WAL records through the `Store` API (32
//!    concurrent writers, durable commits, delivery marks lazy), in rounds of 16 records: 4 API
//!    callbacks of ~300 bytes (enqueue; then delivered, or 1 in 20 failed once and left queued)
//!    and 1 message (accept, handed to the gateway, `sent`/`delivered`/`read` each with its
//!    ~300-byte status callback, those 3 callbacks delivered). A final settings write makes
//!    the lazy marks durable. Records are counted from the store's durable LSN.
//! 3. Mirror `a`, through `verify()` (what `coreq mirror verify` runs): once (it catches up
//!    the backlog, then compares every row), then once more (nothing new: connects, compares).
//!    catch-up = first − second; apply rate = records applied by the first / catch-up.
//! 4. Mirror `b`, through the running replicator (`Replicator::start`, the service's code path):
//!    time from its start until its status shows the whole backlog mirrored (polled every
//!    millisecond), connecting included; then `verify()` checks it. The order of 3 and 4
//!    alternates between runs.
//! 5. Baselines in the same database: `<prefix>plain_queue (seq BIGINT PRIMARY KEY, body TEXT)`,
//!    the workload's callback bodies inserted one row per autocommit `INSERT` on one connection
//!    (what a service that writes to the database before acknowledging does, one request at a
//!    time), and then, into a fresh table, as multi-row `INSERT`s of 4,096 rows, one
//!    transaction each.
//!
//! Both mirrors must equal the local state after catching up (`verify()` reports no
//! difference); a run where they do not is flagged in its line and in the summary.
//!
//! Environment (all optional):
//! - `COREQ_BENCH_ENGINES`: `pg`, `mysql` or both, comma-separated (default `pg,mysql`)
//! - `COREQ_BENCH_RECORDS`: WAL records per run, about (default 50000)
//! - `COREQ_BENCH_RUNS`: runs per engine, interleaved between engines (default 5)
//! - `COREQ_BENCH_PLAIN_SECS`: the per-row baseline stops after this many seconds if it has not
//!   inserted all rows yet (default 4; each commit waits for an fsync, so 50,000 rows would take
//!   20–25 s per run on the reference box)
//! - `COREQ_TEST_PG_URL` (default `postgres://postgres@127.0.0.1:5432/test`),
//!   `COREQ_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306/test`)
//! - `COREQ_BENCH_DIR`: where the data dirs go (default: `<cargo target dir>/coreq-bench`; never
//!   `/tmp`, which may be tmpfs)
//!
//! Bounds: every database call, catch-up and workload has a time limit; a watchdog thread ends
//! the process if the whole bench runs over [`WATCHDOG`]. Tables are dropped after every run
//! (`DROP TABLE <prefix>coreq_*` and the plain tables), also when the run failed.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use coreq::config::{DatabaseConfig, DbEngine};
use coreq::replicator::{MIRROR_CURSOR, MirrorTuning, Replicator, verify};
use coreq_storage::{StatusReport, Store, StoreConfig};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, QueryBuilder};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// API callbacks per workload round; each is enqueued, then delivered or failed.
const CALLBACKS_PER_ROUND: u64 = 4;
/// WAL records per round: 4 × (enqueue + mark) + accept + handed + 3 × (status with callback)
/// + 3 delivery marks.
const RECORDS_PER_ROUND: u64 = CALLBACKS_PER_ROUND * 2 + 8;
/// One API callback in this many fails once and stays queued (the rest are delivered).
const FAIL_EVERY: u64 = 20;
/// Concurrent workload writers: enough for the WAL's group commit to share fsyncs.
const WRITERS: usize = 32;
/// Size of callback bodies, workload and baselines alike.
const BODY_BYTES: usize = 300;
/// Rows per multi-row `INSERT` of the batched baseline (and the mirror's default batch size).
const PLAIN_BATCH_ROWS: usize = 4096;
const RECIPIENT: &str = "4915112345678";
/// Limit for one step (one `verify()`, one catch-up, one baseline, the workload).
const STEP_LIMIT: Duration = Duration::from_secs(300);
/// The whole bench ends after this, whatever it is doing.
const WATCHDOG: Duration = Duration::from_secs(30 * 60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Engine {
    Postgres,
    Mysql,
}

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Postgres => "pg",
            Engine::Mysql => "mysql",
        }
    }

    fn db_engine(self) -> DbEngine {
        match self {
            Engine::Postgres => DbEngine::Postgres,
            Engine::Mysql => DbEngine::Mysql,
        }
    }
}

struct Settings {
    engines: Vec<(Engine, String)>,
    records: u64,
    runs: usize,
    plain_limit: Duration,
    dir: PathBuf,
    _tempdir: tempfile::TempDir,
}

impl Settings {
    fn from_env() -> anyhow::Result<Settings> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let pg_url = var("COREQ_TEST_PG_URL").unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".into());
        let mysql_url = var("COREQ_TEST_MYSQL_URL").unwrap_or_else(|| "mysql://root@127.0.0.1:3306/test".into());
        let engines = var("COREQ_BENCH_ENGINES")
            .unwrap_or_else(|| "pg,mysql".into())
            .split(',')
            .map(|name| match name.trim() {
                "pg" | "postgres" => Ok((Engine::Postgres, pg_url.clone())),
                "mysql" | "mariadb" => Ok((Engine::Mysql, mysql_url.clone())),
                other => Err(anyhow!("COREQ_BENCH_ENGINES: unknown engine {other:?} (pg, mysql)")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let number = |name: &str, default: u64, range: std::ops::RangeInclusive<u64>| -> anyhow::Result<u64> {
            let value = match var(name) {
                Some(v) => v.parse().with_context(|| format!("{name}: not a number"))?,
                None => default,
            };
            if !range.contains(&value) {
                bail!("{name} must be in {range:?}");
            }
            Ok(value)
        };
        let records = number("COREQ_BENCH_RECORDS", 50_000, 1_000..=2_000_000)?;
        let runs = number("COREQ_BENCH_RUNS", 5, 1..=50)? as usize;
        let plain_secs = number("COREQ_BENCH_PLAIN_SECS", 4, 1..=600)?;
        let base = match std::env::var_os("COREQ_BENCH_DIR") {
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
                .join("coreq-bench"),
        };
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        let tempdir = tempfile::Builder::new().prefix("mirror-").tempdir_in(&base)?;
        Ok(Settings {
            engines,
            records,
            runs,
            plain_limit: Duration::from_secs(plain_secs),
            dir: tempdir.path().to_path_buf(),
            _tempdir: tempdir,
        })
    }
}

/// What one run of one engine measured.
struct RunResult {
    engine: Engine,
    /// Records the workload wrote.
    written: u64,
    write: Duration,
    /// Mirror `a`: records the first `verify()` applied, its time, the second's time.
    verify_records: u64,
    verify_total: Duration,
    verify_compare: Duration,
    /// Mirror `b`: records the running replicator applied, and the time until it had.
    tail_records: u64,
    tail: Duration,
    /// Rows compared by the last `verify()` (messages, statuses, callbacks).
    rows: [usize; 3],
    differences: usize,
    per_row: (u64, Duration),
    batched: (u64, Duration),
}

impl RunResult {
    fn catch_up(&self) -> Duration {
        self.verify_total.saturating_sub(self.verify_compare)
    }

    fn apply_rate(&self) -> f64 {
        rate(self.verify_records, self.catch_up())
    }

    fn tail_rate(&self) -> f64 {
        rate(self.tail_records, self.tail)
    }

    fn per_row_rate(&self) -> f64 {
        rate(self.per_row.0, self.per_row.1)
    }

    fn batched_rate(&self) -> f64 {
        rate(self.batched.0, self.batched.1)
    }
}

fn rate(count: u64, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}

fn main() -> anyhow::Result<()> {
    // sqlx's TLS (PostgreSQL with ssl on negotiates it by default) needs the process's provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let settings = Settings::from_env()?;
    std::thread::spawn(|| {
        std::thread::sleep(WATCHDOG);
        eprintln!("mirror_apply: still running after {WATCHDOG:?}; giving up (tables named bench_* may be left)");
        std::process::exit(3);
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(bench(settings))
}

async fn bench(settings: Settings) -> anyhow::Result<()> {
    print_machine(&settings).await;
    println!(
        "\nrun | engine | written | write s | verify: records, total s, compare-only s, catch-up s, rec/s | \
         running replicator: records, s, rec/s | rows m/s/c | per-row INSERT: rows, rows/s | batched: rows/s | diffs"
    );
    let mut results = Vec::new();
    let mut failures = 0;
    // Interleaved (run 1 of every engine before run 2 of any): a noisy stretch of a shared
    // machine then spreads over the engines instead of landing on one.
    for run in 1..=settings.runs {
        for (engine, url) in &settings.engines {
            match one_run(&settings, *engine, url, run).await {
                Ok(r) => {
                    print_run(run, &r);
                    results.push(r);
                }
                Err(e) => {
                    failures += 1;
                    println!("{run} | {} | FAILED: {e:#}", engine.name());
                }
            }
        }
    }
    print_summary(&settings, &results);
    if failures > 0 || results.iter().any(|r| r.differences > 0) {
        bail!("{failures} run(s) failed; see above");
    }
    Ok(())
}

/// One run of one engine; its tables are dropped afterwards whatever happened.
async fn one_run(settings: &Settings, engine: Engine, url: &str, run: usize) -> anyhow::Result<RunResult> {
    // Unique per process, run and engine; letters, digits and _ only, as WA_DB_NAME_PREFIX.
    let prefix = format!("bench_{}_{}{}_", std::process::id(), engine.name(), run);
    let plain = within("connecting for the baseline", Plain::connect(engine, url)).await?;
    let result = measure(settings, engine, url, run, &prefix, &plain).await;
    let dropped = plain.drop_tables(&prefix).await;
    plain.close().await;
    let result = result?;
    dropped.with_context(|| format!("dropping the tables {prefix}*"))?;
    Ok(result)
}

async fn measure(
    settings: &Settings,
    engine: Engine,
    url: &str,
    run: usize,
    prefix: &str,
    plain: &Plain,
) -> anyhow::Result<RunResult> {
    let data_dir = settings.dir.join(format!("{}-{run}", engine.name()));
    let mut config = StoreConfig::new(&data_dir);
    config.retaining_cursors.push(MIRROR_CURSOR.into());
    let (store, _) = tokio::task::spawn_blocking(move || Store::open(config)).await??;
    let mirror = |name: &str| DatabaseConfig {
        engine: engine.db_engine(),
        url: url.to_owned(),
        name_prefix: format!("{prefix}{name}_"),
    };
    let (a, b) = (mirror("a"), mirror("b"));

    // Both mirrors start at (nearly) the same position: the first verify rebuilds each from the
    // local state, which holds nothing but the mirror's own cursors yet.
    let from_a = checked_verify(&store, &a).await?.0;
    let from_b = checked_verify(&store, &b).await?.0;

    let before = store.durable_lsn();
    let started = Instant::now();
    within("writing the workload", write_workload(&store, settings.records)).await?;
    let write = started.elapsed();
    let written = store.durable_lsn() - before;

    let mut result = RunResult {
        engine,
        written,
        write,
        verify_records: 0,
        verify_total: Duration::ZERO,
        verify_compare: Duration::ZERO,
        tail_records: 0,
        tail: Duration::ZERO,
        rows: [0; 3],
        differences: 0,
        per_row: (0, Duration::ZERO),
        batched: (0, Duration::ZERO),
    };
    // Alternate which mirror reads the fresh WAL first (the second may find it better cached).
    let verify_first = run % 2 == 1;
    if !verify_first {
        running_replicator(&store, &b, from_b, &mut result).await?;
    }
    {
        let started = Instant::now();
        let (to, _, differences) = checked_verify(&store, &a).await?;
        result.verify_total = started.elapsed();
        result.verify_records = to - from_a;
        let started = Instant::now();
        let (_, rows, more) = checked_verify(&store, &a).await?;
        result.verify_compare = started.elapsed();
        result.rows = rows;
        result.differences += differences + more;
    }
    if verify_first {
        running_replicator(&store, &b, from_b, &mut result).await?;
    }

    let bodies: Vec<String> = (0..settings.records).map(callback_body).collect();
    result.per_row = within(
        "the per-row baseline",
        plain.per_row(prefix, &bodies, settings.plain_limit),
    )
    .await?;
    result.batched = within("the batched baseline", plain.batched(prefix, &bodies)).await?;

    // The store goes with its data dir: keep the next run's disk usage flat.
    drop(store);
    let _ = fs::remove_dir_all(&data_dir);
    Ok(result)
}

/// `verify()` within the step limit: the mirrored LSN, the rows compared (messages, statuses,
/// callbacks) and the number of differences (each printed).
async fn checked_verify(store: &Store, db: &DatabaseConfig) -> anyhow::Result<(u64, [usize; 3], usize)> {
    let before = store.durable_lsn();
    let report = within(
        &format!("verify of {} from durable lsn {before}", db.name_prefix),
        verify::verify(store.clone(), db.clone(), MirrorTuning::default()),
    )
    .await?;
    for line in report.differences.iter().take(5) {
        eprintln!("  {}: difference: {line}", db.name_prefix);
    }
    let count = |table: &str| report.compared.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n);
    let rows = [count("messages"), count("message_statuses"), count("callbacks")];
    Ok((report.mirrored_lsn, rows, report.differences.len()))
}

/// Starts the replicator on mirror `db` (at `from`), times it until everything durable at its
/// start is mirrored, stops it, then verifies the mirror.
async fn running_replicator(
    store: &Store,
    db: &DatabaseConfig,
    from: u64,
    result: &mut RunResult,
) -> anyhow::Result<()> {
    let target = store.durable_lsn();
    let (stop, stopped) = watch::channel(false);
    let started = Instant::now();
    let (replicator, task) = Replicator::start(store.clone(), db.clone(), MirrorTuning::default(), stopped);
    let caught_up = async {
        loop {
            let status = replicator.status();
            let mirrored = status.mirrored_lsn.unwrap_or(0);
            // Until it has read its database's position, the status shows the store's local
            // cursor, which the other mirror of this store has moved: only trust it connected.
            if status.connected && mirrored >= target {
                return Ok((mirrored, started.elapsed()));
            }
            if let Some(error) = status.last_error {
                bail!("the replicator failed: {error}");
            }
            if started.elapsed() > STEP_LIMIT {
                bail!("the replicator did not catch up within {STEP_LIMIT:?} ({mirrored} of {target})");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    .await;
    let _ = stop.send(true);
    within("stopping the replicator", task).await?;
    let (mirrored, took) = caught_up?;
    result.tail_records = mirrored - from;
    result.tail = took;
    result.differences += checked_verify(store, db).await?.2;
    Ok(())
}

// ---- the workload ---------------------------------------------------------------------------

async fn write_workload(store: &Store, records: u64) -> anyhow::Result<()> {
    let rounds = records.div_ceil(RECORDS_PER_ROUND);
    let next = Arc::new(AtomicU64::new(0));
    let mut writers = JoinSet::new();
    for _ in 0..WRITERS {
        let (store, next) = (store.clone(), next.clone());
        writers.spawn(async move {
            loop {
                let round = next.fetch_add(1, Ordering::Relaxed);
                if round >= rounds {
                    return Ok::<_, anyhow::Error>(());
                }
                one_round(&store, round).await?;
            }
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    // Lazy marks become durable with the next durable commit: this one.
    store
        .put_settings(vec![("bench.workload".into(), Some(br#"{"done":true}"#.to_vec()))])
        .await?;
    Ok(())
}

/// One round: 16 WAL records (see [`RECORDS_PER_ROUND`]), as the service would write them.
async fn one_round(store: &Store, round: u64) -> anyhow::Result<()> {
    let now = now_ms();
    for k in 0..CALLBACKS_PER_ROUND {
        let i = round * CALLBACKS_PER_ROUND + k;
        let seqs = store
            .enqueue_callbacks(vec![callback_body(i).into_bytes()], now)
            .await?;
        if i.is_multiple_of(FAIL_EVERY) {
            store.record_failure_lazy(seqs[0], 1, "HTTP 503".into(), now, now + 5_000)?;
        } else {
            store.mark_all_delivered_lazy(&seqs)?;
        }
    }
    let id = format!("gBEGSRYVZ{round:012}");
    let body = format!(
        r#"{{"to":"{RECIPIENT}","type":"text","recipient_type":"individual","text":{{"body":"Your code is {round:06}. It expires in 10 minutes."}}}}"#
    );
    let message = store
        .accept_message(id.clone(), RECIPIENT.into(), body.into_bytes(), now)
        .await?;
    store.mark_handed(&id, message.send_seq).await?;
    let reports = ["sent", "delivered", "read"]
        .into_iter()
        .map(|status| StatusReport {
            id: id.clone(),
            status: status.into(),
            at: now,
            errors: None,
            callback: Some(status_body(&id, status, now).into_bytes()),
        })
        .collect();
    let recorded = store.record_statuses(reports, now).await?;
    let seqs: Vec<u64> = recorded.iter().filter_map(|r| r.callback_seq).collect();
    store.mark_all_delivered_lazy(&seqs)?;
    Ok(())
}

/// A ~300-byte callback body as `POST /v1/callbacks` would take it.
fn callback_body(i: u64) -> String {
    let head = format!(r#"{{"contacts":[{{"profile":{{"name":"Bench"}},"wa_id":"{RECIPIENT}"}}],"seq":{i},"pad":""#);
    padded(head)
}

/// A ~300-byte status callback like the one coreq builds for the webhook.
fn status_body(id: &str, status: &str, at: u64) -> String {
    let head = format!(
        r#"{{"statuses":[{{"id":"{id}","recipient_id":"{RECIPIENT}","status":"{status}","timestamp":"{}","type":"message"}}],"pad":""#,
        at / 1000
    );
    padded(head)
}

/// `head` (a JSON object left open inside a string) padded to [`BODY_BYTES`] and closed.
fn padded(mut head: String) -> String {
    let pad = BODY_BYTES.saturating_sub(head.len() + 2);
    head.extend(std::iter::repeat_n('x', pad));
    head.push_str("\"}");
    head
}

fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    since_epoch.as_millis() as u64
}

// ---- the baselines --------------------------------------------------------------------------

/// A one-connection pool on the engine under test, for the baselines and the clean-up.
enum Plain {
    Postgres(PgPool),
    Mysql(MySqlPool),
}

/// Runs the same code on either pool (the SQL below is valid on both engines).
macro_rules! on_pool {
    ($plain:expr, $pool:ident => $body:expr) => {
        match $plain {
            Plain::Postgres($pool) => $body,
            Plain::Mysql($pool) => $body,
        }
    };
}

impl Plain {
    async fn connect(engine: Engine, url: &str) -> anyhow::Result<Plain> {
        Ok(match engine {
            Engine::Postgres => Plain::Postgres(PgPoolOptions::new().max_connections(1).connect(url).await?),
            Engine::Mysql => Plain::Mysql(MySqlPoolOptions::new().max_connections(1).connect(url).await?),
        })
    }

    async fn execute(&self, sql: String) -> anyhow::Result<()> {
        on_pool!(self, pool => { sqlx::query(AssertSqlSafe(sql)).execute(pool).await?; });
        Ok(())
    }

    async fn fresh_table(&self, table: &str) -> anyhow::Result<()> {
        self.execute(format!("DROP TABLE IF EXISTS {table}")).await?;
        self.execute(format!("CREATE TABLE {table} (seq BIGINT PRIMARY KEY, body TEXT)"))
            .await
    }

    /// One autocommit `INSERT` per row, until every row is in or `limit` has passed.
    async fn per_row(&self, prefix: &str, bodies: &[String], limit: Duration) -> anyhow::Result<(u64, Duration)> {
        let table = format!("{prefix}plain_queue");
        self.fresh_table(&table).await?;
        let placeholders = match self {
            Plain::Postgres(_) => "$1, $2",
            Plain::Mysql(_) => "?, ?",
        };
        let sql = format!("INSERT INTO {table} (seq, body) VALUES ({placeholders})");
        let started = Instant::now();
        let mut rows = 0;
        for (seq, body) in bodies.iter().enumerate() {
            if started.elapsed() >= limit {
                break;
            }
            on_pool!(self, pool => {
                sqlx::query(AssertSqlSafe(sql.as_str()))
                    .bind(seq as i64)
                    .bind(body.as_str())
                    .execute(pool)
                    .await?;
            });
            rows += 1;
        }
        Ok((rows, started.elapsed()))
    }

    /// Multi-row `INSERT`s of [`PLAIN_BATCH_ROWS`] rows, each in its own transaction.
    async fn batched(&self, prefix: &str, bodies: &[String]) -> anyhow::Result<(u64, Duration)> {
        let table = format!("{prefix}plain_batched");
        self.fresh_table(&table).await?;
        let head = format!("INSERT INTO {table} (seq, body) ");
        let started = Instant::now();
        for (n, chunk) in bodies.chunks(PLAIN_BATCH_ROWS).enumerate() {
            let first = (n * PLAIN_BATCH_ROWS) as i64;
            on_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                let mut insert = QueryBuilder::new(head.as_str());
                insert.push_values(chunk.iter().enumerate(), |mut row, (i, body)| {
                    row.push_bind(first + i as i64).push_bind(body.as_str());
                });
                insert.build().execute(&mut *tx).await?;
                tx.commit().await?;
            });
        }
        Ok((bodies.len() as u64, started.elapsed()))
    }

    /// Drops both mirrors' tables and the plain ones.
    async fn drop_tables(&self, prefix: &str) -> anyhow::Result<()> {
        let mut tables = vec![format!("{prefix}plain_queue"), format!("{prefix}plain_batched")];
        for mirror in ["a", "b"] {
            for table in [
                "mirror_position",
                "messages",
                "message_statuses",
                "callbacks",
                "settings",
                "schema_migrations",
            ] {
                tables.push(format!("{prefix}{mirror}_coreq_{table}"));
            }
        }
        within(
            "dropping tables",
            self.execute(format!("DROP TABLE IF EXISTS {}", tables.join(", "))),
        )
        .await
    }

    async fn server(&self) -> anyhow::Result<String> {
        Ok(match self {
            Plain::Postgres(pool) => {
                let version: String = sqlx::query_scalar("SHOW server_version").fetch_one(pool).await?;
                let tls: Option<bool> = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                    .fetch_optional(pool)
                    .await?;
                format!(
                    "PostgreSQL {version}, TLS {}",
                    if tls == Some(true) { "on" } else { "off" }
                )
            }
            Plain::Mysql(pool) => {
                let version: String = sqlx::query_scalar("SELECT VERSION()").fetch_one(pool).await?;
                let cipher: Option<(String, String)> = sqlx::query_as("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
                    .fetch_optional(pool)
                    .await?;
                let tls = cipher.is_some_and(|(_, c)| !c.is_empty());
                format!("MySQL {version}, TLS {}", if tls { "on" } else { "off" })
            }
        })
    }

    async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// Runs `work`, failing after [`STEP_LIMIT`].
async fn within<T, E>(what: &str, work: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    tokio::time::timeout(STEP_LIMIT, work)
        .await
        .map_err(|_| anyhow!("{what} took longer than {STEP_LIMIT:?}"))?
        .map_err(Into::into)
        .with_context(|| what.to_owned())
}

// ---- output ---------------------------------------------------------------------------------

async fn print_machine(settings: &Settings) {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(_, v)| v.trim().to_owned());
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("# coreq mirror apply bench");
    println!(
        "machine: nproc {nproc}, cpu {cpu}, kernel {}, load average {}",
        read("/proc/sys/kernel/osrelease").trim(),
        read("/proc/loadavg")
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("data dirs: {}", settings.dir.display());
    for (engine, url) in &settings.engines {
        let server = match Plain::connect(*engine, url).await {
            Ok(plain) => {
                let server = plain.server().await;
                plain.close().await;
                server.unwrap_or_else(|e| format!("unknown ({e})"))
            }
            Err(e) => format!("not reachable: {e}"),
        };
        println!("{}: {server}", engine.name());
    }
    println!(
        "settings: {} runs per engine, ~{} WAL records per run ({} per round: {CALLBACKS_PER_ROUND} API callbacks, \
         enqueue + delivered or 1 in {FAIL_EVERY} failed; 1 message: accept, handed, 3 statuses with callbacks, \
         3 delivered), {BODY_BYTES}-byte callback bodies, {WRITERS} writers; per-row baseline capped at {:?}",
        settings.runs, settings.records, RECORDS_PER_ROUND, settings.plain_limit
    );
}

fn print_run(run: usize, r: &RunResult) {
    let secs = |d: Duration| d.as_secs_f64();
    println!(
        "{run} | {} | {} | {:.2} | {}, {:.3}, {:.3}, {:.3}, {:.0} | {}, {:.3}, {:.0} | {}/{}/{} | {}, {:.0} | {:.0} | {}",
        r.engine.name(),
        r.written,
        secs(r.write),
        r.verify_records,
        secs(r.verify_total),
        secs(r.verify_compare),
        secs(r.catch_up()),
        r.apply_rate(),
        r.tail_records,
        secs(r.tail),
        r.tail_rate(),
        r.rows[0],
        r.rows[1],
        r.rows[2],
        r.per_row.0,
        r.per_row_rate(),
        r.batched_rate(),
        if r.differences == 0 {
            "0".to_owned()
        } else {
            format!("{} DIFFERENCES", r.differences)
        }
    );
}

fn print_summary(settings: &Settings, results: &[RunResult]) {
    println!("\nMedian (min–max) over the runs of each engine:\n");
    println!(
        "| engine | runs | WAL records | verify total s | compare-only s | catch-up s | **apply rec/s** (verify) | \
         apply rec/s (running replicator) | per-row INSERT rows/s | batched INSERT rows/s | **apply ÷ per-row** | apply ÷ batched |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (engine, _) in &settings.engines {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.engine == *engine).collect();
        if runs.is_empty() {
            continue;
        }
        let of = |f: &dyn Fn(&RunResult) -> f64, digits: usize| spread(runs.iter().map(|r| f(r)).collect(), digits);
        println!(
            "| {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | **{}** | {} |",
            engine.name(),
            runs.len(),
            of(&|r| r.written as f64, 0),
            of(&|r| r.verify_total.as_secs_f64(), 3),
            of(&|r| r.verify_compare.as_secs_f64(), 3),
            of(&|r| r.catch_up().as_secs_f64(), 3),
            of(&|r| r.apply_rate(), 0),
            of(&|r| r.tail_rate(), 0),
            of(&|r| r.per_row_rate(), 0),
            of(&|r| r.batched_rate(), 0),
            of(&|r| r.apply_rate() / r.per_row_rate(), 1),
            of(&|r| r.apply_rate() / r.batched_rate(), 2),
        );
    }
    println!(
        "\nRatios are taken per run (the same run, the same database, measured minutes apart), then the median. \
         apply rec/s counts WAL records; the baselines count rows."
    );
    let flagged = results.iter().filter(|r| r.differences > 0).count();
    if flagged > 0 {
        println!("\n**{flagged} run(s) ended with differences between the mirror and the local state.**");
    }
}

/// `median (min–max)` with `digits` decimals.
fn spread(mut values: Vec<f64>, digits: usize) -> String {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    let show = |v: f64| format_number(v, digits);
    if n == 1 {
        show(median)
    } else {
        format!("{} ({}–{})", show(median), show(values[0]), show(values[n - 1]))
    }
}

/// `value` with `digits` decimals and thousands separators.
fn format_number(value: f64, digits: usize) -> String {
    let text = format!("{value:.digits$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, int) = int.strip_prefix('-').map_or(("", int), |i| ("-", i));
    let mut grouped = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}
