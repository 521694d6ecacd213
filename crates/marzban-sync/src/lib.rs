#![doc = include_str!("../README.md")]

pub mod drift;
pub mod http;
pub mod ledger;
pub mod marzban;
pub mod panel;
pub mod pasarguard;
pub mod remnawave;
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

pub use crate::panel::{Panel, PanelKind, PanelSettings};

pub const SERVICE: &str = "marzban-sync";

/// Settings of the separately deployed service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
}

impl Settings {
    /// Loads and validates everything; the separate binary exists to provision the panel, so
    /// the panel URL (`PANEL_URL`, or `MARZBAN_URL` for Marzban) and its credentials are
    /// required here.
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        let service: ServiceSettings = source.load()?;
        if service.panel.is_none() {
            return Err(SettingsError::Missing {
                name: "PANEL_URL (MARZBAN_URL for Marzban)".to_owned(),
            });
        }
        Ok(Self {
            common: load_common(source)?,
            service,
        })
    }

    fn panel(&self) -> anyhow::Result<&PanelSettings> {
        self.service
            .panel
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("setting PANEL_URL is missing"))
    }
}

/// The running service.
pub struct Service {
    /// The ops server's address (none in the standalone binary, which serves ops once) and a
    /// task that ends once the ops server, the consumer and the drift job have stopped.
    pub server: RunningServer,
    /// The consumer's topology, when provisioning runs (a panel URL set).
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
/// check. Without panel settings (possible only in the single-process mode) nothing runs.
pub async fn start(
    settings: &ServiceSettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> anyhow::Result<Service> {
    let panel = settings
        .panel
        .as_ref()
        .map(|panel| panel.connect().map(|client| (panel, client)))
        .transpose()?;
    let readiness = match &panel {
        Some((_, client)) => with_panel_check(infra.readiness(), client.clone()),
        None => infra.readiness(),
    };
    let ops = ops::serve_ops_on(settings.ops_bind.as_deref(), readiness, shutdown.clone())?;
    let Some((panel_settings, client)) = panel else {
        tracing::warn!("{SERVICE}: PANEL_URL is not set; payments are not provisioned");
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
    // A start-up check only: a panel that is down now is retried message by message, and a
    // misconfiguration keeps the service not ready. (Shared with the readiness check's first
    // round: one login.)
    let (kind, url) = (panel_settings.kind(), panel_settings.url());
    match client.check().await {
        Ok(()) => tracing::info!(panel = %url, %kind, "the panel accepts our settings"),
        Err(error) => {
            tracing::warn!(panel = %url, %kind, %error, "the panel does not accept our settings yet")
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

/// `readiness` plus the panel's check, named after `PANEL_KIND` (`marzban`, `pasarguard`,
/// `remnawave`): the panel answers and accepts our credentials, and what the settings name
/// exists ([`Panel::check`]; a wrong `MARZBAN_PASSWORD`, an expired Remnawave token or a
/// missing squad is not ready), run at most every [`ops::OUTSIDE_CHECK_INTERVAL`]; its state
/// is also the gauge `service_readiness_check_up{check="<kind>"}`.
pub fn with_panel_check(readiness: ops::Readiness, panel: Arc<dyn Panel>) -> ops::Readiness {
    readiness.with_every(
        panel.kind().as_str(),
        ops::OUTSIDE_CHECK_INTERVAL,
        move || {
            let panel = panel.clone();
            Box::pin(async move { panel.check().await.map_err(|error| error.to_string()) })
        },
    )
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
    let client = settings.panel()?.connect()?;
    let report = check_drift(&db, client.as_ref()).await;
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

pub const USAGE: &str = "usage: marzban-sync [--check-drift]\n\n  (no argument)   consume payment events and provision the panel (PANEL_KIND)\n  --check-drift   compare every subscription with the panel, repair the panel, exit\n\nSettings come from the environment and .env (see the crate README).";

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
        assert_eq!(
            error.to_string(),
            "setting PANEL_URL (MARZBAN_URL for Marzban) is missing"
        );
    }
}
