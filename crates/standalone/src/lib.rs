//! All four services in one process on SQLite and the in-process bus (see `main.rs`).

use service_kit::runtime::Infra;
use service_kit::settings::{Source, load_common_with_defaults};
use service_kit::{CommonSettings, SettingsError, Shutdown};

/// The embedded default database: a file under `data/`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/acp.db?mode=rwc";

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateway: api_gateway::GatewaySettings,
    pub worker: payment_worker::ServiceSettings,
    pub marzban_sync: marzban_sync::ServiceSettings,
    pub bot: bot::ServiceSettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: load_common_with_defaults(source, &[("DATABASE_URL", DEFAULT_DATABASE_URL)])?,
            gateway: source.load()?,
            worker: source.load()?,
            marzban_sync: source.load()?,
            bot: source.load()?,
        })
    }
}

/// Starts the four services on one embedded infrastructure and runs until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    let infra = Infra::embedded("standalone", &settings.common).await?;
    let servers = [
        api_gateway::start(&settings.gateway, &infra, shutdown.clone())
            .await?
            .server,
        payment_worker::start(&settings.worker, &infra, shutdown.clone())?,
        marzban_sync::start(&settings.marzban_sync, &infra, shutdown.clone())
            .await?
            .server,
        bot::start(&settings.bot, &infra, shutdown.clone())
            .await?
            .server,
    ];
    tracing::info!(
        database = %service_kit::Redacted(&settings.common.database_url),
        "standalone: gateway, worker, marzban-sync and bot running in one process"
    );
    for server in servers {
        server.task.await??;
    }
    infra.stop().await;
    Ok(())
}
