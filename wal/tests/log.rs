//! Behaviour of the log through its public API, on real files in temp dirs.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use coreq_wal::{FileSystem, Lsn, Wal, WalConfig, WalError};

type Rec = (u64, Vec<u8>);

fn config(dir: &Path) -> WalConfig {
    WalConfig::new(dir.join("wal"), dir.join("quarantine"))
}

fn open(dir: &Path) -> Wal<Rec> {
    Wal::open(config(dir)).expect("open").0
}

fn read_all(wal: &Wal<Rec>, from: Lsn) -> Vec<(Lsn, Rec)> {
    wal.read_from(from).map(|r| r.expect("intact record")).collect()
}

fn segment_paths(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn first_append_gets_lsn_one_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    let lsns = wal.append(&[(1, b"a".to_vec()), (2, b"b".to_vec())]).unwrap();
    assert_eq!(lsns, 1..=2);
    assert_eq!(
        read_all(&wal, 1),
        vec![(1, (1, b"a".to_vec())), (2, (2, b"b".to_vec()))]
    );
}

#[test]
fn records_and_lsns_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open(dir.path());
        for i in 0..10u64 {
            wal.append(&[(i, vec![i as u8; 10])]).unwrap();
        }
    }
    let (wal, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert_eq!(report.next_lsn, 11);
    assert_eq!(wal.append(&[(99, vec![])]).unwrap(), 11..=11);
    assert_eq!(read_all(&wal, 1).len(), 11);
}

#[test]
fn read_from_the_middle_starts_at_that_lsn() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    for i in 1..=20u64 {
        wal.append(&[(i, vec![])]).unwrap();
    }
    let got: Vec<Lsn> = read_all(&wal, 15).into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, (15..=20).collect::<Vec<_>>());
}

#[test]
fn reader_follows_appends_made_after_it_reached_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    wal.append(&[(1, vec![])]).unwrap();
    let mut reader = wal.read_from(1);
    assert_eq!(reader.next().unwrap().unwrap().0, 1);
    assert!(reader.next().is_none());
    wal.append(&[(2, vec![])]).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().0, 2);
}

#[test]
fn segments_roll_over_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 1024;
    let (wal, _) = Wal::<Rec>::open(cfg).unwrap();
    for i in 1..=100u64 {
        wal.append(&[(i, vec![7; 100])]).unwrap();
    }
    assert!(wal.stats().segments > 5, "{:?}", wal.stats());
    let got: Vec<Lsn> = read_all(&wal, 1).into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, (1..=100).collect::<Vec<_>>());
}

#[test]
fn truncate_below_drops_only_whole_older_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 1024;
    let (wal, _) = Wal::<Rec>::open(cfg.clone()).unwrap();
    for i in 1..=100u64 {
        wal.append(&[(i, vec![7; 100])]).unwrap();
    }
    let removed = wal.truncate_below(50).unwrap();
    assert!(removed > 0);
    let first = wal.stats().first_lsn;
    assert!(first <= 50 && first > 1, "first lsn {first}");
    let got: Vec<Lsn> = read_all(&wal, 1).into_iter().map(|(l, _)| l).collect();
    assert_eq!(got, (first..=100).collect::<Vec<_>>());
    drop(wal);
    let (wal, report) = Wal::<Rec>::open(cfg).unwrap();
    assert_eq!(report.first_lsn, first);
    assert_eq!(wal.append(&[(0, vec![])]).unwrap(), 101..=101);
}

#[test]
fn truncate_never_removes_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    wal.append(&[(1, vec![])]).unwrap();
    assert_eq!(wal.truncate_below(1000).unwrap(), 0);
    assert_eq!(read_all(&wal, 1).len(), 1);
}

#[test]
fn torn_tail_is_cut_quarantined_and_lsns_continue() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open(dir.path());
        wal.append(&[(1, b"kept".to_vec()), (2, b"kept".to_vec())]).unwrap();
    }
    let seg = segment_paths(dir.path()).pop().unwrap();
    let full = fs::read(&seg).unwrap();
    // Simulate a crash mid-write: half of a third frame.
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&full[..full.len() / 4]).unwrap();
    drop(f);
    let (wal, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert!(report.torn_tail_bytes > 0);
    assert_eq!(report.next_lsn, 3);
    assert_eq!(report.quarantined, 1);
    assert_eq!(fs::read(&seg).unwrap().len(), full.len());
    assert_eq!(wal.append(&[(3, vec![])]).unwrap(), 3..=3);
}

#[test]
fn corrupt_record_in_the_middle_is_quarantined_reported_and_the_rest_kept() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open(dir.path());
        for i in 1..=3u64 {
            wal.append(&[(i, vec![i as u8; 32])]).unwrap();
        }
    }
    let seg = segment_paths(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let frame = bytes.len() / 3;
    bytes[frame + frame / 2] ^= 0xff; // damage the second record's body
    fs::write(&seg, &bytes).unwrap();
    let (wal, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert_eq!(report.damage.len(), 1);
    assert_eq!(report.quarantined, 1);
    assert_eq!(report.next_lsn, 4);
    let verify = wal.verify().unwrap();
    assert_eq!(verify.damage.len(), 1);
    assert_eq!(verify.gaps, vec![2..=2]);
    let quarantined: Vec<_> = fs::read_dir(dir.path().join("quarantine")).unwrap().collect();
    assert_eq!(quarantined.len(), 2, "a .bin and a .why file");
}

#[test]
fn reader_reports_damage_it_meets_instead_of_skipping_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.segment_bytes = 200;
    let (wal, _) = Wal::<Rec>::open(cfg).unwrap();
    for i in 1..=10u64 {
        wal.append(&[(i, vec![1; 64])]).unwrap();
    }
    let first_seg = segment_paths(dir.path()).remove(0);
    let mut bytes = fs::read(&first_seg).unwrap();
    bytes[20] ^= 1;
    fs::write(&first_seg, &bytes).unwrap();
    let results: Vec<_> = wal.read_from(1).collect();
    assert!(
        matches!(results[0], Err(WalError::Corruption { .. })),
        "{:?}",
        results[0].as_ref().err()
    );
    assert!(results.iter().skip(1).all(|r| r.is_ok()));
    assert_eq!(wal.stats().quarantined, 1);
}

#[test]
fn verify_of_a_healthy_log_is_clean() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    for i in 1..=50u64 {
        wal.append(&[(i, vec![3; 50])]).unwrap();
    }
    let report = wal.verify().unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.records, 50);
    assert_eq!((report.first_lsn, report.last_lsn), (Some(1), Some(50)));
}

#[test]
fn oversized_record_is_refused_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_record_bytes = 100;
    let (wal, _) = Wal::<Rec>::open(cfg).unwrap();
    let err = wal.append(&[(1, vec![0; 200])]).unwrap_err();
    assert!(matches!(err, WalError::RecordTooLarge { .. }));
    assert_eq!(wal.append(&[(1, vec![])]).unwrap(), 1..=1);
}

/// Fails every `sync_data` from the `fail_from`-th call on.
struct FailingSync {
    calls: AtomicU32,
    fail_from: u32,
}

impl FileSystem for FailingSync {
    fn sync_data(&self, file: &fs::File) -> std::io::Result<()> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 >= self.fail_from {
            return Err(std::io::Error::other("injected EIO"));
        }
        file.sync_data()
    }
}

#[test]
fn failed_fsync_is_fatal_for_the_waiter_and_every_later_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fs = Arc::new(FailingSync {
        calls: AtomicU32::new(0),
        fail_from: 2,
    });
    let (wal, _) = Wal::<Rec>::open(cfg).unwrap();
    wal.append(&[(1, vec![])]).expect("first sync succeeds");
    assert!(matches!(wal.append(&[(2, vec![])]), Err(WalError::Poisoned(_))));
    assert!(matches!(wal.submit(&[(3, vec![])]), Err(WalError::Poisoned(_))));
    assert_eq!(wal.durable_lsn(), 1);
}

#[test]
fn failed_fsync_fails_async_waiters_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.fs = Arc::new(FailingSync {
        calls: AtomicU32::new(0),
        fail_from: 1,
    });
    let (wal, _) = Wal::<Rec>::open(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt.block_on(wal.append_async(&[(1, vec![])]));
    assert!(matches!(got, Err(WalError::Poisoned(_))));
}

#[test]
fn concurrent_appenders_get_unique_gap_free_lsns_all_readable() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    let threads = 32;
    let per_thread = 200;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let lsns = wal.append(&[(t * 1000 + i, vec![t as u8; 256])]).unwrap();
                        (*lsns.start(), t * 1000 + i)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut acked: Vec<(Lsn, u64)> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    acked.sort();
    let lsns: Vec<Lsn> = acked.iter().map(|a| a.0).collect();
    assert_eq!(lsns, (1..=(threads * per_thread)).collect::<Vec<_>>());
    let read: Vec<(Lsn, u64)> = read_all(&wal, 1).into_iter().map(|(l, (id, _))| (l, id)).collect();
    assert_eq!(read, acked);
    assert!(
        wal.stats().fsyncs < threads * per_thread,
        "group commit shared syncs: {:?}",
        wal.stats()
    );
}

#[test]
fn concurrent_async_appenders_get_unique_gap_free_lsns() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open(dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut lsns: Vec<Lsn> = rt.block_on(async {
        let tasks: Vec<_> = (0..256u64)
            .map(|i| {
                let wal = wal.clone();
                tokio::spawn(async move { *wal.append_async(&[(i, vec![0; 256])]).await.unwrap().start() })
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    lsns.sort();
    assert_eq!(lsns, (1..=256).collect::<Vec<_>>());
    assert_eq!(read_all(&wal, 1).len(), 256);
}

#[test]
fn a_second_torn_tail_at_the_same_offset_is_quarantined_again() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open(dir.path());
        wal.append(&[(1, b"kept".to_vec())]).unwrap();
    }
    let seg = segment_paths(dir.path()).pop().unwrap();
    for junk in [&b"first torn write"[..], &b"another torn write"[..]] {
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(junk).unwrap();
        drop(f);
        let (_, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
        assert_eq!(report.torn_tail_bytes, junk.len() as u64);
    }
    let (_, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert_eq!(report.quarantined, 2);
}

/// Found by fuzzing (`wal_open_segment`): damage between two frames of the newest segment made
/// the reader yield the same error forever instead of the record after it.
#[test]
fn reader_resyncs_past_damage_in_the_newest_segment() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open(dir.path());
        wal.append(&[(1, b"one".to_vec())]).unwrap();
    }
    let seg = segment_paths(dir.path()).pop().unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    let first = bytes.clone();
    bytes.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    {
        // A valid second frame, taken from a log that holds the same two records.
        let other = tempfile::tempdir().unwrap();
        let wal = open(other.path());
        wal.append(&[(1, b"one".to_vec()), (2, b"two".to_vec())]).unwrap();
        drop(wal);
        let both = fs::read(segment_paths(other.path()).pop().unwrap()).unwrap();
        bytes.extend_from_slice(&both[first.len()..]);
    }
    fs::write(&seg, &bytes).unwrap();
    let (wal, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert_eq!(report.damage.len(), 1);
    let items: Vec<_> = wal.read_from(1).take(10).collect();
    assert_eq!(
        items.len(),
        3,
        "record 1, the damage, record 2 — and then the end: {items:?}"
    );
    assert!(matches!(items[1], Err(WalError::Corruption { .. })));
    assert_eq!(items[2].as_ref().unwrap().1, (2, b"two".to_vec()));
}

/// Found by reading the code after fuzzing: a crafted frame with LSN u64::MAX overflowed `lsn + 1`.
#[test]
fn a_frame_with_an_absurd_lsn_is_damage_not_an_overflow() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("wal")).unwrap();
    let mut frame = Vec::new();
    let body = postcard::to_stdvec(&(1u64, b"x".to_vec())).unwrap();
    coreq_wal::frame::encode_into(
        &mut frame,
        coreq_wal::frame::FORMAT_POSTCARD_V1,
        u64::MAX,
        &coreq_wal::frame::PreparedBody::new(body),
    );
    fs::write(dir.path().join("wal/00000000000000000001.wal"), &frame).unwrap();
    let (wal, report) = Wal::<Rec>::open(config(dir.path())).unwrap();
    assert_eq!(report.next_lsn, 1);
    assert_eq!(wal.append(&[(1, vec![])]).unwrap(), 1..=1);
}

fn open_with_lazy_window(dir: &Path, window: std::time::Duration) -> Wal<Rec> {
    let mut config = config(dir);
    config.lazy_sync_after = window;
    Wal::open(config).expect("open").0
}

#[test]
fn a_lazy_record_becomes_durable_on_its_own_within_the_lazy_window() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_with_lazy_window(dir.path(), std::time::Duration::from_millis(10));
    let ticket = wal.submit_lazy(&[(1, b"lazy".to_vec())]).unwrap();
    // Nothing urgent follows: only the lazy window can commit it. A committer that waited for
    // an urgent submission would leave the waiter below hanging until the test's timeout.
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(ticket.wait().map(|()| ticket.lsns())));
    let lsns = waited
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the lazy record was never committed")
        .unwrap();
    assert!(wal.durable_lsn() >= *lsns.end());
}

#[test]
fn lazy_records_ride_the_next_urgent_commit_in_one_sync() {
    let dir = tempfile::tempdir().unwrap();
    let wal = open_with_lazy_window(dir.path(), std::time::Duration::from_secs(3600));
    let before = wal.stats().fsyncs;
    for i in 0..3u64 {
        let _not_waited_for = wal.submit_lazy(&[(i, vec![])]).unwrap();
    }
    assert_eq!(wal.durable_lsn(), 0, "lazy records alone wait for their window");
    let urgent = wal.append(&[(3, vec![])]).unwrap();
    assert_eq!(urgent, 4..=4);
    assert_eq!(wal.durable_lsn(), 4);
    assert_eq!(wal.stats().fsyncs - before, 1);
}

#[test]
fn lazy_records_are_written_when_the_log_closes() {
    let dir = tempfile::tempdir().unwrap();
    {
        let wal = open_with_lazy_window(dir.path(), std::time::Duration::from_secs(3600));
        let _not_waited_for = wal.submit_lazy(&[(7, b"kept".to_vec())]).unwrap();
    }
    let wal = open(dir.path());
    assert_eq!(read_all(&wal, 1), vec![(1, (7, b"kept".to_vec()))]);
}

/// Runs `f` on a thread and fails the test if it has not returned within 30 s (a committer
/// that was never woken would hang it forever).
fn within_30s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(f()));
    finished
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the committer was never woken")
}

#[test]
fn an_append_after_an_empty_submit_on_an_empty_log_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(open_with_lazy_window(dir.path(), std::time::Duration::from_secs(3600)));
    let barrier = wal.submit(&[]).unwrap();
    barrier.wait().unwrap();
    let appender = Arc::clone(&wal);
    let lsns = within_30s(move || appender.append(&[(1, vec![])]).unwrap());
    assert_eq!(lsns, 1..=1);
}

#[test]
fn an_empty_submit_commits_the_lazy_records_queued_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let wal = Arc::new(open_with_lazy_window(dir.path(), std::time::Duration::from_secs(3600)));
    let _not_waited_for = wal.submit_lazy(&[(1, vec![])]).unwrap();
    let barrier = wal.submit(&[]).unwrap();
    within_30s(move || barrier.wait().unwrap());
    assert_eq!(wal.durable_lsn(), 1);
}
