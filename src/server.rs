//! `run`: the seam between `main` and the service. It serves HTTP at once (so `/livez` answers
//! during recovery), recovers the store off the async workers, then keeps it checkpointed until
//! `shutdown` resolves, and finally drains and checkpoints once more.

use std::future::Future;
use std::time::Duration;

use coreq_storage::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;

use std::sync::Arc;

use crate::api::{self, AppState, Services};
use crate::auth::{Accounts, ApiKey};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, GatewayKind};
use crate::delivery::webhook::WebhookClient;
use crate::delivery::{self, Delivery};
use crate::disk::SpaceGuard;
use crate::error::ServeError;
use crate::gateway::http::HttpGateway;
use crate::gateway::sim::Simulator;
use crate::gateway::{Link, LinkState};
use crate::listener::HttpFront;
use crate::messages::Messages;
use crate::messages::gc::Collector;
use crate::messages::sender::Sender;
use crate::replicator::Replicator;
use crate::settings::Settings;
use crate::telemetry::{self, catalog, catalog::CHECKPOINT_SECONDS};

/// Runs the service on `listener` until `shutdown` resolves. Returns an error (and the process
/// exits non-zero) if recovery fails or a checkpoint's flush fails: both are fatal.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    run_with_clock(config, listener, shutdown, Arc::new(SystemClock)).await
}

/// [`run`] with the time source given: tests pass a [`ManualClock`](crate::clock::ManualClock)
/// to make token expiry (and, later, backoff) exact without waiting.
pub async fn run_with_clock(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    clock: Arc<dyn Clock>,
) -> Result<(), ServeError> {
    let front = HttpFront::new(config.http.clone(), config.tls.clone(), config.fd_reserve())?;
    let state = AppState::new(config.api_key.as_deref().map(ApiKey::new));
    let (stop_tx, stop_rx) = watch::channel(false);
    let server = tokio::spawn(serve_http(listener, state.clone(), front, stop_rx.clone()));
    tokio::pin!(shutdown);

    let store_config = config.store_config();
    let recovery = tokio::task::spawn_blocking(move || Store::open(store_config));
    let store = tokio::select! {
        recovered = recovery => recovered.map_err(|e| ServeError::Task(e.to_string()))??.0,
        () = &mut shutdown => {
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Ok(());
        }
    };
    let accounts = Accounts::new(store.clone(), clock.clone());
    accounts
        .bootstrap(config.admin_password.as_deref())
        .await
        .map_err(|e| ServeError::Task(format!("creating the admin account: {e}")))?;
    let settings = Settings::open(store.clone(), config.allow_http_webhooks)
        .map_err(|e| ServeError::Task(format!("reading the settings: {e}")))?;
    let current = settings
        .current()
        .map_err(|e| ServeError::Task(format!("reading the settings: {e}")))?;
    telemetry::follow_settings(&current.log_level, current.verbose_logging);
    // Installed now, not at the first scrape: the dispatcher registers its metric handles at
    // start, and handles taken before the recorder exists would record nothing.
    catalog::recorder();
    tokio::spawn(metrics_upkeep(stop_rx.clone()));
    let space = SpaceGuard::new(&config.data_dir, &config.log_dir, config.min_free_bytes);
    let client = WebhookClient::new(config.webhook_timeout, config.webhook_ca.as_deref())?;
    let queue = delivery::queue_for(&store, current.callback_persist).await?;
    let (delivery, dispatcher) = Delivery::start(
        queue,
        client,
        clock.clone(),
        settings.subscribe(),
        config.delivery.clone(),
        stop_rx.clone(),
    );
    let messages = Messages::new(store.clone(), clock, delivery.clone(), settings.subscribe());
    let gateway = start_gateway(&config, &messages, &stop_rx).await?;
    let mirror = config
        .database
        .clone()
        .map(|db| Replicator::start(store.clone(), db, config.mirror.clone(), stop_rx.clone()));
    let gc = Collector::new(messages.clone(), config.message_retention);
    tokio::spawn(gc.clone().run_periodically(settings.subscribe(), stop_rx.clone()));
    let checkpoint_interval = config.checkpoint_interval;
    state.set_ready(Services {
        config: Arc::new(config),
        store: store.clone(),
        accounts,
        settings,
        space,
        delivery,
        messages,
        link: gateway.link.clone(),
        sim: gateway.sim.clone(),
        gc,
        mirror: mirror.as_ref().map(|(replicator, _)| replicator.clone()),
    });
    tracing::info!("coreq ready");

    let checkpointer = tokio::spawn(checkpoint_loop(store.clone(), checkpoint_interval, stop_rx));
    tokio::pin!(checkpointer);
    let outcome = tokio::select! {
        () = &mut shutdown => Ok(()),
        ended = &mut checkpointer => ended.map_err(|e| ServeError::Task(e.to_string())).and_then(|r| r),
    };
    tracing::info!("coreq shutting down");
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = dispatcher.await;
    for task in gateway.tasks {
        let _ = task.await;
    }
    if let Some((_, task)) = mirror {
        let _ = task.await;
    }
    if let Some(sim) = gateway.sim {
        sim.close();
    }
    if outcome.is_ok() {
        // Lazy records (delivery marks, failures) of the last moments first, so that the
        // checkpoint covers them and the next start replays nothing.
        let syncing = store.clone();
        tokio::task::spawn_blocking(move || syncing.sync())
            .await
            .map_err(|e| ServeError::Task(e.to_string()))??;
        checkpoint(&store).await?;
    }
    outcome
}

/// The running gateway: the link health and support show, the simulator when it runs, and the
/// tasks to wait for at shutdown.
struct RunningGateway {
    link: Link,
    sim: Option<Arc<Simulator>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the configured gateway and, unless it is `none`, the sender feeding it.
async fn start_gateway(
    config: &Config,
    messages: &Messages,
    stop: &watch::Receiver<bool>,
) -> Result<RunningGateway, ServeError> {
    match config.gateway {
        GatewayKind::None => Ok(RunningGateway {
            link: Link::new(LinkState::Unregistered),
            sim: None,
            tasks: Vec::new(),
        }),
        GatewayKind::Http => {
            let link = Link::new(LinkState::Connecting);
            let url = config
                .gateway_url
                .clone()
                .ok_or(ServeError::Unsupported("--gateway http without --gateway-url"))?;
            let gateway = HttpGateway::new(url, config.gateway_timeout, config.webhook_ca.as_deref(), link.clone())?;
            let sender = Sender::new(messages, Arc::new(gateway), link.clone(), config.sender.clone());
            let tasks = vec![tokio::spawn(sender.run(stop.clone()))];
            Ok(RunningGateway { link, sim: None, tasks })
        }
        GatewayKind::Sim => {
            let link = Link::new(LinkState::Connecting);
            let (dir, delay) = (config.data_dir.join("sim"), config.sim_delay);
            let (sim_link, sim_messages) = (link.clone(), messages.clone());
            let (sim, reporter) =
                tokio::task::spawn_blocking(move || Simulator::open(&dir, delay, sim_link, sim_messages))
                    .await
                    .map_err(|e| ServeError::Task(e.to_string()))?
                    .map_err(|e| ServeError::Task(format!("opening the sim gateway's journal: {e}")))?;
            let sender = Sender::new(messages, sim.clone(), link.clone(), config.sender.clone());
            let tasks = vec![
                tokio::spawn(reporter.run(stop.clone())),
                tokio::spawn(sender.run(stop.clone())),
            ];
            Ok(RunningGateway {
                link,
                sim: Some(sim),
                tasks,
            })
        }
    }
}

/// Serves the API until the stop flag is set; then `/readyz` turns 503, nothing new is
/// accepted, requests in progress get `--shutdown-timeout-ms` to finish and the connections
/// left are closed (idle keep-alive connections at once). Aborting the task running this
/// closes the listener and every connection immediately (for a fatal stop).
async fn serve_http(listener: TcpListener, state: AppState, front: HttpFront, mut stop: watch::Receiver<bool>) {
    let app = api::router(state.clone());
    let stopping = async move {
        stopped(&mut stop).await;
        state.begin_shutdown();
    };
    front.serve(listener, app, stopping).await;
}

/// Checkpoints every `interval` until told to stop. A failed checkpoint is fatal.
async fn checkpoint_loop(store: Store, interval: Duration, mut stop: watch::Receiver<bool>) -> Result<(), ServeError> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => checkpoint(&store).await?,
            () = stopped(&mut stop) => return Ok(()),
        }
    }
}

/// Resolves once the stop flag is set (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

async fn checkpoint(store: &Store) -> Result<(), ServeError> {
    let store = store.clone();
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || store.checkpoint())
        .await
        .map_err(|e| ServeError::Task(e.to_string()))??;
    metrics::histogram!(CHECKPOINT_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(())
}

/// Drains the exporter's histogram buffers every few seconds (its owner's job).
async fn metrics_upkeep(mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = ticker.tick() => catalog::upkeep(),
            () = stopped(&mut stop) => return,
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop coreq");
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
