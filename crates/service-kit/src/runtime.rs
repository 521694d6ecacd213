//! The infrastructure a service runs on: its database connection, the event bus and the
//! outbox relay, plus the readiness checks they imply. The separate binaries build it from
//! PostgreSQL and RabbitMQ; the standalone binary builds one embedded `Infra` (SQLite and the
//! in-process bus) and starts all four services on it.

use std::sync::Arc;
use std::time::Duration;

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

    /// [`Infra::connect`], tried again with growing pauses (0.5 s doubling to 30 s) while
    /// PostgreSQL or RabbitMQ is not there yet; `None` when `shutdown` comes first. A service
    /// started during an outage waits for the servers instead of exiting.
    pub async fn connect_patiently(
        service: &'static str,
        common: &CommonSettings,
        shutdown: &Shutdown,
    ) -> Option<Self> {
        let mut pause = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            match Self::connect(service, common).await {
                Ok(infra) => return Some(infra),
                Err(error) => {
                    let wait = pause.next_pause();
                    tracing::warn!(
                        service,
                        error = format!("{error:#}"),
                        retry_in_ms = wait.as_millis() as u64,
                        "cannot reach the database or the broker yet"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
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
    common.outbound().apply();
    let Some(infra) = Infra::connect_patiently(service, common, &shutdown).await else {
        tracing::info!(
            service,
            "stopped before the database and the broker were reachable"
        );
        return Ok(());
    };
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

/// Pauses that double from `first` up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// The pause to take now; the next one is twice as long, up to the maximum.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next.min(self.max);
        self.next = (self.next * 2).min(self.max);
        pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [500, 1000, 2000, 3000, 3000]);
    }
}
