//! The ceiling mode end to end (no coreq needed): the load generator's client POSTs callbacks
//! straight to its own receiver, and the books must balance.

use std::time::Duration;

use coreq_loadgen::report::Mode;
use coreq_loadgen::run::{LoadOptions, run_ceiling};

fn options(count: u64, tls: bool) -> LoadOptions {
    LoadOptions {
        count,
        duration: Duration::from_secs(60),
        rate: None,
        concurrency: 4,
        batch: 1,
        payload_bytes: 300,
        webhook_concurrency: 6,
        tls,
        ca_dir: None,
        drain_timeout: Duration::from_secs(10),
        progress: false,
        prefill: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ceiling_delivers_everything_once_in_order_over_https() {
    let report = run_ceiling(&options(500, true)).await.expect("ceiling runs");
    assert_eq!(report.mode, Mode::Ceiling);
    let c = report.counts;
    assert_eq!(
        (c.sent, c.acked, c.delivered, c.failed),
        (500, 500, 500, 0),
        "{report:?}"
    );
    assert_eq!(
        (c.duplicates, c.order_violations, c.foreign, report.lost()),
        (0, 0, 0, 0)
    );
    assert!(report.drained && report.errors.is_empty());
    assert!(report.delivery_per_sec() > 0.0 && report.enqueue_per_sec() > 0.0);
    let latency = report.latency.expect("latency recorded");
    assert!(latency.p50_ms <= latency.p99_ms && latency.p99_ms <= latency.max_ms);
    assert!(report.problems(false).is_empty());
    let json = report.to_json();
    assert_eq!(json["delivered"], 500);
    assert_eq!(json["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_ceiling_keeps_its_rate_and_stops_at_its_deadline() {
    // 200/s for at most 1 s: about 200 callbacks, far fewer than the 10 000 asked for.
    let mut opts = options(10_000, false);
    opts.rate = Some(200.0);
    opts.duration = Duration::from_secs(1);
    let started = std::time::Instant::now();
    let report = run_ceiling(&opts).await.expect("ceiling runs");
    assert!(started.elapsed() < Duration::from_secs(10), "bounded by --duration");
    let c = report.counts;
    assert!((150..=201).contains(&c.sent), "{c:?}");
    assert_eq!((c.acked, c.delivered, report.lost()), (c.sent, c.sent, 0));
    assert!(report.enqueue_per_sec() < 260.0, "paced: {}", report.enqueue_per_sec());
}
