#![doc = include_str!("../README.md")]

pub mod drift;
pub mod ledger;
pub mod marzban;
pub mod panel;
pub mod settings;
pub mod sync;

use std::sync::Arc;

use messaging::{ConsumerRunner, ConsumerSpec, ConsumerStats, RunnerConfig};
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};

pub use drift::{DriftReport, check_drift};
pub use settings::ServiceSettings;
pub use sync::{CONSUMER, SubscriptionSync};

use crate::marzban::{MarzbanClient, MarzbanSettings};

pub const SERVICE: &str = "marzban-sync";

/// Settings of the separately deployed service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
}

impl Settings {
    /// Loads and validates everything; the separate binary exists to provision the panel, so
    /// `MARZBAN_URL` (with `MARZBAN_USERNAME` and `MARZBAN_PASSWORD`) is required here.
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        let service: ServiceSettings = source.load()?;
        if service.marzban.is_none() {
            return Err(SettingsError::Missing {
                name: "MARZBAN_URL".to_owned(),
            });
        }
        Ok(Self {
            common: load_common(source)?,
            service,
        })
    }

    fn marzban(&self) -> anyhow::Result<&MarzbanSettings> {
        self.service
            .marzban
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("setting MARZBAN_URL is missing"))
    }
}

/// The running service.
pub struct Service {
    /// The ops server's address (none in the standalone binary, which serves ops once) and a
    /// task that ends once the ops server, the consumer and the drift job have stopped.
    pub server: RunningServer,
    /// The consumer's topology, when provisioning runs (`MARZBAN_URL` set).
    pub consumer_spec: Option<ConsumerSpec>,
    /// The consumer's live counters, when provisioning runs.
    pub consumer_stats: Option<Arc<ConsumerStats>>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("addr", &self.server.addr)
            .field("consumer_spec", &self.consumer_spec)
            .finish_non_exhaustive()
    }
}

/// Starts the service on the given infrastructure: its ops server (unless the process serves
/// ops once), the consumer of `payment.completed`/`payment.refunded` and the periodic drift
/// check. Without Marzban settings (possible only in the single-process mode) nothing runs.
pub async fn start(
    settings: &ServiceSettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> anyhow::Result<Service> {
    let client = settings
        .marzban
        .as_ref()
        .map(|marzban| MarzbanClient::new(marzban.clone()))
        .transpose()?;
    let readiness = match &client {
        Some(client) => with_panel_check(infra.readiness(), client),
        None => infra.readiness(),
    };
    let ops = ops::serve_ops_on(settings.ops_bind.as_deref(), readiness, shutdown.clone())?;
    let (Some(marzban), Some(client)) = (&settings.marzban, client) else {
        tracing::warn!("{SERVICE}: MARZBAN_URL is not set; payments are not provisioned");
        let stopped = shutdown.clone();
        return Ok(Service {
            server: ops::beside_ops(ops, async move {
                stopped.cancelled().await;
                Ok(())
            }),
            consumer_spec: None,
            consumer_stats: None,
        });
    };
    // A start-up check only: a panel that is down now is retried message by message. (One
    // login, shared with the readiness check's first round.)
    match client.check_credentials().await {
        Ok(()) => tracing::info!(panel = %marzban.base_url, "logged in to Marzban"),
        Err(error) => {
            tracing::warn!(panel = %marzban.base_url, %error, "cannot log in to Marzban yet")
        }
    }

    let config = RunnerConfig {
        prefetch: settings.prefetch,
        retry: settings.retry.clone(),
        ..RunnerConfig::default()
    };
    let runner = ConsumerRunner::new(
        SubscriptionSync::new(client.clone(), infra.db.clone())
            .adopt_remaining(settings.adopt_remaining),
        infra.db.clone(),
        infra.bus.clone(),
        config,
    )
    .with_outbox_nudge(infra.outbox_nudge.clone());
    // Before anything publishes: an event with no bound queue stays in the outbox.
    infra.bus.declare(runner.spec()).await?;
    let consumer_spec = runner.spec().clone();
    let consumer_stats = runner.stats();
    let consumer = runner.spawn(shutdown.clone());
    let drift = settings.drift_check_interval.map(|interval| {
        drift::spawn_periodic(infra.db.clone(), client, interval, shutdown.clone())
    });

    let server = ops::beside_ops(ops, async move {
        if let Err(error) = consumer.await {
            tracing::error!(%error, "consumer task failed");
        }
        if let Some(Err(error)) = match drift {
            Some(drift) => Some(drift.await),
            None => None,
        } {
            tracing::error!(%error, "drift check task failed");
        }
        Ok(())
    });
    tracing::info!(ops = ?server.addr, "{SERVICE} ready");
    Ok(Service {
        server,
        consumer_spec: Some(consumer_spec),
        consumer_stats: Some(consumer_stats),
    })
}

/// `readiness` plus the check `marzban`: the panel answers `GET /api/admin` with our
/// credentials (a wrong `MARZBAN_PASSWORD` is not ready), run at most every
/// [`ops::OUTSIDE_CHECK_INTERVAL`]; its state is also the gauge
/// `service_readiness_check_up{check="marzban"}`.
pub fn with_panel_check(readiness: ops::Readiness, client: &MarzbanClient) -> ops::Readiness {
    let client = client.clone();
    readiness.with_every("marzban", ops::OUTSIDE_CHECK_INTERVAL, move || {
        let client = client.clone();
        Box::pin(async move {
            client
                .check_credentials()
                .await
                .map_err(|error| error.to_string())
        })
    })
}

/// Runs the service as its own process until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(
        SERVICE,
        &settings.common,
        shutdown,
        async |infra, shutdown| Ok(start(&settings.service, infra, shutdown).await?.server),
    )
    .await
}

/// One drift-check pass, for the `--check-drift` command: needs only the database and the
/// panel.
pub async fn check_drift_once(settings: &Settings) -> anyhow::Result<DriftReport> {
    let db = service_kit::db::connect(&settings.common).await?;
    let client = MarzbanClient::new(settings.marzban()?.clone())?;
    let report = check_drift(&db, &client).await;
    db.close().await.ok();
    Ok(report?)
}

/// What the binary was asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Serve until SIGTERM (no arguments).
    Run,
    /// `--check-drift`: one drift-check pass, then exit (non-zero if anything failed).
    CheckDrift,
    /// `--help`.
    Help,
}

pub const USAGE: &str = "usage: marzban-sync [--check-drift]\n\n  (no argument)   consume payment events and provision the Marzban panel\n  --check-drift   compare every subscription with the panel, repair the panel, exit\n\nSettings come from the environment and .env (see the crate README).";

impl Command {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, String> {
        let args: Vec<String> = args.into_iter().collect();
        match args
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [] => Ok(Self::Run),
            ["--check-drift"] => Ok(Self::CheckDrift),
            ["--help" | "-h"] => Ok(Self::Help),
            _ => Err(format!("unexpected arguments {args:?}\n{USAGE}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line() {
        let parse = |args: &[&str]| Command::parse(args.iter().map(|a| (*a).to_owned()));
        assert_eq!(parse(&[]), Ok(Command::Run));
        assert_eq!(parse(&["--check-drift"]), Ok(Command::CheckDrift));
        assert_eq!(parse(&["-h"]), Ok(Command::Help));
        assert!(parse(&["--drift"]).is_err());
    }

    #[test]
    fn the_service_requires_the_panel() {
        let error =
            Settings::load(&Source::map([("DATABASE_URL", "sqlite::memory:")])).unwrap_err();
        assert_eq!(error.to_string(), "setting MARZBAN_URL is missing");
    }
}
