//! The result of a run, as human-readable lines or one JSON object.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use crate::tracker::{Counts, Latency};

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Callbacks enqueued into coreq, delivered by coreq to the receiver.
    Coreq,
    /// The same bodies POSTed by the load generator straight to the receiver: the ceiling.
    Ceiling,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Coreq => "coreq",
            Mode::Ceiling => "ceiling",
        }
    }
}

/// The settings a run was made with (echoed in the report so that a result carries its
/// conditions).
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    pub tls: bool,
    pub webhook_concurrency: usize,
    /// Enqueue requests in flight (coreq mode; in the ceiling it is the webhook concurrency).
    pub enqueue_concurrency: usize,
    pub batch: u64,
    pub payload_bytes: usize,
    pub rate: Option<f64>,
    pub requested: u64,
    /// Delivered from a backlog enqueued beforehand (`--prefill`).
    pub prefilled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub mode: Mode,
    pub run: String,
    pub setup: Setup,
    pub counts: Counts,
    /// From the first enqueue request to the last answer.
    pub enqueue_secs: f64,
    /// From the first arrival to the last (None with fewer than two arrivals).
    pub delivery_secs: Option<f64>,
    pub latency: Option<Latency>,
    /// Failed enqueue requests (ceiling: failed posts) by status or failure.
    pub errors: BTreeMap<String, u64>,
    /// Every acknowledged callback arrived before the drain timeout.
    pub drained: bool,
    /// `--prefill`: callbacks that arrived while the webhook was meant to be held.
    pub early_arrivals: u64,
}

impl Report {
    /// Acknowledged callbacks per second of enqueueing.
    pub fn enqueue_per_sec(&self) -> f64 {
        per_sec(self.counts.acked, Some(self.enqueue_secs))
    }

    /// Distinct callbacks arriving per second, first to last arrival.
    pub fn delivery_per_sec(&self) -> f64 {
        per_sec(self.counts.delivered, self.delivery_secs)
    }

    /// Acknowledged but not delivered (after the drain).
    pub fn lost(&self) -> u64 {
        self.counts.pending()
    }

    /// Delivered without an acknowledgement (its enqueue request failed, e.g. timed out, after
    /// coreq had committed it).
    pub fn arrived_unacked(&self) -> u64 {
        self.counts.delivered - self.counts.acked_delivered
    }

    /// What makes this run a failure; empty when it passed.
    pub fn problems(&self, allow_duplicates: bool) -> Vec<String> {
        let mut problems = Vec::new();
        let c = &self.counts;
        if c.acked == 0 {
            problems.push(format!("{}: no callback was acknowledged", self.mode.name()));
        }
        if c.duplicates > 0 && !allow_duplicates {
            problems.push(format!("{}: {} duplicate deliveries", self.mode.name(), c.duplicates));
        }
        if c.order_violations > 0 {
            problems.push(format!("{}: {} order violations", self.mode.name(), c.order_violations));
        }
        if self.early_arrivals > 0 {
            problems.push(format!(
                "{}: {} callbacks arrived before the prefilled backlog was released",
                self.mode.name(),
                self.early_arrivals
            ));
        }
        if self.lost() > 0 {
            problems.push(format!(
                "{}: {} acknowledged callbacks never arrived",
                self.mode.name(),
                self.lost()
            ));
        }
        problems
    }

    pub fn to_json(&self) -> Value {
        let c = &self.counts;
        let s = &self.setup;
        json!({
            "mode": self.mode.name(),
            "run": self.run,
            "tls": s.tls,
            "webhook_concurrency": s.webhook_concurrency,
            "enqueue_concurrency": s.enqueue_concurrency,
            "batch": s.batch,
            "payload_bytes": s.payload_bytes,
            "rate": s.rate,
            "requested": s.requested,
            "prefilled": s.prefilled,
            "early_arrivals": self.early_arrivals,
            "sent": c.sent,
            "acked": c.acked,
            "enqueue_secs": round3(self.enqueue_secs),
            "enqueue_per_sec": round3(self.enqueue_per_sec()),
            "enqueue_errors": self.errors,
            "delivered": c.delivered,
            "delivery_secs": self.delivery_secs.map(round3),
            "delivery_per_sec": round3(self.delivery_per_sec()),
            "latency_ms": self.latency.map(|l| json!({
                "p50": round3(l.p50_ms), "p99": round3(l.p99_ms), "max": round3(l.max_ms),
            })),
            "duplicates": c.duplicates,
            "order_violations": c.order_violations,
            "lost": self.lost(),
            "arrived_unacked": self.arrived_unacked(),
            "foreign": c.foreign,
            "drained": self.drained,
        })
    }

    /// The report as aligned `key: value` lines.
    pub fn human(&self) -> String {
        let c = &self.counts;
        let s = &self.setup;
        let mut out = String::new();
        let scheme = if s.tls { "https" } else { "http" };
        let rate = s.rate.map_or_else(|| "flat out".to_string(), |r| format!("{r}/s"));
        let acked_what = match self.mode {
            Mode::Coreq => "acked (201)",
            Mode::Ceiling => "posted (200)",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(out, "== {} (run {}) ==", self.mode.name(), self.run);
        let _ = writeln!(
            out,
            "setup:              {scheme} webhook, webhook concurrency {}, enqueue concurrency {}, batch {}, \
             payload {} B, {rate}, {} callbacks requested{}",
            s.webhook_concurrency,
            s.enqueue_concurrency,
            s.batch,
            s.payload_bytes,
            s.requested,
            if s.prefilled {
                ", delivered from a prefilled backlog"
            } else {
                ""
            }
        );
        let _ = writeln!(out, "sent:               {}", c.sent);
        let _ = writeln!(
            out,
            "{acked_what:<20}{} in {:.3} s = {:.1}/s",
            c.acked,
            self.enqueue_secs,
            self.enqueue_per_sec()
        );
        let _ = writeln!(out, "errors:             {}", errors_line(&self.errors));
        let span = self
            .delivery_secs
            .map_or_else(|| "-".to_string(), |d| format!("{d:.3} s"));
        let _ = writeln!(
            out,
            "delivered:          {} in {span} = {:.1}/s",
            c.delivered,
            self.delivery_per_sec()
        );
        let latency = self.latency.map_or_else(
            || "-".to_string(),
            |l| format!("p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms", l.p50_ms, l.p99_ms, l.max_ms),
        );
        let _ = writeln!(out, "e2e latency:        {latency}");
        let _ = writeln!(
            out,
            "checks:             {} duplicates, {} order violations, {} lost, {} arrived unacked, {} foreign, {}",
            c.duplicates,
            c.order_violations,
            self.lost(),
            self.arrived_unacked(),
            c.foreign,
            if self.drained { "drained" } else { "NOT drained" }
        );
        out
    }
}

/// coreq's delivery throughput as a fraction of the ceiling's.
pub fn ratio(coreq: &Report, ceiling: &Report) -> Option<f64> {
    let ceiling = ceiling.delivery_per_sec();
    (ceiling > 0.0).then(|| coreq.delivery_per_sec() / ceiling)
}

/// Both runs and their ratio, as one JSON object.
pub fn both_json(ceiling: &Report, coreq: &Report) -> Value {
    json!({
        "ceiling": ceiling.to_json(),
        "coreq": coreq.to_json(),
        "ratio": ratio(coreq, ceiling).map(round3),
    })
}

/// Both runs and their ratio, as lines.
pub fn both_human(ceiling: &Report, coreq: &Report) -> String {
    let ratio = ratio(coreq, ceiling).map_or_else(|| "-".to_string(), |r| format!("{r:.3}"));
    format!(
        "{}\n{}\n== ratio ==\ncoreq delivery / ceiling delivery: {:.1}/s / {:.1}/s = {ratio}\n",
        ceiling.human(),
        coreq.human(),
        coreq.delivery_per_sec(),
        ceiling.delivery_per_sec()
    )
}

pub(crate) fn errors_line(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".to_string();
    }
    errors
        .iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn per_sec(n: u64, secs: Option<f64>) -> f64 {
    match secs {
        Some(secs) if secs > 0.0 => n as f64 / secs,
        _ => 0.0,
    }
}

pub(crate) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(mode: Mode, delivered: u64, secs: f64) -> Report {
        Report {
            mode,
            run: "r".into(),
            setup: Setup {
                tls: true,
                webhook_concurrency: 24,
                enqueue_concurrency: 16,
                batch: 1,
                payload_bytes: 256,
                rate: None,
                requested: delivered,
                prefilled: false,
            },
            counts: Counts {
                sent: delivered,
                acked: delivered,
                delivered,
                acked_delivered: delivered,
                ..Counts::default()
            },
            enqueue_secs: secs,
            delivery_secs: Some(secs),
            latency: Some(Latency {
                p50_ms: 1.0,
                p99_ms: 2.0,
                max_ms: 3.0,
            }),
            errors: BTreeMap::new(),
            drained: true,
            early_arrivals: 0,
        }
    }

    #[test]
    fn throughput_and_ratio() {
        let ceiling = report(Mode::Ceiling, 1000, 0.5);
        let coreq = report(Mode::Coreq, 1000, 2.0);
        assert_eq!(ceiling.delivery_per_sec(), 2000.0);
        assert_eq!(coreq.enqueue_per_sec(), 500.0);
        assert_eq!(ratio(&coreq, &ceiling), Some(0.25));
        let json = both_json(&ceiling, &coreq);
        assert_eq!(json["ratio"], 0.25);
        assert_eq!(json["coreq"]["latency_ms"]["p99"], 2.0);
        assert!(both_human(&ceiling, &coreq).contains("= 0.250"));
    }

    #[test]
    fn problems_name_what_failed() {
        let mut r = report(Mode::Coreq, 10, 1.0);
        assert!(r.problems(false).is_empty());
        r.counts.duplicates = 2;
        r.counts.acked_delivered = 9;
        assert_eq!(r.lost(), 1);
        assert_eq!(r.problems(false).len(), 2);
        assert_eq!(r.problems(true).len(), 1, "duplicates allowed, the loss is not");
        r.counts.order_violations = 1;
        assert_eq!(r.problems(true).len(), 2);
        r.early_arrivals = 3;
        assert_eq!(r.problems(true).len(), 3, "an early arrival fails a prefilled run");
        let nothing = report(Mode::Coreq, 0, 0.0);
        assert_eq!(nothing.problems(false), ["coreq: no callback was acknowledged"]);
        assert_eq!(nothing.delivery_per_sec(), 0.0);
    }
}
