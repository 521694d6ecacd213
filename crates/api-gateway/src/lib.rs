#![doc = include_str!("../README.md")]

use std::net::SocketAddr;

use actix_web::App;
use serde::Deserialize;
use service_kit::ops::{self, RunningServer};
use service_kit::runtime::{self, Infra};
use service_kit::settings::{Source, load_common};
use service_kit::{CommonSettings, SettingsError, Shutdown};

pub const SERVICE: &str = "api-gateway";

/// The gateway's own settings.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    #[serde(default = "default_bind")]
    pub gateway_bind: String,
    /// actix worker threads; 0 = one per core.
    #[serde(default)]
    pub gateway_workers: usize,
}

fn default_bind() -> String {
    "0.0.0.0:8080".to_owned()
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub common: CommonSettings,
    pub gateway: GatewaySettings,
}

impl Settings {
    pub fn load(source: &Source) -> Result<Self, SettingsError> {
        Ok(Self {
            common: load_common(source)?,
            gateway: source.load()?,
        })
    }
}

/// A started gateway: where it listens and the server task.
pub struct Gateway {
    pub addr: SocketAddr,
    pub server: RunningServer,
}

/// Starts the gateway's HTTP server on the given infrastructure.
pub fn start(
    settings: &GatewaySettings,
    infra: &Infra,
    shutdown: Shutdown,
) -> std::io::Result<Gateway> {
    let readiness = infra.readiness();
    let workers = match settings.gateway_workers {
        0 => std::thread::available_parallelism().map_or(2, usize::from),
        n => n,
    };
    let server = ops::serve(&settings.gateway_bind, workers, shutdown, move || {
        App::new().configure(ops::configure(readiness.clone()))
    })?;
    tracing::info!(addr = %server.addr, "api-gateway listening");
    Ok(Gateway {
        addr: server.addr,
        server,
    })
}

/// Runs the gateway as its own process: connects to PostgreSQL and RabbitMQ, serves until
/// `shutdown`, then drains.
pub async fn run(settings: Settings, shutdown: Shutdown) -> anyhow::Result<()> {
    runtime::run_service(SERVICE, &settings.common, shutdown, |infra, shutdown| {
        start(&settings.gateway, infra, shutdown).map(|gateway| gateway.server)
    })
    .await
}
