//! Recovery on arbitrary segment contents: the bytes become `wal/00000000000000000001.wal` in
//! a fresh directory, then `Wal::<Change>::open`, `verify` and a full `read_from(1)` must not
//! panic, and the reader must terminate. Errors are fine (damage is reported, not panicked on).
//!
//! The directory is made under `$COREQ_FUZZ_TMPDIR`, else `/dev/shm` when it exists (the
//! target fsyncs, which is free on tmpfs), else the system temp directory.
#![no_main]

use std::path::PathBuf;

use coreq_storage::Change;
use coreq_wal::{Wal, WalConfig};
use libfuzzer_sys::fuzz_target;

fn scratch_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("COREQ_FUZZ_TMPDIR") {
        return dir.into();
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::Builder::new()
        .prefix("coreq-fuzz-")
        .tempdir_in(scratch_root())
        .expect("temp dir");
    let wal_dir = dir.path().join("wal");
    std::fs::create_dir(&wal_dir).expect("wal dir");
    std::fs::write(wal_dir.join("00000000000000000001.wal"), data).expect("segment");

    let Ok((wal, _report)) = Wal::<Change>::open(WalConfig::new(&wal_dir, dir.path().join("quarantine"))) else {
        return;
    };
    let _ = wal.verify();
    // Every yielded item consumes at least one frame or segment, so a reader over a file of
    // n bytes yields at most n items plus a few end-of-log reports. More means it is stuck.
    let bound = data.len() + 16;
    let mut items = 0usize;
    for _item in wal.read_from(1) {
        items += 1;
        assert!(
            items <= bound,
            "read_from(1) yielded more than {bound} items from {} bytes: it does not terminate",
            data.len()
        );
    }
    wal.close();
});
