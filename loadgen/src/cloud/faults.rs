//! The fault plan: what the next requests to the messages endpoint meet instead of (or before)
//! the normal answer. The test scripts it; each request takes the first fault left, in the
//! order requests finish arriving. With no fault left, requests are answered normally.

use std::collections::VecDeque;
use std::time::Duration;

use super::graph_error::CloudError;

/// Most faults scripted at once.
pub const MAX_SCRIPTED_FAULTS: usize = 100_000;

/// What one request meets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this error; nothing is sent.
    Error(CloudError),
    /// Wait this long, then handle the request normally.
    Delay(Duration),
    /// Close the connection with a TCP reset without answering; nothing is sent.
    Reset,
    /// Accept and record the send (its statuses follow), then close the connection with a reset
    /// instead of answering: the client cannot know that the message went out. This is the
    /// window in which a gateway without an idempotency key sends a message twice.
    AcceptThenReset,
    /// Never answer (until the client gives up, the fake stops, or an hour passes); nothing is
    /// sent.
    Hang,
}

#[derive(Default)]
pub(crate) struct FaultPlan {
    queue: VecDeque<Fault>,
}

impl FaultPlan {
    /// Appends `count` copies of `fault`; false (and nothing appended) past
    /// [`MAX_SCRIPTED_FAULTS`].
    pub fn push(&mut self, count: usize, fault: Fault) -> bool {
        if self.queue.len().saturating_add(count) > MAX_SCRIPTED_FAULTS {
            return false;
        }
        self.queue.extend(std::iter::repeat_n(fault, count));
        true
    }

    pub fn next(&mut self) -> Option<Fault> {
        self.queue.pop_front()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
    }

    pub fn pending(&self) -> usize {
        self.queue.len()
    }
}
