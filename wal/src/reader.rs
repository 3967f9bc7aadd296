//! Sequential reading of durable records from an LSN onward, across segments.

use std::fs::File;
use std::io::{BufReader, ErrorKind, Read, Seek, SeekFrom};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::Lsn;
use crate::error::{Result, WalError};
use crate::frame::{self, Decoded};
use crate::log::Inner;
use crate::segments;

struct OpenSegment {
    first: Lsn,
    path: PathBuf,
    file: BufReader<File>,
    offset: u64,
}

/// Iterator over `(lsn, record)` of durable records. A damaged frame is quarantined and
/// yielded as `Err(WalError::Corruption)`; the reader then continues with the next segment.
/// When it reaches the durable end it returns `None`; calling `next` again later picks up
/// records made durable since.
pub struct Reader<R> {
    inner: Arc<Inner>,
    next: Lsn,
    segment: Option<OpenSegment>,
    buf: Vec<u8>,
    /// Offset of the last damaged frame met, where `resync` starts looking.
    damaged_at: u64,
    _record: PhantomData<fn() -> R>,
}

impl<R: DeserializeOwned> Reader<R> {
    pub(crate) fn new(inner: Arc<Inner>, from: Lsn) -> Reader<R> {
        Reader {
            inner,
            next: from.max(1),
            segment: None,
            buf: Vec::new(),
            damaged_at: 0,
            _record: PhantomData,
        }
    }

    /// The LSN the next record yielded will have, at least.
    pub fn position(&self) -> Lsn {
        self.next
    }

    /// Opens the segment holding `self.next`, or the oldest one if it was truncated away.
    fn open_segment(&mut self) -> Result<bool> {
        let found = {
            let segs = self.inner.segments.lock().expect("segments lock");
            segs.range(..=self.next)
                .next_back()
                .or_else(|| segs.iter().next())
                .map(|(f, p)| (*f, p.clone()))
        };
        let Some((first, path)) = found else { return Ok(false) };
        if first > self.next {
            self.next = first;
        }
        let file = File::open(&path).map_err(WalError::io(&path))?;
        self.segment = Some(OpenSegment {
            first,
            path,
            file: BufReader::with_capacity(256 << 10, file),
            offset: 0,
        });
        Ok(true)
    }

    /// Moves past the open segment: the next record is the next segment's first.
    fn skip_segment(&mut self) {
        if let Some(seg) = self.segment.take() {
            let segs = self.inner.segments.lock().expect("segments lock");
            if let Some((&next_first, _)) = segs.range(seg.first + 1..).next() {
                self.next = self.next.max(next_first);
            }
        }
    }

    /// After damage at the start of the last frame read: continue at the next valid frame of
    /// this segment (the same resync recovery uses), else at the next segment; if this is the
    /// newest segment and nothing valid follows, the durable records after the damage are lost
    /// (already reported) and reading resumes with records appended later.
    fn resync(&mut self) -> Result<()> {
        let max = self.inner.config.max_record_bytes;
        let Some(seg) = self.segment.as_mut() else {
            return Ok(());
        };
        let damaged_at = self.damaged_at;
        let mut file = File::open(&seg.path).map_err(WalError::io(&seg.path))?;
        file.seek(SeekFrom::Start(damaged_at + 1))
            .map_err(WalError::io(&seg.path))?;
        let mut rest = Vec::new();
        file.read_to_end(&mut rest).map_err(WalError::io(&seg.path))?;
        if let Some(k) = segments::resync(&rest, 0, max, self.next) {
            let at = damaged_at + 1 + k as u64;
            seg.file.seek(SeekFrom::Start(at)).map_err(WalError::io(&seg.path))?;
            seg.offset = at;
            return Ok(());
        }
        let (first, path) = (seg.first, seg.path.clone());
        if self.has_segment_after(first + 1) {
            self.skip_segment();
            return Ok(());
        }
        let end = damaged_at + 1 + rest.len() as u64;
        let durable = self.inner.durable();
        let seg = self.segment.as_mut().expect("a segment is open");
        seg.file.seek(SeekFrom::Start(end)).map_err(WalError::io(&path))?;
        seg.offset = end;
        self.next = self.next.max(durable + 1);
        Ok(())
    }

    fn has_segment_after(&self, lsn: Lsn) -> bool {
        self.inner
            .segments
            .lock()
            .expect("segments lock")
            .range(lsn..)
            .next()
            .is_some()
    }

    fn corruption(&self, seg: &OpenSegment, offset: u64, bytes: &[u8], reason: &str) -> WalError {
        if let Err(e) = self.inner.quarantine.keep(&seg.path, offset, bytes, reason) {
            return e;
        }
        WalError::Corruption {
            segment: seg.path.clone(),
            offset,
            after: self.next.saturating_sub(1),
            reason: reason.into(),
        }
    }

    /// Reads the next frame of the open segment: `Ok(None)` at its end.
    fn read_frame(&mut self) -> Result<Option<(Lsn, R)>> {
        let max = self.inner.config.max_record_bytes;
        let seg = self.segment.as_mut().expect("a segment is open");
        self.buf.resize(8, 0);
        match seg.file.read_exact(&mut self.buf[..8]) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => {
                return Err(WalError::Io {
                    path: seg.path.clone(),
                    source: e,
                });
            }
        }
        let len = u32::from_le_bytes(self.buf[0..4].try_into().expect("slice of 4")) as usize;
        let offset = seg.offset;
        if len < frame::HEADER_LEN - 8 || len > max + frame::HEADER_LEN - 8 {
            self.damaged_at = offset;
            let seg = self.segment.take().expect("a segment is open");
            let err = self.corruption(&seg, offset, &self.buf.clone(), "implausible length");
            self.segment = Some(seg);
            return Err(err);
        }
        // Read into spare capacity: no zero-filling of every frame.
        self.buf.truncate(8);
        let read = (&mut seg.file).take(len as u64).read_to_end(&mut self.buf);
        match read {
            Ok(n) if n == len => {}
            Ok(_) => {
                self.damaged_at = offset;
                let seg = self.segment.take().expect("a segment is open");
                let err = self.corruption(&seg, offset, &self.buf.clone(), "frame cut short inside durable range");
                self.segment = Some(seg);
                return Err(err);
            }
            Err(e) => {
                let path = seg.path.clone();
                return Err(WalError::Io { path, source: e });
            }
        }
        seg.offset += self.buf.len() as u64;
        match frame::decode(&self.buf, max) {
            Decoded::Frame { lsn, .. } if lsn > segments::MAX_LSN => Err(self.damaged(offset, "lsn out of range")),
            Decoded::Frame { lsn, body, .. } => match postcard::from_bytes::<R>(body) {
                Ok(record) => Ok(Some((lsn, record))),
                Err(_) => Err(self.damaged(offset, "body does not decode")),
            },
            Decoded::Corrupt { reason } => Err(self.damaged(offset, reason)),
            Decoded::Truncated => Err(self.damaged(offset, "frame cut short")),
        }
    }

    fn damaged(&mut self, offset: u64, reason: &str) -> WalError {
        self.damaged_at = offset;
        let seg = self.segment.take().expect("a segment is open");
        let err = self.corruption(&seg, offset, &self.buf, reason);
        self.segment = Some(seg);
        err
    }
}

impl<R: DeserializeOwned> Iterator for Reader<R> {
    type Item = Result<(Lsn, R)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.next > self.inner.durable() {
                return None;
            }
            if self.segment.is_none() {
                match self.open_segment() {
                    Ok(true) => {}
                    Ok(false) => return None,
                    Err(e) => return Some(Err(e)),
                }
            }
            match self.read_frame() {
                Ok(Some((lsn, _))) if lsn < self.next => continue,
                Ok(Some((lsn, record))) => {
                    self.next = lsn + 1;
                    return Some(Ok((lsn, record)));
                }
                Ok(None) => {
                    // End of this segment. The committer registers a segment before writing
                    // to it and publishes durability after, so a durable `next` is in a later
                    // segment that starts exactly at `next`.
                    let at = self.next;
                    self.skip_segment();
                    if self.next != at {
                        return Some(Err(WalError::Corruption {
                            segment: PathBuf::new(),
                            offset: 0,
                            after: at.saturating_sub(1),
                            reason: format!("records {at}..{} are missing between segments", self.next),
                        }));
                    }
                    if self.segment.is_none() && !self.has_segment_after(at) {
                        return Some(Err(WalError::Corruption {
                            segment: PathBuf::new(),
                            offset: 0,
                            after: at.saturating_sub(1),
                            reason: "the newest segment ends before the durable lsn".into(),
                        }));
                    }
                }
                Err(e @ WalError::Corruption { .. }) => {
                    if let Err(io) = self.resync() {
                        return Some(Err(io));
                    }
                    return Some(Err(e));
                }
                Err(e) => {
                    self.skip_segment();
                    return Some(Err(e));
                }
            }
        }
    }
}
