//! Bookkeeping of one run: which callbacks were sent, acknowledged and delivered, duplicates,
//! order violations and end-to-end latency. Pure (time is passed in), so it is unit-tested.
//!
//! # Order violations
//!
//! coreq dispatches callbacks in enqueue order with at most N (`max_concurrent_requests`)
//! requests in flight, and this receiver always answers 200 (so there are no retries). Hence,
//! when callback `b` arrives, every callback enqueued before it has been started, and those not
//! yet arrived are still in flight, together with `b`: at most N − 1 of them. An **order
//! violation** is an arrival of `b` while N or more callbacks known to be ahead of it in coreq's
//! queue have not arrived. That is the brief's "a seq arriving when a seq larger than it by at
//! least the webhook concurrency has already arrived", made exact for concurrent enqueueing:
//!
//! - concurrent `POST /v1/callbacks` requests can be committed in any order, so seq order is not
//!   queue order. Callbacks *known* to be ahead of `b` are those acknowledged (201) before `b`'s
//!   request was sent (as a prefix: every seq below the "resolved prefix" at that moment), plus
//!   the ones before `b` in its own batch (a batch is committed in order);
//! - a callback whose enqueue request failed is not waited for (it may never come);
//! - in the ceiling mode (no coreq), the load generator's own workers take seqs in order with N
//!   in flight, so every smaller seq is ahead.
//!
//! The check never flags a correct run; it can miss reorderings between batches sent
//! concurrently.

use std::ops::Range;
use std::time::Instant;

use hdrhistogram::Histogram;

/// Largest `--count`: the bookkeeping costs about 9 bytes per callback.
pub const MAX_CALLBACKS: u64 = 20_000_000;

/// Latencies above an hour are recorded as an hour.
const MAX_LATENCY_US: u64 = 3_600_000_000;

const ACKED: u8 = 1;
const FAILED: u8 = 2;
const ARRIVED: u8 = 4;

/// Which callbacks are known to be ahead of a batch's in the queue (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Floor {
    /// Through coreq: those acknowledged before the batch was sent.
    ResolvedPrefix,
    /// Direct to the receiver: every smaller seq.
    BatchStart,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    First {
        order_violation: bool,
    },
    Duplicate,
    /// A seq this run never sends.
    OutOfRange,
}

pub struct Tracker {
    batch: u64,
    window: u64,
    /// Per seq: ACKED | FAILED | ARRIVED bits.
    states: Vec<u8>,
    /// Per batch: every seq below it is known to be ahead of the batch.
    floors: Vec<u32>,
    /// Per seq, 1 once arrived or failed: the callbacks no longer expected.
    settled: Fenwick,
    /// Every seq below it is acknowledged or failed.
    resolved_prefix: u64,
    counts: Counts,
    first_arrival: Option<Instant>,
    last_arrival: Option<Instant>,
    latency_us: Histogram<u64>,
}

/// Counters of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Callbacks in enqueue requests sent.
    pub sent: u64,
    /// Callbacks acknowledged (201 from coreq, 200 from the receiver in the ceiling mode).
    pub acked: u64,
    /// Callbacks whose request failed.
    pub failed: u64,
    /// Distinct callbacks of this run that arrived.
    pub delivered: u64,
    /// Acknowledged callbacks that arrived.
    pub acked_delivered: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    /// Requests that were not this run's callbacks (an earlier run's backlog, …).
    pub foreign: u64,
}

impl Counts {
    /// Acknowledged callbacks that have not arrived (lost, once the run is drained).
    pub fn pending(&self) -> u64 {
        self.acked - self.acked_delivered
    }
}

/// End-to-end latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Tracker {
    /// For seqs `0..capacity`, sent in batches of `batch`, with `window` requests in flight at
    /// most between sender and receiver.
    pub fn new(capacity: u64, batch: u64, window: u64) -> Tracker {
        let capacity = capacity.min(MAX_CALLBACKS);
        let batch = batch.max(1);
        let batches = capacity.div_ceil(batch);
        Tracker {
            batch,
            window: window.max(1),
            states: vec![0; to_index(capacity)],
            floors: vec![0; to_index(batches)],
            settled: Fenwick::new(capacity),
            resolved_prefix: 0,
            counts: Counts::default(),
            first_arrival: None,
            last_arrival: None,
            // 1 µs to an hour at 3 significant digits: these bounds are valid, so this cannot fail.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
        }
    }

    /// The seqs of batch `index` (empty past the end).
    pub fn batch_seqs(&self, index: u64) -> Range<u64> {
        batch_seqs(index, self.batch, self.states.len() as u64)
    }

    /// Batch `index` is about to be sent.
    pub fn sent(&mut self, index: u64, floor: Floor) {
        let seqs = self.batch_seqs(index);
        let Some(slot) = self.floors.get_mut(to_index(index)) else {
            return;
        };
        let value = match floor {
            Floor::ResolvedPrefix => self.resolved_prefix,
            Floor::BatchStart => seqs.start,
        };
        // Seqs are below MAX_CALLBACKS, which fits a u32.
        *slot = u32::try_from(value).unwrap_or(u32::MAX);
        self.counts.sent += seqs.end - seqs.start;
    }

    /// The request carrying `seqs` was acknowledged (`acked`) or failed.
    pub fn resolve(&mut self, seqs: Range<u64>, acked: bool) {
        for seq in seqs.start..seqs.end.min(self.states.len() as u64) {
            let state = self.states[to_index(seq)];
            if state & (ACKED | FAILED) != 0 {
                continue;
            }
            if acked {
                self.counts.acked += 1;
                if state & ARRIVED != 0 {
                    self.counts.acked_delivered += 1;
                }
                self.states[to_index(seq)] = state | ACKED;
            } else {
                self.counts.failed += 1;
                if state & ARRIVED == 0 {
                    self.settled.add(seq);
                }
                self.states[to_index(seq)] = state | FAILED;
            }
        }
        self.advance_resolved_prefix();
    }

    fn advance_resolved_prefix(&mut self) {
        while let Some(state) = self.states.get(to_index(self.resolved_prefix)) {
            if state & (ACKED | FAILED) == 0 {
                break;
            }
            self.resolved_prefix += 1;
        }
    }

    /// Callback `seq`, sent at `sent_at_us`, arrived at `now_us` (Unix µs), `at`.
    pub fn arrival(&mut self, seq: u64, sent_at_us: u64, now_us: u64, at: Instant) -> Seen {
        let Some(&state) = self.states.get(to_index(seq)) else {
            self.counts.foreign += 1;
            return Seen::OutOfRange;
        };
        if state & ARRIVED != 0 {
            self.counts.duplicates += 1;
            return Seen::Duplicate;
        }
        let order_violation = self.behind(seq) >= self.window;
        self.states[to_index(seq)] = state | ARRIVED;
        if state & FAILED == 0 {
            self.settled.add(seq);
        }
        if state & ACKED != 0 {
            self.counts.acked_delivered += 1;
        }
        self.counts.delivered += 1;
        self.counts.order_violations += u64::from(order_violation);
        self.first_arrival.get_or_insert(at);
        self.last_arrival = Some(at);
        self.latency_us.saturating_record(now_us.saturating_sub(sent_at_us));
        Seen::First { order_violation }
    }

    /// How many callbacks known to be ahead of `seq` are still expected.
    fn behind(&self, seq: u64) -> u64 {
        let batch_start = seq - seq % self.batch;
        let floor = self
            .floors
            .get(to_index(seq / self.batch))
            .map_or(0, |&f| u64::from(f).min(batch_start));
        let before_floor = floor - self.settled.prefix(floor);
        let in_batch = (seq - batch_start) - (self.settled.prefix(seq) - self.settled.prefix(batch_start));
        before_floor + in_batch
    }

    /// A request that was not one of this run's callbacks.
    pub fn foreign(&mut self) {
        self.counts.foreign += 1;
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// First and last arrival of a distinct callback of this run.
    pub fn arrival_span(&self) -> Option<(Instant, Instant)> {
        Some((self.first_arrival?, self.last_arrival?))
    }

    pub fn latency(&self) -> Option<Latency> {
        if self.latency_us.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            p50_ms: ms(self.latency_us.value_at_quantile(0.50)),
            p99_ms: ms(self.latency_us.value_at_quantile(0.99)),
            max_ms: ms(self.latency_us.max()),
        })
    }
}

/// The seqs of batch `index` when `0..capacity` is cut in batches of `batch` (empty past the end).
pub fn batch_seqs(index: u64, batch: u64, capacity: u64) -> Range<u64> {
    let start = index.saturating_mul(batch).min(capacity);
    start..start.saturating_add(batch).min(capacity)
}

/// Seqs and batch numbers are below MAX_CALLBACKS, far below usize::MAX.
fn to_index(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A Fenwick (binary indexed) tree of 0/1 flags: set one, count those set below an index, both
/// in O(log n).
struct Fenwick {
    tree: Vec<u32>,
}

impl Fenwick {
    fn new(len: u64) -> Fenwick {
        Fenwick {
            tree: vec![0; to_index(len) + 1],
        }
    }

    fn add(&mut self, index: u64) {
        let mut i = to_index(index) + 1;
        while i < self.tree.len() {
            self.tree[i] += 1;
            i += i & i.wrapping_neg();
        }
    }

    /// Flags set in `0..end`.
    fn prefix(&self, end: u64) -> u64 {
        let mut i = to_index(end).min(self.tree.len() - 1);
        let mut sum = 0;
        while i > 0 {
            sum += u64::from(self.tree[i]);
            i &= i - 1;
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrive(t: &mut Tracker, seq: u64) -> Seen {
        t.arrival(seq, 1_000, 3_000, Instant::now())
    }

    /// Ceiling-style: one seq per batch, every smaller seq ahead.
    fn direct(capacity: u64, window: u64) -> Tracker {
        let mut t = Tracker::new(capacity, 1, window);
        for seq in 0..capacity {
            t.sent(seq, Floor::BatchStart);
        }
        t
    }

    #[test]
    fn fenwick_counts_prefixes() {
        let mut f = Fenwick::new(10);
        for i in [0, 3, 4, 9] {
            f.add(i);
        }
        let prefixes: Vec<u64> = (0..=10).map(|end| f.prefix(end)).collect();
        assert_eq!(prefixes, [0, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4]);
    }

    #[test]
    fn in_order_arrivals_are_clean_and_duplicates_are_counted() {
        let mut t = direct(5, 2);
        for seq in 0..5 {
            assert_eq!(arrive(&mut t, seq), Seen::First { order_violation: false });
        }
        assert_eq!(arrive(&mut t, 3), Seen::Duplicate);
        assert_eq!(arrive(&mut t, 99), Seen::OutOfRange);
        let c = t.counts();
        assert_eq!((c.delivered, c.duplicates, c.order_violations, c.foreign), (5, 1, 0, 1));
    }

    #[test]
    fn overtaking_within_the_window_is_allowed_beyond_it_is_a_violation() {
        // Window 3: b may arrive while up to 2 earlier ones are still in flight.
        let mut t = direct(10, 3);
        assert_eq!(
            arrive(&mut t, 2),
            Seen::First { order_violation: false },
            "0, 1 and 2 in flight"
        );
        assert_eq!(
            arrive(&mut t, 3),
            Seen::First { order_violation: false },
            "0, 1 and 3 in flight"
        );
        assert_eq!(arrive(&mut t, 0), Seen::First { order_violation: false });
        assert_eq!(arrive(&mut t, 1), Seen::First { order_violation: false });
        // The brief's form: 9 arriving while 4..=8 (more than the window) are missing.
        assert_eq!(arrive(&mut t, 9), Seen::First { order_violation: true });
        let mut t = direct(10, 3);
        assert_eq!(
            arrive(&mut t, 3),
            Seen::First { order_violation: true },
            "0, 1, 2 and 3 in flight"
        );
        assert_eq!(t.counts().order_violations, 1);
    }

    #[test]
    fn one_slow_callback_overtaken_by_many_is_not_a_violation() {
        // Window 4: 0 can hold one slot for long while the other three carry 1, 2, 3, 4, 5…
        let mut t = direct(20, 4);
        for seq in 1..=4 {
            arrive(&mut t, seq);
        }
        assert_eq!(arrive(&mut t, 5), Seen::First { order_violation: false });
        assert_eq!(arrive(&mut t, 0), Seen::First { order_violation: false });
    }

    #[test]
    fn failed_requests_are_not_waited_for() {
        let mut t = direct(10, 2);
        t.resolve(0..5, false);
        assert_eq!(arrive(&mut t, 5), Seen::First { order_violation: false });
        assert_eq!(t.counts().failed, 5);
    }

    #[test]
    fn only_callbacks_acked_before_a_batch_was_sent_count_as_ahead() {
        // Batches of 2, window 2. Batch 1 (seqs 2, 3) is sent while batch 0 is unacknowledged:
        // coreq may commit batch 1 first, so its arrivals wait for nothing before seq 2.
        let mut t = Tracker::new(8, 2, 2);
        t.sent(0, Floor::ResolvedPrefix);
        t.sent(1, Floor::ResolvedPrefix);
        t.resolve(2..4, true);
        t.resolve(0..2, true);
        assert_eq!(arrive(&mut t, 2), Seen::First { order_violation: false });
        assert_eq!(arrive(&mut t, 3), Seen::First { order_violation: false });
        // Batch 2 (4, 5) is sent after 0..4 were all acknowledged; 0 and 1 never arrived yet.
        t.sent(2, Floor::ResolvedPrefix);
        t.resolve(4..6, true);
        assert_eq!(
            arrive(&mut t, 4),
            Seen::First { order_violation: true },
            "0 and 1 are ahead, missing"
        );
        // Within a batch: 5 behind 4 (arrived) is fine once 0 and 1 come.
        arrive(&mut t, 0);
        arrive(&mut t, 1);
        assert_eq!(arrive(&mut t, 5), Seen::First { order_violation: false });
        assert_eq!(t.counts().order_violations, 1);
    }

    #[test]
    fn order_within_a_batch_counts() {
        let mut t = Tracker::new(10, 10, 3);
        t.sent(0, Floor::ResolvedPrefix);
        assert_eq!(arrive(&mut t, 2), Seen::First { order_violation: false });
        assert_eq!(
            arrive(&mut t, 4),
            Seen::First { order_violation: true },
            "0, 1, 3 and 4 in flight"
        );
    }

    #[test]
    fn pending_counts_acked_callbacks_not_yet_arrived_whichever_comes_first() {
        let mut t = Tracker::new(6, 3, 24);
        t.sent(0, Floor::ResolvedPrefix);
        t.sent(1, Floor::ResolvedPrefix);
        // Arrival before the 201 reached us.
        arrive(&mut t, 0);
        t.resolve(0..3, true);
        t.resolve(3..6, false);
        arrive(&mut t, 4); // delivered although its request failed
        let c = t.counts();
        assert_eq!(
            (c.sent, c.acked, c.failed, c.delivered, c.acked_delivered),
            (6, 3, 3, 2, 1)
        );
        assert_eq!(c.pending(), 2);
        arrive(&mut t, 1);
        arrive(&mut t, 2);
        assert_eq!(t.counts().pending(), 0);
    }

    #[test]
    fn latency_is_arrival_minus_send_time() {
        let mut t = direct(3, 24);
        t.arrival(0, 1_000, 2_000, Instant::now());
        t.arrival(1, 1_000, 3_000, Instant::now());
        t.arrival(2, 5_000, 4_000, Instant::now()); // clock went back: 0, not a wrap-around
        let latency = t.latency().expect("recorded");
        assert!((latency.max_ms - 2.0).abs() < 0.01, "{latency:?}");
        assert!((latency.p50_ms - 1.0).abs() < 0.01, "{latency:?}");
        assert!(Tracker::new(1, 1, 1).latency().is_none());
    }

    #[test]
    fn batch_seqs_cover_the_capacity_exactly() {
        let t = Tracker::new(10, 4, 6);
        let batches: Vec<Range<u64>> = (0..4).map(|i| t.batch_seqs(i)).collect();
        assert_eq!(batches, [0..4, 4..8, 8..10, 10..10]);
    }
}
