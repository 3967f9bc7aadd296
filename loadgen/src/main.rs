//! `coreq-loadgen`: drives a running coreq (or only its own webhook receiver, for the ceiling)
//! and reports throughput, end-to-end latency, duplicates, order violations and losses; with
//! `--messages` it sends messages instead (durable acceptance, or `--through-sim` to the
//! `delivered` callbacks). See `README.md` in this crate for recipes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use coreq_loadgen::ca::TestCa;
use coreq_loadgen::error::{Error, Result};
use coreq_loadgen::messages::{MAX_MESSAGES, MAX_TEXT_CHARS, MessageOptions, run_messages};
use coreq_loadgen::report::{self, Report};
use coreq_loadgen::run::{LoadOptions, Target, run_ceiling, run_coreq};
use coreq_loadgen::tracker::MAX_CALLBACKS;

/// Exit status when the run completed but found a problem (duplicates, order, losses).
const EXIT_PROBLEMS: u8 = 1;
/// Exit status when the run could not be carried out (flags, login, receiver).
const EXIT_ERROR: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "coreq-loadgen",
    version,
    about = "Load generator for coreq's callback delivery and messages"
)]
struct Args {
    /// coreq's base URL.
    #[arg(long, env = "COREQ_LOADGEN_TARGET", default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Extra CA (PEM) to trust for coreq's own API when it serves HTTPS.
    #[arg(long, env = "COREQ_LOADGEN_TARGET_CA")]
    target_ca: Option<PathBuf>,
    /// coreq user to log in as (needs the admin role to set the webhook).
    #[arg(long, env = "COREQ_LOADGEN_USER", default_value = "admin")]
    user: String,
    /// That user's password.
    #[arg(long, env = "COREQ_LOADGEN_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// coreq's webhooks.max_concurrent_requests (6, 12, 18 or 24); also the ceiling's requests in flight.
    #[arg(long, default_value_t = 24, value_parser = parse_webhook_concurrency)]
    webhook_concurrency: usize,
    /// Serve the webhook over HTTPS (coreq must trust <ca-dir>/ca.pem via COREQ_WEBHOOK_CA).
    #[arg(long)]
    tls: bool,
    /// Directory of the receiver's test CA (ca.pem, ca-key.pem), created or reused.
    #[arg(long, env = "COREQ_LOADGEN_CA_DIR")]
    ca_dir: Option<PathBuf>,
    /// Callbacks to send (at most; --duration may stop earlier).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=MAX_CALLBACKS))]
    count: u64,
    /// Stop sending after this many seconds.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=3600))]
    duration: u64,
    /// Callbacks per second, paced; flat out when absent.
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Enqueue requests (with --messages: POST /v1/messages requests) in flight.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1024))]
    concurrency: u64,
    /// Callbacks per enqueue request (1 to 1000).
    #[arg(long, conflicts_with = "messages", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=1000))]
    batch: u64,
    /// Size of each callback's JSON object, in bytes (at most 256 KiB); with --messages, of each
    /// POST /v1/messages body (at most 4096).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=262_144))]
    payload_bytes: u64,
    /// Seconds to wait, after the last enqueue (or message), for acknowledged callbacks (or the
    /// expected status callbacks) to arrive.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_timeout: u64,
    /// Print the final report as one JSON object.
    #[arg(long)]
    json: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
    /// Enqueue every callback while coreq's webhook points at a path of the receiver that
    /// answers 503, then point it at the real one: delivery is measured from a full backlog,
    /// without enqueues competing for the cores (coreq mode; end-to-end latency then includes
    /// the wait for the release).
    #[arg(long, conflicts_with_all = ["ceiling", "messages"])]
    prefill: bool,
    /// Do not fail the run for duplicate deliveries (at-least-once after a crash).
    #[arg(long)]
    allow_duplicates: bool,
    /// No coreq: POST the same bodies straight to the receiver, to measure its ceiling.
    #[arg(long, group = "mode")]
    ceiling: bool,
    /// The ceiling, then the coreq run, and their ratio.
    #[arg(long, group = "mode")]
    both: bool,
    /// Send messages (POST /v1/messages) instead of callbacks: durable acceptance, or with
    /// --through-sim on to the status callbacks.
    #[arg(long, group = "mode")]
    messages: bool,
    /// With --messages: coreq runs with --gateway sim; point its webhook at our receiver and
    /// measure until every accepted message's `delivered` callback arrived.
    #[arg(long, requires = "messages")]
    through_sim: bool,
    /// With --through-sim: turn off read callbacks (webhooks.message.read=false).
    #[arg(long, requires = "through_sim")]
    no_read: bool,
    /// Only create (or show) the CA in --ca-dir and print the path of ca.pem, for COREQ_WEBHOOK_CA.
    #[arg(long, group = "mode")]
    init_ca: bool,
}

fn parse_webhook_concurrency(s: &str) -> Result<usize, String> {
    match s.parse() {
        Ok(n @ (6 | 12 | 18 | 24)) => Ok(n),
        _ => Err("must be 6, 12, 18 or 24".to_string()),
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a positive number of callbacks per second".to_string()),
    }
}

impl Args {
    fn message_options(&self) -> Result<MessageOptions> {
        if self.through_sim && self.tls && self.ca_dir.is_none() {
            return Err(Error::Usage(
                "--tls through coreq needs --ca-dir: coreq must have been started with \
                 COREQ_WEBHOOK_CA=<ca-dir>/ca.pem (see --init-ca)"
                    .into(),
            ));
        }
        if self.count > MAX_MESSAGES {
            return Err(Error::Usage(format!("--messages: --count is at most {MAX_MESSAGES}")));
        }
        if self.payload_bytes > MAX_TEXT_CHARS as u64 {
            return Err(Error::Usage(format!(
                "--messages: --payload-bytes is at most {MAX_TEXT_CHARS}"
            )));
        }
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(MessageOptions {
            count: self.count,
            duration: Duration::from_secs(self.duration),
            rate: self.rate,
            concurrency: to_usize(self.concurrency),
            payload_bytes: to_usize(self.payload_bytes),
            through_sim: self.through_sim,
            read_callbacks: !self.no_read,
            webhook_concurrency: self.webhook_concurrency,
            tls: self.tls,
            ca_dir: self.ca_dir.clone(),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            progress: !self.quiet,
        })
    }

    fn load_options(&self) -> Result<LoadOptions> {
        let through_coreq = !self.ceiling;
        if through_coreq && self.tls && self.ca_dir.is_none() {
            return Err(Error::Usage(
                "--tls through coreq needs --ca-dir: coreq must have been started with \
                 COREQ_WEBHOOK_CA=<ca-dir>/ca.pem (see --init-ca)"
                    .into(),
            ));
        }
        // Both are bounded by clap's ranges, far below usize::MAX.
        let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        Ok(LoadOptions {
            count: self.count,
            duration: Duration::from_secs(self.duration),
            rate: self.rate,
            concurrency: to_usize(self.concurrency),
            batch: self.batch,
            payload_bytes: to_usize(self.payload_bytes),
            webhook_concurrency: self.webhook_concurrency,
            tls: self.tls,
            ca_dir: self.ca_dir.clone(),
            drain_timeout: Duration::from_secs(self.drain_timeout),
            progress: !self.quiet,
            prefill: self.prefill,
        })
    }

    fn target(&self) -> Result<Target> {
        let password = self.password.clone().ok_or_else(|| {
            Error::Usage("--password (or COREQ_LOADGEN_PASSWORD) is needed to log in to coreq".into())
        })?;
        Ok(Target {
            base: self.target.clone(),
            user: self.user.clone(),
            password,
            ca: self.target_ca.clone(),
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = if args.init_ca {
        init_ca(&args)
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(Error::Receiver)
            .and_then(|runtime| runtime.block_on(run(&args)))
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("coreq-loadgen: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn init_ca(args: &Args) -> Result<ExitCode> {
    let dir = args
        .ca_dir
        .as_deref()
        .ok_or_else(|| Error::Usage("--init-ca needs --ca-dir".into()))?;
    TestCa::load_or_create(dir)?;
    println!("{}", dir.join(coreq_loadgen::ca::CA_CERT_FILE).display());
    Ok(ExitCode::SUCCESS)
}

async fn run(args: &Args) -> Result<ExitCode> {
    if args.messages {
        let opts = args.message_options()?;
        let report = run_messages(&opts, &args.target()?).await?;
        print(args, &report.to_json(), &report.human());
        return Ok(verdict(&report.problems(args.allow_duplicates)));
    }
    let opts = args.load_options()?;
    let problems = if args.ceiling {
        let ceiling = run_ceiling(&opts).await?;
        print(args, &ceiling.to_json(), &ceiling.human());
        ceiling.problems(args.allow_duplicates)
    } else if args.both {
        let target = args.target()?;
        let ceiling = run_ceiling(&opts).await?;
        let coreq = run_coreq(&opts, &target).await?;
        print(
            args,
            &report::both_json(&ceiling, &coreq),
            &report::both_human(&ceiling, &coreq),
        );
        [ceiling, coreq]
            .iter()
            .flat_map(|r: &Report| r.problems(args.allow_duplicates))
            .collect()
    } else {
        let coreq = run_coreq(&opts, &args.target()?).await?;
        print(args, &coreq.to_json(), &coreq.human());
        coreq.problems(args.allow_duplicates)
    };
    Ok(verdict(&problems))
}

/// Prints the problems found; the exit status they make.
fn verdict(problems: &[String]) -> ExitCode {
    for problem in problems {
        eprintln!("coreq-loadgen: FAILED: {problem}");
    }
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_PROBLEMS)
    }
}

fn print(args: &Args, json: &serde_json::Value, human: &str) {
    if args.json {
        println!("{json}");
    } else {
        print!("{human}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_are_validated() {
        let parse = |extra: &[&str]| Args::try_parse_from([&["coreq-loadgen"], extra].concat());
        assert!(parse(&["--webhook-concurrency", "7"]).is_err());
        assert!(parse(&["--batch", "1001"]).is_err());
        assert!(parse(&["--rate", "0"]).is_err());
        assert!(parse(&["--ceiling", "--both"]).is_err());
        let args = parse(&["--tls", "--webhook-concurrency", "12"]).expect("parses");
        assert!(
            matches!(args.load_options(), Err(Error::Usage(_))),
            "--tls through coreq needs --ca-dir"
        );
        let args = parse(&["--tls", "--ceiling", "--count", "5"]).expect("parses");
        let opts = args.load_options().expect("the ceiling needs no CA dir");
        assert_eq!((opts.count, opts.webhook_concurrency, opts.batch), (5, 24, 1));
    }

    #[test]
    fn messages_flags_are_validated() {
        let parse = |extra: &[&str]| Args::try_parse_from([&["coreq-loadgen"], extra].concat());
        assert!(parse(&["--through-sim"]).is_err(), "--through-sim needs --messages");
        assert!(
            parse(&["--messages", "--no-read"]).is_err(),
            "--no-read needs --through-sim"
        );
        assert!(parse(&["--messages", "--ceiling"]).is_err());
        assert!(parse(&["--messages", "--batch", "10"]).is_err());
        assert!(parse(&["--messages", "--prefill"]).is_err());
        let args = parse(&["--messages", "--count", "3000000"]).expect("parses");
        assert!(
            matches!(args.message_options(), Err(Error::Usage(_))),
            "too many messages"
        );
        let args = parse(&["--messages", "--payload-bytes", "5000"]).expect("parses");
        assert!(matches!(args.message_options(), Err(Error::Usage(_))), "text too long");
        let args = parse(&["--messages", "--through-sim", "--tls"]).expect("parses");
        assert!(
            matches!(args.message_options(), Err(Error::Usage(_))),
            "--tls needs --ca-dir"
        );
        let args = parse(&["--messages", "--through-sim", "--no-read", "--concurrency", "64"]).expect("parses");
        let opts = args.message_options().expect("valid");
        assert!(opts.through_sim && !opts.read_callbacks);
        assert_eq!(
            (opts.concurrency, opts.webhook_concurrency, opts.count),
            (64, 24, 10_000)
        );
        let opts = parse(&["--messages"])
            .expect("parses")
            .message_options()
            .expect("valid");
        assert!(!opts.through_sim && opts.read_callbacks);
    }
}
