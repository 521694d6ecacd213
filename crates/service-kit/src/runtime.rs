//! The infrastructure a service runs on: its database connection, the event bus and the
//! outbox relay, plus the readiness checks they imply. The separate binaries build it from
//! PostgreSQL and RabbitMQ; the standalone binary builds one embedded `Infra` (SQLite and the
//! in-process bus) and starts all four services on it.

use std::sync::Arc;

use messaging::topology::system_consumers;
use messaging::{Bus, InProcessBus, OutboxRelay, RabbitBus, RabbitConfig, RelayConfig};
use sea_orm::DatabaseConnection;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ops::{Readiness, RunningServer};
use crate::{CommonSettings, Shutdown, db};

/// Shared infrastructure of one process.
pub struct Infra {
    pub db: DatabaseConnection,
    pub bus: Arc<dyn Bus>,
    /// Writers of outbox rows call `notify_one()` after commit so the relay publishes at once.
    pub outbox_nudge: Arc<Notify>,
    readiness: Readiness,
    relay: JoinHandle<()>,
    relay_stop: CancellationToken,
}

impl Infra {
    /// PostgreSQL (or any `DATABASE_URL`) and RabbitMQ, for a separately deployed service.
    pub async fn connect(service: &'static str, common: &CommonSettings) -> anyhow::Result<Self> {
        let db = db::connect(common).await?;
        let config = RabbitConfig::new(common.require_amqp_url()?, common.amqp_prefix.clone())
            .with_connection_name(service)
            .with_queue_type(common.queue_type()?);
        let bus = RabbitBus::connect(config).await?;
        tracing::info!(service, prefix = %common.amqp_prefix, "database and broker connected");
        Self::assemble(db, Arc::new(bus)).await
    }

    /// SQLite (or whatever `DATABASE_URL` says) and the in-process bus, for the single-process
    /// mode.
    pub async fn embedded(service: &'static str, common: &CommonSettings) -> anyhow::Result<Self> {
        let db = db::connect(common).await?;
        tracing::info!(service, "database connected; in-process bus");
        Self::assemble(db, Arc::new(InProcessBus::new())).await
    }

    async fn assemble(db: DatabaseConnection, bus: Arc<dyn Bus>) -> anyhow::Result<Self> {
        // Before anything is published: every consumer's queue exists, so no event is lost
        // to a consumer that has not started yet.
        for consumer in system_consumers() {
            bus.declare(&consumer).await?;
        }
        let relay_stop = CancellationToken::new();
        let relay = OutboxRelay::new(db.clone(), bus.clone(), RelayConfig::default());
        let outbox_nudge = relay.nudge();
        let relay = relay.spawn(relay_stop.clone());
        let broker = bus.clone();
        let readiness = Readiness::new()
            .with_database(db.clone())
            .with("broker", move || {
                let broker = broker.clone();
                Box::pin(async move { broker.ready().await.map_err(|e| e.to_string()) })
            });
        Ok(Self {
            db,
            bus,
            outbox_nudge,
            readiness,
            relay,
            relay_stop,
        })
    }

    /// The checks `/health/ready` runs for services on this infrastructure.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Stops the relay (after the services, which write the outbox, have stopped) and closes
    /// the database pool.
    pub async fn stop(self) {
        self.relay_stop.cancel();
        if let Err(error) = self.relay.await {
            tracing::error!(%error, "outbox relay task failed");
        }
        self.db.close().await.ok();
    }
}

/// The life of a separately deployed service: connect, start, serve until `shutdown`, drain.
/// `start` returns the service's HTTP server, whose end means the service has stopped.
pub async fn run_service<F>(
    service: &'static str,
    common: &CommonSettings,
    shutdown: Shutdown,
    start: F,
) -> anyhow::Result<()>
where
    F: AsyncFnOnce(&Infra, Shutdown) -> anyhow::Result<RunningServer>,
{
    let infra = Infra::connect(service, common).await?;
    let server = match start(&infra, shutdown).await {
        Ok(server) => server,
        Err(error) => {
            infra.stop().await;
            return Err(error);
        }
    };
    let served = server.task.await;
    tracing::info!(service, "stopped");
    infra.stop().await;
    served??;
    Ok(())
}
