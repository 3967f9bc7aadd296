//! The applied watermark: the highest LSN such that every record up to it has been applied to
//! the state. Records are applied by their committers concurrently and so finish out of order;
//! a checkpoint may only claim the contiguous prefix.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use coreq_wal::Lsn;

#[derive(Debug, Default)]
pub(crate) struct Watermark {
    inner: Mutex<(Lsn, BTreeMap<Lsn, Lsn>)>,
}

impl Watermark {
    pub(crate) fn new(applied: Lsn) -> Watermark {
        Watermark {
            inner: Mutex::new((applied, BTreeMap::new())),
        }
    }

    pub(crate) fn get(&self) -> Lsn {
        self.inner.lock().expect("watermark lock").0
    }

    /// Records that the LSNs in `range` are applied.
    pub(crate) fn mark(&self, range: RangeInclusive<Lsn>) {
        if range.is_empty() {
            return;
        }
        let mut guard = self.inner.lock().expect("watermark lock");
        let (mark, done) = &mut *guard;
        done.insert(*range.start(), *range.end());
        while let Some(entry) = done.first_entry() {
            if *entry.key() > *mark + 1 {
                break;
            }
            *mark = (*mark).max(*entry.get());
            entry.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_advances_only_over_a_contiguous_prefix() {
        let w = Watermark::new(0);
        w.mark(3..=4);
        assert_eq!(w.get(), 0);
        w.mark(1..=1);
        assert_eq!(w.get(), 1);
        w.mark(2..=2);
        assert_eq!(w.get(), 4);
    }
}
