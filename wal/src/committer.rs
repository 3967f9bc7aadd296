//! The committer: one thread that takes everything appenders queued, writes it to the newest
//! segment and fdatasyncs it, then publishes the new durable LSN. While it syncs, appenders keep
//! queueing; the next round writes all of it with one sync (group commit).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use crate::Lsn;
use crate::error::{Result, WalError};
use crate::log::Inner;
use crate::segments;

/// The newest segment, open for appending.
pub(crate) struct SegmentWriter {
    pub(crate) file: File,
    pub(crate) path: PathBuf,
    pub(crate) len: u64,
}

impl SegmentWriter {
    pub(crate) fn open_existing(path: PathBuf, len: u64) -> Result<SegmentWriter> {
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(WalError::io(&path))?;
        Ok(SegmentWriter { file, path, len })
    }
}

/// Creates the segment whose first record is `first_lsn` and makes its name durable.
pub(crate) fn create_segment(inner: &Inner, first_lsn: Lsn) -> Result<SegmentWriter> {
    let path = inner.config.dir.join(segments::file_name(first_lsn));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(WalError::io(&path))?;
    inner
        .config
        .fs
        .sync_dir(&inner.config.dir)
        .map_err(WalError::io(&inner.config.dir))?;
    inner
        .segments
        .lock()
        .expect("segments lock")
        .insert(first_lsn, path.clone());
    Ok(SegmentWriter { file, path, len: 0 })
}

/// The committer thread's body. Returns when the log is closed and drained, or poisoned.
pub(crate) fn run(inner: Arc<Inner>, mut writer: SegmentWriter) {
    let mut spare = Vec::new();
    while let Some(batch) = inner.take_batch(std::mem::take(&mut spare)) {
        let outcome = write_batch(&inner, &mut writer, &batch.bytes, batch.first_lsn);
        match outcome {
            Ok(()) => {
                inner.publish_durable(batch.last_lsn);
                spare = batch.bytes;
                spare.clear();
            }
            Err(err) => {
                tracing::error!(error = %err, "wal: write or sync failed; the log is poisoned");
                inner.poison(err.to_string());
                return;
            }
        }
    }
}

fn write_batch(inner: &Inner, writer: &mut SegmentWriter, bytes: &[u8], first_lsn: Lsn) -> Result<()> {
    if writer.len >= inner.config.segment_bytes {
        // The full segment was synced by the round that filled it; start the next one.
        *writer = create_segment(inner, first_lsn)?;
    }
    writer.file.write_all(bytes).map_err(WalError::io(&writer.path))?;
    inner
        .config
        .fs
        .sync_data(&writer.file)
        .map_err(WalError::io(&writer.path))?;
    writer.len += bytes.len() as u64;
    inner.stats.record_sync(bytes.len() as u64);
    Ok(())
}
