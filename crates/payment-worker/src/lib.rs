#![doc = include_str!("../README.md")]

pub mod autopay;
pub mod host;
pub mod metric;
pub mod notifications;
pub mod reconcile;
mod referral;
pub mod renewals;
pub mod settings;
pub mod sources;
pub mod transition;

use std::sync::Arc;

use messaging::{
    Bus, ConsumerRunner, ConsumerSpec, ConsumerStats, DeliverySource, Handler, RunnerConfig,
};
use payment_core::PaymentService;
use sea_orm::DatabaseConnection;
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use host::WorkerHost;
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
/// reconciliation loop and the providers' own loops (crypto: the chain watcher).
pub struct Worker {
    runner: ConsumerRunner,
    reconciler: Option<Reconciler>,
    autopay: Option<autopay::Autopay>,
    host: Arc<WorkerHost>,
    providers: Arc<PaymentService>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("runner", &self.runner)
            .field("reconciler", &self.reconciler.is_some())
            .finish_non_exhaustive()
    }
}

/// The running worker's tasks.
#[derive(Debug)]
pub struct WorkerTasks {
    pub runner: JoinHandle<()>,
    pub reconciler: Option<JoinHandle<()>>,
    /// The providers' own loops.
    pub background: Vec<JoinHandle<()>>,
    /// The consumer's live counts (handled, duplicates, retried, parked).
    pub stats: Arc<ConsumerStats>,
}

impl WorkerTasks {
    /// Waits for every loop to stop (after the shutdown they were spawned with).
    pub async fn join(self) {
        for task in [self.runner]
            .into_iter()
            .chain(self.reconciler)
            .chain(self.background)
        {
            if let Err(error) = task.await {
                tracing::error!(%error, "worker task failed");
            }
        }
    }
}

impl Worker {
    /// A worker asking the providers enabled in `settings.payments`.
    pub fn from_settings(
        settings: &ServiceSettings,
        db: DatabaseConnection,
        bus: Arc<dyn Bus>,
        outbox_nudge: Arc<Notify>,
    ) -> Result<Self, payment_core::SettingsError> {
        let providers = payment_service(settings, &db)?;
        Ok(Self::new(settings, providers, db, bus, outbox_nudge))
    }

    /// A worker over explicit providers (tests, or a caller with its own wiring). The
    /// notices of providers that check their own are left to those providers' loops.
    pub fn new(
        settings: &ServiceSettings,
        providers: PaymentService,
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
        let notices = Arc::new(Notify::new());
        let handler = NotificationHandler::new(providers.clone(), db.clone())
            .with_own_notices(notices.clone());
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
        let host = Arc::new(WorkerHost::new(
            db.clone(),
            providers.clone(),
            outbox_nudge,
            notices,
        ));
        let autopay = (!settings.autopay.lead.is_zero()
            && providers.providers().any(|p| p.saves_methods()))
        .then(|| {
            autopay::Autopay::new(
                db,
                providers.clone(),
                host.clone(),
                settings.autopay.clone(),
            )
        });
        Self {
            runner,
            reconciler,
            autopay,
            host,
            providers,
        }
    }

    /// Starts consuming (the runner declares its queue when it subscribes), reconciling and
    /// the providers' own loops.
    pub fn spawn(self, shutdown: Shutdown) -> WorkerTasks {
        let stats = self.runner.stats();
        let host: Arc<dyn payment_core::background::ProviderHost> = self.host;
        let mut background: Vec<_> = self
            .providers
            .providers()
            .filter_map(|p| p.background_task(host.clone(), shutdown.clone()))
            .map(tokio::spawn)
            .collect();
        if let Some(autopay) = self.autopay {
            background.push(tokio::spawn(autopay.run(shutdown.clone())));
        }
        WorkerTasks {
            runner: self.runner.spawn(shutdown.clone()),
            reconciler: self.reconciler.map(|r| tokio::spawn(r.run(shutdown))),
            background,
            stats,
        }
    }
}

/// Starts the service on the given infrastructure, with its providers' own loops. The returned server's task ends when its ops server (unless the process serves ops
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
