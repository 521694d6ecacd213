#![doc = include_str!("../README.md")]

pub mod marzban;

use serde::Deserialize;
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};

pub const SERVICE: &str = "marzban-sync";

/// This service's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceSettings {
    /// Health and metrics server.
    #[serde(default = "default_bind")]
    pub marzban_sync_bind: String,
}

fn default_bind() -> String {
    "0.0.0.0:8082".to_owned()
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub service: ServiceSettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: load_common(source)?,
            service: source.load()?,
        })
    }
}

/// Starts the service on the given infrastructure; returns its health/metrics server.
pub fn start(
    settings: &ServiceSettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> std::io::Result<RunningServer> {
    let server = ops::serve_ops(&settings.marzban_sync_bind, infra.readiness(), shutdown)?;
    tracing::info!(addr = %server.addr, "{SERVICE} ready");
    Ok(server)
}

/// Runs the service as its own process until `shutdown`.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(SERVICE, &settings.common, shutdown, |infra, shutdown| {
        start(&settings.service, infra, shutdown)
    })
    .await
}
