//! A fake of Meta's WhatsApp Cloud API, for coreq's `--gateway cloud` tests and the README's
//! migration tour: nothing in the repository may contact the real service.
//!
//! It plays both sides the gateway meets:
//! - **The Graph API** (see [`server`]): `POST /{version}/{phone-number-id}/messages` with
//!   `Authorization: Bearer <token>`, checked as the Cloud API checks a send ([`validate`]),
//!   answered with the documented success body or error envelope ([`graph_error`]), unless the
//!   test's [fault plan](faults) says otherwise. Every accepted send is recorded ([`ledger`]);
//!   the fake never de-duplicates (the Cloud API has no idempotency key) but counts sends of the
//!   same message.
//! - **The network and Meta's webhooks** ([`network`], [`webhook`]): statuses `sent`,
//!   `delivered`, `read` (or `failed`) and messages "from users", POSTed to the callback URL as
//!   `whatsapp_business_account` notifications ([`notification`]) signed with
//!   `X-Hub-Signature-256`, retried until answered 200; and the verification handshake.
//!
//! Shapes followed (Meta's developer documentation for the WhatsApp Cloud API, read through the
//! search tool's `docs` corpus; nothing copied): the "Messages" reference of
//! `POST /{phone-number-id}/messages` (request objects per `type`, response `messaging_product`,
//! `contacts[{input, wa_id}]`, `messages[{id}]`); "WhatsApp error codes" (error response syntax,
//! codes 100, 131000, 131008, 131009, 131016, 131026, 130429 and their HTTP statuses) with the
//! Graph API's "Handling Errors" (`type`, `code`, `error_subcode`, `fbtrace_id`; 190 for a bad
//! token); the "Status messages webhook reference" and "Text messages webhook reference"
//! (notification envelope, `statuses[]` with `conversation` and `pricing`, `errors[]`,
//! inbound `contacts[]` and `messages[]`); "Getting started with webhooks" / "Verify requests"
//! (`hub.mode`, `hub.verify_token`, `hub.challenge`; `X-Hub-Signature-256: sha256=<hex>` over the
//! raw body with the app secret; retries of anything not answered 200); "Sending a Flow"
//! (`interactive.type = "flow"`).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use coreq_loadgen::cloud::{CloudConfig, FakeCloud};
//! let cloud = FakeCloud::start(CloudConfig::default()).await?;
//! // coreq: --cloud-api-url <cloud.graph_url()> --cloud-phone-number-id <cloud.phone_number_id()>
//! //        COREQ_CLOUD_ACCESS_TOKEN=<cloud.access_token()> COREQ_CLOUD_APP_SECRET=<cloud.app_secret()>
//! cloud.set_callback_url(Some("http://127.0.0.1:8080/v1/cloud/webhook".into()));
//! assert!(cloud.wait_for_sends(1, std::time::Duration::from_secs(5)).await);
//! # Ok(()) }
//! ```

mod control;
pub mod faults;
pub mod graph_error;
mod ids;
pub mod ledger;
pub mod network;
pub mod notification;
pub mod server;
pub mod validate;
pub mod webhook;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use faults::Fault;
pub use graph_error::CloudError;
pub use ledger::{DuplicateKey, SendRecord};
pub use network::{Delivery, DeliveryCounts, StatusDelays};
pub use notification::Status;
pub use webhook::{Handshake, RetryPolicy, SIGNATURE_HEADER, signature};

use faults::FaultPlan;
use ids::Ids;
use ledger::Ledger;
use network::Network;
use notification::Business;
use webhook::WebhookClient;

use crate::serve::{OwnedDir, TlsSetup, accept_loop};

/// The Graph API version in [`FakeCloud::graph_url`] (any `vN[.M]` is served).
pub const API_VERSION: &str = "v21.0";

/// How a fake starts. Identities default to fixed test values; nothing here is a real secret.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// Where to listen (default `127.0.0.1:0`).
    pub listen: SocketAddr,
    /// Serve HTTPS with a certificate from a test CA, else plain HTTP.
    pub tls: bool,
    /// The test CA's directory (created or reused; see [`crate::ca`]); `None`: a fresh CA whose
    /// certificate lives in a temporary directory owned by the fake.
    pub ca_dir: Option<PathBuf>,
    /// The bearer token sends must carry.
    pub access_token: String,
    /// Keys the notifications' `X-Hub-Signature-256`.
    pub app_secret: String,
    pub phone_number_id: String,
    pub display_phone_number: String,
    /// The WhatsApp Business Account id (`entry[].id` of notifications).
    pub waba_id: String,
    /// Where notifications go; none are posted until one is set.
    pub callback_url: Option<String>,
    /// An extra CA (PEM) to trust for an `https://` callback URL.
    pub callback_ca_pem: Option<String>,
    pub status_delays: StatusDelays,
    pub retry: RetryPolicy,
}

impl Default for CloudConfig {
    fn default() -> CloudConfig {
        CloudConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            tls: false,
            ca_dir: None,
            access_token: "fake-cloud-access-token".to_string(),
            app_secret: "fake-cloud-app-secret".to_string(),
            phone_number_id: "106540352242922".to_string(),
            display_phone_number: "15550783881".to_string(),
            waba_id: "102290129340398".to_string(),
            callback_url: None,
            callback_ca_pem: None,
            status_delays: StatusDelays::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// What the HTTP front, the deliverer and the Rust API share.
pub(crate) struct Shared {
    business: Business,
    access_token: Mutex<String>,
    ids: Ids,
    ledger: Mutex<Ledger>,
    faults: Mutex<FaultPlan>,
    network: Network,
    webhook: WebhookClient,
    /// Requests to Graph API paths, and those refused (faults and errors).
    requests: AtomicU64,
    refused: AtomicU64,
}

/// Locks `mutex`; every holder leaves its data consistent, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn ledger(&self) -> MutexGuard<'_, Ledger> {
        lock(&self.ledger)
    }

    fn faults(&self) -> MutexGuard<'_, FaultPlan> {
        lock(&self.faults)
    }

    fn access_token(&self) -> MutexGuard<'_, String> {
        lock(&self.access_token)
    }

    fn emit_status(&self, wamid: &str, status: Status, error: Option<CloudError>) -> bool {
        let Some(send) = self.ledger().find(wamid).cloned() else {
            return false;
        };
        self.network.emit_status(&send, status, error);
        true
    }

    fn inject_inbound(&self, from: &str, profile_name: &str, message_type: &str, content: Value) -> String {
        let id = self.ids.wamid(from);
        self.network
            .emit_inbound(from, profile_name, &id, message_type, content);
        id
    }
}

/// A running fake. Dropping it stops it (as [`FakeCloud::shutdown`] does, without waiting).
pub struct FakeCloud {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: bool,
    ca_pem: Option<String>,
    ca_path: Option<PathBuf>,
    _own_dir: Option<OwnedDir>,
    tasks: Vec<JoinHandle<()>>,
}

impl FakeCloud {
    /// Binds `config.listen` and serves until shut down or dropped. Must be called within a
    /// tokio runtime, whose tasks then serve the connections and post the notifications.
    pub async fn start(config: CloudConfig) -> io::Result<FakeCloud> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let tls = if config.tls {
            Some(TlsSetup::new(config.ca_dir.as_deref())?)
        } else {
            None
        };
        let client = crate::http::webhook_client(config.callback_ca_pem.as_deref(), 4)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let business = Business {
            waba_id: config.waba_id,
            display_phone_number: config.display_phone_number,
            phone_number_id: config.phone_number_id,
        };
        let shared = Arc::new(Shared {
            network: Network::new(business.clone(), config.status_delays, config.callback_url),
            business,
            access_token: Mutex::new(config.access_token),
            ids: Ids::new(),
            ledger: Mutex::new(Ledger::new()),
            faults: Mutex::new(FaultPlan::default()),
            webhook: WebhookClient::new(client, config.app_secret, config.retry),
            requests: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let handler = {
            let shared = Arc::clone(&shared);
            move |request, peer| server::handle(request, Arc::clone(&shared), peer)
        };
        let (acceptor, ca) = match tls {
            Some(tls) => (Some(tls.acceptor), Some(tls.ca)),
            None => (None, None),
        };
        let deliverer = {
            let shared = Arc::clone(&shared);
            tokio::spawn(async move { shared.network.run(&shared.webhook, &shared.ids).await })
        };
        let server = tokio::spawn(accept_loop(listener, acceptor, handler));
        let (ca_pem, ca_path, own_dir) = match ca {
            Some(ca) => (Some(ca.pem), Some(ca.path), ca.own_dir),
            None => (None, None, None),
        };
        Ok(FakeCloud {
            shared,
            addr,
            tls: config.tls,
            ca_pem,
            ca_path,
            _own_dir: own_dir,
            tasks: vec![server, deliverer],
        })
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// The Graph API base a gateway is configured with (`--cloud-api-url`): `<base>/v21.0`.
    pub fn graph_url(&self) -> String {
        format!("{}/{API_VERSION}", self.base_url())
    }

    /// `<graph_url>/<phone-number-id>/messages`.
    pub fn messages_url(&self) -> String {
        format!("{}/{}/messages", self.graph_url(), self.shared.business.phone_number_id)
    }

    /// The control API's base, `<base>/_fake`.
    pub fn control_url(&self) -> String {
        format!("{}{}", self.base_url(), server::CONTROL_PREFIX.trim_end_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The CA certificate (PEM) a client must trust, for an HTTPS fake.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The file holding [`FakeCloud::ca_pem`] (for coreq's `--webhook-ca`), for an HTTPS fake.
    pub fn ca_path(&self) -> Option<&Path> {
        self.ca_path.as_deref()
    }

    pub fn access_token(&self) -> String {
        self.shared.access_token().clone()
    }

    /// Replaces the accepted token: sends with the old one now get 401/190 (a revoked token).
    pub fn set_access_token(&self, token: &str) {
        *self.shared.access_token() = token.to_string();
    }

    pub fn app_secret(&self) -> &str {
        self.shared.webhook.app_secret()
    }

    pub fn phone_number_id(&self) -> &str {
        &self.shared.business.phone_number_id
    }

    pub fn display_phone_number(&self) -> &str {
        &self.shared.business.display_phone_number
    }

    pub fn waba_id(&self) -> &str {
        &self.shared.business.waba_id
    }

    // --- sends ---

    /// Every accepted send, in acceptance order.
    pub fn sends(&self) -> Vec<SendRecord> {
        self.shared.ledger().sends().to_vec()
    }

    pub fn send_count(&self) -> usize {
        self.shared.ledger().sends().len()
    }

    /// The accepted send that was given `wamid`.
    pub fn send(&self, wamid: &str) -> Option<SendRecord> {
        self.shared.ledger().find(wamid).cloned()
    }

    /// Accepted sends with duplicate key `key`.
    pub fn copies(&self, key: &str) -> u32 {
        self.shared.ledger().copies(key)
    }

    /// Accepted sends whose key had been sent before.
    pub fn duplicates(&self) -> u64 {
        self.shared.ledger().duplicates()
    }

    /// Each key accepted more than once, with its number of copies.
    pub fn duplicated_keys(&self) -> Vec<(String, u32)> {
        self.shared.ledger().duplicated_keys()
    }

    /// Replaces how a send's duplicate key is computed (default:
    /// [`ledger::default_duplicate_key`]); sends already recorded keep theirs.
    pub fn set_duplicate_key(&self, key: DuplicateKey) {
        self.shared.ledger().set_key(key);
    }

    /// Requests to Graph API paths so far, and how many of them were refused.
    pub fn requests(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.shared.requests.load(Relaxed), self.shared.refused.load(Relaxed))
    }

    /// Waits until at least `n` sends were accepted, or `limit` passed; true if they were.
    pub async fn wait_for_sends(&self, n: usize, limit: Duration) -> bool {
        let mut count = self.shared.ledger().subscribe();
        // `wait_for` fails only once the sender is dropped, and the ledger holds it.
        matches!(
            tokio::time::timeout(limit, count.wait_for(|c| *c >= n as u64)).await,
            Ok(Ok(_))
        )
    }

    // --- faults ---

    /// The next `count` messages requests meet `fault`, after any faults scripted before;
    /// false (nothing scripted) beyond [`faults::MAX_SCRIPTED_FAULTS`].
    pub fn fail_next(&self, count: usize, fault: Fault) -> bool {
        self.shared.faults().push(count, fault)
    }

    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    pub fn faults_pending(&self) -> usize {
        self.shared.faults().pending()
    }

    // --- the network ---

    /// Stops posting notifications (the network is down); they wait, in order.
    pub fn pause_network(&self) {
        self.shared.network.set_paused(true);
    }

    pub fn resume_network(&self) {
        self.shared.network.set_paused(false);
    }

    /// Posts each delivered notification `repeat` more times (Meta's at-least-once delivery).
    pub fn set_repeat(&self, repeat: u32) {
        self.shared.network.set_repeat(repeat);
    }

    /// Off: accepted sends get no statuses until the test emits them ([`FakeCloud::emit_status`]).
    pub fn set_automatic_statuses(&self, on: bool) {
        self.shared.network.set_automatic(on);
    }

    /// Delays for sends accepted from now on.
    pub fn set_status_delays(&self, delays: StatusDelays) {
        self.shared.network.set_delays(delays);
    }

    /// Where notifications go (`None`: nowhere; they wait).
    pub fn set_callback_url(&self, url: Option<String>) {
        self.shared.network.set_callback_url(url);
    }

    pub fn callback_url(&self) -> Option<String> {
        self.shared.network.callback_url()
    }

    /// Messages to `wa_id` accepted from now on get a `failed` status carrying `error` instead of
    /// `sent`/`delivered`/`read` (`None`: they succeed again).
    pub fn set_unreachable(&self, wa_id: &str, error: Option<CloudError>) {
        self.shared.network.set_unreachable(wa_id, error);
    }

    /// Posts status `status` of the send `wamid` now; false if no send has that id.
    pub fn emit_status(&self, wamid: &str, status: Status) -> bool {
        let error = (status == Status::Failed).then(CloudError::undeliverable);
        self.shared.emit_status(wamid, status, error)
    }

    /// Posts a `failed` status carrying `error` for the send `wamid` now.
    pub fn emit_failed(&self, wamid: &str, error: CloudError) -> bool {
        self.shared.emit_status(wamid, Status::Failed, Some(error))
    }

    /// Posts a text message from user `from` (digits) named `name`; returns its id.
    pub fn inject_text(&self, from: &str, name: &str, text: &str) -> String {
        self.shared.inject_inbound(from, name, "text", json!({ "body": text }))
    }

    /// Posts a message of `message_type` with object `content` from user `from`; returns its id.
    pub fn inject_inbound(&self, from: &str, name: &str, message_type: &str, content: Value) -> String {
        self.shared.inject_inbound(from, name, message_type, content)
    }

    /// Every notification posted so far (up to [`network::MAX_LOGGED`]), in order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.network.deliveries()
    }

    pub fn delivery_counts(&self) -> DeliveryCounts {
        self.shared.network.counts()
    }

    /// Notifications scheduled and not yet posted.
    pub fn notifications_pending(&self) -> usize {
        self.shared.network.pending()
    }

    /// Waits until at least `n` notifications were answered 200, or `limit` passed.
    pub async fn wait_for_delivered(&self, n: u64, limit: Duration) -> bool {
        let mut counts = self.shared.network.subscribe();
        matches!(
            tokio::time::timeout(limit, counts.wait_for(|c| c.delivered >= n)).await,
            Ok(Ok(_))
        )
    }

    /// Runs the verification handshake against `url` as Meta's dashboard does (it does not set
    /// the callback URL). `Err` only for a URL that does not parse.
    pub async fn verify_callback(&self, url: &str, verify_token: &str) -> Result<Handshake, String> {
        self.shared
            .webhook
            .verify(url, verify_token, self.shared.ids.challenge())
            .await
    }

    /// Stops serving and posting; in-flight requests get no answer.
    pub async fn shutdown(mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            // Cancelled is the expected outcome; a panic in a task has nothing to add here.
            let _ = task.await;
        }
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        for task in &self.tasks {
            // Aborting the accept loop drops its JoinSet, which aborts every connection task.
            task.abort();
        }
    }
}

/// A fake usable without a tokio runtime (plain `#[test]` functions): it runs on a small
/// runtime of its own. Every [`FakeCloud`] method is reachable through `Deref`; the waiting
/// ones have blocking versions here. Do not call those from inside an async context.
pub struct BlockingFakeCloud {
    // Both are `Some` until drop takes them.
    cloud: Option<FakeCloud>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl BlockingFakeCloud {
    /// Starts a fake on a runtime of its own (two worker threads).
    pub fn start(config: CloudConfig) -> io::Result<BlockingFakeCloud> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("coreq-fake-cloud")
            .enable_all()
            .build()?;
        let cloud = runtime.block_on(FakeCloud::start(config))?;
        Ok(BlockingFakeCloud {
            cloud: Some(cloud),
            runtime: Some(runtime),
        })
    }

    fn block_on<F: std::future::Future>(&self, future: F) -> Option<F::Output> {
        self.runtime.as_ref().map(|runtime| runtime.block_on(future))
    }

    pub fn wait_for_sends(&self, n: usize, limit: Duration) -> bool {
        self.block_on((**self).wait_for_sends(n, limit)).unwrap_or(false)
    }

    pub fn wait_for_delivered(&self, n: u64, limit: Duration) -> bool {
        self.block_on((**self).wait_for_delivered(n, limit)).unwrap_or(false)
    }

    pub fn verify_callback(&self, url: &str, verify_token: &str) -> Result<Handshake, String> {
        self.block_on((**self).verify_callback(url, verify_token))
            .unwrap_or_else(|| Err("the fake is stopped".to_string()))
    }
}

impl Deref for BlockingFakeCloud {
    type Target = FakeCloud;

    fn deref(&self) -> &FakeCloud {
        // Invariant: only `drop` takes it, and nothing runs after that.
        self.cloud.as_ref().expect("fake present until dropped")
    }
}

impl Drop for BlockingFakeCloud {
    fn drop(&mut self) {
        drop(self.cloud.take());
        if let Some(runtime) = self.runtime.take() {
            // Unlike dropping the runtime, this does not panic inside an async context.
            runtime.shutdown_background();
        }
    }
}
