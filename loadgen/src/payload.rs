//! The callbacks the load generator produces, and reading them back at the receiver.
//!
//! Each callback is one JSON object:
//! `{"loadgen":{"run":"<run id>","seq":<u64>,"sent_at_us":<unix µs>},"pad":"xxx…"}`, padded so
//! that the object is `payload_bytes` long. The run id tells this run's callbacks from any
//! left over in coreq by an earlier run (they reach the same webhook once it points here).

use std::fmt::Write as _;
use std::hash::{BuildHasher, RandomState};
use std::ops::Range;
use std::time::{SystemTime, UNIX_EPOCH};

/// What a callback says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub run: String,
    pub seq: u64,
    pub sent_at_us: u64,
}

/// A random run id: 16 hex digits (so it never needs escaping in JSON).
pub fn run_id() -> String {
    // RandomState is seeded from the OS per process; mixing in the clock and pid separates two
    // runs even if the seed were fixed.
    let seed = RandomState::new().hash_one((unix_micros(), std::process::id()));
    format!("{seed:016x}")
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Appends one callback object to `out`: exactly `payload_bytes` long, unless even an empty pad
/// makes it longer (then the pad is empty).
pub fn write_callback(out: &mut String, run: &str, seq: u64, sent_at_us: u64, payload_bytes: usize) {
    let start = out.len();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        r#"{{"loadgen":{{"run":"{run}","seq":{seq},"sent_at_us":{sent_at_us}}},"pad":""#
    );
    let closing = r#""}"#;
    let written = out.len() - start + closing.len();
    let pad = payload_bytes.saturating_sub(written);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str(closing);
}

/// One callback object on its own (the body coreq POSTs to the webhook, and the ceiling's).
pub fn callback(run: &str, seq: u64, sent_at_us: u64, payload_bytes: usize) -> String {
    let mut out = String::with_capacity(payload_bytes.max(96));
    write_callback(&mut out, run, seq, sent_at_us, payload_bytes);
    out
}

/// The body of `POST /v1/callbacks` for the callbacks `seqs`: `{"callbacks":[obj, …]}`.
pub fn enqueue_body(run: &str, seqs: Range<u64>, sent_at_us: u64, payload_bytes: usize) -> String {
    let n = usize::try_from(seqs.end.saturating_sub(seqs.start)).unwrap_or(0);
    let mut out = String::with_capacity(16 + n * (payload_bytes.max(96) + 1));
    out.push_str(r#"{"callbacks":["#);
    for (i, seq) in seqs.enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_callback(&mut out, run, seq, sent_at_us, payload_bytes);
    }
    out.push_str("]}");
    out
}

/// The marker of a callback body, if it is one of ours (any run).
pub fn parse_marker(body: &[u8]) -> Option<Marker> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let marker = value.get("loadgen")?;
    Some(Marker {
        run: marker.get("run")?.as_str()?.to_string(),
        seq: marker.get("seq")?.as_u64()?,
        sent_at_us: marker.get("sent_at_us")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_callback_is_exactly_the_payload_size_and_reads_back() {
        for size in [0, 10, 80, 256, 1000, 4096] {
            let body = callback("0123456789abcdef", 42, 1_700_000_000_000_000, size);
            let minimum = callback("0123456789abcdef", 42, 1_700_000_000_000_000, 0).len();
            assert_eq!(body.len(), size.max(minimum), "size {size}: {body}");
            let marker = parse_marker(body.as_bytes()).expect("parses");
            assert_eq!(
                marker,
                Marker {
                    run: "0123456789abcdef".into(),
                    seq: 42,
                    sent_at_us: 1_700_000_000_000_000
                }
            );
        }
    }

    #[test]
    fn an_enqueue_body_holds_each_seq_in_order() {
        let body = enqueue_body("r", 5..9, 7, 64);
        let value: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
        let seqs: Vec<u64> = value["callbacks"]
            .as_array()
            .expect("array")
            .iter()
            .map(|c| {
                assert_eq!(c.to_string().len(), 64);
                c["loadgen"]["seq"].as_u64().expect("seq")
            })
            .collect();
        assert_eq!(seqs, [5, 6, 7, 8]);
    }

    #[test]
    fn foreign_bodies_have_no_marker() {
        for body in [
            &b"not json"[..],
            b"{}",
            br#"{"loadgen":{"seq":1}}"#,
            br#"{"loadgen":{"run":"r","seq":-1,"sent_at_us":1}}"#,
        ] {
            assert_eq!(parse_marker(body), None, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn run_ids_are_hex_and_differ() {
        let (a, b) = (run_id(), run_id());
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }
}
