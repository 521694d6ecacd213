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
        Arc::new(PaymentService::default()),
        DatabaseConnection::default(),
    );
    ConsumerSpec::new(handler.consumer(), handler.bindings())
        .with_retry(settings.consumer.retry_policy())
}

/// The providers enabled in `settings`, the worker's status sources (the crypto provider
/// answers from its invoice rows, the Telegram provider reads stored updates and records Star
/// transactions, through `db`).
pub fn payment_service(
    settings: &ServiceSettings,
    db: &DatabaseConnection,
) -> Result<PaymentService, payment_core::SettingsError> {
    PaymentService::from_settings(&settings.payments.clone().with_database(db))
}

/// The worker's parts on one database and bus: the notification consumer, the
/// reconciliation loop and, with crypto enabled, the chain-watch loop.
pub struct Worker {
    runner: ConsumerRunner,
    reconciler: Option<Reconciler>,
    chain: Option<ChainWatch>,
    db: DatabaseConnection,
    providers: Arc<PaymentService>,
    /// Wakes the chain-watch loop when a notice it checks waits.
    own_notices: Arc<Notify>,
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
        let providers = payment_service(settings, &db)?;
        let watcher = match &settings.payments.crypto {
            Some(crypto) => Some(ChainWatcher::new(crypto.clone()).map_err(|e| {
                payment_core::SettingsError::Invalid {
                    var: "TRONGRID_API_URL",
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
        let own_notices = watcher.is_some().then(Arc::default);
        let worker = Self::new(settings, providers, own_notices, db, bus, outbox_nudge);
        Ok(match watcher {
            Some(watcher) => worker.with_chain_watcher(watcher),
            None => worker,
        })
    }

    /// A worker over explicit providers (tests, or a caller with its own wiring); with
    /// `own_notices`, the notices of providers that check their own are left to their loop.
    pub fn new(
        settings: &ServiceSettings,
        providers: PaymentService,
        own_notices: Option<Arc<Notify>>,
        db: DatabaseConnection,
        bus: Arc<dyn Bus>,
        outbox_nudge: Arc<Notify>,
    ) -> Self {
        if providers.is_empty() {
            tracing::warn!(
                "no payment provider is configured: notifications will be parked and pending payments not reconciled"
            );
        }
        let providers = Arc::new(providers);
        let mut handler = NotificationHandler::new(providers.clone(), db.clone());
        if let Some(wake) = &own_notices {
            handler = handler.with_own_notices(wake.clone());
        }
        let source: Arc<dyn DeliverySource> = bus;
        let runner = ConsumerRunner::new(
            handler,
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
                providers.clone(),
                settings.reconcile.clone(),
                outbox_nudge.clone(),
            )
        });
        Self {
            runner,
            reconciler,
            chain: None,
            db,
            providers,
            own_notices: own_notices.unwrap_or_default(),
            nudge: outbox_nudge,
        }
    }

    /// Adds the chain-watch loop (crypto): its outcomes are applied through this worker's
    /// providers; it checks crypto notices when the consumer leaves them to it.
    #[must_use]
    pub fn with_chain_watcher(mut self, watcher: ChainWatcher) -> Self {
        self.chain = Some(ChainWatch::new(
            self.db.clone(),
            watcher,
            self.providers.clone(),
            self.nudge.clone(),
            self.own_notices.clone(),
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
