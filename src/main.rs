//! The `coreq` binary: parse, validate, then hand over to `coreq::run`. The only place that
//! reads the environment (through clap and `secrets_from_env`).

use std::process::ExitCode;

use clap::Parser;
use coreq::config::{Cli, Command, Config, EnvSecrets, MirrorAction, OnPremDbEnv};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line naming the setting (clap's own message spans several).
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("unusable arguments")
                .trim_start_matches("error: ");
            eprintln!("coreq: invalid configuration: {first}");
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Verify { data_dir } => verify(&data_dir),
        Command::Mirror {
            action: MirrorAction::Verify(args),
        } => mirror_verify(*args),
    }
}

fn secrets_from_env() -> EnvSecrets {
    let var = |name: &str| std::env::var(name).ok();
    EnvSecrets {
        api_key: var("WA_API_KEY"),
        admin_password: var("COREQ_ADMIN_PASSWORD"),
        db: OnPremDbEnv {
            engine: var("WA_DB_ENGINE"),
            hostname: var("WA_DB_HOSTNAME"),
            port: var("WA_DB_PORT"),
            username: var("WA_DB_USERNAME"),
            password: var("WA_DB_PASSWORD"),
            name_prefix: var("WA_DB_NAME_PREFIX"),
        },
        environment: std::env::vars()
            .filter(|(name, _)| {
                name.starts_with("COREQ_")
                    || name.starts_with("WA_")
                    || matches!(name.as_str(), "LANG" | "LC_ALL" | "LC_MESSAGES")
            })
            .collect(),
    }
}

fn serve(args: coreq::config::ServeArgs) -> ExitCode {
    let config = match Config::from_args(args, secrets_from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("coreq: {e}");
            return ExitCode::from(2);
        }
    };
    let pinned_filter = std::env::var("COREQ_LOG").ok();
    if let Err(e) = coreq::telemetry::init(&config.log_dir, pinned_filter.as_deref()) {
        eprintln!("coreq: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coreq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&config.listen).await?;
        coreq::run(config, listener, coreq::shutdown_signal()).await
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "coreq stopped");
            eprintln!("coreq: {e}");
            ExitCode::FAILURE
        }
    }
}

fn verify(data_dir: &std::path::Path) -> ExitCode {
    let config = coreq_storage::StoreConfig::new(data_dir);
    let report = coreq_wal::Wal::<coreq_storage::Change>::open(config.wal).and_then(|(wal, _)| wal.verify());
    match report {
        Ok(report) => {
            println!(
                "segments {} records {} bytes {} first {:?} last {:?} damaged {} gaps {:?}",
                report.segments,
                report.records,
                report.bytes,
                report.first_lsn,
                report.last_lsn,
                report.damage.len(),
                report.gaps
            );
            for (segment, damage) in &report.damage {
                println!(
                    "damaged {} offset {} len {} {}",
                    segment.display(),
                    damage.offset,
                    damage.len,
                    damage.reason
                );
            }
            if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("coreq verify: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `coreq mirror verify`: prints the comparison; exit 0 when the mirror equals the local
/// state, 1 on a difference or an error, 2 on a bad configuration.
fn mirror_verify(args: coreq::config::ServeArgs) -> ExitCode {
    let config = match Config::from_args(args, secrets_from_env()) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("coreq: {e}");
            return ExitCode::from(2);
        }
    };
    // sqlx's TLS uses the process's rustls provider, as the webhook client does.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coreq: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(coreq::replicator::verify::verify_data_dir(&config)) {
        Ok(report) => {
            let compared: Vec<String> = report.compared.iter().map(|(t, n)| format!("{t} {n}")).collect();
            println!(
                "mirror at lsn {}; compared {}; differences {}",
                report.mirrored_lsn,
                compared.join(", "),
                report.differences.len()
            );
            for line in &report.differences {
                println!("{line}");
            }
            if report.differences.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("coreq mirror verify: {e}");
            ExitCode::FAILURE
        }
    }
}
