//! Every metric coreq exports, in one table, and the process's Prometheus recorder.
//!
//! Metrics are recorded through the `metrics` facade: events where they happen (HTTP requests
//! here, WAL commits in `coreq-storage`, checkpoints in the server), levels (queue sizes, WAL
//! size, free space) at scrape time from the store ([`Levels`]). metrics-exporter-prometheus
//! renders them; `/metrics` and `/v1/stats/*` serve that text on our own router.
//!
//! The recorder is process-wide (the facade's is global). Tests that run several servers in
//! one process share it: levels are written and rendered under one lock, so each scrape shows
//! the levels of the server that answered it.

use std::sync::{Mutex, OnceLock};

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Which stats node shows a metric (`/metrics` shows both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    App,
    Db,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One exported metric family.
#[derive(Debug)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub area: Area,
    pub labels: &'static str,
    pub help: &'static str,
}

pub const HTTP_REQUESTS: &str = "coreq_http_requests_total";
pub const HTTP_REQUEST_SECONDS: &str = "coreq_http_request_duration_seconds";
pub const CHECKPOINT_SECONDS: &str = "coreq_checkpoint_duration_seconds";
/// The On-Premises `callback_requests_duration_ms`, in seconds as Prometheus requires (the JSON
/// stats also show it under its On-Premises name, in milliseconds: see `exposition`).
pub const CALLBACK_REQUEST_SECONDS: &str = "callback_requests_duration_seconds";
pub const CALLBACK_DELIVERY_SECONDS: &str = "coreq_callback_delivery_latency_seconds";
pub const CALLBACK_ATTEMPTS: &str = "coreq_callback_attempts_total";
pub const CALLBACK_RETRIES: &str = "coreq_callback_retries_total";
pub const CALLBACKS_DROPPED: &str = "coreq_callbacks_dropped_total";
/// On-Premises name; a gauge, since Prometheus wants counters to end in `_total`.
pub const IN_MESSAGE_PERSISTED: &str = "in_message_persisted";
pub const GATEWAY_ATTEMPTS: &str = "coreq_gateway_attempts_total";

const fn def(name: &'static str, kind: Kind, area: Area, labels: &'static str, help: &'static str) -> MetricDef {
    MetricDef {
        name,
        kind,
        area,
        labels,
        help,
    }
}

/// The catalog. README.md lists the same rows (a test keeps the two in step).
pub const CATALOG: &[MetricDef] = &[
    // Names kept from the On-Premises API.
    def(
        "callback_queue_size",
        Kind::Gauge,
        Area::App,
        "",
        "Callbacks waiting for the webhook, not counting those in flight.",
    ),
    def(
        "pending_callbacks",
        Kind::Gauge,
        Area::App,
        "",
        "Callbacks accepted and not yet delivered (in flight included).",
    ),
    def(
        "pending_messages",
        Kind::Gauge,
        Area::App,
        "",
        "Outgoing messages accepted and not yet taken by the gateway.",
    ),
    def(
        "out_message_persisted",
        Kind::Gauge,
        Area::App,
        "",
        "Outgoing messages held in the message store.",
    ),
    def(
        IN_MESSAGE_PERSISTED,
        Kind::Gauge,
        Area::App,
        "",
        "Inbound messages persisted (their callback durable) since the process started.",
    ),
    def(
        "db_pending_callbacks",
        Kind::Gauge,
        Area::Db,
        "",
        "Pending callbacks in the durable store.",
    ),
    def(
        "db_pending_messages",
        Kind::Gauge,
        Area::Db,
        "",
        "Outgoing messages in the durable store not yet taken by the gateway.",
    ),
    def(
        "db_messages",
        Kind::Gauge,
        Area::Db,
        "type",
        "Messages in the durable store, by type (outgoing).",
    ),
    def(
        CALLBACK_REQUEST_SECONDS,
        Kind::Histogram,
        Area::App,
        "result, type",
        "Webhook requests by result (success, the HTTP status, timeout, connect_error, transport_error) and callback type (inbound_message, status_change, service, other).",
    ),
    // coreq's own.
    def(
        GATEWAY_ATTEMPTS,
        Kind::Counter,
        Area::App,
        "result",
        "Sends of outgoing messages to the gateway, by result (accepted, failed).",
    ),
    def(
        CALLBACK_DELIVERY_SECONDS,
        Kind::Histogram,
        Area::App,
        "",
        "Seconds from a callback's enqueue to the webhook's 200.",
    ),
    def(
        CALLBACK_ATTEMPTS,
        Kind::Counter,
        Area::App,
        "result",
        "Webhook delivery attempts by result.",
    ),
    def(
        CALLBACK_RETRIES,
        Kind::Counter,
        Area::App,
        "",
        "Delivery attempts of callbacks that had failed before.",
    ),
    def(
        CALLBACKS_DROPPED,
        Kind::Counter,
        Area::App,
        "reason",
        "Callbacks removed without delivery: no_webhook_url, or deleted by an operator.",
    ),
    def(
        "coreq_callbacks_in_flight",
        Kind::Gauge,
        Area::App,
        "",
        "Webhook requests in flight.",
    ),
    def(
        "coreq_callback_oldest_pending_age_seconds",
        Kind::Gauge,
        Area::App,
        "",
        "Age of the oldest pending callback (0 when none).",
    ),
    def(
        "coreq_build_info",
        Kind::Gauge,
        Area::App,
        "version",
        "Always 1; the label carries the coreq version.",
    ),
    def(
        HTTP_REQUESTS,
        Kind::Counter,
        Area::App,
        "method, route, status",
        "HTTP API requests answered, by route template and status.",
    ),
    def(
        HTTP_REQUEST_SECONDS,
        Kind::Histogram,
        Area::App,
        "method, route",
        "Seconds from a request's arrival to its response.",
    ),
    def(
        coreq_storage::WAL_APPEND_SECONDS,
        Kind::Histogram,
        Area::App,
        "",
        "Seconds from submitting a durable write to the WAL until its records are on disk (what an acknowledgement waits for).",
    ),
    def(
        "coreq_wal_fsyncs_total",
        Kind::Counter,
        Area::App,
        "",
        "fdatasync calls made by the WAL's group commit since start.",
    ),
    def(
        "coreq_wal_bytes",
        Kind::Gauge,
        Area::App,
        "",
        "Bytes in the WAL's segment files.",
    ),
    def(
        "coreq_wal_segments",
        Kind::Gauge,
        Area::App,
        "",
        "WAL segment files on disk.",
    ),
    def(
        "coreq_wal_durable_lsn",
        Kind::Gauge,
        Area::App,
        "",
        "Last log sequence number known to be on disk.",
    ),
    def(
        "coreq_wal_quarantined_total",
        Kind::Counter,
        Area::App,
        "",
        "Damaged WAL regions moved to quarantine since start.",
    ),
    def(
        CHECKPOINT_SECONDS,
        Kind::Histogram,
        Area::App,
        "",
        "Seconds a state checkpoint takes (flush, fsync, WAL truncation).",
    ),
    def(
        "coreq_free_space_bytes",
        Kind::Gauge,
        Area::App,
        "volume",
        "Bytes available to coreq on the data and log volumes; writes are refused under the minimum.",
    ),
    def(
        crate::replicator::MIRRORED_LSN,
        Kind::Gauge,
        Area::Db,
        "",
        "Last WAL record the mirror database confirmed (with a mirror configured).",
    ),
    def(
        crate::replicator::LAG_RECORDS,
        Kind::Gauge,
        Area::Db,
        "",
        "WAL records not yet applied to the mirror database.",
    ),
    def(
        crate::replicator::LAG_SECONDS,
        Kind::Gauge,
        Area::Db,
        "",
        "Seconds the oldest record not yet mirrored has been durable (0 when caught up).",
    ),
    def(
        crate::replicator::APPLY_SECONDS,
        Kind::Histogram,
        Area::Db,
        "",
        "Seconds to apply one batch of WAL records to the mirror (one SQL transaction).",
    ),
    def(
        crate::replicator::RECORDS_APPLIED,
        Kind::Counter,
        Area::Db,
        "",
        "WAL records applied to the mirror database.",
    ),
    def(
        crate::replicator::ERRORS,
        Kind::Counter,
        Area::Db,
        "",
        "Mirror sessions that failed (connection, statement, schema or position errors); each is retried.",
    ),
];

/// Buckets for latencies in seconds: 100 µs to 10 s.
const SECONDS_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();
static SCRAPE: Mutex<()> = Mutex::new(());

/// The process's recorder, installed on first use with every metric described.
pub fn recorder() -> &'static PrometheusHandle {
    RECORDER.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
            .expect("the exporter refuses only an empty bucket list; ours is a non-empty constant");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            // Someone installed another recorder first (an embedding program): render ours,
            // empty but well-formed, rather than fail the scrape.
            tracing::warn!("a metrics recorder was already installed; /metrics shows only levels");
        }
        for m in CATALOG {
            match m.kind {
                Kind::Counter => describe_counter!(m.name, m.help),
                Kind::Gauge => describe_gauge!(m.name, m.help),
                Kind::Histogram => describe_histogram!(m.name, m.help),
            }
        }
        gauge!("coreq_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
        handle
    })
}

/// The levels a scrape reports, read from the answering server's store.
#[derive(Debug, Default, Clone)]
pub struct Levels {
    pub pending_callbacks: u64,
    pub in_flight_callbacks: u64,
    pub pending_messages: u64,
    pub stored_messages: u64,
    pub oldest_pending_age_seconds: f64,
    pub wal: Option<coreq_wal::WalStats>,
    pub free_space: Vec<(&'static str, u64)>,
    /// The replicator's view, when mirroring.
    pub mirror: Option<crate::replicator::ReplicationStatus>,
}

/// Sets the levels (when the store is up) and renders everything as Prometheus text,
/// atomically with respect to other scrapes.
pub fn scrape(levels: Option<&Levels>) -> String {
    let handle = recorder();
    let _one_scrape = SCRAPE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(levels) = levels {
        set_levels(levels);
    }
    handle.render()
}

fn set_levels(levels: &Levels) {
    let waiting = levels.pending_callbacks.saturating_sub(levels.in_flight_callbacks);
    gauge!("callback_queue_size").set(waiting as f64);
    gauge!("pending_callbacks").set(levels.pending_callbacks as f64);
    gauge!("coreq_callbacks_in_flight").set(levels.in_flight_callbacks as f64);
    gauge!("coreq_callback_oldest_pending_age_seconds").set(levels.oldest_pending_age_seconds);
    gauge!("pending_messages").set(levels.pending_messages as f64);
    gauge!("out_message_persisted").set(levels.stored_messages as f64);
    gauge!("db_pending_callbacks").set(levels.pending_callbacks as f64);
    gauge!("db_pending_messages").set(levels.pending_messages as f64);
    gauge!("db_messages", "type" => "outgoing").set(levels.stored_messages as f64);
    if let Some(wal) = &levels.wal {
        counter!("coreq_wal_fsyncs_total").absolute(wal.fsyncs);
        gauge!("coreq_wal_bytes").set(wal.bytes as f64);
        gauge!("coreq_wal_segments").set(wal.segments as f64);
        gauge!("coreq_wal_durable_lsn").set(wal.durable_lsn as f64);
        counter!("coreq_wal_quarantined_total").absolute(wal.quarantined);
    }
    if let Some(mirror) = &levels.mirror {
        gauge!(crate::replicator::MIRRORED_LSN).set(mirror.mirrored_lsn.unwrap_or(0) as f64);
        gauge!(crate::replicator::LAG_RECORDS).set(mirror.lag_records as f64);
        gauge!(crate::replicator::LAG_SECONDS).set(mirror.lag_seconds);
    }
    for (volume, bytes) in &levels.free_space {
        gauge!("coreq_free_space_bytes", "volume" => *volume).set(*bytes as f64);
    }
}

/// Drains histogram samples into their buckets; the exporter leaves this to its owner. Called
/// every few seconds by the server.
pub fn upkeep() {
    recorder().run_upkeep();
}

/// The area of the family `name`, if it is ours.
pub fn area_of(name: &str) -> Option<Area> {
    CATALOG.iter().find(|m| m.name == name).map(|m| m.area)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_metric_with_its_type() {
        let readme = include_str!("../../README.md");
        for m in CATALOG {
            let kind = match m.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let row = format!("| `{}` | {kind} |", m.name);
            assert!(readme.contains(&row), "README.md has no row {row}");
        }
    }
}
