//! The callback queue in sled, by pages.
//!
//! One enqueue record is one page: key `p` + the first seq, value the enqueue time and the
//! bodies. Deliveries (and deletions) set bits in the page's bitmap under `d` + the first seq;
//! the page and its bitmap go when every bit is set. So delivering a run of callbacks costs one
//! small read-modify-write per page touched instead of one tree removal per callback, which
//! profiling showed to be the largest share of the dispatcher's CPU.
//!
//! Crash safety: sled may persist any prefix of these operations before the next checkpoint,
//! and the WAL replays every record after it, so each step is idempotent on its own:
//! - a page is inserted only if absent, and a fresh page drops any bitmap left under its key;
//! - bits are only ever set; the pending count moves only by bits that were not set before;
//! - a full page is removed before its bitmap, so a crash in between leaves a bitmap without a
//!   page (ignored, and dropped by the next mark of that page's seqs), never a page whose
//!   deliveries were forgotten.
//!
//! Marks run under one lock (`marks`): the dispatcher and an operator's delete may touch the
//! same page at once, and the read-modify-write of a bitmap must not lose either.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use super::{SledState, decode, encode, seq_key, seq_of};
use crate::error::{Result, StorageError};
use crate::model::{Attempts, CallbackSeq, PendingCallback};

pub(super) const PAGE: u8 = b'p';
pub(super) const DELIVERED: u8 = b'd';
pub(super) const ATTEMPTS: u8 = b'a';
/// The per-callback layout of callback schema 1, migrated to pages at open.
const LEGACY_CALLBACK: u8 = b'c';

#[derive(Serialize)]
struct PageOut<'a> {
    enqueued_at: u64,
    bodies: &'a [Vec<u8>],
}

/// A page as read: bodies borrowed from sled's buffer, copied out only when listed.
#[derive(Deserialize)]
struct PageIn<'a> {
    enqueued_at: u64,
    #[serde(borrow)]
    bodies: Vec<&'a [u8]>,
}

/// The first two fields of a page: postcard encodes a sequence's length as a varint, exactly
/// as it encodes a `u64`, so the length can be read without decoding the bodies.
#[derive(Deserialize)]
struct PageHead {
    _enqueued_at: u64,
    len: u64,
}

#[derive(Deserialize)]
struct LegacyCallback {
    enqueued_at: u64,
    body: Vec<u8>,
}

/// Which of a page's callbacks are gone (delivered or deleted), one bit each.
struct Bitmap(Vec<u8>);

impl Bitmap {
    fn empty(len: u64) -> Bitmap {
        Bitmap(vec![0; len.div_ceil(8) as usize])
    }

    fn from_stored(len: u64, stored: Option<&[u8]>) -> Bitmap {
        let mut bits = Bitmap::empty(len);
        if let Some(stored) = stored {
            let n = stored.len().min(bits.0.len());
            bits.0[..n].copy_from_slice(&stored[..n]);
        }
        bits
    }

    fn is_set(&self, offset: u64) -> bool {
        self.0
            .get((offset / 8) as usize)
            .is_some_and(|byte| byte & (1 << (offset % 8)) != 0)
    }

    /// Sets the bit; true if it was not set.
    fn set(&mut self, offset: u64) -> bool {
        let Some(byte) = self.0.get_mut((offset / 8) as usize) else {
            return false;
        };
        let was_clear = *byte & (1 << (offset % 8)) == 0;
        *byte |= 1 << (offset % 8);
        was_clear
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|b| u64::from(b.count_ones())).sum()
    }
}

impl SledState {
    pub(super) fn marks(&self) -> MutexGuard<'_, ()> {
        // Guards no data of its own: a panic under it leaves nothing half-changed in memory.
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Pending callbacks at open: every page's length less its set bits.
    pub(super) fn count_pending_callbacks(&self) -> Result<u64> {
        let mut pending = 0;
        for kv in self.db.scan_prefix([PAGE]) {
            let (k, v) = kv?;
            let len = page_len(&k, &v)?;
            let stored = self.db.get(seq_key(DELIVERED, seq_of(&k)))?;
            pending += len - Bitmap::from_stored(len, stored.as_deref()).count();
        }
        Ok(pending)
    }

    /// Callback schema 1 kept one key per callback; each becomes a page of one. Idempotent:
    /// a crash midway leaves keys that the next open migrates again.
    pub(super) fn migrate_legacy_callbacks(&self) -> Result<()> {
        let mut migrated = 0u64;
        for kv in self.db.scan_prefix([LEGACY_CALLBACK]) {
            let (k, v) = kv?;
            let legacy: LegacyCallback = decode(&k, &v)?;
            let page = encode(&PageOut {
                enqueued_at: legacy.enqueued_at,
                bodies: std::slice::from_ref(&legacy.body),
            });
            self.db.insert(seq_key(PAGE, seq_of(&k)), page)?;
            self.db.remove(&k)?;
            migrated += 1;
        }
        if migrated > 0 {
            tracing::info!(migrated, "callbacks migrated to the paged layout (callback schema 2)");
        }
        Ok(())
    }

    pub(super) fn insert_page(&self, first_seq: CallbackSeq, enqueued_at: u64, bodies: &[Vec<u8>]) -> Result<()> {
        let page = encode(&PageOut { enqueued_at, bodies });
        let fresh = self
            .db
            .compare_and_swap(seq_key(PAGE, first_seq), None as Option<&[u8]>, Some(page))?
            .is_ok();
        if fresh {
            // A bitmap under this key can only be one a crash left behind (see the module doc).
            self.db.remove(seq_key(DELIVERED, first_seq))?;
            self.pending_callbacks.fetch_add(bodies.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Marks callbacks gone (delivered or deleted), grouped by page. `seqs` in any order.
    pub(super) fn remove_callbacks(&self, seqs: &mut [CallbackSeq]) -> Result<()> {
        seqs.sort_unstable();
        let _marks = self.marks();
        let mut rest = &seqs[..];
        while let Some(&seq) = rest.first() {
            let Some((first, len)) = self.page_of(seq)? else {
                rest = &rest[1..];
                self.forget_attempts(seq)?;
                continue;
            };
            let in_page = rest.partition_point(|&s| s < first + len);
            self.mark_in_page(first, len, &rest[..in_page])?;
            rest = &rest[in_page..];
        }
        Ok(())
    }

    fn mark_in_page(&self, first: CallbackSeq, len: u64, seqs: &[CallbackSeq]) -> Result<()> {
        let bitmap_key = seq_key(DELIVERED, first);
        let stored = self.db.get(bitmap_key)?;
        let mut bits = Bitmap::from_stored(len, stored.as_deref());
        let mut newly = 0;
        for &seq in seqs {
            if bits.set(seq - first) {
                newly += 1;
            }
            self.forget_attempts(seq)?;
        }
        if newly == 0 {
            return Ok(());
        }
        self.pending_callbacks.fetch_sub(newly, Ordering::Relaxed);
        if bits.count() == len {
            self.db.remove(seq_key(PAGE, first))?;
            self.db.remove(bitmap_key)?;
        } else {
            self.db.insert(bitmap_key, bits.0)?;
        }
        Ok(())
    }

    fn forget_attempts(&self, seq: CallbackSeq) -> Result<()> {
        if self.attempted().remove(&seq) {
            self.db.remove(seq_key(ATTEMPTS, seq))?;
        }
        Ok(())
    }

    /// Records a failed attempt, if the callback is still pending.
    pub(super) fn record_attempts(&self, seq: CallbackSeq, attempts: &Attempts) -> Result<()> {
        let _marks = self.marks();
        if self.is_pending(seq)? {
            self.db.insert(seq_key(ATTEMPTS, seq), encode(attempts))?;
            self.attempted().insert(seq);
        }
        Ok(())
    }

    fn is_pending(&self, seq: CallbackSeq) -> Result<bool> {
        let Some((first, len)) = self.page_of(seq)? else {
            return Ok(false);
        };
        let stored = self.db.get(seq_key(DELIVERED, first))?;
        Ok(!Bitmap::from_stored(len, stored.as_deref()).is_set(seq - first))
    }

    /// The page holding `seq`: its first seq and length.
    fn page_of(&self, seq: CallbackSeq) -> Result<Option<(CallbackSeq, u64)>> {
        let Some(kv) = self.db.range(seq_key(PAGE, 0)..=seq_key(PAGE, seq)).next_back() else {
            return Ok(None);
        };
        let (k, v) = kv?;
        let (first, len) = (seq_of(&k), page_len(&k, &v)?);
        Ok((seq < first + len).then_some((first, len)))
    }

    /// Up to `limit` pending callbacks from `start` on, oldest first.
    pub(super) fn list_callbacks(&self, start: CallbackSeq, limit: usize) -> Result<Vec<PendingCallback>> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let from = self.page_of(start)?.map_or(start, |(first, _)| first);
        for kv in self.db.range(seq_key(PAGE, from)..=seq_key(PAGE, u64::MAX)) {
            let (k, v) = kv?;
            let first = seq_of(&k);
            let page: PageIn<'_> = decode_page(&k, &v)?;
            let len = page.bodies.len() as u64;
            let stored = self.db.get(seq_key(DELIVERED, first))?;
            let gone = Bitmap::from_stored(len, stored.as_deref());
            for (offset, body) in (0..len).zip(page.bodies) {
                let seq = first + offset;
                if seq < start || gone.is_set(offset) {
                    continue;
                }
                out.push(PendingCallback {
                    seq,
                    enqueued_at: page.enqueued_at,
                    body: body.to_vec(),
                    attempts: self.attempts_of(seq)?,
                });
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    pub(super) fn attempts_of(&self, seq: CallbackSeq) -> Result<Attempts> {
        if !self.attempted().contains(&seq) {
            return Ok(Attempts::default());
        }
        Ok(self.get::<Attempts>(&seq_key(ATTEMPTS, seq))?.unwrap_or_default())
    }

    pub(super) fn seqs_with_attempts(&self) -> Result<HashSet<CallbackSeq>> {
        let mut seqs = HashSet::new();
        for kv in self.db.scan_prefix([ATTEMPTS]) {
            seqs.insert(seq_of(&kv?.0));
        }
        Ok(seqs)
    }
}

fn page_len(key: &[u8], value: &[u8]) -> Result<u64> {
    let (head, _) = postcard::take_from_bytes::<PageHead>(value).map_err(|source| StorageError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })?;
    Ok(head.len)
}

fn decode_page<'a>(key: &[u8], value: &'a [u8]) -> Result<PageIn<'a>> {
    postcard::from_bytes(value).map_err(|source| StorageError::Decode {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_written_from_owned_bodies_reads_back_borrowed_with_its_length() {
        let bodies = vec![b"{}".to_vec(), vec![], b"[1,2,3]".to_vec()];
        let bytes = encode(&PageOut {
            enqueued_at: 1_700_000_000_000,
            bodies: &bodies,
        });
        assert_eq!(page_len(b"p", &bytes).unwrap(), 3);
        let page = decode_page(b"p", &bytes).unwrap();
        assert_eq!(page.enqueued_at, 1_700_000_000_000);
        assert_eq!(page.bodies, [&b"{}"[..], &b""[..], &b"[1,2,3]"[..]]);
    }

    #[test]
    fn a_bitmap_counts_each_bit_once_and_ignores_offsets_past_the_page() {
        let mut bits = Bitmap::empty(10);
        assert!(bits.set(0));
        assert!(bits.set(9));
        assert!(!bits.set(9));
        assert!(!bits.set(16));
        assert_eq!(bits.count(), 2);
        assert!(bits.is_set(9) && !bits.is_set(8));
    }
}

#[cfg(test)]
mod migration {
    use super::*;
    use crate::sled_state::SledConfig;
    use crate::state::State;

    #[derive(Serialize)]
    struct LegacyOut<'a> {
        enqueued_at: u64,
        body: &'a [u8],
    }

    #[test]
    fn callbacks_stored_one_per_key_by_schema_1_are_read_as_pages_after_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            for (seq, body) in [(3u64, &b"{\"a\":1}"[..]), (4, b"{\"b\":2}"), (9, b"[]")] {
                let value = postcard::to_stdvec(&LegacyOut { enqueued_at: 77, body }).unwrap();
                db.insert(seq_key(LEGACY_CALLBACK, seq), value).unwrap();
            }
            db.flush().unwrap();
        }
        let state = SledState::open(&SledConfig::new(dir.path())).unwrap();
        assert_eq!(state.pending_callback_count(), 3);
        let listed = state.pending_callbacks(None, 10).unwrap();
        let seen: Vec<(u64, &[u8], u64)> = listed
            .iter()
            .map(|cb| (cb.seq, cb.body.as_slice(), cb.enqueued_at))
            .collect();
        assert_eq!(
            seen,
            [(3, &b"{\"a\":1}"[..], 77), (4, b"{\"b\":2}", 77), (9, b"[]", 77)]
        );
        assert_eq!(state.db.scan_prefix([LEGACY_CALLBACK]).count(), 0);
    }
}
