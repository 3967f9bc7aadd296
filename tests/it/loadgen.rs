//! The load generator against the real coreq (in-process), in the `--prefill` mode whose
//! delivery numbers BENCHMARKS.md quotes.

use std::time::Duration;

use coreq_loadgen::run::{LoadOptions, Target, run_coreq};

use crate::server::TestServer;
use crate::session::{self, ADMIN_PASSWORD};

#[test]
fn a_prefilled_run_holds_the_backlog_then_delivers_every_callback_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), session::env(), &["--allow-http-webhooks"]);
    let options = LoadOptions {
        count: 3000,
        duration: Duration::from_secs(120),
        rate: None,
        concurrency: 2,
        batch: 100,
        payload_bytes: 64,
        webhook_concurrency: 6,
        tls: false,
        ca_dir: None,
        drain_timeout: Duration::from_secs(120),
        progress: false,
        prefill: true,
    };
    let target = Target {
        base: format!("http://{}", server.addr),
        user: "admin".into(),
        password: ADMIN_PASSWORD.into(),
        ca: None,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let report = runtime.block_on(run_coreq(&options, &target)).unwrap();

    assert!(report.setup.prefilled);
    assert_eq!(
        report.early_arrivals, 0,
        "a callback reached the webhook before the release"
    );
    assert!(report.drained, "not every acknowledged callback arrived: {report:?}");
    let counts = report.counts;
    assert_eq!((counts.acked, counts.delivered), (3000, 3000));
    assert_eq!((counts.duplicates, counts.foreign), (0, 0));
}
