//! Segment files: `<first lsn, 20 digits>.wal` in the log directory, each a run of frames with
//! consecutive LSNs. Only the newest segment is ever written; older ones are immutable and were
//! fdatasync'ed before the next one was created.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use crate::Lsn;
use crate::error::{Result, WalError};
use crate::frame::{self, Decoded};

pub(crate) const EXTENSION: &str = "wal";

pub(crate) fn file_name(first_lsn: Lsn) -> String {
    format!("{first_lsn:020}.{EXTENSION}")
}

/// The segments in `dir`, keyed by their first LSN. Files that are not segments are ignored.
pub(crate) fn list(dir: &Path) -> Result<BTreeMap<Lsn, PathBuf>> {
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(WalError::io(dir))? {
        let path = entry.map_err(WalError::io(dir))?.path();
        if path.extension().is_none_or(|x| x != EXTENSION) {
            continue;
        }
        let first = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<Lsn>().ok());
        if let Some(first) = first {
            out.insert(first, path);
        }
    }
    Ok(out)
}

/// One problem found while scanning a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    pub offset: u64,
    pub len: u64,
    pub reason: String,
    /// True when nothing valid follows: the unfinished end of the newest segment after a crash.
    pub torn_tail: bool,
}

/// The outcome of scanning one segment's bytes.
#[derive(Debug, Default)]
pub(crate) struct Scan {
    /// `(lsn, body offset, body len)` of every valid frame, in file order.
    pub frames: Vec<(Lsn, usize, usize)>,
    /// Offset just past the last valid frame.
    pub valid_end: usize,
    pub damage: Vec<Damage>,
}

/// Scans `buf` (a whole segment) for frames. After a damaged frame it resynchronises on the
/// next offset holding a valid frame with a higher LSN; if there is none, the rest is a torn
/// tail. `decodes` checks that a frame's body decodes as a record.
pub(crate) fn scan(buf: &[u8], max_body: usize, first_lsn: Lsn, decodes: &dyn Fn(&[u8]) -> bool) -> Scan {
    let mut scan = Scan::default();
    let mut at = 0usize;
    let mut expected = first_lsn;
    while at < buf.len() {
        match frame::decode(&buf[at..], max_body) {
            Decoded::Frame {
                lsn,
                body,
                frame_len,
                format,
            } => {
                let problem = if format != frame::FORMAT_POSTCARD_V1 {
                    Some("unknown format byte")
                } else if lsn < expected {
                    Some("lsn goes backwards")
                } else if lsn > MAX_LSN {
                    Some("lsn out of range")
                } else if !decodes(body) {
                    Some("body does not decode")
                } else {
                    None
                };
                match problem {
                    None => {
                        scan.frames.push((lsn, at + frame::HEADER_LEN, body.len()));
                        expected = lsn + 1;
                        at += frame_len;
                        scan.valid_end = at;
                    }
                    Some(reason) => {
                        scan.damage.push(Damage {
                            offset: at as u64,
                            len: frame_len as u64,
                            reason: reason.into(),
                            torn_tail: false,
                        });
                        at += frame_len;
                    }
                }
            }
            Decoded::Truncated | Decoded::Corrupt { .. } => {
                let reason = match frame::decode(&buf[at..], max_body) {
                    Decoded::Corrupt { reason } => reason,
                    _ => "frame cut short",
                };
                match resync(buf, at + 1, max_body, expected) {
                    Some(next) => {
                        scan.damage.push(Damage {
                            offset: at as u64,
                            len: (next - at) as u64,
                            reason: reason.into(),
                            torn_tail: false,
                        });
                        at = next;
                    }
                    None => {
                        scan.damage.push(Damage {
                            offset: at as u64,
                            len: (buf.len() - at) as u64,
                            reason: reason.into(),
                            torn_tail: true,
                        });
                        break;
                    }
                }
            }
        }
    }
    scan
}

/// The largest LSN a frame may carry: far beyond any real log, and low enough that `lsn + 1`
/// can never overflow. A larger one is damage (or a crafted file).
pub(crate) const MAX_LSN: Lsn = 1 << 62;

/// The first offset at or after `from` where a valid frame with LSN ≥ `expected` starts.
pub(crate) fn resync(buf: &[u8], from: usize, max_body: usize, expected: Lsn) -> Option<usize> {
    (from..buf.len())
        .find(|&at| matches!(frame::decode(&buf[at..], max_body), Decoded::Frame { lsn, .. } if lsn >= expected && lsn <= MAX_LSN))
}
