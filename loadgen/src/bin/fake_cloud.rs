//! `coreq-fake-cloud`: the fake WhatsApp Cloud API (`coreq_loadgen::cloud`) as a process, for
//! the README's migration tour and manual runs. It prints one JSON line with its URLs, then
//! serves until SIGINT or SIGTERM; tests and scripts steer it through `/_fake/…` (see
//! `loadgen/README.md`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coreq_loadgen::cloud::{CloudConfig, FakeCloud, RetryPolicy, StatusDelays};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "coreq-fake-cloud",
    version,
    about = "A fake WhatsApp Cloud API for tests and demos"
)]
struct Args {
    /// Address to listen on (port 0: any free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Serve HTTPS with a certificate from the test CA in --ca-dir.
    #[arg(long, requires = "ca_dir")]
    tls: bool,
    /// Directory of the test CA (ca.pem, ca-key.pem), created or reused.
    #[arg(long, env = "COREQ_FAKE_CLOUD_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// The bearer token sends must carry.
    #[arg(long, env = "COREQ_FAKE_CLOUD_ACCESS_TOKEN", hide_env_values = true)]
    access_token: Option<String>,
    /// The app secret that signs notifications (X-Hub-Signature-256).
    #[arg(long, env = "COREQ_FAKE_CLOUD_APP_SECRET", hide_env_values = true)]
    app_secret: Option<String>,
    #[arg(long)]
    phone_number_id: Option<String>,
    #[arg(long)]
    display_phone_number: Option<String>,
    #[arg(long)]
    waba_id: Option<String>,
    /// Where notifications go (also settable later: PUT /_fake/callback).
    #[arg(long)]
    callback_url: Option<String>,
    /// Extra CA (PEM file) to trust for an https:// callback URL.
    #[arg(long)]
    callback_ca: Option<PathBuf>,
    /// Delay before each automatic status (sent, delivered, read), in milliseconds.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    status_delay_ms: u64,
    /// Attempts per notification before giving up (Meta retries for days).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    webhook_attempts: u32,
    /// First retry backoff, doubled per attempt up to --webhook-max-backoff-ms.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    webhook_backoff_ms: u64,
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    webhook_max_backoff_ms: u64,
    /// A notification not answered by then counts as failed.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=600_000))]
    webhook_timeout_ms: u64,
}

fn config(args: Args) -> Result<CloudConfig, String> {
    let defaults = CloudConfig::default();
    let callback_ca_pem = match &args.callback_ca {
        Some(path) => {
            Some(std::fs::read_to_string(path).map_err(|e| format!("--callback-ca {}: {e}", path.display()))?)
        }
        None => None,
    };
    let delay = Duration::from_millis(args.status_delay_ms);
    Ok(CloudConfig {
        listen: args.listen,
        tls: args.tls,
        ca_dir: args.ca_dir,
        access_token: args.access_token.unwrap_or(defaults.access_token),
        app_secret: args.app_secret.unwrap_or(defaults.app_secret),
        phone_number_id: args.phone_number_id.unwrap_or(defaults.phone_number_id),
        display_phone_number: args.display_phone_number.unwrap_or(defaults.display_phone_number),
        waba_id: args.waba_id.unwrap_or(defaults.waba_id),
        callback_url: args.callback_url,
        callback_ca_pem,
        status_delays: StatusDelays {
            sent: delay,
            delivered: delay,
            read: delay,
        },
        retry: RetryPolicy {
            max_attempts: args.webhook_attempts,
            first_backoff: Duration::from_millis(args.webhook_backoff_ms),
            max_backoff: Duration::from_millis(args.webhook_max_backoff_ms),
            request_timeout: Duration::from_millis(args.webhook_timeout_ms),
        },
    })
}

async fn stopped() {
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let config = match config(Args::parse()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("coreq-fake-cloud: {e}");
            return ExitCode::from(2);
        }
    };
    let cloud = match FakeCloud::start(config).await {
        Ok(cloud) => cloud,
        Err(e) => {
            eprintln!("coreq-fake-cloud: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let ready = json!({
        "graph_url": cloud.graph_url(),
        "control_url": cloud.control_url(),
        "phone_number_id": cloud.phone_number_id(),
        "ca": cloud.ca_path(),
    });
    println!("{ready}");
    stopped().await;
    cloud.shutdown().await;
    ExitCode::SUCCESS
}
