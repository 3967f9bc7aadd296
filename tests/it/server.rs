//! `coreq::run` in-process on an ephemeral port, for tests over real HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use coreq::clock::{Clock, SystemClock};
use coreq::config::{Cli, Command, Config, EnvSecrets};

use crate::http;

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<Result<(), coreq::error::ServeError>>>,
}

/// The configuration of `coreq serve --data-dir <dir> <extra…>` with `env`.
pub fn config_with(dir: &Path, env: EnvSecrets, extra: &[&str]) -> Config {
    let args = ["coreq", "serve", "--data-dir", dir.to_str().unwrap()]
        .into_iter()
        .chain(extra.iter().copied());
    let cli = <Cli as clap::Parser>::try_parse_from(args).unwrap();
    let Command::Serve(args) = cli.command else {
        unreachable!()
    };
    Config::from_args(*args, env).unwrap()
}

impl TestServer {
    /// Starts `run` on its own runtime thread and waits until it is ready.
    pub fn start(dir: &Path, env: EnvSecrets) -> TestServer {
        TestServer::start_with(dir, env, &[])
    }

    /// Like [`TestServer::start`], with extra `serve` flags.
    pub fn start_with(dir: &Path, env: EnvSecrets, extra: &[&str]) -> TestServer {
        TestServer::start_with_clock(dir, env, extra, Arc::new(SystemClock))
    }

    /// Like [`TestServer::start_with`], on `clock`.
    pub fn start_with_clock(dir: &Path, env: EnvSecrets, extra: &[&str], clock: Arc<dyn Clock>) -> TestServer {
        let config = config_with(dir, env, extra);
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                let stopped = async move {
                    let _ = stop_rx.await;
                };
                coreq::run_with_clock(config, listener, stopped, clock).await
            })
        });
        // Ready once a route behind the readiness gate answers something other than 503.
        http::wait_for(addr, "/v1/ready-probe", 404, Duration::from_secs(20));
        TestServer {
            addr,
            stop: Some(stop_tx),
            handle: Some(handle),
        }
    }

    /// Stops gracefully and returns what `run` returned.
    pub fn stop(mut self) -> Result<(), coreq::error::ServeError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), coreq::error::ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.handle.take() {
            Some(h) => h.join().expect("server thread"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Starts the real `coreq serve` binary on `addr` over `dir` and waits until it is ready.
pub fn spawn_binary(dir: &Path, addr: SocketAddr) -> std::process::Child {
    spawn_binary_with(dir, addr, &[])
}

/// Like [`spawn_binary`], with extra environment variables (and without `COREQ_LOG`, so the
/// log level follows the settings).
pub fn spawn_binary_with(dir: &Path, addr: SocketAddr, envs: &[(&str, &str)]) -> std::process::Child {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_coreq"))
        .args(["serve", "--listen", &addr.to_string(), "--data-dir"])
        .arg(dir)
        .env_remove("COREQ_LOG")
        .envs(envs.iter().copied())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn coreq");
    http::wait_for(addr, "/v1/ready-probe", 404, Duration::from_secs(20));
    child
}

/// Enqueues `n` callbacks into the store in `dir` directly (the service must not be running),
/// with a webhook URL where nothing listens, so that they stay pending (without a URL coreq
/// drops callbacks, as the On-Premises API does).
pub fn seed_callbacks(dir: &Path, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (store, _) = coreq_storage::Store::open(coreq_storage::StoreConfig::new(dir)).unwrap();
        let settings = coreq::settings::AppSettings {
            webhook_url: Some("https://127.0.0.1:9/down".into()),
            callback_backoff_delay_ms: 600_000,
            ..Default::default()
        };
        let entry = (
            coreq::settings::KEY.to_owned(),
            Some(serde_json::to_vec(&settings).unwrap()),
        );
        store.put_settings(vec![entry]).await.unwrap();
        store
            .enqueue_callbacks(vec![b"{\"a\":1}".to_vec(); n], 0)
            .await
            .unwrap();
    });
}

/// Where the binary started by [`spawn_with_webhook`] delivers, and how.
pub struct Webhook {
    pub url: String,
    pub concurrency: u64,
    /// `callback_backoff_delay_ms`, `max_callback_backoff_delay_ms`.
    pub backoff_ms: (u64, u64),
}

/// The real binary with `http://` webhooks allowed and the admin password set, its webhook
/// configured; returns the child and the admin's Bearer value. Restart it with
/// [`respawn`] (the settings are stored).
pub fn spawn_with_webhook(dir: &Path, addr: SocketAddr, webhook: &Webhook) -> (std::process::Child, String) {
    let child = respawn(dir, addr);
    let admin = crate::session::admin(addr);
    let settings = serde_json::json!({
        "webhooks": { "url": webhook.url, "max_concurrent_requests": webhook.concurrency },
        "callback_backoff_delay_ms": webhook.backoff_ms.0,
        "max_callback_backoff_delay_ms": webhook.backoff_ms.1,
    });
    let reply = http::request(
        addr,
        "PATCH",
        "/v1/settings/application",
        &[("Authorization", &admin)],
        &settings.to_string(),
    );
    assert_eq!(reply.status, 200, "{}", reply.body);
    (child, admin)
}

/// Starts the binary again over `dir` (as [`spawn_with_webhook`] did).
pub fn respawn(dir: &Path, addr: SocketAddr) -> std::process::Child {
    let envs = [
        ("COREQ_ADMIN_PASSWORD", crate::session::ADMIN_PASSWORD),
        ("COREQ_ALLOW_HTTP_WEBHOOKS", "1"),
    ];
    spawn_binary_with(dir, addr, &envs)
}
