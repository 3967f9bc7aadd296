//! Writes a small seed corpus into `fuzz/corpus/<target>/seed-*`: valid records, frames and
//! segments that the fuzzer would otherwise need many CRC-matching mutations to find, plus a
//! few classic damages (torn tail, garbage between frames, a gap in the LSNs).
//!
//! Run from `fuzz/`: `cargo run --example seed_corpus` (stable, no sanitizer needed).
//! Only a handful of simple `Change` variants are used; the fuzzer mutates its way to others.

use std::fs;
use std::path::Path;

use coreq_storage::Change;
use coreq_wal::frame::{self, PreparedBody};
use coreq_wal::{Wal, WalConfig};

fn samples() -> Vec<Change> {
    vec![
        Change::CallbacksEnqueued {
            first_seq: 1,
            enqueued_at: 1_700_000_000_000,
            bodies: vec![b"{\"a\":1}".to_vec(), Vec::new()],
        },
        Change::CallbackFailed {
            seq: 1,
            failures: 3,
            error: "connect refused".into(),
            at: 5,
            next_attempt_at: 9,
        },
        Change::CallbackDelivered { seq: 2 },
        Change::CallbackDeleted { seq: u64::MAX },
        Change::MessageHanded {
            id: "gBEGkYiEB1VXAglK1ZEqA1YKPrU".into(),
            send_seq: 7,
        },
        Change::MessageStatus {
            id: "m1".into(),
            status: "failed".into(),
            at: 8,
            errors: Some(b"[{\"code\":470}]".to_vec()),
        },
        Change::MessagesDeleted {
            ids: vec!["m1".into(), "m2".into()],
        },
        Change::SettingsPut {
            entries: vec![
                ("webhook_url".into(), Some(b"https://example.test/hook".to_vec())),
                ("x".into(), None),
            ],
        },
        Change::UserDeleted { name: "alice".into() },
        Change::TokenRevoked { hash: vec![0xAB; 32] },
        Change::CursorSet {
            name: "mirror".into(),
            value: 42,
        },
    ]
}

fn framed(lsn: u64, change: &Change) -> Vec<u8> {
    let mut out = Vec::new();
    let body = postcard::to_stdvec(change).expect("encodes");
    frame::encode_into(&mut out, frame::FORMAT_POSTCARD_V1, lsn, &PreparedBody::new(body));
    out
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("corpus dir");
    fs::write(dir.join(format!("seed-{name}")), bytes).expect("seed file");
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let changes = samples();

    for (i, change) in changes.iter().enumerate() {
        write(
            &corpus.join("wal_record_decode"),
            &format!("change-{i:02}"),
            &postcard::to_stdvec(change).expect("encodes"),
        );
        let mut input = vec![0xFF]; // body limit 16320 bytes
        input.extend(framed(i as u64 + 1, change));
        write(&corpus.join("wal_frame_decode"), &format!("frame-{i:02}"), &input);
    }

    // A clean segment, written by the real log.
    let scratch = tempfile::tempdir().expect("temp dir");
    let config = WalConfig::new(scratch.path().join("wal"), scratch.path().join("quarantine"));
    let (wal, _) = Wal::<Change>::open(config).expect("open");
    wal.append(&changes).expect("append");
    wal.close();
    let clean = fs::read(scratch.path().join("wal/00000000000000000001.wal")).expect("segment");
    let segments = corpus.join("wal_open_segment");
    write(&segments, "clean", &clean);

    let one = framed(1, &changes[2]);
    let two = framed(2, &changes[10]);
    let mut torn = clean.clone();
    torn.extend_from_slice(&framed(changes.len() as u64 + 1, &changes[0])[..11]);
    write(&segments, "torn-tail", &torn);
    write(
        &segments,
        "garbage-between-frames",
        &[&one[..], b"\xde\xad\xbe\xef", &two[..]].concat(),
    );
    write(&segments, "lsn-gap", &[one.clone(), framed(5, &changes[3])].concat());
    write(&segments, "single", &one);
    println!("seed corpus written to {}", corpus.display());
}
