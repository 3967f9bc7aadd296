//! Gateways to the WhatsApp network (spec §7), behind one trait: the sender hands each accepted
//! message to a [`Gateway`] until it accepts it. Which one runs is chosen at start
//! (`--gateway`): `none` (no sender at all: messages wait, health `unregistered`), [`sim`] (an
//! in-process simulator that also reports statuses) or [`http`] (POSTs to an upstream).
//!
//! The gateway's link state, kept in a [`Link`], is what `/v1/health` (`gateway_status`) and
//! `/v1/support` (`socket_conn`) show.

pub mod http;
pub mod sim;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use coreq_storage::Message;
use tokio::sync::Notify;

use crate::delivery::webhook::Failure;

/// Why a gateway did not accept a message; the sender retries it later.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the gateway is disconnected")]
    Disconnected,
    #[error("{}", .0.describe())]
    Http(Failure),
    #[error("the gateway's journal failed: {0}")]
    Journal(String),
}

/// Something that takes outgoing messages. `send` returns `Ok` once the gateway has accepted
/// the message; sending the same message again (same id, the idempotency key) must not reach
/// the recipient twice.
pub trait Gateway: Send + Sync + 'static {
    fn send(&self, message: &Message) -> impl Future<Output = Result<(), SendError>> + Send;
}

/// The state of the link to the network, as the On-Premises API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum LinkState {
    /// No gateway configured.
    Unregistered = 0,
    /// Configured, no answer yet.
    Connecting = 1,
    Connected = 2,
    Disconnected = 3,
}

impl LinkState {
    /// `gateway_status` of `/v1/health`.
    pub fn gateway_status(self) -> &'static str {
        match self {
            LinkState::Unregistered => "unregistered",
            LinkState::Connecting => "connecting",
            LinkState::Connected => "connected",
            LinkState::Disconnected => "disconnected",
        }
    }

    /// `socket_conn` of `/v1/support`: up, down (also when there is no gateway at all: no
    /// link), still connecting (`SC`).
    pub fn socket_conn(self) -> &'static str {
        match self {
            LinkState::Unregistered => "DN",
            LinkState::Connecting => "SC",
            LinkState::Connected => "UP",
            LinkState::Disconnected => "DN",
        }
    }
}

/// The shared, current [`LinkState`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Link(Arc<LinkInner>);

#[derive(Debug)]
struct LinkInner {
    state: AtomicU8,
    reconnected: Notify,
}

impl Link {
    pub fn new(state: LinkState) -> Link {
        Link(Arc::new(LinkInner {
            state: AtomicU8::new(state as u8),
            reconnected: Notify::new(),
        }))
    }

    pub fn get(&self) -> LinkState {
        match self.0.state.load(Ordering::Relaxed) {
            0 => LinkState::Unregistered,
            1 => LinkState::Connecting,
            2 => LinkState::Connected,
            _ => LinkState::Disconnected,
        }
    }

    pub fn set(&self, state: LinkState) {
        let before = self.0.state.swap(state as u8, Ordering::Relaxed);
        if state == LinkState::Connected && before != state as u8 {
            self.0.reconnected.notify_waiters();
        }
    }

    /// Resolves the next time the link becomes `connected` (the sender then retries at once
    /// instead of waiting out its backoff).
    pub async fn reconnected(&self) {
        self.0.reconnected.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_reads_back_every_state_it_is_set_to() {
        let link = Link::new(LinkState::Unregistered);
        for state in [
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::Disconnected,
            LinkState::Unregistered,
        ] {
            link.set(state);
            assert_eq!(link.get(), state);
        }
    }
}
