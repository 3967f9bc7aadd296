//! Webhook delivery (spec §8): the callback queue's front door ([`Delivery`]: enqueue, list,
//! retry, delete) and the [`dispatcher`] that POSTs callbacks to the webhook in order with
//! unlimited, linearly backed-off retries. `webhook.rs` is the HTTP client.
//!
//! The queue is a [`Store`]: the service's durable one when `callback_persist` is true, a
//! memory store when it is false (callbacks then die with the process, as documented). The
//! choice is made once at start; changing the setting takes effect at the next start.

mod dispatcher;
pub use dispatcher::backoff_ms;
pub mod webhook;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use coreq_storage::{CallbackSeq, PendingCallback, StorageError, Store, UnixMillis};
use tokio::sync::{Notify, mpsc, watch};

use crate::clock::Clock;
use crate::settings::AppSettings;
use webhook::WebhookClient;

/// Limits of the delivery engine (from `Config`).
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Most callbacks held in memory at once; the rest of the backlog stays on disk.
    pub window_callbacks: usize,
    /// Most body bytes held in memory at once.
    pub window_bytes: usize,
    /// Pending callbacks above which enqueues are refused with 503/1016.
    pub high_water: u64,
}

/// What the front door tells the dispatcher.
enum Command {
    RetryNow(CallbackSeq),
    Deleted(CallbackSeq),
}

/// State shared between the front door and the dispatcher.
struct Shared {
    enqueued: Notify,
    in_flight: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("the callback backlog is over its high-water mark of {0}")]
    Overloaded(u64),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// The callback queue as the API sees it.
#[derive(Clone)]
pub struct Delivery {
    queue: Store,
    clock: Arc<dyn Clock>,
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
    high_water: u64,
}

impl Delivery {
    /// Starts the dispatcher over `queue`; it runs until `stop` is set.
    pub fn start(
        queue: Store,
        client: WebhookClient,
        clock: Arc<dyn Clock>,
        settings: watch::Receiver<AppSettings>,
        config: DeliveryConfig,
        stop: watch::Receiver<bool>,
    ) -> (Delivery, tokio::task::JoinHandle<()>) {
        let (commands, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            enqueued: Notify::new(),
            in_flight: AtomicU64::new(0),
        });
        let high_water = config.high_water;
        let dispatcher = dispatcher::Dispatcher::new(
            queue.clone(),
            client,
            clock.clone(),
            settings,
            received,
            shared.clone(),
            config,
        );
        let task = tokio::spawn(dispatcher.run(stop));
        let delivery = Delivery {
            queue,
            clock,
            commands,
            shared,
            high_water,
        };
        (delivery, task)
    }

    /// Enqueues a batch; the seqs come back in order once the batch is durable (or, with a
    /// memory queue, stored).
    pub async fn enqueue(&self, bodies: Vec<Vec<u8>>) -> Result<Vec<CallbackSeq>, DeliveryError> {
        if self.queue.pending_callback_count() >= self.high_water {
            return Err(DeliveryError::Overloaded(self.high_water));
        }
        let seqs = self.queue.enqueue_callbacks(bodies, self.clock.now_ms()).await?;
        self.shared.enqueued.notify_one();
        Ok(seqs)
    }

    /// Enqueues callbacks that coreq produced itself (statuses, inbound messages, service
    /// reports). Never refused for the high-water mark: they report what already happened.
    pub async fn enqueue_produced(&self, bodies: Vec<Vec<u8>>) -> Result<Vec<CallbackSeq>, DeliveryError> {
        let seqs = self.queue.enqueue_callbacks(bodies, self.clock.now_ms()).await?;
        self.shared.enqueued.notify_one();
        Ok(seqs)
    }

    /// True when callbacks live in `store` itself (`callback_persist`): a record there may then
    /// carry a callback along with the change it reports.
    pub fn queues_in(&self, store: &Store) -> bool {
        self.queue.is_same(store)
    }

    /// Tells the dispatcher that callbacks were written into its queue directly.
    pub fn wake(&self) {
        self.shared.enqueued.notify_one();
    }

    /// Pending callbacks after `after`, oldest first.
    pub fn pending(&self, after: Option<CallbackSeq>, limit: usize) -> Result<Vec<PendingCallback>, DeliveryError> {
        Ok(self.queue.pending_callbacks(after, limit)?)
    }

    pub fn pending_count(&self) -> u64 {
        self.queue.pending_callback_count()
    }

    pub fn in_flight(&self) -> u64 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    /// The oldest pending callback, if any.
    pub fn head(&self) -> Result<Option<PendingCallback>, DeliveryError> {
        Ok(self.queue.pending_callbacks(None, 1)?.into_iter().next())
    }

    /// Makes a failed callback due now. False if it is not pending.
    pub fn retry_now(&self, seq: CallbackSeq) -> Result<bool, DeliveryError> {
        if self.queue.pending_callback(seq)?.is_none() {
            return Ok(false);
        }
        let _ = self.commands.send(Command::RetryNow(seq));
        Ok(true)
    }

    /// Removes a callback for good (durably). False if it was not pending.
    pub async fn delete(&self, seq: CallbackSeq) -> Result<bool, DeliveryError> {
        let deleted = self.queue.delete_callback(seq).await?;
        if deleted {
            let _ = self.commands.send(Command::Deleted(seq));
        }
        Ok(deleted)
    }

    pub fn now_ms(&self) -> UnixMillis {
        self.clock.now_ms()
    }
}

/// The queue for this run: the durable store, or with `callback_persist=false` a memory store
/// that first takes over what the durable store still holds (in order, under new ids), so that
/// switching the setting off never strands callbacks.
pub async fn queue_for(store: &Store, persist: bool) -> Result<Store, StorageError> {
    if persist {
        return Ok(store.clone());
    }
    let memory = Store::memory();
    let mut moved = 0usize;
    loop {
        let batch = store.pending_callbacks(None, 1000)?;
        if batch.is_empty() {
            break;
        }
        memory
            .enqueue_callbacks(batch.iter().map(|c| c.body.clone()).collect(), batch[0].enqueued_at)
            .await?;
        // Lazily: once in memory they are as volatile as the setting asked for.
        store.mark_all_delivered_lazy(&batch.iter().map(|cb| cb.seq).collect::<Vec<_>>())?;
        moved += batch.len();
    }
    if moved > 0 {
        tracing::warn!(
            moved,
            "callback_persist=false: pending callbacks moved from disk to memory"
        );
    }
    Ok(memory)
}
