#![doc = include_str!("../README.md")]

pub mod chain;
pub mod metric;
pub mod notifications;
pub mod reconcile;
pub mod settings;
pub mod sources;
pub mod transition;

use std::sync::Arc;

use messaging::{
    Bus, ConsumerRunner, ConsumerSpec, ConsumerStats, DeliverySource, Handler, RunnerConfig,
};
use payment_core::PaymentService;
use payment_core::providers::crypto::ChainWatcher;
use sea_orm::DatabaseConnection;
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use chain::ChainWatch;
pub use notifications::{CONSUMER, NotificationHandler};
pub use reconcile::{ReconcileReport, Reconciler};
pub use settings::{ConsumerSettings, ReconcileSettings, ServiceSettings};
pub use sources::{StatusSource, StatusSources};

pub const SERVICE: &str = "payment-worker";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: load_common(source)?,
            service: ServiceSettings::load(source)?,
        })
    }
}

/// The worker's queue, bindings and retry queues, as its consumer declares them. Declare it
/// (`bus.declare(&spec)`) before anything publishes notifications, so none is unroutable.
pub fn consumer_spec(settings: &ServiceSettings) -> ConsumerSpec {
    let handler = NotificationHandler::new(
        Arc::new(StatusSources::default()),
        DatabaseConnection::default(),
    );
    ConsumerSpec::new(handler.consumer(), handler.bindings())
        .with_retry(settings.consumer.retry_policy())
}

/// The status sources of the providers enabled in `settings` (the crypto provider answers
/// from its invoice rows and the Telegram provider records Star transactions, through `db`).
pub fn status_sources(
    settings: &ServiceSettings,
    db: &DatabaseConnection,
) -> Result<StatusSources, payment_core::SettingsError> {
    let payments = settings.payments.clone().with_database(db);
    let service = PaymentService::from_settings(&payments)?;
    Ok(StatusSources::from_payment_service(service, db))
}

/// The worker's parts on one database and bus: the notification consumer, the
/// reconciliation loop and, with crypto enabled, the chain-watch loop.
pub struct Worker {
    runner: ConsumerRunner,
    reconciler: Option<Reconciler>,
    chain: Option<ChainWatch>,
    db: DatabaseConnection,
    sources: Arc<StatusSources>,
    nudge: Arc<Notify>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("runner", &self.runner)
            .field("reconciler", &self.reconciler.is_some())
            .field("chain", &self.chain.is_some())
            .finish()
    }
}

/// The running worker's tasks.
#[derive(Debug)]
pub struct WorkerTasks {
    pub runner: JoinHandle<()>,
    pub reconciler: Option<JoinHandle<()>>,
    pub chain: Option<JoinHandle<()>>,
    /// The consumer's live counts (handled, duplicates, retried, parked).
    pub stats: Arc<ConsumerStats>,
}

impl WorkerTasks {
    /// Waits for every loop to stop (after the shutdown they were spawned with).
    pub async fn join(self) {
        for task in [Some(self.runner), self.reconciler, self.chain]
            .into_iter()
            .flatten()
        {
            if let Err(error) = task.await {
                tracing::error!(%error, "worker task failed");
            }
        }
    }
}

impl Worker {
    /// A worker asking the providers enabled in `settings.payments`; with crypto enabled, it
    /// also watches the chain and checks crypto notices there.
    pub fn from_settings(
        settings: &ServiceSettings,
        db: DatabaseConnection,
        bus: Arc<dyn Bus>,
        outbox_nudge: Arc<Notify>,
    ) -> Result<Self, payment_core::SettingsError> {
        let mut sources = status_sources(settings, &db)?;
        let watcher = match &settings.payments.crypto {
            Some(crypto) => Some(ChainWatcher::new(crypto.clone()).map_err(|e| {
                payment_core::SettingsError::Invalid {
                    var: "TRONGRID_API_URL",
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        if watcher.is_some() {
            sources = sources.with_chain_notices(Arc::default());
        }
        let worker = Self::new(settings, sources, db, bus, outbox_nudge);
        Ok(match watcher {
            Some(watcher) => worker.with_chain_watcher(watcher),
            None => worker,
        })
    }

    /// A worker with explicit status sources (tests; providers without a `payment_core` API).
    pub fn new(
        settings: &ServiceSettings,
        sources: StatusSources,
        db: DatabaseConnection,
        bus: Arc<dyn Bus>,
        outbox_nudge: Arc<Notify>,
    ) -> Self {
        if sources.is_empty() {
            tracing::warn!(
                "no payment provider is configured: notifications will be parked and pending payments not reconciled"
            );
        }
        let sources = Arc::new(sources);
        let source: Arc<dyn DeliverySource> = bus;
        let runner = ConsumerRunner::new(
            NotificationHandler::new(sources.clone(), db.clone()),
            db.clone(),
            source,
            RunnerConfig {
                prefetch: settings.consumer.prefetch,
                retry: settings.consumer.retry_policy(),
                ..RunnerConfig::default()
            },
        )
        .with_outbox_nudge(outbox_nudge.clone());
        let reconciler = settings.reconcile.enabled.then(|| {
            Reconciler::new(
                db.clone(),
                sources.clone(),
                settings.reconcile.clone(),
                outbox_nudge.clone(),
            )
        });
        Self {
            runner,
            reconciler,
            chain: None,
            db,
            sources,
            nudge: outbox_nudge,
        }
    }

    /// Adds the chain-watch loop (crypto): its outcomes are applied through this worker's
    /// status sources; it checks crypto notices when the sources send them its way
    /// ([`StatusSources::with_chain_notices`]).
    #[must_use]
    pub fn with_chain_watcher(mut self, watcher: ChainWatcher) -> Self {
        let notices = self.sources.chain_notices().cloned().unwrap_or_default();
        self.chain = Some(ChainWatch::new(
            self.db.clone(),
            watcher,
            self.sources.clone(),
            self.nudge.clone(),
            notices,
        ));
        self
    }

    /// Starts consuming (the runner declares its queue when it subscribes) and reconciling.
    pub fn spawn(self, shutdown: Shutdown) -> WorkerTasks {
        let stats = self.runner.stats();
        WorkerTasks {
            runner: self.runner.spawn(shutdown.clone()),
            reconciler: self
                .reconciler
                .map(|r| tokio::spawn(r.run(shutdown.clone()))),
            chain: self.chain.map(|c| tokio::spawn(c.run(shutdown))),
            stats,
        }
    }
}

/// Starts the service on the given infrastructure: with crypto enabled, also the chain-watch
/// loop. The returned server's task ends when its ops server (unless the process serves ops
/// once), the consumer and the loops have all stopped.
pub fn start(
    settings: &ServiceSettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> std::io::Result<RunningServer> {
    let worker = Worker::from_settings(
        settings,
        infra.db.clone(),
        infra.bus.clone(),
        infra.outbox_nudge.clone(),
    )
    .map_err(std::io::Error::other)?;
    let ops = ops::serve_ops_on(
        settings.ops_bind.as_deref(),
        infra.readiness(),
        shutdown.clone(),
    )?;
    let tasks = worker.spawn(shutdown);
    let server = ops::beside_ops(ops, async move {
        tasks.join().await;
        Ok(())
    });
    tracing::info!(ops = ?server.addr, "{SERVICE} ready");
    Ok(server)
}

/// Runs the service as its own process until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(
        SERVICE,
        &settings.common,
        shutdown,
        async |infra, shutdown| Ok(start(&settings.service, infra, shutdown)?),
    )
    .await
}
