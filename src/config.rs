//! Start-up configuration: every setting of spec §1, from flags or the environment, validated
//! once. A bad value stops the process before anything is opened, with one line naming the
//! setting. Runtime settings (the settings API) are stored state, not configuration.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// coreq: durable delivery of messages and webhook callbacks.
#[derive(Debug, Parser)]
#[command(name = "coreq", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Scan the write-ahead log of a data directory (the service must be stopped) and report.
    Verify {
        #[arg(long, env = "COREQ_DATA_DIR", default_value = "./coreq-data")]
        data_dir: PathBuf,
    },
    /// Work with the mirror database.
    Mirror {
        #[command(subcommand)]
        action: MirrorAction,
    },
}

#[derive(Debug, Subcommand)]
pub enum MirrorAction {
    /// Bring the mirror up to the data directory's WAL, compare every mirrored row with the
    /// local state and print the differences; exits 1 if there are any. Takes the flags of
    /// `serve`; the service must be stopped.
    Verify(Box<ServeArgs>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GatewayKind {
    /// No gateway: messages wait; health reports `unregistered`.
    None,
    /// The in-process simulator.
    Sim,
    /// POST each message to `--gateway-url`.
    Http,
}

/// The flags and variables of spec §1, as given.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the HTTP API listens on.
    #[arg(long, env = "COREQ_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Directory for the WAL and the state.
    #[arg(long, env = "COREQ_DATA_DIR", default_value = "./coreq-data")]
    pub data_dir: PathBuf,
    /// Directory for log files (default: <data-dir>/logs).
    #[arg(long, env = "COREQ_LOG_DIR")]
    pub log_dir: Option<PathBuf>,
    /// Mirror database URL (`postgres://…` or `mysql://…`).
    #[arg(long, env = "COREQ_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Gateway to the WhatsApp network.
    #[arg(long, env = "COREQ_GATEWAY", value_enum, default_value = "none")]
    pub gateway: GatewayKind,
    /// Upstream of the `http` gateway.
    #[arg(long, env = "COREQ_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Most messages being handed to the gateway at once.
    #[arg(long, env = "COREQ_GATEWAY_CONCURRENCY", default_value = "32")]
    pub gateway_concurrency: usize,
    /// A message's n-th consecutive failed send waits n times this before the next, in
    /// milliseconds…
    #[arg(long, env = "COREQ_GATEWAY_BACKOFF_MS", default_value = "1000")]
    pub gateway_backoff_ms: u64,
    /// …but never longer than this.
    #[arg(long, env = "COREQ_GATEWAY_MAX_BACKOFF_MS", default_value = "60000")]
    pub gateway_max_backoff_ms: u64,
    /// Per-request timeout of the `http` gateway, in milliseconds.
    #[arg(long, env = "COREQ_GATEWAY_TIMEOUT_MS", default_value = "10000")]
    pub gateway_timeout_ms: u64,
    /// The `sim` gateway's delay before it accepts a message, and between the statuses it
    /// reports, in milliseconds.
    #[arg(long, env = "COREQ_SIM_DELAY_MS", default_value = "200")]
    pub sim_delay_ms: u64,
    /// Finished messages older than this are garbage-collected, in seconds (default 30 days).
    #[arg(long, env = "COREQ_MESSAGE_RETENTION_SECS", default_value = "2592000")]
    pub message_retention_secs: u64,
    /// Serve the API over HTTPS (HTTP/2 and HTTP/1.1 by ALPN) with this PEM certificate chain,
    /// leaf first; requires --tls-key. SIGHUP reloads both files (a bad new file keeps the
    /// current certificate).
    #[arg(long, env = "COREQ_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert's certificate.
    #[arg(long, env = "COREQ_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Most client connections open at once; more wait in the kernel's backlog. Lowered at start
    /// to leave file descriptors for the store under the open-file limit (raised to its hard
    /// maximum first).
    #[arg(long, env = "COREQ_MAX_CONNECTIONS", default_value = "1024")]
    pub max_connections: usize,
    /// A request's head must arrive within this of its first byte, in milliseconds (the first
    /// request of a connection: of the accept, TLS handshake included); slower ones are cut off.
    #[arg(long, env = "COREQ_HEADER_TIMEOUT_MS", default_value = "10000")]
    pub header_timeout_ms: u64,
    /// A request's body must arrive in full within this of its head, in milliseconds (else 408).
    #[arg(long, env = "COREQ_BODY_TIMEOUT_MS", default_value = "60000")]
    pub body_timeout_ms: u64,
    /// A keep-alive connection with no request in progress is closed after this, in
    /// milliseconds.
    #[arg(long, env = "COREQ_IDLE_TIMEOUT_MS", default_value = "60000")]
    pub idle_timeout_ms: u64,
    /// Most bytes of request bodies held at once across all requests, in MiB. A request that
    /// finds no room within 5 s gets 503/1011 with Retry-After; one declaring more than this, 413.
    #[arg(long, env = "COREQ_BODY_BUDGET_MB", default_value = "256")]
    pub body_budget_mb: usize,
    /// At SIGTERM/SIGINT, requests in progress get this long to finish, in milliseconds; then
    /// the connections left are closed.
    #[arg(long, env = "COREQ_SHUTDOWN_TIMEOUT_MS", default_value = "10000")]
    pub shutdown_timeout_ms: u64,
    /// Extra CA (PEM) trusted for webhook HTTPS, besides the system roots.
    #[arg(long, env = "COREQ_WEBHOOK_CA")]
    pub webhook_ca: Option<PathBuf>,
    /// Allow `http://` webhook URLs (development only).
    #[arg(long, env = "COREQ_ALLOW_HTTP_WEBHOOKS", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false")]
    pub allow_http_webhooks: bool,
    /// How often the state is checkpointed and the WAL truncated, in milliseconds.
    #[arg(long, env = "COREQ_CHECKPOINT_INTERVAL_MS", default_value = "1000")]
    pub checkpoint_interval_ms: u64,
    /// WAL segment size, in MiB: the WAL is truncated a whole segment at a time.
    #[arg(long, env = "COREQ_WAL_SEGMENT_MB", default_value = "64")]
    pub wal_segment_mb: u64,
    /// sled's page cache, in MiB.
    #[arg(long, env = "COREQ_STATE_CACHE_MB", default_value = "64")]
    pub state_cache_mb: u64,
    /// Writes are refused (507) while the data or log volume has less free space than this, in
    /// MiB.
    #[arg(long, env = "COREQ_MIN_FREE_MB", default_value = "10")]
    pub min_free_mb: u64,
    /// Per-request timeout of webhook calls, in milliseconds.
    #[arg(long, env = "COREQ_WEBHOOK_TIMEOUT_MS", default_value = "30000")]
    pub webhook_timeout_ms: u64,
    /// Most callbacks held in memory by the dispatcher; the rest of the backlog stays on disk.
    #[arg(long, env = "COREQ_CALLBACK_WINDOW", default_value = "4096")]
    pub callback_window: usize,
    /// Most callback body bytes held in memory by the dispatcher, in MiB.
    #[arg(long, env = "COREQ_CALLBACK_WINDOW_MB", default_value = "32")]
    pub callback_window_mb: usize,
    /// Pending callbacks above which enqueues are refused with 503/1016.
    #[arg(long, env = "COREQ_CALLBACK_HIGH_WATER", default_value = "10000000")]
    pub callback_high_water: u64,
    /// Most WAL records the mirror applies in one SQL transaction.
    #[arg(long, env = "COREQ_MIRROR_BATCH_RECORDS", default_value = "4096")]
    pub mirror_batch_records: usize,
    /// After its n-th consecutive failure the mirror reconnects after n times this, in
    /// milliseconds…
    #[arg(long, env = "COREQ_MIRROR_BACKOFF_MS", default_value = "1000")]
    pub mirror_backoff_ms: u64,
    /// …but never later than this.
    #[arg(long, env = "COREQ_MIRROR_MAX_BACKOFF_MS", default_value = "30000")]
    pub mirror_max_backoff_ms: u64,
}

/// The On-Premises database variables (spec §1), read by `main` alongside the flags.
#[derive(Debug, Clone, Default)]
pub struct OnPremDbEnv {
    pub engine: Option<String>,
    pub hostname: Option<String>,
    pub port: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub name_prefix: Option<String>,
}

/// Secrets and On-Premises variables that are not flags.
#[derive(Debug, Clone, Default)]
pub struct EnvSecrets {
    pub api_key: Option<String>,
    pub admin_password: Option<String>,
    pub db: OnPremDbEnv,
    /// The process's `COREQ_*`, `WA_*` and locale variables, as given (secrets included):
    /// `/v1/support` shows them masked.
    pub environment: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbEngine {
    Postgres,
    Mysql,
}

/// Where the mirror goes.
#[derive(Clone)]
pub struct DatabaseConfig {
    pub engine: DbEngine,
    /// Connection URL (holds credentials: never log it).
    pub url: String,
    /// Prefix of the mirror's table names (`WA_DB_NAME_PREFIX`).
    pub name_prefix: String,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("engine", &self.engine)
            .field("url", &"****")
            .field("name_prefix", &self.name_prefix)
            .finish()
    }
}

/// The validated configuration every part of coreq is built from.
#[derive(Clone)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    pub log_dir: PathBuf,
    /// `WA_API_KEY`: 12–128 characters, or API-key auth off.
    pub api_key: Option<String>,
    /// `COREQ_ADMIN_PASSWORD`.
    pub admin_password: Option<String>,
    pub database: Option<DatabaseConfig>,
    /// How the replicator batches, times out and backs off (used with `database`).
    pub mirror: crate::replicator::MirrorTuning,
    pub gateway: GatewayKind,
    pub gateway_url: Option<url::Url>,
    pub sender: crate::messages::sender::SenderConfig,
    pub gateway_timeout: Duration,
    pub sim_delay: Duration,
    pub message_retention: Duration,
    /// Serve HTTPS with these files (checked at validation: they load and the key fits).
    pub tls: Option<crate::listener::tls::TlsFiles>,
    /// Connections, timeouts and the body budget of the HTTP front.
    pub http: crate::listener::HttpLimits,
    pub webhook_ca: Option<PathBuf>,
    pub allow_http_webhooks: bool,
    pub checkpoint_interval: Duration,
    pub state_cache_bytes: u64,
    pub wal_segment_bytes: u64,
    /// Free space below which writes are refused (507/1014), per volume.
    pub min_free_bytes: u64,
    /// See [`EnvSecrets::environment`].
    pub environment: Vec<(String, String)>,
    pub webhook_timeout: Duration,
    pub delivery: crate::delivery::DeliveryConfig,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("log_dir", &self.log_dir)
            .field("api_key", &self.api_key.as_ref().map(|_| "****"))
            .field("admin_password", &self.admin_password.as_ref().map(|_| "****"))
            .field("database", &self.database)
            .field("mirror", &self.mirror)
            .field("gateway", &self.gateway)
            .field("gateway_url", &self.gateway_url.as_ref().map(|u| u.as_str()))
            .field("sender", &self.sender)
            .field("gateway_timeout", &self.gateway_timeout)
            .field("sim_delay", &self.sim_delay)
            .field("message_retention", &self.message_retention)
            .field("tls", &self.tls)
            .field("http", &self.http)
            .field("webhook_ca", &self.webhook_ca)
            .field("allow_http_webhooks", &self.allow_http_webhooks)
            .field("checkpoint_interval", &self.checkpoint_interval)
            .field("state_cache_bytes", &self.state_cache_bytes)
            .field("wal_segment_bytes", &self.wal_segment_bytes)
            .field("min_free_bytes", &self.min_free_bytes)
            .field("webhook_timeout", &self.webhook_timeout)
            .field("delivery", &self.delivery)
            .field(
                "environment",
                &self.environment.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A configuration refused: `setting` names the flag or variable, `problem` says why.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

impl Config {
    /// Validates the arguments and variables; touches the file system only to check that the
    /// directories can be created and written.
    pub fn from_args(args: ServeArgs, env: EnvSecrets) -> Result<Config, ConfigError> {
        if args.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "--listen/COREQ_LISTEN",
                format!("{:?} is not an address like 127.0.0.1:8080", args.listen),
            ));
        }
        ensure_writable_dir(&args.data_dir).map_err(|p| bad("--data-dir/COREQ_DATA_DIR", p))?;
        let log_dir = args.log_dir.clone().unwrap_or_else(|| args.data_dir.join("logs"));
        ensure_writable_dir(&log_dir).map_err(|p| bad("--log-dir/COREQ_LOG_DIR", p))?;
        let api_key = validate_api_key(env.api_key)?;
        if let Some(password) = &env.admin_password {
            crate::auth::check_password(password).map_err(|p| bad("COREQ_ADMIN_PASSWORD", p))?;
        }
        let database = database_config(args.database_url.as_deref(), &env.db)?;
        let gateway_url = gateway_url(args.gateway, args.gateway_url.as_deref())?;
        let http = http_limits(&args)?;
        let tls = match (args.tls_cert, args.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let files = crate::listener::tls::TlsFiles { cert, key };
                crate::listener::tls::load(&files).map_err(|e| bad(e.setting, e.problem))?;
                Some(files)
            }
            (Some(_), None) => return Err(bad("--tls-key/COREQ_TLS_KEY", "required with --tls-cert")),
            (None, Some(_)) => return Err(bad("--tls-cert/COREQ_TLS_CERT", "required with --tls-key")),
        };
        if let Some(ca) = &args.webhook_ca {
            readable(ca).map_err(|p| bad("--webhook-ca/COREQ_WEBHOOK_CA", p))?;
        }
        if args.checkpoint_interval_ms == 0 || args.checkpoint_interval_ms > 3_600_000 {
            return Err(bad(
                "--checkpoint-interval-ms/COREQ_CHECKPOINT_INTERVAL_MS",
                "must be 1..=3600000",
            ));
        }
        if !(1..=1024).contains(&args.wal_segment_mb) {
            return Err(bad("--wal-segment-mb/COREQ_WAL_SEGMENT_MB", "must be 1..=1024"));
        }
        if !(1..=65_536).contains(&args.state_cache_mb) {
            return Err(bad("--state-cache-mb/COREQ_STATE_CACHE_MB", "must be 1..=65536"));
        }
        if args.min_free_mb > 1 << 20 {
            return Err(bad(
                "--min-free-mb/COREQ_MIN_FREE_MB",
                "must be at most 1048576 (1 TiB)",
            ));
        }
        if !(1..=600_000).contains(&args.webhook_timeout_ms) {
            return Err(bad(
                "--webhook-timeout-ms/COREQ_WEBHOOK_TIMEOUT_MS",
                "must be 1..=600000",
            ));
        }
        if !(1..=1_000_000).contains(&args.callback_window) {
            return Err(bad("--callback-window/COREQ_CALLBACK_WINDOW", "must be 1..=1000000"));
        }
        if !(1..=4096).contains(&args.callback_window_mb) {
            return Err(bad("--callback-window-mb/COREQ_CALLBACK_WINDOW_MB", "must be 1..=4096"));
        }
        if !(1..=256).contains(&args.gateway_concurrency) {
            return Err(bad(
                "--gateway-concurrency/COREQ_GATEWAY_CONCURRENCY",
                "must be 1..=256",
            ));
        }
        if !(1..=3_600_000).contains(&args.gateway_max_backoff_ms) {
            return Err(bad(
                "--gateway-max-backoff-ms/COREQ_GATEWAY_MAX_BACKOFF_MS",
                "must be 1..=3600000",
            ));
        }
        if !(1..=args.gateway_max_backoff_ms).contains(&args.gateway_backoff_ms) {
            return Err(bad(
                "--gateway-backoff-ms/COREQ_GATEWAY_BACKOFF_MS",
                "must be at least 1 and at most the maximum backoff",
            ));
        }
        if !(1..=600_000).contains(&args.gateway_timeout_ms) {
            return Err(bad(
                "--gateway-timeout-ms/COREQ_GATEWAY_TIMEOUT_MS",
                "must be 1..=600000",
            ));
        }
        if args.sim_delay_ms > 60_000 {
            return Err(bad("--sim-delay-ms/COREQ_SIM_DELAY_MS", "must be at most 60000"));
        }
        if args.message_retention_secs == 0 || args.message_retention_secs > 10 * 365 * 86_400 {
            return Err(bad(
                "--message-retention-secs/COREQ_MESSAGE_RETENTION_SECS",
                "must be 1 second to 10 years",
            ));
        }
        if args.callback_high_water == 0 {
            return Err(bad(
                "--callback-high-water/COREQ_CALLBACK_HIGH_WATER",
                "must be at least 1",
            ));
        }
        if !(1..=1_000_000).contains(&args.mirror_batch_records) {
            return Err(bad(
                "--mirror-batch-records/COREQ_MIRROR_BATCH_RECORDS",
                "must be 1..=1000000",
            ));
        }
        if !(1..=3_600_000).contains(&args.mirror_max_backoff_ms) {
            return Err(bad(
                "--mirror-max-backoff-ms/COREQ_MIRROR_MAX_BACKOFF_MS",
                "must be 1..=3600000",
            ));
        }
        if !(1..=args.mirror_max_backoff_ms).contains(&args.mirror_backoff_ms) {
            return Err(bad(
                "--mirror-backoff-ms/COREQ_MIRROR_BACKOFF_MS",
                "must be at least 1 and at most the maximum backoff",
            ));
        }
        Ok(Config {
            listen: args.listen,
            data_dir: args.data_dir,
            log_dir,
            api_key,
            admin_password: env.admin_password,
            database,
            mirror: crate::replicator::MirrorTuning {
                batch_records: args.mirror_batch_records,
                backoff: Duration::from_millis(args.mirror_backoff_ms),
                max_backoff: Duration::from_millis(args.mirror_max_backoff_ms),
                ..crate::replicator::MirrorTuning::default()
            },
            gateway: args.gateway,
            gateway_url,
            sender: crate::messages::sender::SenderConfig {
                concurrency: args.gateway_concurrency,
                backoff: Duration::from_millis(args.gateway_backoff_ms),
                max_backoff: Duration::from_millis(args.gateway_max_backoff_ms),
            },
            gateway_timeout: Duration::from_millis(args.gateway_timeout_ms),
            sim_delay: Duration::from_millis(args.sim_delay_ms),
            message_retention: Duration::from_secs(args.message_retention_secs),
            tls,
            http,
            webhook_ca: args.webhook_ca,
            allow_http_webhooks: args.allow_http_webhooks,
            checkpoint_interval: Duration::from_millis(args.checkpoint_interval_ms),
            state_cache_bytes: args.state_cache_mb << 20,
            wal_segment_bytes: args.wal_segment_mb << 20,
            min_free_bytes: args.min_free_mb << 20,
            environment: env.environment,
            webhook_timeout: Duration::from_millis(args.webhook_timeout_ms),
            delivery: crate::delivery::DeliveryConfig {
                window_callbacks: args.callback_window,
                window_bytes: args.callback_window_mb << 20,
                high_water: args.callback_high_water,
            },
        })
    }

    /// File descriptors the HTTP front leaves to everything but its connections.
    pub fn fd_reserve(&self) -> u64 {
        let mirror_pool = self.database.as_ref().map_or(0, |_| self.mirror.pool_size);
        crate::listener::fds::reserve(self.sender.concurrency, mirror_pool)
    }

    /// The storage layout under the data directory.
    pub fn store_config(&self) -> coreq_storage::StoreConfig {
        let mut store = coreq_storage::StoreConfig::new(&self.data_dir);
        store.sled.cache_capacity_bytes = self.state_cache_bytes;
        store.wal.segment_bytes = self.wal_segment_bytes;
        if self.database.is_some() {
            // The WAL keeps every record the mirror has not confirmed.
            store
                .retaining_cursors
                .push(crate::replicator::MIRROR_CURSOR.to_owned());
        }
        store
    }
}

/// The HTTP front's limits, each within its bounds.
fn http_limits(args: &ServeArgs) -> Result<crate::listener::HttpLimits, ConfigError> {
    if !(1..=1_000_000).contains(&args.max_connections) {
        return Err(bad("--max-connections/COREQ_MAX_CONNECTIONS", "must be 1..=1000000"));
    }
    let millis = |value: u64, setting: &'static str| {
        if (100..=3_600_000).contains(&value) {
            Ok(Duration::from_millis(value))
        } else {
            Err(bad(setting, "must be 100..=3600000"))
        }
    };
    // One reservation is one semaphore call, counted in u32.
    if !(1..=4095).contains(&args.body_budget_mb) {
        return Err(bad("--body-budget-mb/COREQ_BODY_BUDGET_MB", "must be 1..=4095"));
    }
    if args.shutdown_timeout_ms > 3_600_000 {
        return Err(bad(
            "--shutdown-timeout-ms/COREQ_SHUTDOWN_TIMEOUT_MS",
            "must be at most 3600000",
        ));
    }
    Ok(crate::listener::HttpLimits {
        max_connections: args.max_connections,
        header_timeout: millis(args.header_timeout_ms, "--header-timeout-ms/COREQ_HEADER_TIMEOUT_MS")?,
        body_timeout: millis(args.body_timeout_ms, "--body-timeout-ms/COREQ_BODY_TIMEOUT_MS")?,
        idle_timeout: millis(args.idle_timeout_ms, "--idle-timeout-ms/COREQ_IDLE_TIMEOUT_MS")?,
        body_budget_bytes: args.body_budget_mb << 20,
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout_ms),
    })
}

fn validate_api_key(key: Option<String>) -> Result<Option<String>, ConfigError> {
    match key {
        Some(k) if !(12..=128).contains(&k.chars().count()) => Err(bad(
            "WA_API_KEY",
            format!("must be 12 to 128 characters, got {}", k.chars().count()),
        )),
        other => Ok(other),
    }
}

fn database_config(url: Option<&str>, db: &OnPremDbEnv) -> Result<Option<DatabaseConfig>, ConfigError> {
    let name_prefix = db.name_prefix.clone().unwrap_or_default();
    if !name_prefix.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') || name_prefix.len() > 32 {
        return Err(bad("WA_DB_NAME_PREFIX", "only letters, digits and _ (at most 32)"));
    }
    if let Some(url) = url {
        let parsed = url::Url::parse(url)
            .map_err(|e| bad("--database-url/COREQ_DATABASE_URL", format!("malformed URL: {e}")))?;
        let engine = match parsed.scheme() {
            "postgres" | "postgresql" => DbEngine::Postgres,
            "mysql" | "mariadb" => DbEngine::Mysql,
            other => {
                return Err(bad(
                    "--database-url/COREQ_DATABASE_URL",
                    format!("scheme {other:?} is not postgres:// or mysql://"),
                ));
            }
        };
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(bad("--database-url/COREQ_DATABASE_URL", "no host"));
        }
        return Ok(Some(DatabaseConfig {
            engine,
            url: url.to_owned(),
            name_prefix,
        }));
    }
    let Some(engine) = db.engine.as_deref() else {
        return Ok(None);
    };
    let (engine, scheme, default_port) = match engine {
        "PGSQL" => (DbEngine::Postgres, "postgres", "5432"),
        "MYSQL" => (DbEngine::Mysql, "mysql", "3306"),
        other => return Err(bad("WA_DB_ENGINE", format!("{other:?} is not PGSQL or MYSQL"))),
    };
    let host = db
        .hostname
        .as_deref()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| bad("WA_DB_HOSTNAME", "required with WA_DB_ENGINE"))?;
    let port = db.port.as_deref().unwrap_or(default_port);
    port.parse::<u16>()
        .map_err(|_| bad("WA_DB_PORT", format!("{port:?} is not a port number")))?;
    let mut url =
        url::Url::parse(&format!("{scheme}://{host}:{port}/")).map_err(|e| bad("WA_DB_HOSTNAME", e.to_string()))?;
    if let Some(user) = &db.username {
        url.set_username(user)
            .map_err(|_| bad("WA_DB_USERNAME", "not usable in a URL"))?;
    }
    if let Some(password) = &db.password {
        url.set_password(Some(password))
            .map_err(|_| bad("WA_DB_PASSWORD", "not usable in a URL"))?;
    }
    Ok(Some(DatabaseConfig {
        engine,
        url: url.to_string(),
        name_prefix,
    }))
}

/// A URL with its user information and query values replaced by `****`, or `None` when
/// `value` is not a URL with a host.
pub fn masked_url(value: &str) -> Option<String> {
    let mut url = url::Url::parse(value).ok()?;
    if !url.has_host() {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        url.set_username("****").ok()?;
        url.set_password(None).ok()?;
    }
    if let Some(query) = url.query() {
        let masked: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}=****"),
                None => pair.to_owned(),
            })
            .collect();
        url.set_query(Some(&masked.join("&")));
    }
    Some(url.to_string())
}

fn gateway_url(kind: GatewayKind, url: Option<&str>) -> Result<Option<url::Url>, ConfigError> {
    match (kind, url) {
        (GatewayKind::Http, None) => Err(bad("--gateway-url/COREQ_GATEWAY_URL", "required with --gateway http")),
        (_, None) => Ok(None),
        (_, Some(u)) => {
            let parsed = url::Url::parse(u)
                .map_err(|e| bad("--gateway-url/COREQ_GATEWAY_URL", format!("malformed URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(bad("--gateway-url/COREQ_GATEWAY_URL", "must be http:// or https://"));
            }
            Ok(Some(parsed))
        }
    }
}

fn ensure_writable_dir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let probe = dir.join(".coreq-write-probe");
    std::fs::write(&probe, b"").map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

fn readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> ServeArgs {
        let cli = Cli::try_parse_from(["coreq", "serve", "--data-dir", dir.to_str().unwrap()]).unwrap();
        match cli.command {
            Command::Serve(a) => *a,
            _ => unreachable!("parsed `serve`"),
        }
    }

    fn refused(args: ServeArgs, env: EnvSecrets) -> ConfigError {
        Config::from_args(args, env).expect_err("refused")
    }

    #[test]
    fn defaults_validate_and_put_logs_under_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_args(args(dir.path()), EnvSecrets::default()).unwrap();
        assert_eq!(config.listen, "127.0.0.1:8080");
        assert_eq!(config.log_dir, dir.path().join("logs"));
        assert_eq!(config.gateway, GatewayKind::None);
        assert!(config.database.is_none());
    }

    #[test]
    fn a_gateway_backoff_above_its_maximum_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.gateway_backoff_ms = 70_000;
        assert_eq!(
            refused(a, EnvSecrets::default()).setting,
            "--gateway-backoff-ms/COREQ_GATEWAY_BACKOFF_MS"
        );
    }

    #[test]
    fn the_gateway_retries_back_off_to_at_most_a_minute_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_args(args(dir.path()), EnvSecrets::default()).unwrap();
        assert_eq!(config.sender.max_backoff, Duration::from_secs(60));
        assert_eq!(config.message_retention, Duration::from_secs(30 * 86_400));
    }

    #[test]
    fn short_api_key_is_refused_naming_wa_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let env = EnvSecrets {
            api_key: Some("short".into()),
            ..Default::default()
        };
        assert_eq!(refused(args(dir.path()), env).setting, "WA_API_KEY");
    }

    #[test]
    fn long_api_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let env = EnvSecrets {
            api_key: Some("k".repeat(129)),
            ..Default::default()
        };
        assert_eq!(refused(args(dir.path()), env).setting, "WA_API_KEY");
    }

    #[test]
    fn unwritable_data_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        let err = refused(args(&file.join("sub")), EnvSecrets::default());
        assert_eq!(err.setting, "--data-dir/COREQ_DATA_DIR");
    }

    #[test]
    fn unknown_gateway_is_refused_by_the_parser() {
        assert!(Cli::try_parse_from(["coreq", "serve", "--gateway", "carrier-pigeon"]).is_err());
    }

    #[test]
    fn http_gateway_without_url_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.gateway = GatewayKind::Http;
        assert_eq!(
            refused(a, EnvSecrets::default()).setting,
            "--gateway-url/COREQ_GATEWAY_URL"
        );
    }

    #[test]
    fn malformed_database_url_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for url in ["not a url", "redis://localhost/0", "postgres:///nohost"] {
            let mut a = args(dir.path());
            a.database_url = Some(url.into());
            assert_eq!(
                refused(a, EnvSecrets::default()).setting,
                "--database-url/COREQ_DATABASE_URL",
                "{url}"
            );
        }
    }

    #[test]
    fn on_premises_db_variables_make_a_url() {
        let dir = tempfile::tempdir().unwrap();
        let db = OnPremDbEnv {
            engine: Some("MYSQL".into()),
            hostname: Some("db.local".into()),
            username: Some("wa".into()),
            password: Some("p@ss".into()),
            name_prefix: Some("wa_".into()),
            ..Default::default()
        };
        let config = Config::from_args(
            args(dir.path()),
            EnvSecrets {
                db,
                ..Default::default()
            },
        )
        .unwrap();
        let database = config.database.unwrap();
        assert_eq!(database.engine, DbEngine::Mysql);
        assert_eq!(database.url, "mysql://wa:p%40ss@db.local:3306/");
        assert_eq!(database.name_prefix, "wa_");
    }

    #[test]
    fn unknown_db_engine_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let db = OnPremDbEnv {
            engine: Some("ORACLE".into()),
            ..Default::default()
        };
        assert_eq!(
            refused(
                args(dir.path()),
                EnvSecrets {
                    db,
                    ..Default::default()
                }
            )
            .setting,
            "WA_DB_ENGINE"
        );
    }

    #[test]
    fn tls_cert_without_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.tls_cert = Some(dir.path().join("cert.pem"));
        assert_eq!(refused(a, EnvSecrets::default()).setting, "--tls-key/COREQ_TLS_KEY");
    }

    #[test]
    fn the_http_front_has_bounded_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let http = Config::from_args(args(dir.path()), EnvSecrets::default()).unwrap().http;
        assert_eq!(http.max_connections, 1024);
        assert_eq!(http.header_timeout, Duration::from_secs(10));
        assert_eq!(http.body_budget_bytes, 256 << 20);
    }

    #[test]
    fn a_body_budget_over_4095_mib_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.body_budget_mb = 4096;
        assert_eq!(
            refused(a, EnvSecrets::default()).setting,
            "--body-budget-mb/COREQ_BODY_BUDGET_MB"
        );
    }

    #[test]
    fn debug_output_masks_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.database_url = Some("postgres://u:hunter2@localhost/db".into());
        let env = EnvSecrets {
            api_key: Some("abcdefghijklmnop".into()),
            admin_password: Some("Secret1!".into()),
            ..Default::default()
        };
        let text = format!("{:?}", Config::from_args(a, env).unwrap());
        for secret in ["hunter2", "abcdefghijklmnop", "Secret1!"] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
    }
}
